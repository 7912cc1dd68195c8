"""SAM 3D Body without its backbone, body mode: feature map + crop camera -> MHR body per person.

`SAM3DBodyHead` holds the upstream `SAM3DBody` submodules under their upstream names, so its `state_dict()` keys are
the checkpoint keys minus `backbone.*` and minus the hand-decoder branch (`BODY_MODE_UNUSED_PREFIXES`). It is batched
over persons, device-agnostic and has no host syncs or data-dependent Python branches in `forward`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .camera import (
    RayEncoder,
    cam_translation,
    cliff_condition,
    project_points,
    ray_map,
)
from .config import ModelConfig
from .decoder import FFN, PromptableDecoder
from .heads import NUM_CAM, NUM_POSE, CameraHead, MHRHead
from .keypoints import PELVIS_KEYPOINTS
from .prompt import LABEL_INVALID, PromptEncoder

# Checkpoint prefixes of modules that body mode does not build: the hand decoder branch and the hand-box outputs
# (hand boxes only feed `full`-mode hand crops). Strict loading requires every checkpoint key to be either loaded
# or under one of these prefixes.
BODY_MODE_UNUSED_PREFIXES = (
    "decoder_hand.",
    "head_pose_hand.",
    "head_camera_hand.",
    "init_pose_hand.",
    "init_camera_hand.",
    "init_to_token_mhr_hand.",
    "prev_to_token_mhr_hand.",
    "ray_cond_emb_hand.",
    "hand_pe_layer.",
    "keypoint_embedding_hand.",
    "keypoint3d_embedding_hand.",
    "keypoint_posemb_linear_hand.",
    "keypoint3d_posemb_linear_hand.",
    "keypoint_feat_linear_hand.",
    "hand_cls_embed.",
    "bbox_embed.",
)
NUM_HAND_TOKENS = 2
CLIFF_DIM = 3


class SAM3DBodyHead(nn.Module):
    """Ray/CLIFF conditioning, promptable decoder with per-layer predictions, MHR head, camera head (body mode).

    `interm_layers` selects the layers (< depth-1) after which intermediate predictions refresh the keypoint tokens;
    None = every layer, as upstream. The final prediction after the last layer is always made.
    """

    def __init__(self, cfg: ModelConfig, mhr: nn.Module, interm_layers: Sequence[int] | None = None) -> None:
        super().__init__()
        d, c = cfg.decoder.dim, cfg.backbone.embed_dim
        k = cfg.mhr.num_keypoints
        self.cfg = cfg
        # What the weights are (set by core.checkpoint: the checkpoint source, or RANDOM + SYNTHETIC rig).
        self.weights_description = "untrained (default init)"
        self.crop_size = cfg.backbone.img_size
        depth = cfg.decoder.depth
        self.interm_layers = tuple(range(depth - 1)) if interm_layers is None else tuple(sorted(set(interm_layers)))
        if any(not 0 <= i < depth - 1 for i in self.interm_layers):
            raise ValueError(f"interm_layers must lie in [0, {depth - 2}], got {interm_layers}")

        self.head_pose = MHRHead(cfg, mhr)
        self.init_pose = nn.Embedding(1, NUM_POSE)
        self.head_camera = CameraHead(d)
        self.init_camera = nn.Embedding(1, NUM_CAM)
        self.init_to_token_mhr = nn.Linear(CLIFF_DIM + NUM_POSE + NUM_CAM, d)
        self.prev_to_token_mhr = nn.Linear(NUM_POSE + NUM_CAM, d)
        self.prompt_encoder = PromptEncoder(c, num_body_joints=k)
        self.prompt_to_token = nn.Linear(c, d)
        self.decoder = PromptableDecoder(cfg.decoder, context_dim=c)
        self.ray_cond_emb = RayEncoder(c, cfg.backbone.patch_size)
        self.keypoint_embedding = nn.Embedding(k, d)
        self.hand_box_embedding = nn.Embedding(NUM_HAND_TOKENS, d)
        self.keypoint_posemb_linear = FFN(2, d, d)
        self.keypoint_feat_linear = nn.Linear(c, d)
        self.keypoint3d_embedding = nn.Embedding(k, d)
        self.keypoint3d_posemb_linear = FFN(3, d, d)

    def compile_regions(self, mode: str = "default") -> None:
        """torch.compile the parts that repeat, in place: each decoder layer, the per-layer prediction (heads + MHR)
        and the keypoint-token update (a few small graphs instead of one 7,000-op graph: compiles in a fraction of
        the time, and the same code runs them)."""
        for layer in self.decoder.layers:
            layer.compile(mode=mode, fullgraph=True)
        self.predict = torch.compile(self.predict, mode=mode, fullgraph=True)
        self.update_keypoint_tokens = torch.compile(self.update_keypoint_tokens, mode=mode, fullgraph=True)

    @property
    def faces(self) -> torch.Tensor:
        """Mesh triangles (F,3) int64 of `pred_vertices` (checkpoint `head_pose.faces`)."""
        return self.head_pose.faces

    # -- token set-up ---------------------------------------------------------------------------------------------
    def initial_tokens(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIFF condition (N,3) -> tokens (N,T,d) [pose, prev, prompt, 2 hand, K kp2d, K kp3d] and their PE."""
        n = condition.shape[0]
        init = torch.cat([self.init_pose.weight, self.init_camera.weight], dim=1).expand(n, -1)
        pose_tok = self.init_to_token_mhr(torch.cat([condition, init], dim=1))[:, None]
        prev_tok = self.prev_to_token_mhr(init)[:, None]  # first pass: previous estimate = init estimate
        dummy = condition.new_zeros(n, 1, 3)
        dummy[..., 2] = LABEL_INVALID
        prompt_tok = self.prompt_to_token(self.prompt_encoder(dummy))
        learned = torch.cat([self.hand_box_embedding.weight, self.keypoint_embedding.weight,
                             self.keypoint3d_embedding.weight], dim=0)
        tokens = torch.cat([pose_tok, prev_tok, prompt_tok, learned.expand(n, -1, -1)], dim=1)
        pe = torch.cat([torch.zeros_like(pose_tok), prev_tok, prompt_tok, torch.zeros_like(tokens[:, 3:])], dim=1)
        return tokens, pe

    @property
    def kp2d_start(self) -> int:
        return 3 + NUM_HAND_TOKENS

    # -- predictions ----------------------------------------------------------------------------------------------
    def predict(self, tokens: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                K: torch.Tensor, keypoints_only: bool = False) -> dict[str, torch.Tensor]:
        """Normed tokens (N,T,d) -> heads on the pose token, MHR, camera translation and 2D keypoints.

        `keypoints_only`: no pred_vertices (MHR runs on the keypoint vertices only, see `MHRHead.forward`).
        """
        pose_token = tokens[:, 0]
        out = self.head_pose(pose_token, self.init_pose.weight, keypoints_only=keypoints_only)
        pred_cam = self.head_camera(pose_token, self.init_camera.weight)
        cam_t = cam_translation(pred_cam, center, side, K)
        kp_cam = out["pred_keypoints_3d"] + cam_t[:, None]
        kp2d = project_points(kp_cam, K)
        homog = torch.cat([kp2d, torch.ones_like(kp2d[..., :1])], dim=-1)
        out.update(
            pred_cam=pred_cam,
            pred_cam_t=cam_t,
            pred_keypoints_2d=kp2d,
            pred_keypoints_2d_depth=kp_cam[..., 2],
            pred_keypoints_2d_cropped=(homog @ affine.transpose(1, 2)) / self.crop_size - 0.5,
            focal_length=K[:, 0, 0],
            pose_token=pose_token,
        )
        return out

    def update_keypoint_tokens(self, tokens: torch.Tensor, pe: torch.Tensor, pred: dict[str, torch.Tensor],
                               image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Refresh kp2d/kp3d token PEs from a prediction and add image features sampled at the 2D keypoints."""
        s = self.kp2d_start
        k = self.keypoint_embedding.weight.shape[0]
        kp2d = pred["pred_keypoints_2d_cropped"]  # [-0.5, 0.5] crop coordinates
        kp01 = kp2d + 0.5
        invalid = ((kp01 < 0) | (kp01 > 1)).any(dim=-1) | (pred["pred_keypoints_2d_depth"] < 1e-5)
        valid = (~invalid)[..., None].to(tokens.dtype)
        pe2d = self.keypoint_posemb_linear(kp2d) * valid
        feats = sample_points(image_embeddings, kp2d * 2)
        kp3d = pred["pred_keypoints_3d"]
        pelvis = (kp3d[:, PELVIS_KEYPOINTS[0]] + kp3d[:, PELVIS_KEYPOINTS[1]]) / 2
        pe3d = self.keypoint3d_posemb_linear(kp3d - pelvis[:, None])
        tokens = torch.cat([tokens[:, :s], tokens[:, s : s + k] + self.keypoint_feat_linear(feats * valid),
                            tokens[:, s + k :]], dim=1)
        pe = torch.cat([pe[:, :s], pe2d, pe3d, pe[:, s + 2 * k :]], dim=1)
        return tokens, pe

    # -- full pass ------------------------------------------------------------------------------------------------
    def forward_all(self, features: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                    K: torch.Tensor, interm_meshes: bool = False) -> list[dict[str, torch.Tensor]]:
        """All predictions (after each layer in `interm_layers`, then the final one), each a dict of tensors.

        Intermediate predictions only feed the keypoint tokens, so they carry pred_vertices only with `interm_meshes`.
        """
        features = features + self.prompt_encoder.no_mask_embed.weight[:, :, None, None]
        condition = cliff_condition(center, side, K)
        image_pe = self.prompt_encoder.pe_layer.dense(*features.shape[-2:]).flatten(2).transpose(1, 2)
        image_embeddings = self.ray_cond_emb(features, ray_map(affine, K, self.crop_size))
        # Channels-last once: the context tokens are then a contiguous view, and so are the rows sample_points gathers.
        image_embeddings = image_embeddings.contiguous(memory_format=torch.channels_last)
        context = image_embeddings.flatten(2).transpose(1, 2)
        tokens, pe = self.initial_tokens(condition)
        preds = []
        for i, layer in enumerate(self.decoder.layers):
            tokens = layer(tokens, context, pe, image_pe)
            if i in self.interm_layers:
                pred = self.predict(self.decoder.norm_final(tokens), center, side, affine, K,
                                    keypoints_only=not interm_meshes)
                preds.append(pred)
                tokens, pe = self.update_keypoint_tokens(tokens, pe, pred, image_embeddings)
        preds.append(self.predict(self.decoder.norm_final(tokens), center, side, affine, K))
        return preds

    def forward(self, features: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                K: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (N,C,h,w), box center (N,2) px, crop side (N,) px, affine (N,2,3) image->crop, K (N,3,3) ->
        upstream output fields of the final prediction."""
        final = self.forward_all(features, center, side, affine, K)[-1]
        return {name: final[name] for name in OUTPUT_FIELDS}


def sample_points(features: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (N,P,C) of features (N,C,H,W) at grid (N,P,2) = (x, y) in [-1, 1]: `F.grid_sample` with
    align_corners=False and zeros padding, as 4 row gathers from the channels-last table (no host sync).

    grid_sample's CUDA kernel loops over the C channels in each thread (0.55 ms for 70 points at C = 1280); here each
    neighbour is one contiguous C-row gather (free of copies when `features` is channels-last).
    """
    n, c, h, w = features.shape
    p = grid.shape[1]
    rows = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    x = ((grid[..., 0] + 1) * w - 1) / 2  # pixel coordinates, as grid_sample unnormalises with align_corners=False
    y = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = x.floor(), y.floor()
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)  # nw, ne, sw, se
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    wx = torch.stack([x0 + 1 - x, x - x0, x0 + 1 - x, x - x0], dim=-1)
    wy = torch.stack([y0 + 1 - y, y0 + 1 - y, y - y0, y - y0], dim=-1)
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)  # False for NaN too
    weight = torch.where(inside, wx * wy, torch.zeros_like(wx))
    cell = torch.where(inside, ys * w + xs, torch.zeros_like(xs)).long()
    cell = cell + torch.arange(n, device=cell.device)[:, None, None] * (h * w)
    neighbours = rows.index_select(0, cell.reshape(-1)).view(n, p, 4, c)
    return (neighbours * weight[..., None].to(neighbours.dtype)).sum(dim=2)


OUTPUT_FIELDS = (
    "pred_vertices", "pred_keypoints_3d", "pred_keypoints_2d", "pred_cam_t", "pred_joint_coords", "pred_global_rots",
    "global_rot", "body_pose_params", "hand_pose_params", "scale_params", "shape_params", "expr_params",
    "mhr_model_params", "pred_pose_raw", "focal_length",
)
