"""Writes a tiny weights directory in upstream's layout: model.ckpt (flat state dict with upstream key names, backbone
in DINOv3 naming, hand branch included), model_config.yaml and assets/mhr_model.pt."""
from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from mhr_asset_factory import write_mhr_asset

from sam3d_body_ros.core.backbone import build_backbone
from sam3d_body_ros.core.checkpoint import (
    BACKBONE_PREFIX,
    CONFIG_FILE,
    MHR_ASSET,
    TINY_BACKBONE_TYPE,
    WEIGHTS_FILE,
)
from sam3d_body_ros.core.config import TINY, ModelConfig
from sam3d_body_ros.core.model import SAM3DBodyHead
from sam3d_body_ros.core.synthetic import random_head, synthetic_rig


def upstream_yaml(cfg: ModelConfig = TINY, backbone_type: str = TINY_BACKBONE_TYPE) -> dict[str, Any]:
    """The upstream model_config.yaml tree (values of the released file) at `cfg`'s decoder size."""
    d = cfg.decoder
    return {
        "TRAIN": {"USE_FP16": True, "FP16_TYPE": "float16"},
        "MODEL": {
            "IMAGE_SIZE": [cfg.backbone.img_size, cfg.backbone.img_size],
            "IMAGE_MEAN": [0.485, 0.456, 0.406], "IMAGE_STD": [0.229, 0.224, 0.225],
            "BACKBONE": {"TYPE": backbone_type, "PRETRAINED_WEIGHTS": "", "FROZEN_STAGES": -1, "DROP_PATH_RATE": 0.1},
            "DECODER": {
                "TYPE": "sam", "DIM": d.dim, "DEPTH": d.depth, "HEADS": d.heads, "MLP_DIM": d.mlp_dim,
                "DIM_HEAD": d.dim_head, "LAYER_SCALE_INIT": 0.0, "DROP_RATE": 0.0, "ATTN_DROP_RATE": 0.0,
                "DROP_PATH_RATE": 0.0, "FFN_TYPE": "origin", "ENABLE_TWOWAY": False, "REPEAT_PE": True,
                "FROZEN": False, "CONDITION_TYPE": "cliff", "USE_INTRIN_CENTER": True, "DO_INTERM_PREDS": True,
                "DO_INTERM_SUP": True, "DO_KEYPOINT_TOKENS": True, "DO_HAND_DETECT_TOKENS": True,
                "KEYPOINT_TOKEN_UPDATE": "v2", "KEYPOINT_TOKEN_UPDATE_COORD_EMB_USE_MLP": True,
                "DO_KEYPOINT3D_TOKENS": True,
            },
            "PROMPT_ENCODER": {"ENABLE": True, "MAX_NUM_CLICKS": 2, "PROMPT_KEYPOINTS": "mhr70", "FROZEN": False,
                               "MASK_EMBED_TYPE": "v2", "MASK_PROMPT": "v1"},
            "PERSON_HEAD": {"POSE_TYPE": "mhr", "CAMERA_ENABLE": True, "CAMERA_TYPE": "perspective",
                            "ZERO_POSE_INIT": True, "ZERO_POSE_INIT_BODY_FACTOR": 1},
            "MHR_HEAD": {"MLP_DEPTH": 2, "MLP_CHANNEL_DIV_FACTOR": 1},
            "CAMERA_HEAD": {"MLP_DEPTH": 2, "MLP_CHANNEL_DIV_FACTOR": 1, "DEFAULT_SCALE_FACTOR_HAND": 10},
            "ENABLE_BODY": True, "ENABLE_HAND": True,
        },
    }


