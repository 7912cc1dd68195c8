"""ROS message <-> numpy: stride-aware Image decode/encode, CameraInfo -> K, Detection2DArray -> boxes."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core.errors import InputError

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[type, int]] = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
}


def image_to_array(msg: Image) -> np.ndarray:
    """Decode an Image into (H, W, C) of its own dtype, honouring `step` (row padding) and endianness."""
    if msg.encoding not in ENCODINGS:
        raise InputError(f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = w * channels * np.dtype(dtype).itemsize
    if h == 0 or w == 0:
        raise InputError(f"image is empty ({w}x{h})")
    if step < row_bytes:
        raise InputError(f"image step {step} < width*bytes_per_pixel {row_bytes} ({msg.encoding}, width {w})")
    if len(msg.data) < step * h:
        raise InputError(f"image data has {len(msg.data)} bytes, expected step*height = {step * h}")
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=step * h).reshape(h, step)[:, :row_bytes]
    order = ">" if msg.is_bigendian else "<"
    arr = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order)).reshape(h, w, channels)
    return arr.astype(dtype, copy=False)


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode an Image to (H, W, 3) uint8 RGB; 16-bit mono is scaled by 255/65535 (as cv_bridge does)."""
    arr = image_to_array(msg)
    enc = msg.encoding
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


def array_to_image(arr: np.ndarray, encoding: str, header: Header | None = None, row_padding: int = 0) -> Image:
    """Encode (H, W[, C]) array as an Image of `encoding`; `row_padding` extra bytes per row (step > width*bpp)."""
    if encoding not in ENCODINGS:
        raise InputError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != dtype or arr.shape[2] != channels:
        raise InputError(f"{encoding} needs a {np.dtype(dtype).name} array with {channels} channel(s), "
                         f"got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    rows = np.ascontiguousarray(arr).view(np.uint8).reshape(h, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, row_padding), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(sys.byteorder == "big"), step=rows.shape[1])
    msg.data = rows.tobytes()
    if header is not None:
        msg.header = header
    return msg


def camera_info_to_K(msg: CameraInfo) -> np.ndarray:
    """3x3 float64 intrinsics from CameraInfo.k, as sent (the pipeline checks them: core.camera.resolve_intrinsics)."""
    return np.asarray(msg.k, dtype=np.float64).reshape(3, 3)


@dataclass
class PersonBoxes:
    """Person boxes taken from one Detection2DArray, in input order."""

    boxes: np.ndarray  # (N,4) float64 xyxy px
    ids: list[str]
    class_ids: list[str]
    scores: np.ndarray  # (N,) float64
    rejected: int = 0  # detections filtered out by class, score or max_persons


def detections_to_boxes(msg, class_ids: frozenset[str] = frozenset(), score_threshold: float = 0.0,
                        max_persons: int = 0) -> PersonBoxes:
    """Boxes of the detections whose best hypothesis (among `class_ids`; all when empty) scores at least
    `score_threshold`; at most `max_persons` (0: no cap) by score, kept in input order. A detection
    without hypotheses counts as class "" with score 1.0. Boxes are not validated here."""
    picked: list[tuple[int, str, float, np.ndarray, str]] = []
    for i, det in enumerate(msg.detections):
        hyps = [(r.hypothesis.class_id, float(r.hypothesis.score)) for r in det.results] or [("", 1.0)]
        if class_ids:
            hyps = [h for h in hyps if h[0] in class_ids]
        if not hyps:
            continue
        cls, score = max(hyps, key=lambda h: h[1])
        if not score >= score_threshold:  # also drops NaN scores
            continue
        c, sx, sy = det.bbox.center.position, det.bbox.size_x, det.bbox.size_y
        box = np.array([c.x - sx / 2.0, c.y - sy / 2.0, c.x + sx / 2.0, c.y + sy / 2.0], dtype=np.float64)
        picked.append((i, cls, score, box, det.id))
    total = len(msg.detections)
    if max_persons > 0 and len(picked) > max_persons:
        picked = sorted(sorted(picked, key=lambda p: -p[2])[:max_persons], key=lambda p: p[0])
    return PersonBoxes(
        boxes=np.array([p[3] for p in picked], dtype=np.float64).reshape(-1, 4),
        ids=[p[4] for p in picked],
        class_ids=[p[1] for p in picked],
        scores=np.array([p[2] for p in picked], dtype=np.float64),
        rejected=total - len(picked),
    )


def boxes_to_detections(boxes: np.ndarray, header: Header, ids: list[str] | None = None,
                        class_id: str = "person", scores: np.ndarray | None = None):
    """Detection2DArray of xyxy boxes (for cameras, detectors and tests feeding the node)."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    out = Detection2DArray(header=header)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        det = Detection2D(header=header, id=ids[i] if ids else str(i))
        det.bbox.center.position.x = (x1 + x2) / 2.0
        det.bbox.center.position.y = (y1 + y2) / 2.0
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = class_id
        hyp.hypothesis.score = float(scores[i]) if scores is not None else 1.0
        det.results.append(hyp)
        out.detections.append(det)
    return out


def stamp_ns(header: Header) -> int:
    """Header stamp as integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
