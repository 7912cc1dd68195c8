"""`full` mode (upstream run_inference: body pass + hand refinement) on the tiny config: hand crop geometry and
mirroring, the four validity tests, keypoint prompts, the merge, strict loading of the hand branch, body mode
unchanged, whole runs on a real photo."""
import math

import numpy as np
import pytest
import roma
import torch
from ckpt_factory import variant, write_tiny_checkpoint
from skimage import data

from sam3d_body_ros.core.checkpoint import load_checkpoint
from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.crop import IMAGENET_STD, warp_matrix
from sam3d_body_ros.core.errors import WeightsError
from sam3d_body_ros.core.hands import (
    BodyFirstPass,
    RefinePass,
    fix_wrist_euler,
    hand_crop_geometry,
    hand_validity,
    keypoint_prompts,
    merge_hands,
    prompt_points,
    unmirror_left_hand,
    warp_hand_crops,
)
from sam3d_body_ros.core.heads import rotmat_to_euler
from sam3d_body_ros.core.model import BODY_MODE_UNUSED_PREFIXES, OUTPUT_FIELDS
from sam3d_body_ros.core.prompt import LABEL_INVALID
from sam3d_body_ros.core.synthetic import random_head
from sam3d_body_ros.pipeline import BodyPipeline, PipelineSettings, output_shapes

CPU = torch.device("cpu")
BOXES = np.array([[120.0, 20.0, 380.0, 500.0], [300.0, 60.0, 480.0, 400.0]])
LABELS = torch.tensor([41.0, 62.0, 8.0, 7.0])


@pytest.fixture(scope="module")
def head():
    return random_head(TINY, seed=0, hands=True).eval()


@pytest.fixture(scope="module")
def full_pipe():
    return BodyPipeline(PipelineSettings(model_config="tiny", device="cpu", seed=0, mode="full"))


def rx(angle: float) -> torch.Tensor:
    return roma.euler_to_rotmat("x", torch.tensor([angle]))


# -- hand crops ------------------------------------------------------------------------------------------------------
def test_hand_crop_geometry_by_hand():
    # Body crop: centre (200, 250), side 400 -> 1.28 crop px per image px, crop = image * 1.28 + (0, -64).
    body_affine = warp_matrix(np.array([200.0, 250.0]), 400.0, 512)[None]
    hand_box = np.array([[[0.25, 0.5, 0.1, 0.2], [0.75, 0.25, 0.3, 0.15]]])  # [left, right] (cx, cy, w, h)
    g = hand_crop_geometry(hand_box, body_affine, width=512, size=512)
    # Left: crop px (128, 256, 51.2, 102.4) -> image centre (100, 250), square side 102.4 / 1.28 = 80, box
    # [60, 210, 140, 290]; mirrored (x -> 511 - x) [371, 210, 451, 290]: centre (411, 250); padded 0.9 and widened
    # to 3:4 like the body crops: side 0.9 * 80 / 0.75 = 96. Right: crop px (384, 128, 153.6, 76.8) -> centre
    # (300, 150), side 153.6 / 1.28 = 120 -> crop side 144.
    np.testing.assert_allclose(g.center, [[411.0, 250.0], [300.0, 150.0]], atol=1e-9)
    np.testing.assert_allclose(g.side, [96.0, 144.0], atol=1e-9)
    np.testing.assert_allclose(g.affine[0], warp_matrix(np.array([411.0, 250.0]), 96.0, 512), atol=1e-9)
    np.testing.assert_allclose(g.affine[1], warp_matrix(np.array([300.0, 150.0]), 144.0, 512), atol=1e-9)
    # Upstream's lhand_bbox / rhand_bbox: the crops' extent in the original image (left un-mirrored: centre x 100).
    np.testing.assert_allclose(g.boxes, [[[52.0, 202.0, 148.0, 298.0], [228.0, 78.0, 372.0, 222.0]]], atol=1e-9)


