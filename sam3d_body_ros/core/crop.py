"""Person crops as upstream SAM 3D Body makes them: box -> padded square -> 512x512 affine warp -> ImageNet norm."""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .cv_warp import invert_affine, warp_affine_linear, warp_by_inverse
from .errors import InputError

PADDING = 1.25
ASPECT_RATIO = 0.75  # w / h
MAX_BOX_DIAGONALS = 4  # a box wider or taller than this many image diagonals is not a person in the image
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class CropBatch:
    """Normalised crops of N persons plus what maps crop pixels back to image pixels."""

    images: torch.Tensor  # (N,3,S,S) float32, ImageNet-normalised RGB
    center: torch.Tensor  # (N,2) box centre, image px
    side: torch.Tensor  # (N,) square crop side, image px
    affine: torch.Tensor  # (N,2,3) image px -> crop px
    boxes: torch.Tensor  # (N,4) xyxy, image px
    image_size: tuple[int, int]  # (W, H)
    frame: torch.Tensor | None = None  # (H,W,3) uint8 frame on the GPU (CUDA only; until the next frame): for the hand crops


def validate_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """Check xyxy boxes against an image; returns a validity mask and one reason per invalid box."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    valid = np.ones(len(boxes), dtype=bool)
    reasons: list[str] = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        why = None
        if not np.all(np.isfinite([x1, y1, x2, y2])):
            why = "has a NaN or infinite coordinate"
        elif x2 - x1 < 1.0 or y2 - y1 < 1.0:
            why = f"has zero or negative size ({x2 - x1:.1f} x {y2 - y1:.1f} px)"
        elif x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            why = f"lies outside the {width}x{height} image"
        elif max(x2 - x1, y2 - y1) > MAX_BOX_DIAGONALS * np.hypot(width, height):
            why = f"is more than {MAX_BOX_DIAGONALS} image diagonals across (a broken detection)"
        if why:
            valid[i] = False
            reasons.append(f"box {i} [{x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}] {why}")
    return valid, reasons


def box_to_center_side(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xyxy -> centre and square side = PADDING * max(h, w / ASPECT_RATIO) (upstream GetBBoxCenterScale + fixes)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    center = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    # fix_aspect_ratio(0.75) then square: the side is the height after widening to 3:4.
    return center, PADDING * np.maximum(h, w / ASPECT_RATIO)


def warp_matrix(center: np.ndarray, side: float, size: int) -> np.ndarray:
    """Similarity transform mapping `center` to the crop centre and `side` px to `size` px (no UDP shift)."""
    s = size / side
    return np.array(
        [[s, 0.0, size / 2.0 - s * center[0]], [0.0, s, size / 2.0 - s * center[1]]], dtype=np.float64
    )


def prepare_crops(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    size: int = 512,
    device: str | torch.device = "cpu",
    stage: CropStage | None = None,
) -> CropBatch:
    """Warp each box (already checked by validate_boxes) of an RGB uint8 image to a normalised size x size crop
    (black border, bilinear).

    On the CPU the warp is OpenCV's (the reference); on CUDA it is `stage`'s (a new CropStage when None): the frame
    uploaded once and OpenCV's crops computed there, bit for bit.
    """
    if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise InputError(f"image must be an HxWx3 RGB array, got shape {getattr(image_rgb, 'shape', None)}")
    if image_rgb.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image_rgb.dtype}")
    h, w = image_rgb.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    center, side = box_to_center_side(boxes)
    affines = np.stack([warp_matrix(c, s, size) for c, s in zip(center, side)]) if len(boxes) else np.zeros((0, 2, 3))
    device = torch.device(device)
    frame = None
    if device.type == "cpu":
        images = _warp_cv2(image_rgb, affines, size)
    else:
        images, frame = (stage or CropStage(device))(image_rgb, affines, size)
    return CropBatch(
        images=images,
        center=torch.from_numpy(center).float(),
        side=torch.from_numpy(side).float(),
        affine=torch.from_numpy(affines).float(),
        boxes=torch.from_numpy(boxes).float(),
        image_size=(w, h),
        frame=frame,
    )


def _warp_cv2(image_rgb: np.ndarray, affines: np.ndarray, size: int) -> torch.Tensor:
    """OpenCV warp + normalisation on the CPU: (N,3,size,size) float32."""
    crops = np.empty((len(affines), size, size, 3), dtype=np.float32)
    for i, m in enumerate(affines):
        warped = cv2.warpAffine(
            image_rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        crops[i] = (warped.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()


Warp = Callable[[torch.Tensor], torch.Tensor]  # (N,2,3) float64 inverse affines on the device -> (N,3,S,S) crops


class CropStage:
    """The crop stage on a device: each frame is uploaded once, through a reused staging buffer (page-locked on CUDA:
    a pageable 2.7 MB upload took ~1 ms on the H100 machine), into a frame buffer that stays put, and the warp +
    normalisation of the boxes reads it through `wrap(warp)`, one per crop size (the pipeline wraps it in a runner
    replaying one CUDA graph per persons count: eager, its ~15 launches cost ~0.5 ms of host time at 5 persons). The
    staging buffers are refilled only after the device has read the previous frame's. One per pipeline; a lock makes
    concurrent callers take turns."""

    def __init__(self, device: str | torch.device, wrap: Callable[[Warp], Warp] = lambda warp: warp) -> None:
        self.device = torch.device(device)
        self._wrap = wrap
        self._pinned = self.device.type == "cuda"
        self._lock = threading.Lock()
        self._staged_frame: torch.Tensor | None = None
        self._staged_inverse = torch.empty((0, 2, 3), dtype=torch.float64)
        self._read: torch.cuda.Event | None = None  # recorded after the last copies out of the staging buffers
        self._frame: torch.Tensor | None = None  # the frame on the device, read by every warp
        self._warps: dict[int, Warp] = {}  # crop size -> wrapped warp of self._frame

    def __call__(self, image_rgb: np.ndarray, affines: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,3,size,size) normalised crops (a tensor of their own) and the frame on the device (overwritten by the
        next call's upload, which the stream orders after this frame's work)."""
        n = len(affines)
        with self._lock:
            if self._read is not None:
                self._read.synchronize()
            if self._frame is None or self._frame.shape != image_rgb.shape:
                if self._pinned:
                    torch.cuda.current_stream(self.device).synchronize()  # no queued replay still reads the old one
                self._staged_frame = torch.empty(image_rgb.shape, dtype=torch.uint8, pin_memory=self._pinned)
                self._frame = torch.empty(image_rgb.shape, dtype=torch.uint8, device=self.device)
                self._warps.clear()
            if n > len(self._staged_inverse):
                self._staged_inverse = torch.empty((n, 2, 3), dtype=torch.float64, pin_memory=self._pinned)
            np.copyto(self._staged_frame.numpy(), image_rgb)  # works on read-only views of message bytes too
            self._staged_inverse[:n].numpy()[:] = invert_affine(affines)
            self._frame.copy_(self._staged_frame, non_blocking=True)
            inverse = self._staged_inverse[:n].to(self.device, non_blocking=True)
            if self._pinned:
                self._read = torch.cuda.Event()
                self._read.record(torch.cuda.current_stream(self.device))
            if n == 0:
                return torch.empty((0, 3, size, size), device=self.device), self._frame
            if size not in self._warps:
                frame = self._frame
                self._warps[size] = self._wrap(lambda inverse: _normalise(warp_by_inverse(frame, inverse, size)))
            return self._warps[size](inverse), self._frame


def _warp_torch(frame: torch.Tensor, affines: np.ndarray, size: int) -> torch.Tensor:
    """OpenCV's uint8 crops computed on the frame's device (warp_affine_linear: bit-identical to cv2.warpAffine),
    then normalised as on the CPU."""
    return _normalise(warp_affine_linear(frame, affines, size))


def _normalise(crops: torch.Tensor) -> torch.Tensor:
    """(N,3,S,S) uint8 -> float32 (x / 255 - mean) / std, per channel."""
    scale, shift = _normalisation(crops.device)
    return torch.addcmul(shift, crops.float(), scale)


@functools.lru_cache(maxsize=4)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) on `device` with x * scale + shift = (x / 255 - mean) / std."""
    scale = torch.as_tensor(1.0 / (255.0 * IMAGENET_STD), device=device).view(1, 3, 1, 1)
    shift = torch.as_tensor(-IMAGENET_MEAN / IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return scale, shift
