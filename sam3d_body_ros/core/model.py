"""SAM 3D Body without its backbone: feature map + crop camera -> MHR body per person (and the hand decoder).

`SAM3DBodyHead` holds the upstream `SAM3DBody` submodules under their upstream names, so its `state_dict()` keys are
the checkpoint keys minus `backbone.*` and, unless built with `hands=True` (`full` mode, see core/hands.py), minus the
hand-decoder branch (`BODY_MODE_UNUSED_PREFIXES`). The per-branch steps take `hand=True` to run the hand decoder's
twin modules (`*_hand`, `hand_pe_layer`); the prompt encoder, `prompt_to_token` and the hand-box token are shared.
It is batched over persons, device-agnostic and has no host syncs or data-dependent Python branches.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

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
from .decoder import FFN, MLP, PromptableDecoder
from .heads import NUM_CAM, NUM_POSE, CameraHead, MHRHead
from .keypoints import PELVIS_KEYPOINTS
from .prompt import LABEL_INVALID, PositionEmbeddingRandom, PromptEncoder

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
HAND_CAMERA_SCALE = 10.0  # MODEL.CAMERA_HEAD.DEFAULT_SCALE_FACTOR_HAND of the released config
BBOX_MLP_LAYERS = 3
# The full-mode passes add variants of the shared compiled regions (hand branch, 4 prompts, key mask) to the body's
# (batch 1 / dynamic batch): more than dynamo's default 8 per code object once two heads share a process.
FULL_MODE_RECOMPILE_LIMIT = 32
# Modules the hand decoder has its own copy of, checkpoint key `<name>_hand` (same shapes as the body's).
BRANCH_MODULES = (
    "head_pose", "init_pose", "head_camera", "init_camera", "init_to_token_mhr", "prev_to_token_mhr", "decoder",
    "ray_cond_emb", "keypoint_embedding", "keypoint_posemb_linear", "keypoint_feat_linear", "keypoint3d_embedding",
    "keypoint3d_posemb_linear",
)
# Construction order of the body modules (it fixes the seeded random init): branch modules and shared ones.
BODY_MODULE_ORDER = (
    "head_pose", "init_pose", "head_camera", "init_camera", "init_to_token_mhr", "prev_to_token_mhr",
    "prompt_encoder", "prompt_to_token", "decoder", "ray_cond_emb", "keypoint_embedding", "hand_box_embedding",
    "keypoint_posemb_linear", "keypoint_feat_linear", "keypoint3d_embedding", "keypoint3d_posemb_linear",
)


class SAM3DBodyHead(nn.Module):
    """Ray/CLIFF conditioning, promptable decoder with per-layer predictions, MHR head, camera head (body mode);
    with `hands`, also the hand decoder branch and the hand-box heads that `full` mode runs.

    `interm_layers` selects the layers (< depth-1) after which intermediate predictions refresh the keypoint tokens;
    None = every layer, as upstream. The final prediction after the last layer is always made.
    """

    def __init__(self, cfg: ModelConfig, mhr: nn.Module, interm_layers: Sequence[int] | None = None,
                 hands: bool = False) -> None:
        super().__init__()
        c, k = cfg.backbone.embed_dim, cfg.mhr.num_keypoints
        self.cfg = cfg
        self.hands = hands
        # What the weights are (set by core.checkpoint: the checkpoint source, or RANDOM + SYNTHETIC rig).
        self.weights_description = "untrained (default init)"
        self.crop_size = cfg.backbone.img_size
        depth = cfg.decoder.depth
        self.interm_layers = tuple(range(depth - 1)) if interm_layers is None else tuple(sorted(set(interm_layers)))
        if any(not 0 <= i < depth - 1 for i in self.interm_layers):
            raise ValueError(f"interm_layers must lie in [0, {depth - 2}], got {interm_layers}")
        self._compiled = False

        shared: dict[str, Callable[[], nn.Module]] = {
            "prompt_encoder": lambda: PromptEncoder(c, num_body_joints=k),
            "prompt_to_token": lambda: nn.Linear(c, cfg.decoder.dim),
            "hand_box_embedding": lambda: nn.Embedding(NUM_HAND_TOKENS, cfg.decoder.dim),
        }
        body = {**_branch_factories(cfg, mhr, hand=False), **shared}
        for name in BODY_MODULE_ORDER:
            self.add_module(name, body[name]())
        if hands:  # after every body module, so the body's seeded init and parameter order do not change
            hand = _branch_factories(cfg, mhr, hand=True)
            for name in BRANCH_MODULES:
                self.add_module(f"{name}_hand", hand[name]())
            self.hand_pe_layer = PositionEmbeddingRandom(c // 2)
            self.hand_cls_embed = nn.Linear(cfg.decoder.dim, 2)  # upstream computes these logits and never uses them
            self.bbox_embed = MLP(cfg.decoder.dim, cfg.decoder.dim, 4, BBOX_MLP_LAYERS)

    def part(self, name: str, hand: bool) -> nn.Module:
        """The body branch's module `name`, or its hand-decoder twin (`<name>_hand`)."""
        return getattr(self, f"{name}_hand" if hand else name)

    def compile_regions(self, mode: str = "default") -> None:
        """torch.compile the parts that repeat, in place: each decoder layer, the per-layer prediction (heads + MHR)
        and the keypoint-token update (a few small graphs instead of one 7,000-op graph: compiles in a fraction of
        the time, and the same code runs them). Once per head: the `full` mode passes share it."""
        if self._compiled:
            return
        if self.hands:
            # Dynamo's recompile limit is a process-wide setting (no per-function one): the body and hand passes call
            # the same compiled layers with more distinct shapes than the default 8 allow. Only ever raised.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, FULL_MODE_RECOMPILE_LIMIT)
        decoders = (self.decoder, self.decoder_hand) if self.hands else (self.decoder,)
        for layer in (layer for decoder in decoders for layer in decoder.layers):
            layer.compile(mode=mode, fullgraph=True)
        self.predict = torch.compile(self.predict, mode=mode, fullgraph=True)
        self.update_keypoint_tokens = torch.compile(self.update_keypoint_tokens, mode=mode, fullgraph=True)
        self._compiled = True

    @property
    def faces(self) -> torch.Tensor:
        """Mesh triangles (F,3) int64 of `pred_vertices` (checkpoint `head_pose.faces`)."""
        return self.head_pose.faces

    # -- token set-up ---------------------------------------------------------------------------------------------
    def initial_tokens(self, condition: torch.Tensor, prompts: torch.Tensor | None = None,
                       prev: torch.Tensor | None = None, hand: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIFF condition (N,3) -> tokens (N,T,d) [pose, prev, P prompts, 2 hand, K kp2d, K kp3d] and their PE.

        `prompts` (N,P,3) [x, y in [0,1] crop coords, label], default one dummy; `prev` (N,522) the previous estimate
        [pose raw, shape, scale, hand, face, camera], default the init estimate.
        """
        n = condition.shape[0]
        init = torch.cat([self.part("init_pose", hand).weight, self.part("init_camera", hand).weight], dim=1)
        init = init.expand(n, -1)
        pose_tok = self.part("init_to_token_mhr", hand)(torch.cat([condition, init], dim=1))[:, None]
        prev_tok = self.part("prev_to_token_mhr", hand)(init if prev is None else prev)[:, None]
        if prompts is None:
            prompts = condition.new_zeros(n, 1, 3)
            prompts[..., 2] = LABEL_INVALID
        prompt_tok = self.prompt_to_token(self.prompt_encoder(prompts))
        learned = torch.cat([self.hand_box_embedding.weight, self.part("keypoint_embedding", hand).weight,
                             self.part("keypoint3d_embedding", hand).weight], dim=0)
        tokens = torch.cat([pose_tok, prev_tok, prompt_tok, learned.expand(n, -1, -1)], dim=1)
        pe = torch.cat([torch.zeros_like(pose_tok), prev_tok, prompt_tok,
                        torch.zeros_like(tokens[:, 2 + prompts.shape[1] :])], dim=1)
        return tokens, pe

    @property
    def kp2d_start(self) -> int:
        return 3 + NUM_HAND_TOKENS

    # -- predictions ----------------------------------------------------------------------------------------------
    def predict(self, tokens: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                K: torch.Tensor, keypoints_only: bool = False, hand: bool = False) -> dict[str, torch.Tensor]:
        """Normed tokens (N,T,d) -> heads on the pose token, MHR, camera translation and 2D keypoints.

        `keypoints_only`: no pred_vertices (MHR runs on the keypoint vertices only, see `MHRHead.forward`).
        """
        pose_token = tokens[:, 0]
        out = self.part("head_pose", hand)(pose_token, self.part("init_pose", hand).weight,
                                           keypoints_only=keypoints_only)
        pred_cam = self.part("head_camera", hand)(pose_token, self.part("init_camera", hand).weight)
        cam_t = cam_translation(pred_cam, center, side, K, HAND_CAMERA_SCALE if hand else 1.0)
        kp_cam = out["pred_keypoints_3d"] + cam_t[:, None]
        kp2d = project_points(kp_cam, K)
        out.update(
            pred_cam=pred_cam,
            pred_cam_t=cam_t,
            pred_keypoints_2d=kp2d,
            pred_keypoints_2d_depth=kp_cam[..., 2],
            pred_keypoints_2d_cropped=self.to_crop(kp2d, affine),
            focal_length=K[:, 0, 0],
            pose_token=pose_token,
        )
        return out

    def to_crop(self, points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
        """Image points (N,P,2) -> crop coordinates in [-0.5, 0.5] (upstream `_full_to_crop`)."""
        homog = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
        return (homog @ affine.transpose(1, 2)) / self.crop_size - 0.5

    def update_keypoint_tokens(self, tokens: torch.Tensor, pe: torch.Tensor, pred: dict[str, torch.Tensor],
                               image_embeddings: torch.Tensor, hand: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Refresh kp2d/kp3d token PEs from a prediction and add image features sampled at the 2D keypoints.

        The keypoint tokens are the last 2K tokens, whatever the number of prompts before them.
        """
        k = self.part("keypoint_embedding", hand).weight.shape[0]
        kp2d = pred["pred_keypoints_2d_cropped"]  # [-0.5, 0.5] crop coordinates
        kp01 = kp2d + 0.5
        invalid = ((kp01 < 0) | (kp01 > 1)).any(dim=-1) | (pred["pred_keypoints_2d_depth"] < 1e-5)
        valid = (~invalid)[..., None].to(tokens.dtype)
        pe2d = self.part("keypoint_posemb_linear", hand)(kp2d) * valid
        feats = sample_points(image_embeddings, kp2d * 2)
        kp3d = pred["pred_keypoints_3d"]
        pelvis = (kp3d[:, PELVIS_KEYPOINTS[0]] + kp3d[:, PELVIS_KEYPOINTS[1]]) / 2
        pe3d = self.part("keypoint3d_posemb_linear", hand)(kp3d - pelvis[:, None])
        feat_tokens = tokens[:, -2 * k : -k] + self.part("keypoint_feat_linear", hand)(feats * valid)
        tokens = torch.cat([tokens[:, : -2 * k], feat_tokens, tokens[:, -k:]], dim=1)
        pe = torch.cat([pe[:, : -2 * k], pe2d, pe3d], dim=1)
        return tokens, pe

    def hand_boxes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normed tokens (N,T,d) -> hand boxes (N,2,4) [left, right] as (cx, cy, w, h) in [0,1] crop units
        (upstream `bbox_embed(...).sigmoid()` on the two hand tokens; needs `hands`)."""
        k = self.keypoint_embedding.weight.shape[0]
        return self.bbox_embed(tokens[:, -2 * k - NUM_HAND_TOKENS : -2 * k]).sigmoid()

    # -- passes ---------------------------------------------------------------------------------------------------
    def condition_features(self, features: torch.Tensor, affine: torch.Tensor, K: torch.Tensor,
                           hand: bool = False) -> torch.Tensor:
        """Backbone features (N,C,h,w) -> no-mask embedding added, ray-conditioned image embeddings (channels-last:
        the context tokens are then a contiguous view, and so are the rows sample_points gathers)."""
        features = features + self.prompt_encoder.no_mask_embed.weight[:, :, None, None]
        image_embeddings = self.part("ray_cond_emb", hand)(features, ray_map(affine, K, self.crop_size))
        return image_embeddings.contiguous(memory_format=torch.channels_last)

    def run_layers(self, image_embeddings: torch.Tensor, center: torch.Tensor, side: torch.Tensor,
                   affine: torch.Tensor, K: torch.Tensor, prompts: torch.Tensor | None = None,
                   prev: torch.Tensor | None = None, prompt_keep: torch.Tensor | None = None,
                   interm_meshes: bool = False, hand: bool = False) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """The decoder layers with the intermediate predictions -> (those predictions, final normed tokens).

        `prompts`, `prev` as in `initial_tokens`; `prompt_keep` (N,P) bool leaves prompts out of self-attention (as
        if absent). Intermediate predictions carry pred_vertices only with `interm_meshes`.
        """
        decoder = self.part("decoder", hand)
        pe_layer = self.hand_pe_layer if hand else self.prompt_encoder.pe_layer
        image_pe = pe_layer.dense(*image_embeddings.shape[-2:]).flatten(2).transpose(1, 2)
        context = image_embeddings.flatten(2).transpose(1, 2)
        tokens, pe = self.initial_tokens(cliff_condition(center, side, K), prompts, prev, hand)
        mask = None
        if prompt_keep is not None:  # key mask (N,1,1,T): every token but the left-out prompts
            keep = torch.ones_like(tokens[..., 0], dtype=torch.bool)
            mask = torch.cat([keep[:, :2], prompt_keep, keep[:, 2 + prompt_keep.shape[1] :]], dim=1)[:, None, None]
        preds = []
        for i, layer in enumerate(decoder.layers):
            tokens = layer(tokens, context, pe, image_pe, mask)
            if i in self.interm_layers:
                pred = self.predict(decoder.norm_final(tokens), center, side, affine, K,
                                    keypoints_only=not interm_meshes, hand=hand)
                preds.append(pred)
                tokens, pe = self.update_keypoint_tokens(tokens, pe, pred, image_embeddings, hand=hand)
        return preds, decoder.norm_final(tokens)

    def forward_all(self, features: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                    K: torch.Tensor, interm_meshes: bool = False) -> list[dict[str, torch.Tensor]]:
        """All body predictions (after each layer in `interm_layers`, then the final one), each a dict of tensors."""
        image_embeddings = self.condition_features(features, affine, K)
        preds, tokens = self.run_layers(image_embeddings, center, side, affine, K, interm_meshes=interm_meshes)
        preds.append(self.predict(tokens, center, side, affine, K))
        return preds

    def forward(self, features: torch.Tensor, center: torch.Tensor, side: torch.Tensor, affine: torch.Tensor,
                K: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (N,C,h,w), box center (N,2) px, crop side (N,) px, affine (N,2,3) image->crop, K (N,3,3) ->
        upstream output fields of the final prediction (body mode)."""
        final = self.forward_all(features, center, side, affine, K)[-1]
        return {name: final[name] for name in OUTPUT_FIELDS}


def _branch_factories(cfg: ModelConfig, mhr: nn.Module, hand: bool) -> dict[str, Callable[[], nn.Module]]:
    """Constructors of one decoder branch's modules (BRANCH_MODULES); the hand's MHR head is the hand model."""
    d, c, k = cfg.decoder.dim, cfg.backbone.embed_dim, cfg.mhr.num_keypoints
    return {
        "head_pose": lambda: MHRHead(cfg, mhr, hand_model=hand),
        "init_pose": lambda: nn.Embedding(1, NUM_POSE),
        "head_camera": lambda: CameraHead(d),
        "init_camera": lambda: nn.Embedding(1, NUM_CAM),
        "init_to_token_mhr": lambda: nn.Linear(CLIFF_DIM + NUM_POSE + NUM_CAM, d),
        "prev_to_token_mhr": lambda: nn.Linear(NUM_POSE + NUM_CAM, d),
        "decoder": lambda: PromptableDecoder(cfg.decoder, context_dim=c),
        "ray_cond_emb": lambda: RayEncoder(c, cfg.backbone.patch_size),
        "keypoint_embedding": lambda: nn.Embedding(k, d),
        "keypoint_posemb_linear": lambda: FFN(2, d, d),
        "keypoint_feat_linear": lambda: nn.Linear(c, d),
        "keypoint3d_embedding": lambda: nn.Embedding(k, d),
        "keypoint3d_posemb_linear": lambda: FFN(3, d, d),
    }


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