def test_left_hand_crop_is_the_mirror_image():
    """The same box for both hands: the left crop (from the mirrored image) is the right crop mirrored. Crop column u
    of the mirrored image's crop samples x = c - (u - 256) / s, the right crop's column 512 - u; OpenCV's 1/32 px
    fixed point rounds the two a little differently."""
    image = data.astronaut()
    g = hand_crop_geometry(np.array([[[0.4, 0.3, 0.2, 0.2]] * 2]), warp_matrix(np.array([250.0, 260.0]), 460.0,
                                                                                  512)[None], 512, 512)
    left, right = warp_hand_crops(image, g.affine, 512, None)
    grey = torch.as_tensor(1.0 / (255.0 * IMAGENET_STD))[:, None, None]
    diff = ((left[..., 1:] - right.flip(-1)[..., :-1]) / grey).abs()  # in grey levels
    assert diff.max() <= 5 and diff.mean() < 0.05
    assert (left - right).abs().mean() > 0.1  # really mirrored, not the same crop


# -- the four tests --------------------------------------------------------------------------------------------------
def validity_inputs(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    """One person whose two hands pass all four tests; `changes` replaces inputs."""
    lowarm = roma.euler_to_rotmat("XYZ", torch.tensor([[[0.3, -0.2, 0.7], [0.1, 0.5, -0.4]]]))
    twist = roma.euler_to_rotmat("XYZ", torch.tensor([[0.2, 0.1, 0.0], [0.0, -0.3, 0.2]]))
    ori = roma.euler_to_rotmat("XZY", torch.tensor([[[0.2, 0.1, -0.3], [-0.4, 0.2, 0.1]]]))
    inputs = {
        "ori_wrist_rot": ori,
        "lowarm_rots": lowarm,
        "twist_rest": twist,
        "hand_wrist_rot": lowarm @ twist @ ori @ rx(0.5),  # local wrist 0.5 rad from the body's
        "hand_side": torch.tensor([[100.0, 100.0]]),
        "hand_crop_extent": torch.tensor([[0.3, 0.3]]),
        "hand_wrist_2d": torch.tensor([[[100.0, 100.0], [200.0, 100.0]]]),
        "body_wrist_2d": torch.tensor([[[100.0, 105.0], [200.0, 95.0]]]),
    }
    inputs.update(changes)
    return inputs


def test_all_four_tests_pass_on_a_consistent_hand():
    tests = hand_validity(**validity_inputs())
    assert set(tests) == {"wrist_angle", "crop_size", "inside_crop", "wrist_distance"}
    for name, ok in tests.items():
        assert ok.tolist() == [[True, True]], name


def test_a_wrist_angle():
    base = validity_inputs()
    chain = base["lowarm_rots"] @ base["twist_rest"] @ base["ori_wrist_rot"]
    rot = torch.stack([chain[:, 0] @ rx(1.35), chain[:, 1] @ rx(1.45)], dim=1)  # 1.4 rad is the bound
    assert hand_validity(**validity_inputs(hand_wrist_rot=rot))["wrist_angle"].tolist() == [[True, False]]


def test_b_crop_size():
    tests = hand_validity(**validity_inputs(hand_side=torch.tensor([[64.5, 64.0]])))  # > 64 px
    assert tests["crop_size"].tolist() == [[True, False]]


def test_c_keypoints_inside_the_crop():
    tests = hand_validity(**validity_inputs(hand_crop_extent=torch.tensor([[0.49, 0.5]])))  # max |coord| < 0.5
    assert tests["inside_crop"].tolist() == [[True, False]]


@pytest.mark.parametrize("own_box, expected", [(False, [[False, True]]), (True, [[True, False]])])
def test_d_wrist_distance_uses_the_other_hands_crop(own_box, expected):
    """Left wrist 20 px off, right 18 px; left crop 100 px, right 60 px. Upstream divides by the other hand's side:
    20 / 60 = 0.33 (fails), 18 / 100 = 0.18 (passes); by its own side: 0.2 passes, 0.3 fails."""
    inputs = validity_inputs(hand_side=torch.tensor([[100.0, 60.0]]),
                             body_wrist_2d=torch.tensor([[[120.0, 100.0], [200.0, 118.0]]]))
    assert hand_validity(**inputs, own_box=own_box)["wrist_distance"].tolist() == expected


# -- prompts ---------------------------------------------------------------------------------------------------------
def test_prompt_points_order():
    wrists = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [left, right]
    elbows = torch.tensor([[[5.0, 6.0], [7.0, 8.0]]])
    assert prompt_points(wrists, elbows).tolist() == [[[3.0, 4.0], [1.0, 2.0], [7.0, 8.0], [5.0, 6.0]]]


def test_prompts_of_several_persons_become_dummies():
    # Per person: right wrist, left wrist, right elbow, left elbow in [-0.5, 0.5] crop coordinates.
    crop = torch.tensor([[[0.1, -0.2], [0.5, 0.0], [-0.3, 0.4], [0.0, 0.6]],
                         [[0.1, -0.2], [0.2, 0.0], [-0.3, 0.4], [0.0, 0.1]]])
    hand_valid = torch.tensor([[True, True], [False, True]])  # [left, right]
    prompts, valid = keypoint_prompts(crop, hand_valid, LABELS, single=False)
    d = [0.0, 0.0, LABEL_INVALID]
    expected = [[[0.6, 0.3, 41], [1.0, 0.5, 62], [0.2, 0.9, 8], d],  # left wrist on the bound: kept (inclusive)
                [[0.6, 0.3, 41], d, [0.2, 0.9, 8], d]]  # left hand invalid: its wrist and elbow prompts too
    torch.testing.assert_close(prompts, torch.tensor(expected), atol=1e-6, rtol=0)
    assert valid.tolist() == [[True, True, True, False], [True, False, True, False]]


def test_prompts_of_one_person_are_dropped_with_exclusive_bounds():
    crop = torch.tensor([[[0.1, -0.2], [0.5, 0.0], [-0.3, 0.4], [0.0, 0.3]]])
    prompts, valid = keypoint_prompts(crop, torch.tensor([[True, True]]), LABELS, single=True)
    assert valid.tolist() == [[True, False, True, True]]  # 0.5 is outside for one person
    torch.testing.assert_close(prompts[0, 3], torch.tensor([0.5, 0.8, 7.0]))


def test_left_out_prompts_equal_removed_prompts(head, decoder_inputs):
    """One person: upstream removes invalid prompts; here they are left out of self-attention (static shapes)."""
    feats, center, side, affine, K = decoder_inputs(TINY, 1, CPU)
    g = torch.Generator().manual_seed(0)
    prompts = torch.cat([torch.rand(1, 4, 2, generator=g), LABELS.view(1, 4, 1)], dim=-1)
    keep = torch.tensor([[True, False, True, False]])
    prev = torch.cat([head.init_pose.weight, head.init_camera.weight], dim=1) + 0.1 * torch.randn(1, 522, generator=g)
    with torch.no_grad():
        emb = head.condition_features(feats, affine, K)
        _, masked = head.run_layers(emb, center, side, affine, K, prompts, prev, prompt_keep=keep)
        _, removed = head.run_layers(emb, center, side, affine, K, prompts[:, keep[0]], prev)
    torch.testing.assert_close(masked[:, 0], removed[:, 0], atol=1e-5, rtol=1e-5)  # pose token
    torch.testing.assert_close(masked[:, -142:], removed[:, -142:], atol=1e-5, rtol=1e-5)  # hand + keypoint tokens


# -- un-mirroring and merge ------------------------------------------------------------------------------------------
def test_unmirror_left_hand(head):
    hp = head.head_pose
    g = torch.Generator().manual_seed(1)
    rot = roma.random_rotmat(4, generator=g).view(2, 2, 3, 3)
    hands = {"hand_scale": torch.randn(2, 2, 28, generator=g), "hand_wrist_rot": rot,
             "hand_wrist_2d": torch.tensor([[[10.0, 20.0], [30.0, 40.0]], [[50.0, 60.0], [70.0, 80.0]]])}
    with torch.no_grad():
        hp.scale_mean[8:10] = torch.tensor([0.3, -0.2])
        out = unmirror_left_hand(hands, hp.scale_mean, hp.scale_comps, torch.tensor([640.0, 640.0]))
        hp.scale_mean.zero_()
    # right-hand scale 8 of the mirrored run -> left scale 9 through the PCA means and (diagonal) stds
    expected = (0.3 + 0.1 * hands["hand_scale"][:, 0, 8] - (-0.2)) / 0.1
    torch.testing.assert_close(out["hand_scale"][:, 0, 9], expected)
    torch.testing.assert_close(out["hand_scale"][:, 0, :9], hands["hand_scale"][:, 0, :9])
    torch.testing.assert_close(out["hand_scale"][:, 1], hands["hand_scale"][:, 1])
    torch.testing.assert_close(out["hand_wrist_rot"][:, 0], torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ rot[:, 0])
    torch.testing.assert_close(out["hand_wrist_rot"][:, 1], rot[:, 1])
    assert out["hand_wrist_2d"].tolist() == [[[629.0, 20.0], [30.0, 40.0]], [[589.0, 60.0], [70.0, 80.0]]]


def test_fix_wrist_euler():
    angles = torch.tensor([[0.1, 0.2, 0.3], [2.8, -1.0, 2.0]])  # (X, Z, Y); the second breaks the X and Y limits
    fixed = fix_wrist_euler(angles)
    torch.testing.assert_close(fixed[0], angles[0])
    torch.testing.assert_close(fixed[1], torch.tensor([2.8 - math.pi, 1.0 - math.pi, 2.0 - math.pi]))
    # the same rotation
    torch.testing.assert_close(roma.euler_to_rotmat("XZY", fixed), roma.euler_to_rotmat("XZY", angles), atol=1e-6,
                               rtol=0)


def reference_merge(params, hands, hand_valid, ori, hp):
    """Upstream run_inference's merge written out step by step in float64 (MHR forward kinematics as the package
    runs it: the rig is not under test)."""
    f64 = {k: v.double().clone() for k, v in params.items()}
    hp64 = {k: getattr(hp, k).double() for k in ("scale_mean", "scale_comps", "hand_pose_mean", "hand_pose_comps",
                                                  "joint_rotation")}
    l_pose, r_pose = hands["hand_pose"][:, 0].double(), hands["hand_pose"][:, 1].double()
    l_scale, r_scale = hands["hand_scale"][:, 0].double(), hands["hand_scale"][:, 1].double()
    l_shape, r_shape = hands["hand_shape"][:, 0].double(), hands["hand_shape"][:, 1].double()
    updated_hand_pose = torch.cat([l_pose, r_pose], dim=1)
    updated_scale = f64["scale_params"].clone()
    updated_scale[:, 9] = l_scale[:, 9]
    updated_scale[:, 8] = r_scale[:, 8]
    updated_scale[:, 18:] = (l_scale[:, 18:] + r_scale[:, 18:]) / 2
    # mhr_forward's model params
    n = updated_scale.shape[0]
    full_pose = torch.cat([torch.zeros(n, 3, dtype=torch.float64), f64["global_rot"], f64["body_pose_params"][:, :130]],
                          dim=1)
    for half, idx in ((updated_hand_pose[:, :54], hp.hand_joint_idxs_left),
                      (updated_hand_pose[:, 54:], hp.hand_joint_idxs_right)):
        full_pose[:, idx] = hp.decoding.hand(hp64["hand_pose_mean"] + torch.einsum("da,ab->db", half,
                                                                                    hp64["hand_pose_comps"]))
    model_params = torch.cat([full_pose, hp64["scale_mean"] + updated_scale @ hp64["scale_comps"]], dim=1)
    joint_rotations = hp.joint_rotations(model_params).double()
    wrist_zero = joint_rotations[:, [76, 40]] @ hp64["joint_rotation"][[77, 41]]
    pred_global_wrist = hands["hand_wrist_rot"].double()
    fused = torch.einsum("kabc,kabd->kadc", pred_global_wrist, wrist_zero)
    xzy = roma.rotmat_to_euler("XZY", fused)
    x, z, y = xzy.unbind(-1)
    alt = torch.stack([torch.atan2(torch.sin(x + math.pi), torch.cos(x + math.pi)),
                       torch.atan2(torch.sin(-(z + math.pi)), torch.cos(-(z + math.pi))),
                       torch.atan2(torch.sin(y + math.pi), torch.cos(y + math.pi))], dim=-1)

    def violation(a):
        limits = torch.tensor([[-2.2, 1.0], [-2.2, 1.5], [-1.2, 1.5]], dtype=torch.float64)
        return ((limits[:, 0] - a).clamp(min=0) ** 2 + (a - limits[:, 1]).clamp(min=0) ** 2).sum(-1)

    wrist_xzy = torch.where((violation(alt) < violation(xzy))[..., None], alt, xzy)
    rel = ori.double() @ fused.transpose(-1, -2)
    angle = torch.acos(((rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2] - 1) / 2).clamp(-1, 1))
    valid = (angle < 1.4) & hand_valid
    body = f64["body_pose_params"]
    idx = [41, 43, 42, 31, 33, 32]
    body[:, idx] = torch.where(valid[..., None], wrist_xzy, body[:, idx].unflatten(1, (2, 3))).flatten(1)
    hand = torch.where(valid[..., None], updated_hand_pose.unflatten(1, (2, 54)),
                       f64["hand_pose_params"].unflatten(1, (2, 54))).flatten(1)
    scale = f64["scale_params"]
    scale[:, 9] = torch.where(valid[:, 0], updated_scale[:, 9], scale[:, 9])
    scale[:, 8] = torch.where(valid[:, 1], updated_scale[:, 8], scale[:, 8])
    v = valid.double()
    count = v.sum(dim=1, keepdim=True)
    scale[:, 18:] = torch.where(count > 0, (l_scale[:, 18:] * v[:, [0]] + r_scale[:, 18:] * v[:, [1]]) / (count + 1e-8),
                                scale[:, 18:])
    shape = f64["shape_params"]
    shape[:, 40:] = torch.where(count > 0, (l_shape[:, 40:] * v[:, [0]] + r_shape[:, 40:] * v[:, [1]]) / (count + 1e-8),
                                shape[:, 40:])
    return {"body_pose_params": body, "hand_pose_params": hand, "scale_params": scale, "shape_params": shape,
            "hand_valid": valid}


