"""Prompt encoder of SAM 3D Body: random-Fourier PE, keypoint prompt embeddings, no-mask embedding.

Names follow upstream (`prompt_encoder.{pe_layer, point_embeddings.{i}, not_a_point_embed, invalid_point_embed,
mask_downscaling, no_mask_embed}`). The mask branch (`mask_downscaling`) is built so checkpoints load strictly;
inference here has no mask input, so upstream adds `no_mask_embed` to the features (mask score 0).
"""
from __future__ import annotations

import math

import torch
from timm.layers import LayerNorm2d
from torch import nn

from .decoder import LN_EPS

LABEL_INVALID = -2  # dummy / padding prompt
LABEL_NOT_A_POINT = -1


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of [0,1]^2 coordinates: sin/cos(2*pi*(2p-1) @ G), G a (2, C/2) Gaussian buffer."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in [0,1] -> (..., C) features."""
        proj = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix
        proj = 2.0 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def dense(self, height: int, width: int) -> torch.Tensor:
        """PE of the pixel centres of an (height, width) grid as (1, C, height, width)."""
        g = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(height, device=g.device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=g.device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)
        return self.encode(grid).permute(2, 0, 1)[None]


def _mask_downscaling(embed_dim: int) -> nn.Sequential:
    """Upstream mask embed "v2": 4 x [Conv k2 s2, LayerNorm2d, GELU] (1->4->16->64->256), then Conv1x1 256->C."""
    chans = [1, 4, 16, 64, 256]
    layers: list[nn.Module] = []
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(cin, cout, kernel_size=2, stride=2), LayerNorm2d(cout, eps=LN_EPS), nn.GELU()]
    layers.append(nn.Conv2d(chans[-1], embed_dim, kernel_size=1))
    return nn.Sequential(*layers)


class PromptEncoder(nn.Module):
    """Embeds keypoint prompts (x, y in [0,1] crop coords, label) and holds the dense PE and no-mask embedding."""

    def __init__(self, embed_dim: int, num_body_joints: int = 70) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(num_body_joints))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.invalid_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = _mask_downscaling(embed_dim)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(N,P,3) prompts [x, y, label] -> (N,P,C): label -2 invalid, -1 not-a-point, k >= 0 keypoint k."""
        labels = keypoints[..., 2:3]
        pe = self.pe_layer.encode(keypoints[..., :2].float())
        joint_table = torch.cat([e.weight for e in self.point_embeddings], dim=0)  # (J, C)
        joint = joint_table[labels[..., 0].clamp(min=0).long()]
        emb = torch.where(labels >= 0, pe + joint, pe)
        emb = torch.where(labels == LABEL_NOT_A_POINT, self.not_a_point_embed.weight, emb)
        return torch.where(labels == LABEL_INVALID, self.invalid_point_embed.weight, emb)