def upstream_backbone_state(cfg: ModelConfig, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random backbone weights in upstream DINOv3 naming and the timm state they must map to."""
    g = torch.Generator().manual_seed(seed)
    timm_state = {k: torch.randn(v.shape, generator=g) for k, v in build_backbone(cfg, "meta").encoder.state_dict().items()}
    renames = {"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2", "mlp.w1.": "mlp.fc1_g.", "mlp.w2.": "mlp.fc1_x.",
               "mlp.w3.": "mlp.fc2."}
    up: dict[str, torch.Tensor] = {}
    for k, v in timm_state.items():
        if k.endswith("attn.q_bias"):
            block = k[: -len("q_bias")]
            k_bias = torch.randn(v.shape, generator=g)  # upstream stores a K bias that is masked to 0
            up[block + "qkv.bias"] = torch.cat([v, k_bias, timm_state[block + "v_bias"]])
            up[block + "qkv.bias_mask"] = torch.cat([torch.ones_like(v), torch.zeros_like(v), torch.ones_like(v)])
            continue
        if k.endswith("attn.v_bias"):
            continue
        name = "storage_tokens" if k == "reg_token" else k
        for upstream, timm_name in renames.items():
            name = name.replace(timm_name, upstream)
        up[name] = v
    head_dim = cfg.backbone.embed_dim // cfg.backbone.num_heads
    up["mask_token"] = torch.zeros(1, cfg.backbone.embed_dim)
    up["rope_embed.periods"] = 100.0 ** (2 * torch.arange(head_dim // 4) / (head_dim // 2))
    return up, timm_state


@dataclass
class TinyCheckpoint:
    """A written weights directory and what it was written from."""

    path: Path
    head: SAM3DBodyHead  # the head whose weights were saved (hand branch included)
    backbone_timm_state: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]  # the flat dict in model.ckpt


def _write_files(root: Path, state: dict[str, torch.Tensor], tree: dict[str, Any], wrap_state_dict: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state} if wrap_state_dict else state, root / WEIGHTS_FILE)
    (root / CONFIG_FILE).write_text(yaml.safe_dump(tree))


def write_tiny_checkpoint(root: Path, seed: int = 0) -> TinyCheckpoint:
    """Write `root/{model.ckpt, model_config.yaml, assets/mhr_model.pt}` for the tiny config.

    The hand branch comes from `random_head(hands=True)`, whose body branch (and so every body key) is the one of a
    body-only head.
    """
    head = random_head(TINY, seed=seed, hands=True).eval()
    with torch.no_grad():  # move everything off the random-head defaults so a non-loaded tensor shows
        g = torch.Generator().manual_seed(seed + 1)
        for p in head.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    backbone_up, backbone_timm = upstream_backbone_state(TINY, seed)
    head_state = {k: v.clone() for k, v in head.state_dict().items()}
    state = {BACKBONE_PREFIX + k: v for k, v in backbone_up.items()}
    state.update(head_state)
    _write_files(root, state, upstream_yaml(), wrap_state_dict=False)
    (root / MHR_ASSET).parent.mkdir(exist_ok=True)
    write_mhr_asset(root / MHR_ASSET, synthetic_rig(TINY.mhr, seed=seed))
    return TinyCheckpoint(root, head, backbone_timm, state)


def variant(
    src: TinyCheckpoint,
    root: Path,
    *,
    edit_state: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    edit_yaml: Callable[[dict[str, Any]], None] | None = None,
    wrap_state_dict: bool = False,
    with_asset: bool = True,
) -> TinyCheckpoint:
    """A copy of a written checkpoint directory with the state dict and/or the yaml edited."""
    state = dict(src.state)
    if edit_state is not None:
        state = edit_state(state)
    tree = copy.deepcopy(upstream_yaml())
    if edit_yaml is not None:
        edit_yaml(tree)
    _write_files(root, state, tree, wrap_state_dict)
    if with_asset:
        (root / MHR_ASSET).parent.mkdir(exist_ok=True)
        shutil.copyfile(src.path / MHR_ASSET, root / MHR_ASSET)
    return TinyCheckpoint(root, src.head, src.backbone_timm_state, state)