def test_merge_against_a_float64_rederivation(head):
    hp = head.head_pose
    g = torch.Generator().manual_seed(2)
    n = 3
    with torch.no_grad():
        params = hp.decode(head.init_pose.weight + 0.05 * torch.randn(n, 519, generator=g))
        wrist_zero = (hp.joint_rotations(params["mhr_model_params"])[:, [76, 40]] @ hp.joint_rotation[[77, 41]])
    # The hand decoder's local wrists (XZY); [0, 0] breaks the wrist limits (fix_wrist_euler takes the other set).
    local = roma.euler_to_rotmat("XZY", torch.tensor([[[2.8, -1.0, 2.0], [0.3, 0.2, -0.1]],
                                                      [[-0.2, 0.4, 0.3], [0.5, -0.5, 0.2]],
                                                      [[0.1, 0.1, 0.1], [-0.6, 0.3, 0.4]]]))
    # The first body pass's local wrists: 0.5 rad away (merged if the hand is valid), except person 1's right (2 rad).
    away = torch.tensor([[0.5, 0.5], [0.3, 2.0], [1.0, 0.2]])
    ori = local @ roma.euler_to_rotmat("x", -away[..., None])
    hand_valid = torch.tensor([[True, True], [False, True], [True, False]])
    hands = {"hand_pose": 0.3 * torch.randn(n, 2, 54, generator=g), "hand_scale": 0.5 * torch.randn(n, 2, 28, generator=g),
             "hand_shape": torch.randn(n, 2, 45, generator=g), "hand_wrist_rot": wrist_zero @ local}
    with torch.no_grad():
        got = merge_hands(params, hands, hand_valid, ori, hp)
    ref = reference_merge(params, hands, hand_valid, ori, hp)
    assert got["hand_valid"].tolist() == [[True, True], [False, False], [True, False]] == ref["hand_valid"].tolist()
    for name in ("body_pose_params", "hand_pose_params", "scale_params", "shape_params"):
        torch.testing.assert_close(got[name].double(), ref[name], atol=2e-5, rtol=0, msg=name)
    # the merged values are the hands' (and unmerged ones the body's)
    torch.testing.assert_close(got["hand_pose_params"][0], hands["hand_pose"][0].flatten())
    torch.testing.assert_close(got["hand_pose_params"][1], params["hand_pose_params"][1])
    torch.testing.assert_close(got["scale_params"][1], params["scale_params"][1])  # no valid hand: shared scales kept
    torch.testing.assert_close(got["shape_params"][2, 40:], hands["hand_shape"][2, 0, 40:], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["mhr_model_params"], hp.model_params(params["global_rot"], got["body_pose_params"],
                                                                        got["hand_pose_params"], got["scale_params"]))


