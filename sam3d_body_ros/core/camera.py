"""Camera model of SAM 3D Body: default intrinsics, CLIFF condition, ray map, crop camera -> translation, projection."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from .decoder import LN_EPS
from .errors import InputError

RAY_FOURIER_BANDS = 16
RAY_FOURIER_MAX_FREQ = 32.0  # upstream max_resolution 64 / 2
RAY_CHANNELS = 3 + 2 * 3 * RAY_FOURIER_BANDS  # 99


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """Upstream default K when none is given: focal = image diagonal, principal point = image centre."""
    f = math.sqrt(width * width + height * height)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=np.float64)


def resolve_intrinsics(K: np.ndarray | None, width: int, height: int) -> tuple[np.ndarray, str | None]:
    """(K as float64 3x3, None), or (default_intrinsics, why) when K is None or all zero (ROS's "uncalibrated");
    InputError for a K that is malformed (shape, NaN/inf, focal length <= 0)."""
    if K is None:
        return default_intrinsics(width, height), "no camera intrinsics given"
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"intrinsics must be 3x3, got shape {K.shape}")
    if not np.isfinite(K).all():
        raise InputError("intrinsics K contain NaN or infinity")
    if not K.any():
        return default_intrinsics(width, height), "camera intrinsics K are all zero (an uncalibrated camera)"
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"intrinsics K have non-positive focal length (fx={K[0, 0]}, fy={K[1, 1]})")
    return K, None


def cliff_condition(center: torch.Tensor, side: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """CLIFF condition (N,3): [(cx_box - cx_K)/f, (cy_box - cy_K)/f, side/f] with f = K[0,0]."""
    f = K[:, 0, 0]
    offset = (center - K[:, :2, 2]) / f[:, None]
    return torch.cat([offset, (side / f)[:, None]], dim=1)


def ray_map(affine: torch.Tensor, K: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised camera rays (N,2,size,size) of each integer crop pixel, through the inverse crop affine and K."""
    coords = torch.arange(size, device=affine.device, dtype=affine.dtype)
    scale = torch.stack([affine[:, 0, 0], affine[:, 1, 1]], dim=1)  # (N,2): crop px per image px
    shift = affine[:, :, 2]
    focal = torch.stack([K[:, 0, 0], K[:, 1, 1]], dim=1)
    # image px = crop px / scale - shift / scale; ray = (image px - c) / f; x varies along W, y along H.
    per_axis = (coords[None, None, :] / scale[:, :, None] - (shift / scale)[:, :, None] - K[:, :2, 2, None])
    per_axis = per_axis / focal[:, :, None]  # (N,2,size)
    rays_x = per_axis[:, 0, None, :].expand(-1, size, size)
    rays_y = per_axis[:, 1, :, None].expand(-1, size, size)
    return torch.stack([rays_x, rays_y], dim=1)


def cam_translation(pred_cam: torch.Tensor, center: torch.Tensor, side: torch.Tensor, K: torch.Tensor,
                    scale_factor: float = 1.0) -> torch.Tensor:
    """Crop camera (s, tx, ty) -> camera-frame translation (N,3) in m (CLIFF full perspective, upstream signs)."""
    s = -pred_cam[:, 0]  # upstream flips s and ty ("camera system difference")
    tx = pred_cam[:, 1]
    ty = -pred_cam[:, 2]
    bs = side * s * scale_factor + 1e-8
    f = K[:, 0, 0]
    tz = 2.0 * f / bs
    cx = 2.0 * (center[:, 0] - K[:, 0, 2]) / bs
    cy = 2.0 * (center[:, 1] - K[:, 1, 2]) / bs
    return torch.stack([tx + cx, ty + cy, tz], dim=-1)


def project_points(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points (N,P,3) with intrinsics (N,3,3) -> image px (N,P,2)."""
    normalised = points / points[..., 2:3]
    return torch.einsum("nij,npj->npi", K, normalised)[..., :2]


def ray_fourier_features(rays: torch.Tensor) -> torch.Tensor:
    """(N,HW,3) ray directions -> (N,HW,99): [xyz, sin(pi*xyz*f), cos(pi*xyz*f)], f = 16 bands in [1, 32]."""
    bands = torch.linspace(1.0, RAY_FOURIER_MAX_FREQ, RAY_FOURIER_BANDS, device=rays.device, dtype=rays.dtype)
    feats = (rays[..., None] * bands).flatten(-2)  # per axis, all bands
    return torch.cat([rays, torch.sin(math.pi * feats), torch.cos(math.pi * feats)], dim=-1)


class RayEncoder(nn.Module):
    """Ray conditioning (upstream `CameraEncoder`): features ++ Fourier(rays at patch res) -> Conv1x1 -> LayerNorm2d."""

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.conv = nn.Conv2d(embed_dim + RAY_CHANNELS, embed_dim, kernel_size=1, bias=False)
        self.norm = LayerNorm2d(embed_dim, eps=LN_EPS)

    def forward(self, features: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        """features (N,C,h,w), rays (N,2,H,W) per crop pixel -> conditioned features (N,C,h,w)."""
        n, _, h, w = features.shape
        scale = 1.0 / self.patch_size
        rays = F.interpolate(rays, scale_factor=(scale, scale), mode="bilinear", align_corners=False, antialias=True)
        rays = rays.permute(0, 2, 3, 1)
        rays = torch.cat([rays, torch.ones_like(rays[..., :1])], dim=-1).reshape(n, h * w, 3)
        emb = ray_fourier_features(rays).transpose(1, 2).reshape(n, RAY_CHANNELS, h, w)
        return self.norm(self.conv(torch.cat([features, emb], dim=1)))
