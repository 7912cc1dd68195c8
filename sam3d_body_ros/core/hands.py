"""Upstream's `full` inference mode (`SAM3DBody.run_inference`): the body pass, then hand refinement, batched.

Per frame of N persons (upstream: 3 backbone and 4 decoder passes per person, person by person on the host):

1. `BodyFirstPass` (N body crops): the body decoder with its dummy prompt, plus the two hand boxes it predicts.
2. Host: the boxes come back in one device->host copy (the crops are warped from host-side affines, as the body's);
   `hand_crop_geometry` squares them, maps them to the image through the body crop affine and pads them by 0.9.
   Left hands are cropped from the mirrored image and run as right hands (upstream flips the whole image).
3. One backbone call for the 2N hand crops, `HandPass`: one hand-decoder call for all of them.
4. `RefinePass` (N persons): un-mirroring, the four validity tests, the re-prompted body decoder (wrist/elbow keypoint
   prompts, previous estimate = the first pass), the merge of hand pose, wrist rotation, hand and shared
   scales/shape, the final MHR forward and the re-projection. No host round trip from here to the outputs.

So: 2 backbone calls (N, then 2N crops: the hand crops need the body pass first), 3 decoder calls (N body, 2N hand,
N re-prompted body), 1 device->host copy in between. Hands are ordered [left, right] on every per-person axis.

Upstream behaviours kept as they are (documented here, corrected values alongside):
- `pred_global_rots` comes from the re-prompted body pass, before the hand merge (stale wrists and fingers);
  `pred_global_rots_refined` has the rotations of the final MHR forward.
- The wrist-distance test divides each hand's distance by the *other* hand's crop side
  (`wrist_test_own_box=True` divides by its own).
- The final `pred_keypoints_2d` projects with f = K[0,0] on both axes and the image centre as principal point;
  `pred_keypoints_2d_K` projects with K.
- Left-hand crops of the mirrored image keep the unmirrored intrinsics (cx should become W - 1 - cx);
  `mirror_left_intrinsics=True` mirrors them.
- With one person, invalid prompts are dropped (and the re-prompted pass is skipped when none is left); with several
  they become dummy prompts, and the in-crop bound is then inclusive (exclusive for one person). A person's result
  therefore depends on whether it is alone in the frame. Dropping is done as a self-attention key mask (the same
  function as removing the tokens, static shapes).
- `pred_pose_raw` is zeroed (it no longer describes the merged pose); `hand_cls_embed` logits are never used.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import nn

from .camera import cam_translation, project_points
from .crop import PADDING, _warp_cv2, _warp_torch, box_to_center_side, warp_matrix
from .heads import NUM_CAM, NUM_HAND_CONT, NUM_POSE, MHRHead, rotmat_to_euler
from .keypoints import MHR_JOINT_NAMES
from .model import OUTPUT_FIELDS, SAM3DBodyHead
from .prompt import LABEL_INVALID

HAND_PADDING = 0.9  # upstream transform_hand: GetBBoxCenterScale(padding=0.9) on the squared hand box
WRIST_ANGLE_MAX = 1.4  # rad, upstream thresh_wrist_angle
HAND_CROP_MIN_SIDE = 64.0  # px, test (b)
HAND_KEYPOINTS_MAX = 0.5  # test (c): |crop-normalised keypoint| of the hand decoder, [-0.5, 0.5] = inside
WRIST_DISTANCE_MAX = 0.25  # test (d): wrist distance / hand crop side
LEFT, RIGHT = 0, 1
# MHR70 keypoints and MHR joints, [left, right].
WRIST_KEYPOINTS = (62, 41)
ELBOW_KEYPOINTS = (7, 8)
LOWARM_JOINTS = tuple(MHR_JOINT_NAMES.index(f"{s}_lowarm") for s in "lr")  # (76, 40)
WRIST_TWIST_JOINTS = tuple(MHR_JOINT_NAMES.index(f"{s}_wrist_twist") for s in "lr")  # (77, 41)
RIGHT_WRIST_JOINT = MHR_JOINT_NAMES.index("r_wrist")  # 42: the hand decoder always sees a right hand
# The wrist's three Euler params (X, Z, Y order) in the 133 body params.
WRIST_EULER_PARAMS = ((41, 43, 42), (31, 33, 32))
HAND_SCALES = (9, 8)  # scale PCA coefficient of each hand
SHARED_SCALES_START = 18  # scale coefficients [18:] and shape [40:] are averaged over the valid hands
HAND_SHAPE_START = 40
# Keypoint prompts of the re-prompted body pass: right wrist, left wrist (hand decoder), right, left elbow (body).
PROMPT_KEYPOINTS = (41, 62, 8, 7)
WRIST_LIMITS = ((-2.2, 1.0), (-2.2, 1.5), (-1.2, 1.5))  # upstream fix_wrist_euler: X, Z, Y
HAND_BUCKETS = tuple(range(2, 17, 2))  # 2N hand crops for N = 1..8


@dataclass(frozen=True)
class FullModeOptions:
    """Corrections of upstream quirks (all off = upstream's behaviour)."""

    wrist_test_own_box: bool = False  # test (d) divides by the hand's own crop side instead of the other hand's
    mirror_left_intrinsics: bool = False  # left-hand crops (mirrored image) use cx' = W - 1 - cx


def _pick(x: torch.Tensor, index: tuple[int, ...], dim: int = 1) -> torch.Tensor:
    """x's entries `index` along `dim`, stacked there (basic indexing only: nothing to copy to the device)."""
    return torch.stack([x.select(dim, i) for i in index], dim=dim)


# -- host side: hand crops ------------------------------------------------------------------------------------------
@dataclass
class HandCropGeometry:
    """The 2N hand crops of N persons: left hands first (in the mirrored image), then right hands."""

    center: np.ndarray  # (2N,2) crop centre, px of the image the hand decoder sees (mirrored for left hands)
    side: np.ndarray  # (2N,) square crop side, px
    affine: np.ndarray  # (2N,2,3) that image -> crop
    boxes: np.ndarray  # (N,2,4) [left, right] xyxy of each crop in the original image (upstream l/rhand_bbox)


def hand_crop_geometry(hand_box: np.ndarray, body_affine: np.ndarray, width: int, size: int) -> HandCropGeometry:
    """Body-decoder hand boxes (N,2,4) (cx, cy, w, h in [0,1] of the body crop) and body crop affines (N,2,3) ->
    hand crops: squared (side max(w, h)), mapped to the image, left boxes mirrored (x -> W - 1 - x), then cropped as
    bodies are but with padding 0.9 (upstream `_get_hand_box` + `transform_hand`; float64 here, float32 upstream)."""
    box = np.asarray(hand_box, np.float64).reshape(-1, 2, 4) * size
    affine = np.asarray(body_affine, np.float64).reshape(-1, 2, 3)
    scale = affine[:, None, 0, 0]  # crop px per image px (a similarity: the same on both axes)
    center = (box[..., :2] - affine[:, None, :, 2]) / scale[..., None]
    half = (box[..., 2:].max(axis=-1) / scale / 2)[..., None]
    xyxy = np.concatenate([center - half, center + half], axis=-1)  # (N,2,4)
    left = xyxy[:, LEFT]
    mirrored = np.stack([width - left[:, 2] - 1, left[:, 1], width - left[:, 0] - 1, left[:, 3]], axis=-1)
    crop_center, crop_side = box_to_center_side(np.concatenate([mirrored, xyxy[:, RIGHT]]))
    crop_side = crop_side * (HAND_PADDING / PADDING)  # the body crop's rule at the hand padding
    n = len(box)
    in_image = crop_center.copy()
    in_image[:n, 0] = width - in_image[:n, 0] - 1  # left crops back in the original image
    extent = np.concatenate([in_image - crop_side[:, None] / 2, in_image + crop_side[:, None] / 2], axis=-1)
    return HandCropGeometry(
        center=crop_center,
        side=crop_side,
        affine=np.stack([warp_matrix(c, s, size) for c, s in zip(crop_center, crop_side)]) if n else np.zeros((0, 2, 3)),
        boxes=extent.reshape(2, n, 4).transpose(1, 0, 2),
    )


def warp_hand_crops(image_rgb: np.ndarray, affine: np.ndarray, size: int, frame: torch.Tensor | None) -> torch.Tensor:
    """The 2N normalised hand crops (left ones from the mirrored image) through the body crops' warp: OpenCV on the
    CPU (`frame` None), its bit-exact port on the GPU from `frame`, the frame the body crops already uploaded."""
    n = len(affine) // 2
    if frame is None:
        left = _warp_cv2(np.ascontiguousarray(image_rgb[:, ::-1]), affine[:n], size)
        right = _warp_cv2(image_rgb, affine[n:], size)
    else:
        left, right = _warp_torch(frame.flip(1), affine[:n], size), _warp_torch(frame, affine[n:], size)
    return torch.cat([left, right])


def hand_intrinsics(K: np.ndarray, width: int, n: int, mirror_left: bool) -> np.ndarray:
    """K (3,3) for the 2N hand crops (2N,3,3): upstream uses K unchanged for the mirrored left crops."""
    out = np.broadcast_to(np.asarray(K, np.float64), (2 * n, 3, 3)).copy()
    if mirror_left:
        out[:n, 0, 2] = width - 1 - out[:n, 0, 2]
    return out


# -- device side: tests, prompts, merge -----------------------------------------------------------------------------
def rotation_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (rad) between rotations (..., 3, 3) (upstream `rotation_angle_difference`)."""
    rel = a @ b.transpose(-1, -2)
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.acos(cos.clamp(-1.0, 1.0))


def local_wrist_rotation(lowarm_rots: torch.Tensor, twist_rest: torch.Tensor, wrist_rots: torch.Tensor) -> torch.Tensor:
    """The wrist's local rotation that gives global wrist rotations `wrist_rots` (..., 3, 3) under lower arms at
    `lowarm_rots`, the wrist-twist joint at rest `twist_rest`: (lowarm @ twist_rest)^T @ wrist."""
    return (lowarm_rots @ twist_rest).transpose(-1, -2) @ wrist_rots


def fix_wrist_euler(xzy: torch.Tensor) -> torch.Tensor:
    """Wrist angles (..., 3) (X, Z, Y) -> the equivalent set (x + pi, -(z + pi), y + pi, wrapped) where it violates
    the wrist limits less in squared distance (upstream `fix_wrist_euler`)."""
    x, z, y = xzy.unbind(-1)
    alt = [torch.atan2(torch.sin(v), torch.cos(v)) for v in (x + torch.pi, -(z + torch.pi), y + torch.pi)]

    def violation(angles: list[torch.Tensor]) -> torch.Tensor:
        return sum((lo - v).clamp(min=0.0) ** 2 + (v - hi).clamp(min=0.0) ** 2
                   for v, (lo, hi) in zip(angles, WRIST_LIMITS))

    use_alt = violation(alt) < violation([x, z, y])
    return torch.where(use_alt[..., None], torch.stack(alt, dim=-1), xzy)


def unmirror_left_hand(hands: dict[str, torch.Tensor], scale_mean: torch.Tensor, scale_comps: torch.Tensor,
                       width: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-person hand-decoder outputs (N,2,...) with the left hand (run mirrored, as a right hand) turned back: its
    right-hand scale becomes the left one through the scale PCA stats, its wrist rotation rows 1, 2 are negated and
    its 2D wrist x is mirrored (W - 1 - x). The hand pose stays the right-hand slot (upstream copies it to the left)."""
    scale = hands["hand_scale"]
    li, ri = HAND_SCALES
    left = scale[:, LEFT].clone()
    left[:, li] = ((scale_mean[ri] + scale_comps[ri, ri] * scale[:, LEFT, ri]) - scale_mean[li]) / scale_comps[li, li]
    rot = hands["hand_wrist_rot"]
    left_rot = torch.cat([rot[:, LEFT, :1], -rot[:, LEFT, 1:]], dim=-2)
    wrist = hands["hand_wrist_2d"]
    left_wrist = torch.stack([width - wrist[:, LEFT, 0] - 1, wrist[:, LEFT, 1]], dim=-1)
    return {
        **hands,
        "hand_scale": torch.stack([left, scale[:, RIGHT]], dim=1),
        "hand_wrist_rot": torch.stack([left_rot, rot[:, RIGHT]], dim=1),
        "hand_wrist_2d": torch.stack([left_wrist, wrist[:, RIGHT]], dim=1),
    }


def hand_validity(ori_wrist_rot: torch.Tensor, lowarm_rots: torch.Tensor, twist_rest: torch.Tensor,
                  hand_wrist_rot: torch.Tensor, hand_side: torch.Tensor, hand_crop_extent: torch.Tensor,
                  hand_wrist_2d: torch.Tensor, body_wrist_2d: torch.Tensor,
                  own_box: bool = False) -> dict[str, torch.Tensor]:
    """The four per-hand tests (N,2) of upstream; a hand is used only if all hold.

    (a) the body decoder's local wrist rotation `ori_wrist_rot` and the hand decoder's (`hand_wrist_rot` under the
    body's `lowarm_rots`) differ by < 1.4 rad; (b) the hand crop side is > 64 px; (c) all hand-decoder keypoints lie
    inside the hand crop (`hand_crop_extent` = max |crop coordinate| < 0.5); (d) the hand and body 2D wrists are
    < 0.25 crop sides apart, the other hand's side unless `own_box`.
    """
    fused = local_wrist_rotation(lowarm_rots, twist_rest, hand_wrist_rot)
    sides = hand_side if own_box else hand_side.flip(-1)
    return {
        "wrist_angle": rotation_angle(ori_wrist_rot, fused) < WRIST_ANGLE_MAX,
        "crop_size": hand_side > HAND_CROP_MIN_SIDE,
        "inside_crop": hand_crop_extent < HAND_KEYPOINTS_MAX,
        "wrist_distance": (hand_wrist_2d - body_wrist_2d).norm(dim=-1) / sides < WRIST_DISTANCE_MAX,
    }


def prompt_points(hand_wrist_2d: torch.Tensor, body_elbow_2d: torch.Tensor) -> torch.Tensor:
    """Image points (N,4,2) of the prompts: right, left wrist of the hand decoder, right, left elbow of the body
    pass (inputs (N,2,2) [left, right])."""
    return torch.stack([hand_wrist_2d[:, RIGHT], hand_wrist_2d[:, LEFT], body_elbow_2d[:, RIGHT],
                        body_elbow_2d[:, LEFT]], dim=1)


def keypoint_prompts(crop: torch.Tensor, hand_valid: torch.Tensor, labels: torch.Tensor,
                     single: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (N,4,3) of the re-prompted body pass and which are valid (N,4).

    `crop` (N,4,2): `prompt_points` in [-0.5, 0.5] body crop coordinates; `labels` their keypoint ids (41, 62, 8, 7).
    A prompt is valid if inside the crop and its hand is valid; valid ones become (x + 0.5, y + 0.5 clamped to
    [0, 1], label), the others dummies (0, 0, -2). The in-crop test is upstream's: exclusive bounds for one person
    (`single`), inclusive for several.
    """
    if single:
        inside = ((crop > -0.5) & (crop < 0.5)).all(dim=-1)
    else:
        inside = ~((crop < -0.5) | (crop > 0.5)).any(dim=-1)
    valid = inside & hand_valid.flip(-1).repeat(1, 2)  # right, left, right, left
    prompts = torch.cat([(crop + 0.5).clamp(0.0, 1.0), labels.expand(crop.shape[0], -1)[..., None]], dim=-1)
    dummy = torch.zeros_like(prompts)
    dummy[..., 2] = LABEL_INVALID
    return torch.where(valid[..., None], prompts, dummy), valid


def merge_hands(params: dict[str, torch.Tensor], hands: dict[str, torch.Tensor], hand_valid: torch.Tensor,
                ori_wrist_rot: torch.Tensor, head_pose: MHRHead) -> dict[str, torch.Tensor]:
    """Decoded body params (`MHRHead.decode`) + un-mirrored hands (N,2,...) -> merged params and the merge mask.

    Upstream's order: forward kinematics of the body with both hand poses, hand scales and the mean shared scales
    dropped in; the wrist Euler (XZY, limit-fixed) that gives the hand decoder's global wrist rotation; a hand is
    merged if `hand_valid` and that wrist is < 1.4 rad from the first body pass's (`ori_wrist_rot`); merged hands
    replace wrist params, hand pose and hand scale, and the valid hands' mean replaces scales [18:] and shape [40:].
    """
    body, hand, scale, shape = (params[k] for k in ("body_pose_params", "hand_pose_params", "scale_params",
                                                    "shape_params"))
    hand_pose, hand_scale, hand_shape = hands["hand_pose"], hands["hand_scale"], hands["hand_shape"]
    fk_scale = scale.clone()
    for side, i in enumerate(HAND_SCALES):
        fk_scale[:, i] = hand_scale[:, side, i]
    fk_scale[:, SHARED_SCALES_START:] = (hand_scale[:, LEFT, SHARED_SCALES_START:]
                                         + hand_scale[:, RIGHT, SHARED_SCALES_START:]) / 2
    rots = head_pose.joint_rotations(head_pose.model_params(params["global_rot"], body, hand_pose.flatten(1), fk_scale))
    fused = local_wrist_rotation(_pick(rots, LOWARM_JOINTS), _pick(head_pose.joint_rotation, WRIST_TWIST_JOINTS, 0),
                                 hands["hand_wrist_rot"])
    merged = (rotation_angle(ori_wrist_rot, fused) < WRIST_ANGLE_MAX) & hand_valid  # (N,2)
    wrist = fix_wrist_euler(rotmat_to_euler("XZY", fused))

    body = body.clone()
    for side, idx in enumerate(WRIST_EULER_PARAMS):
        for axis, i in enumerate(idx):
            body[:, i] = torch.where(merged[:, side], wrist[:, side, axis], body[:, i])
    hand = torch.where(merged[..., None], hand_pose, hand.unflatten(1, (2, NUM_HAND_CONT))).flatten(1)
    scale = scale.clone()
    for side, i in enumerate(HAND_SCALES):
        scale[:, i] = torch.where(merged[:, side], hand_scale[:, side, i], scale[:, i])
    weight = merged.to(scale.dtype)
    count = merged.sum(dim=1, keepdim=True)

    def mean_of_merged(values: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        mean = (values[:, LEFT] * weight[:, LEFT, None] + values[:, RIGHT] * weight[:, RIGHT, None]) / (count + 1e-8)
        return torch.where(count > 0, mean, current)

    scale[:, SHARED_SCALES_START:] = mean_of_merged(hand_scale[:, :, SHARED_SCALES_START:],
                                                    scale[:, SHARED_SCALES_START:])
    shape = shape.clone()
    shape[:, HAND_SHAPE_START:] = mean_of_merged(hand_shape[:, :, HAND_SHAPE_START:], shape[:, HAND_SHAPE_START:])
    return {
        "body_pose_params": body,
        "hand_pose_params": hand,
        "scale_params": scale,
        "shape_params": shape,
        "mhr_model_params": head_pose.model_params(params["global_rot"], body, hand, scale),
        "hand_valid": merged,
    }


def project_image_centre(points: torch.Tensor, focal: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (N,P,3) -> px (N,P,2) with focal `focal` (N,) on both axes and the image centre as
    principal point (upstream's final re-projection in `full` mode)."""
    xy = points[..., :2] * focal[:, None, None] + image_size[:, None] / 2 * points[..., 2:]
    return xy / points[..., 2:]


# -- the three decoder calls ----------------------------------------------------------------------------------------
class _Pass(nn.Module):
    """A decoder call of `full` mode over a shared head (wrapped by the pipeline's compile/graph runner)."""

    def __init__(self, head: SAM3DBodyHead) -> None:
        super().__init__()
        if not head.hands:
            raise ValueError("full mode needs a head built with hands=True (the hand decoder branch)")
        self.head = head

    def compile_regions(self, mode: str = "default") -> None:
        """Compile the shared head's repeated parts (once for all passes)."""
        self.head.compile_regions(mode)


class BodyFirstPass(_Pass):
    """Step 1 on N body crops -> what the later steps need: the conditioned image embeddings, the previous estimate
    [pose raw, shape, scale, hand, face, camera] (N,522), hand boxes (N,2,4), wrist Euler params (N,2,3), lower-arm
    global rotations (N,2,3,3), 2D wrists and elbows (N,2,2)."""

    def forward(self, features: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                K: torch.Tensor) -> dict[str, torch.Tensor]:
        head = self.head
        image_embeddings = head.condition_features(features, affine, K)
        _, tokens = head.run_layers(image_embeddings, center, side, affine, K)
        pred = head.predict(tokens, center, side, affine, K, keypoints_only=True)  # no one reads its mesh
        body = pred["body_pose_params"]
        return {
            "image_embeddings": image_embeddings,
            "prev_estimate": torch.cat([pred[k] for k in ("pred_pose_raw", "shape_params", "scale_params",
                                                          "hand_pose_params", "expr_params", "pred_cam")], dim=1),
            "hand_box": head.hand_boxes(tokens),
            "wrist_euler": torch.stack([_pick(body, idx) for idx in WRIST_EULER_PARAMS], dim=1),
            "lowarm_rots": _pick(pred["pred_global_rots"], LOWARM_JOINTS),
            "body_wrist_2d": _pick(pred["pred_keypoints_2d"], WRIST_KEYPOINTS),
            "body_elbow_2d": _pick(pred["pred_keypoints_2d"], ELBOW_KEYPOINTS),
        }


class HandPass(_Pass):
    """Step 3 on the 2N hand crops (each as a right hand) -> per hand: right-hand pose (54), scale (28), shape (45),
    global wrist rotation (3,3), 2D wrist (2) and max |crop coordinate| of the keypoints."""

    def forward(self, features: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                K: torch.Tensor) -> dict[str, torch.Tensor]:
        head = self.head
        image_embeddings = head.condition_features(features, affine, K, hand=True)
        _, tokens = head.run_layers(image_embeddings, center, side, affine, K, hand=True)
        pred = head.predict(tokens, center, side, affine, K, keypoints_only=True, hand=True)
        return {
            "hand_pose": pred["hand_pose_params"][:, NUM_HAND_CONT:],
            "hand_scale": pred["scale_params"],
            "hand_shape": pred["shape_params"],
            "hand_wrist_rot": pred["pred_global_rots"][:, RIGHT_WRIST_JOINT],
            "hand_wrist_2d": pred["pred_keypoints_2d"][:, WRIST_KEYPOINTS[RIGHT]],
            "hand_crop_extent": pred["pred_keypoints_2d_cropped"].abs().amax(dim=(1, 2)),
        }


def per_person(hand_out: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """HandPass outputs over [N left, N right] crops -> (N,2,...) [left, right] per person."""
    return {k: v.unflatten(0, (2, n)).transpose(0, 1) for k, v in hand_out.items()}


FULL_MODE_EXTRA_FIELDS = ("pred_global_rots_refined", "pred_keypoints_2d_K", "hand_valid")


class RefinePass(_Pass):
    """Step 4 on N persons: tests, re-prompted body decoder, merge, final MHR -> OUTPUT_FIELDS plus
    FULL_MODE_EXTRA_FIELDS. `single`: the frame has one person (upstream drops invalid prompts then).

    Called with the tensors named in INPUTS, in that order (BodyFirstPass and `per_person(HandPass)` outputs, the
    body crop camera, image size (N,2) [W, H] and hand crop sides (N,2)).
    """

    INPUTS = ("image_embeddings", "center", "side", "affine", "K", "image_size", "hand_side", "prev_estimate",
              "wrist_euler", "lowarm_rots", "body_wrist_2d", "body_elbow_2d", "hand_pose", "hand_scale", "hand_shape",
              "hand_wrist_rot", "hand_wrist_2d", "hand_crop_extent")

    def __init__(self, head: SAM3DBodyHead, single: bool, options: FullModeOptions = FullModeOptions()) -> None:
        super().__init__(head)
        self.single = single
        self.options = options
        labels = torch.tensor(PROMPT_KEYPOINTS, dtype=torch.float32, device=head.init_pose.weight.device)
        self.register_buffer("prompt_labels", labels, persistent=False)

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        x = dict(zip(self.INPUTS, inputs))
        head, hp = self.head, self.head.head_pose
        center, side, affine, K = x["center"], x["side"], x["affine"], x["K"]
        hands = unmirror_left_hand({k: x[k] for k in x if k.startswith("hand_")}, hp.scale_mean, hp.scale_comps,
                                   x["image_size"][:, 0])
        ori_wrist_rot = roma.euler_to_rotmat("XZY", x["wrist_euler"])
        tests = hand_validity(ori_wrist_rot, x["lowarm_rots"], _pick(hp.joint_rotation, WRIST_TWIST_JOINTS, 0),
                              hands["hand_wrist_rot"], hands["hand_side"], hands["hand_crop_extent"],
                              hands["hand_wrist_2d"], x["body_wrist_2d"], self.options.wrist_test_own_box)
        hand_valid = tests["wrist_angle"] & tests["crop_size"] & tests["inside_crop"] & tests["wrist_distance"]
        crop = head.to_crop(prompt_points(hands["hand_wrist_2d"], x["body_elbow_2d"]), affine)
        prompts, valid = keypoint_prompts(crop, hand_valid, self.prompt_labels, self.single)
        prev = x["prev_estimate"]
        _, tokens = head.run_layers(x["image_embeddings"], center, side, affine, K, prompts, prev,
                                    prompt_keep=valid if self.single else None)
        pose_token = tokens[:, 0]
        raw = hp.proj(pose_token) + head.init_pose.weight
        pred_cam = head.head_camera(pose_token, head.init_camera.weight)
        if self.single:  # no prompt left: upstream skips the pass and keeps the first one's estimate
            skip = ~valid.any(dim=1, keepdim=True)
            raw = torch.where(skip, prev[:, :NUM_POSE], raw)
            pred_cam = torch.where(skip, prev[:, NUM_POSE : NUM_POSE + NUM_CAM], pred_cam)
        params = hp.decode(raw)
        cam_t = cam_translation(pred_cam, center, side, K)
        merged = merge_hands(params, hands, hand_valid, ori_wrist_rot, hp)
        final = hp.body(merged["shape_params"], merged["mhr_model_params"], params["expr_params"])
        kp_cam = final["pred_keypoints_3d"] + cam_t[:, None]
        out = {
            **params,
            **final,
            **merged,
            "pred_keypoints_2d": project_image_centre(kp_cam, K[:, 0, 0], x["image_size"]),
            "pred_cam_t": cam_t,
            "pred_global_rots": hp.joint_rotations(params["mhr_model_params"]),  # before the merge, as upstream
            "pred_pose_raw": torch.zeros_like(params["pred_pose_raw"]),
            "focal_length": K[:, 0, 0],
            "pred_global_rots_refined": final["pred_global_rots"],
            "pred_keypoints_2d_K": project_points(kp_cam, K),
        }
        return {name: out[name] for name in OUTPUT_FIELDS + FULL_MODE_EXTRA_FIELDS}


class FullMode:
    """`full` mode's steps 1-4 for one frame, given the body crops and their features; the pipeline supplies the
    backbone and wraps each pass with `wrap(module, buckets)` (its compile/CUDA-graph runner)."""

    def __init__(self, head: SAM3DBodyHead, wrap: Callable[[nn.Module, tuple[int, ...] | None], Callable[..., dict]],
                 options: FullModeOptions = FullModeOptions()) -> None:
        self.options = options
        self.size = head.crop_size
        self.first = wrap(BodyFirstPass(head), None)
        self.hands = wrap(HandPass(head), HAND_BUCKETS)
        self.refine = {single: wrap(RefinePass(head, single, options), None) for single in (False, True)}

    def __call__(self, image_rgb: np.ndarray, features: torch.Tensor, camera: tuple[torch.Tensor, ...],
                 body_affine: np.ndarray, K: np.ndarray, backbone: Callable[[torch.Tensor], torch.Tensor],
                 frame: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """Body features (N,C,h,w) and crop camera (center, side, affine, K on the device; `body_affine` the host
        copy; `frame` the uploaded frame on CUDA, None on the CPU) -> output tensors and the host-side hand crop boxes
        (`lhand_bbox`, `rhand_bbox`)."""
        n = features.shape[0]
        h, w = image_rgb.shape[:2]
        device = features.device
        first = self.first(features, *camera)
        geometry = hand_crop_geometry(first["hand_box"].cpu().numpy(), body_affine, w, self.size)  # the one sync
        # The hand crops' camera data and the frame size in one host->device copy (pinned: no wait on CUDA).
        hand_K = hand_intrinsics(K, w, n, self.options.mirror_left_intrinsics)
        packed = torch.from_numpy(np.concatenate([
            geometry.center, geometry.side[:, None], geometry.affine.reshape(2 * n, 6), hand_K.reshape(2 * n, 9),
            np.tile([[w, h]], (2 * n, 1))], axis=1).astype(np.float32))
        packed = packed.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else packed
        hand_feats = backbone(warp_hand_crops(image_rgb, geometry.affine, self.size, frame))
        hands = per_person(self.hands(hand_feats, packed[:, :2], packed[:, 2], packed[:, 3:9].reshape(-1, 2, 3),
                                      packed[:, 9:18].reshape(-1, 3, 3)), n)
        hand_side = packed[:, 2:3].unflatten(0, (2, n)).transpose(0, 1).flatten(1)  # (N,2)
        state = {**first, **hands, "hand_side": hand_side, "image_size": packed[:n, 18:],
                 "center": camera[0], "side": camera[1], "affine": camera[2], "K": camera[3]}
        out = self.refine[n == 1](*(state[name] for name in RefinePass.INPUTS))
        return out, {"lhand_bbox": geometry.boxes[:, LEFT], "rhand_bbox": geometry.boxes[:, RIGHT]}