# -- the refine pass as a whole --------------------------------------------------------------------------------------
def consistent_hands(head, first, width):
    """Hand-decoder outputs that agree with the first body pass (all four tests pass), as HandPass gives them: the
    left hand mirrored."""
    n = first["prev_estimate"].shape[0]
    g = torch.Generator().manual_seed(3)
    local = roma.euler_to_rotmat("XZY", first["wrist_euler"])
    wrist_rot = first["lowarm_rots"] @ head.head_pose.joint_rotation[[77, 41]] @ local
    wrist_rot[:, 0] = torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ wrist_rot[:, 0]
    wrist_2d = first["body_wrist_2d"].clone()
    wrist_2d[:, 0, 0] = width - 1 - wrist_2d[:, 0, 0]
    return {"hand_pose": 0.3 * torch.randn(n, 2, 54, generator=g), "hand_scale": 0.3 * torch.randn(n, 2, 28, generator=g),
            "hand_shape": torch.randn(n, 2, 45, generator=g), "hand_wrist_rot": wrist_rot, "hand_wrist_2d": wrist_2d,
            "hand_crop_extent": torch.full((n, 2), 0.3), "hand_side": torch.full((n, 2), 100.0)}


def run_refine(head, single, first, hands, camera):
    center, side, affine, K = camera
    n = center.shape[0]
    state = {**first, **hands, "center": center, "side": side, "affine": affine, "K": K,
             "image_size": torch.tensor([[512.0, 512.0]]).expand(n, 2)}
    with torch.no_grad():
        return RefinePass(head, single)(*(state[k] for k in RefinePass.INPUTS))


