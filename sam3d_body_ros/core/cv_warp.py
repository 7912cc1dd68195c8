"""Bit-exact torch port of ``cv2.warpAffine(img, M, (S, S), INTER_LINEAR, BORDER_CONSTANT, 0)`` for uint8 frames.

Mirrors OpenCV 4.x (checked against opencv-python 4.13): ``cv::warpAffine`` inverts M in double precision,
``WarpAffineInvoker`` / ``hal::warpAffineBlockline`` turn it into source coordinates with 1/32 px fixed point, and
``remapBilinear`` blends the 2x2 neighbourhood with 15-bit integer weights from ``initInterTab2D``. The inversion runs
on the host, the coordinate tables as float64 torch ops (one per OpenCV operation, each rounded by itself), everything
after them is integer arithmetic, so CPU and CUDA give the same bits. (OpenCV 5.x replaced this with a float32
kernel, ``warpAffineLinearInvoker_8UC3``, whose results differ by up to a few grey levels.)
"""
from __future__ import annotations

import numpy as np
import torch

INTER_BITS = 5  # sub-pixel bits of a source coordinate
INTER_TAB_SIZE = 1 << INTER_BITS
AB_BITS = max(10, INTER_BITS)  # bits of the per-row / per-column fixed-point accumulators
AB_SCALE = 1 << AB_BITS
ROUND_DELTA = AB_SCALE // INTER_TAB_SIZE // 2  # rounds to the nearest 1/32 px when AB_BITS bits are dropped to 5
INTER_REMAP_COEF_BITS = 15  # bilinear weights sum to 1 << 15


def invert_affine(m: np.ndarray) -> np.ndarray:
    """(N,2,3) forward affines -> (N,2,3) float64 inverses, by cv::warpAffine's closed form and operation order."""
    m0, m1, m2, m3, m4, m5 = np.asarray(m, dtype=np.float64).reshape(-1, 6).T
    d = m0 * m4 - m1 * m3
    d = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)  # a singular M maps everything to source pixel (0, 0)
    a0, a1, a3, a4 = m4 * d, m1 * -d, m3 * -d, m0 * d
    return np.stack([a0, a1, -a0 * m2 - a1 * m5, a3, a4, -a3 * m2 - a4 * m5], 1).reshape(-1, 2, 3)


def _saturate_int(v: torch.Tensor) -> torch.Tensor:
    """saturate_cast<int>(double): cvRound (round half to even) clamped to the int32 range, as int64."""
    return torch.round(v).clamp(-(2.0**31), 2.0**31 - 1).to(torch.int64)


def fixed_point_tables(inverse: torch.Tensor, size: int) -> torch.Tensor:
    """(N,2,3) float64 inverse affines (crop px -> image px) -> (N,2,2,size) int32 [row, column] tables of OpenCV's
    source coordinates in 1/1024 px: X = (row_x[y] + col_x[x]) >> 5 (likewise Y). Float64 work on the tensors' device,
    one torch op per operation of OpenCV's (each rounded by itself, no fused multiply-add), so every device gives
    OpenCV's integers."""
    r = torch.arange(size, dtype=torch.float64, device=inverse.device)
    # WarpAffineInvoker: per column adelta = cvRound(A0*x*AB_SCALE) (bdelta with A3), per row
    # X0 = cvRound((A1*y + A2)*AB_SCALE) + ROUND_DELTA (Y0 with A4, A5); both in units of 1/1024 px.
    col = _saturate_int(inverse[..., 0:1] * r * AB_SCALE)  # (N,2,S): adelta, bdelta
    row = _saturate_int((inverse[..., 1:2] * r + inverse[..., 2:3]) * AB_SCALE) + ROUND_DELTA  # (N,2,S): X0, Y0
    return torch.stack([row, col], dim=2).to(torch.int32)


def remap_fixed_point(image: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """OpenCV's bilinear remap in integers: (H,W,C) uint8 image and (N,2,2,S) tables -> (N,C,S,S) uint8."""
    h, w, c = image.shape
    row, col = tables[:, :, 0], tables[:, :, 1]
    # warpAffineBlockline: drop to 1/32 px; the integer part is the top-left tap (saturated to short), the low
    # 5 bits index the weight table.
    xy = (row[..., :, None] + col[..., None, :]) >> (AB_BITS - INTER_BITS)  # (N,2,S,S)
    corner = (xy >> INTER_BITS).clamp(-(2**15), 2**15 - 1).unsqueeze(2)  # (N,2,1,S,S)
    frac = (xy & (INTER_TAB_SIZE - 1)).unsqueeze(2)
    k = torch.arange(4, device=image.device, dtype=torch.int32)
    step = torch.stack([k & 1, k >> 1]).view(1, 2, 4, 1, 1)  # taps (dx, dy) = (0,0), (1,0), (0,1), (1,1)
    px, py = (corner + step).unbind(1)  # (N,4,S,S) each
    # initInterTab2D (INTER_LINEAR): float weights (1 - i/32) * (j/32) scaled by 1 << 15 are exact integers,
    # 32 * (32 - fx or fx) * (32 - fy or fy), summing to 1 << 15. Its one quirk, entry (0, 0) stored as
    # {32767, 0, 0, 1} because 32768 does not fit a short, never changes a uint8 result: (32767*a + b + 2^14) >> 15
    # == a for all 0 <= a, b <= 255, so the exact weights are used here.
    wx, wy = torch.where(step.bool(), frac, INTER_TAB_SIZE - frac).unbind(1)
    scale = (1 << INTER_REMAP_COEF_BITS) // (INTER_TAB_SIZE * INTER_TAB_SIZE)
    # remapBilinear, BORDER_CONSTANT: a tap outside the image reads the border value 0 (so a neighbourhood wholly
    # outside gives 0).
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    weight = torch.where(inside, wx * wy * scale, 0)  # (N,4,S,S) int32
    taps = image.reshape(h * w, c)[py.clamp(0, h - 1) * w + px.clamp(0, w - 1)]  # (N,4,S,S,C) one gather
    acc = (taps.int() * weight.unsqueeze(-1)).sum(1, dtype=torch.int32)  # (N,S,S,C), at most 255 << 15
    # FixedPtCast<int, uchar, 15>: round half up, then saturate_cast<uchar>.
    out = (acc + (1 << (INTER_REMAP_COEF_BITS - 1))) >> INTER_REMAP_COEF_BITS
    return out.clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2).contiguous()


# On CUDA the ~30 integer ops above run as one or two fused kernels (eager, they are launch-bound: ~1.2 ms for
# 5 crops on an H200); the same integer arithmetic, so the same bits (bench/gpu_crop.py checks it there).
_remap_compiled = torch.compile(remap_fixed_point, dynamic=True)


def warp_by_inverse(image: torch.Tensor, inverse: torch.Tensor, size: int) -> torch.Tensor:
    """(H,W,C) uint8 image and (N,2,3) float64 inverse affines on its device -> (N,C,size,size) uint8 crops, all on
    the device (what the CUDA crop stage captures in a graph)."""
    remap = _remap_compiled if image.is_cuda else remap_fixed_point
    return remap(image, fixed_point_tables(inverse, size))


def warp_affine_linear(image: torch.Tensor, affines: np.ndarray, size: int) -> torch.Tensor:
    """(H,W,C) uint8 image on any device, (N,2,3) float64 forward affines (image px -> crop px, as given to
    cv2.warpAffine) -> (N,C,size,size) uint8 crops, equal to cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT, 0)
    bit for bit."""
    return warp_by_inverse(image, torch.from_numpy(invert_affine(affines)).to(image.device), size)
