"""Shared test fixtures: decoder inputs from a real photo, and non-trivial random backbone weights."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from sam3d_body_ros.core.camera import default_intrinsics
from sam3d_body_ros.core.config import ModelConfig
from sam3d_body_ros.core.crop import prepare_crops
from sam3d_body_ros.core.synthetic import random_backbone


def _decoder_inputs(cfg: ModelConfig, persons: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Decoder inputs for `persons` boxes side by side on the astronaut photo: features (seeded noise), centre, side,
    affine, K."""
    image = skimage.data.astronaut()
    h, w = image.shape[:2]
    step = w / persons
    boxes = np.array([[i * step + 0.1 * step, 20.0, i * step + 0.9 * step, h - 20.0] for i in range(persons)])
    crops = prepare_crops(image, boxes, cfg.backbone.img_size)
    g = torch.Generator().manual_seed(persons)
    feats = torch.randn(persons, cfg.backbone.embed_dim, cfg.backbone.grid, cfg.backbone.grid, generator=g)
    K = torch.as_tensor(default_intrinsics(w, h), dtype=torch.float32).expand(persons, 3, 3).contiguous()
    return tuple(t.to(device) for t in (feats, crops.center, crops.side, crops.affine, K))


@pytest.fixture(scope="session")
def decoder_inputs():
    """The builder of decoder inputs: decoder_inputs(cfg, persons, device)."""
    return _decoder_inputs


@pytest.fixture(scope="session")
def layer_scaled_state() -> dict[str, torch.Tensor]:
    """Seeded tiny backbone weights (timm keys) with layer-scale 0.1: blocks that are not ~identity."""
    from sam3d_body_ros.core.config import TINY

    return random_backbone(TINY, seed=3, layer_scale=0.1).encoder.state_dict()