def test_refine_merges_consistent_hands(head, decoder_inputs):
    feats, *camera = decoder_inputs(TINY, 2, CPU)
    with torch.no_grad():
        first = BodyFirstPass(head)(feats, *camera)
    hands = consistent_hands(head, first, 512)
    out = run_refine(head, False, first, hands, camera)
    hp = head.head_pose
    assert tuple(out) == OUTPUT_FIELDS + ("pred_global_rots_refined", "pred_keypoints_2d_K", "hand_valid")
    assert out["hand_valid"].all()
    torch.testing.assert_close(out["hand_pose_params"], hands["hand_pose"].flatten(1))
    torch.testing.assert_close(out["scale_params"][:, 8], hands["hand_scale"][:, 1, 8])
    left9 = (hp.scale_mean[8] + hp.scale_comps[8, 8] * hands["hand_scale"][:, 0, 8] - hp.scale_mean[9]) / hp.scale_comps[9, 9]
    torch.testing.assert_close(out["scale_params"][:, 9], left9)
    torch.testing.assert_close(out["shape_params"][:, 40:], hands["hand_shape"][:, :, 40:].mean(1), atol=1e-6, rtol=0)
    assert not out["pred_pose_raw"].any() and not out["expr_params"].any()
    torch.testing.assert_close(out["mhr_model_params"], hp.model_params(out["global_rot"], out["body_pose_params"],
                                                                        out["hand_pose_params"], out["scale_params"]))
    with torch.no_grad():
        final = hp.body(out["shape_params"], out["mhr_model_params"], out["expr_params"])
        # upstream's stale field: the rotations before the merge (the re-prompted pass's own params)
        before = hp.joint_rotations(hp.model_params(out["global_rot"], *_pre_merge(head, first, hands, camera)))
    torch.testing.assert_close(out["pred_vertices"], final["pred_vertices"])
    torch.testing.assert_close(out["pred_global_rots_refined"], final["pred_global_rots"])
    torch.testing.assert_close(out["pred_global_rots"], before)
    assert not torch.allclose(out["pred_global_rots"], out["pred_global_rots_refined"], atol=1e-3)
    # image centre = principal point and fx = fy here: upstream's re-projection equals the projection with K
    torch.testing.assert_close(out["pred_keypoints_2d"], out["pred_keypoints_2d_K"], atol=1e-3, rtol=1e-5)


def _pre_merge(head, first, hands, camera):
    """The re-prompted body pass's body, hand and scale params (the merge's input), recomputed from its tokens."""
    center, side, affine, K = camera
    with torch.no_grad():
        hands_u = unmirror_left_hand(hands, head.head_pose.scale_mean, head.head_pose.scale_comps,
                                     torch.full((2,), 512.0))
        crop = head.to_crop(prompt_points(hands_u["hand_wrist_2d"], first["body_elbow_2d"]), affine)
        prompts, _ = keypoint_prompts(crop, torch.ones(2, 2, dtype=torch.bool), LABELS, single=False)
        _, tokens = head.run_layers(first["image_embeddings"], center, side, affine, K, prompts, first["prev_estimate"])
        params = head.head_pose.decode(head.head_pose.proj(tokens[:, 0]) + head.init_pose.weight)
    return params["body_pose_params"], params["hand_pose_params"], params["scale_params"]


def test_single_person_without_valid_hands_keeps_the_body_pass(head, decoder_inputs):
    """One person, no valid prompt: upstream skips the re-prompted pass and merges nothing, so `full` gives the body
    mode estimate (keypoints re-projected with the image centre = K's principal point here)."""
    feats, *camera = decoder_inputs(TINY, 1, CPU)
    with torch.no_grad():
        first = BodyFirstPass(head)(feats, *camera)
        body = head(feats, *camera)
    hands = consistent_hands(head, first, 512)
    hands["hand_crop_extent"] = torch.full((1, 2), 0.7)  # test (c) fails for both hands
    out = run_refine(head, True, first, hands, camera)
    assert not out["hand_valid"].any()
    for name in OUTPUT_FIELDS:
        if name != "pred_pose_raw":
            torch.testing.assert_close(out[name], body[name], atol=1e-4, rtol=1e-5, msg=name)


def test_full_mode_needs_the_hand_branch():
    with pytest.raises(ValueError, match="hands=True"):
        BodyFirstPass(random_head(TINY, seed=0))
    with pytest.raises(ValueError, match="unknown mode"):
        BodyPipeline(PipelineSettings(mode="hands"))


# -- heads -----------------------------------------------------------------------------------------------------------
def test_rotmat_to_euler_equals_roma_for_every_convention():
    g = torch.Generator().manual_seed(4)
    rot = roma.random_rotmat(300, generator=g).double()
    for seq in ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx"):
        for conv in (seq, seq.upper()):
            angles = torch.randn(100, 3, generator=g, dtype=torch.float64)
            angles[:30, 1] = math.pi / 2  # gimbal lock
            rots = torch.cat([rot, roma.euler_to_rotmat(conv, angles)])
            torch.testing.assert_close(rotmat_to_euler(conv, rots), roma.rotmat_to_euler(conv, rots), atol=1e-12,
                                       rtol=0, msg=conv)


def test_hand_head_wrist_transform_and_right_hand_keypoints(head):
    """The hand head's wrist-frame -> root move is upstream's formula; it zeroes the non-hand params and keypoints."""
    hp = head.head_pose_hand
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        saved = hp.local_to_world_wrist.clone()
        hp.local_to_world_wrist.copy_(roma.euler_to_rotmat("xyz", torch.tensor([0.3, -0.4, 0.2])))
        global_rot = 0.5 * torch.randn(4, 3, generator=g)
        rot, trans = hp.wrist_to_root(global_rot)
        out = hp(torch.randn(4, TINY.decoder.dim, generator=g), head.init_pose_hand.weight)
        L = hp.local_to_world_wrist.double()
        hp.local_to_world_wrist.copy_(saved)
    ref_rot = roma.rotmat_to_euler("xyz", roma.euler_to_rotmat("xyz", global_rot.double()) @ L)
    arm = (hp.right_wrist_coords - hp.root_coords).double()
    ref_trans = -(roma.euler_to_rotmat("xyz", ref_rot) @ arm + hp.root_coords.double())
    torch.testing.assert_close(rot.double(), ref_rot, atol=1e-5, rtol=0)
    torch.testing.assert_close(trans.double(), 10 * ref_trans, atol=1e-4, rtol=0)
    assert not out["mhr_model_params"][:, hp.nonhand_param_idxs].any()
    kp = out["pred_keypoints_3d"]
    assert not kp[:, :21].any() and not kp[:, 42:].any() and kp[:, 21:42].abs().min() > 0


# -- weights ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam-3d-body-tiny", seed=7)


def test_hand_branch_loads_strictly_in_full_mode(written):
    loaded = load_checkpoint(written.path, hands=True)
    state = loaded.head.state_dict()
    hand_keys = [k for k in written.state if k.startswith(BODY_MODE_UNUSED_PREFIXES)]
    assert hand_keys and all(torch.equal(state[k], written.state[k]) for k in hand_keys)
    assert "hand branch included" in loaded.source
    assert not any(k.startswith(BODY_MODE_UNUSED_PREFIXES) for k in load_checkpoint(written.path).head.state_dict())


def _rename(old, new):
    def edit(state):
        state[new] = state.pop(old)
        return state
    return edit


def _drop(key):
    def edit(state):
        del state[key]
        return state
    return edit


@pytest.mark.parametrize("edit, match", [
    (_rename("decoder_hand.layers.0.ln1.weight", "decoder_hand.layers.0.ln_1.weight"),
     r"1 missing: decoder_hand\.layers\.0\.ln1\.weight; 1 unexpected: decoder_hand\.layers\.0\.ln_1\.weight"),
    (_drop("head_pose_hand.local_to_world_wrist"), r"1 missing: head_pose_hand\.local_to_world_wrist"),
    (_drop("bbox_embed.layers.2.bias"), r"1 missing: bbox_embed\.layers\.2\.bias"),
    (_drop("hand_pe_layer.positional_encoding_gaussian_matrix"), r"1 missing: hand_pe_layer\."),
])
def test_bad_hand_key_fails_in_full_mode_and_is_ignored_in_body_mode(written, tmp_path, edit, match):
    ckpt = variant(written, tmp_path / "w", edit_state=edit)
    with pytest.raises(WeightsError, match=match):
        load_checkpoint(ckpt.path, hands=True)
    assert load_checkpoint(ckpt.path).cfg == TINY


def test_hand_camera_scale_is_checked_in_full_mode(written, tmp_path):
    ckpt = variant(written, tmp_path / "w", edit_yaml=lambda tree: tree["MODEL"]["CAMERA_HEAD"].pop(
        "DEFAULT_SCALE_FACTOR_HAND"))
    with pytest.raises(WeightsError, match="DEFAULT_SCALE_FACTOR_HAND"):
        load_checkpoint(ckpt.path, hands=True)
    assert load_checkpoint(ckpt.path).cfg == TINY


def test_hand_branch_leaves_the_body_branch_alone(head, decoder_inputs):
    body_only = random_head(TINY, seed=0).eval()
    hands_state = head.state_dict()
    assert all(torch.equal(v, hands_state[k]) for k, v in body_only.state_dict().items())
    inputs = decoder_inputs(TINY, 2, CPU)
    with torch.no_grad():
        a, b = body_only(*inputs), head(*inputs)
    assert all(torch.equal(a[k], b[k]) for k in OUTPUT_FIELDS)


# -- whole pipeline on a photo ---------------------------------------------------------------------------------------
def test_full_mode_on_a_photo(full_pipe):
    image = data.astronaut()
    res = full_pipe.infer(image, BOXES)
    body = BodyPipeline(PipelineSettings(model_config="tiny", device="cpu", seed=0)).infer(image, BOXES).outputs
    assert set(res.outputs) == set(output_shapes(TINY, "full"))
    for name, shape in output_shapes(TINY, "full").items():
        assert res.outputs[name].shape == (2, *shape), name
        assert np.isfinite(res.outputs[name]).all(), name
    assert set(res.timings_ms) == {"crop", "backbone", "decoder", "total"}
    for name in ("hand_pose_params", "pred_vertices", "pred_keypoints_2d", "body_pose_params"):
        assert not np.allclose(res.outputs[name], body[name], atol=1e-6), name
    for key in ("lhand_bbox", "rhand_bbox"):
        box = res.outputs[key]
        assert (box[:, 2] > box[:, 0]).all() and np.allclose(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    assert not res.outputs["pred_pose_raw"].any()
    one = full_pipe.infer(image, BOXES[:1]).outputs
    assert all(np.isfinite(v).all() for v in one.values())


def test_full_mode_from_a_weights_directory(written):
    pipe = BodyPipeline(PipelineSettings(device="cpu", weights_dir=str(written.path), mode="full"))
    res = pipe.infer(data.astronaut(), BOXES)
    assert all(np.isfinite(v).all() for v in res.outputs.values())
    empty = pipe.infer(data.astronaut(), np.zeros((0, 4)))
    assert set(empty.outputs) == set(output_shapes(TINY, "full"))
