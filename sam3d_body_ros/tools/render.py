"""Pictures of results: mesh and skeleton over the photo, side, three-quarter and turntable views (animated GIF), and
a banner saying what ran."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..core.camera import project_points
from ..core.keypoints import PERSON_COLORS, SKELETON_EDGES


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points (..., 3) -> image px (..., 2) through `camera.project_points`."""
    pts = torch.from_numpy(np.ascontiguousarray(points_cam, dtype=np.float64)).reshape(1, -1, 3)
    uv = project_points(pts, torch.from_numpy(np.asarray(K, dtype=np.float64))[None])
    return uv.reshape(*points_cam.shape[:-1], 2).numpy()


def _shade(vertices: np.ndarray, faces: np.ndarray, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-face Lambert shade in [0.25, 1] and depth (mean z) for painter's ordering."""
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    shade = 0.25 + 0.75 * np.abs(normals @ light)
    return shade, tri[:, :, 2].mean(axis=1)


def draw_mesh(canvas: np.ndarray, points_2d: np.ndarray, depth_points: np.ndarray, faces: np.ndarray,
              color: tuple[int, int, int]) -> None:
    """Paint a triangle mesh (far to near, Lambert-shaded) into `canvas` in place."""
    shade, depth = _shade(depth_points, faces, np.array([0.0, -0.4, -1.0]) / np.hypot(0.4, 1.0))
    pts = np.round(points_2d * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    base = np.array(color, dtype=np.float64)
    for f in np.argsort(-depth):
        cv2.fillConvexPoly(canvas, pts[faces[f]], tuple(float(c) for c in base * shade[f]), cv2.LINE_AA, shift=2)


def draw_skeleton(canvas: np.ndarray, keypoints_2d: np.ndarray, color: tuple[int, int, int]) -> None:
    """Draw MHR70 skeleton edges and joints."""
    kp = np.round(keypoints_2d).astype(np.int32)
    for a, b in SKELETON_EDGES:
        cv2.line(canvas, tuple(kp[a]), tuple(kp[b]), color, 2, cv2.LINE_AA)
    for p in kp:
        cv2.circle(canvas, tuple(p), 3, (255, 255, 255), -1, cv2.LINE_AA)


def overlay(image_rgb: np.ndarray, vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray,
            keypoints_2d: np.ndarray | None = None, boxes: np.ndarray | None = None, alpha: float = 0.7) -> np.ndarray:
    """Photo with each person's camera-frame mesh projected through K, plus skeleton and input box."""
    out = image_rgb.copy()
    mesh = out.copy()
    for i, v in enumerate(vertices_cam):
        uv = project(np.concatenate([v[:, :2], np.clip(v[:, 2:3], 1e-3, None)], axis=1), K)
        if np.isfinite(uv).all():
            draw_mesh(mesh, uv, v, faces, PERSON_COLORS[i % len(PERSON_COLORS)])
    out = cv2.addWeighted(mesh, alpha, out, 1 - alpha, 0)
    for i in range(len(vertices_cam)):
        color = PERSON_COLORS[i % len(PERSON_COLORS)]
        if keypoints_2d is not None:
            draw_skeleton(out, keypoints_2d[i], color)
        if boxes is not None:
            x1, y1, x2, y2 = np.round(boxes[i]).astype(int)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
    return out


def _turned(vertices_cam: np.ndarray, degrees: float) -> list[np.ndarray]:
    """Meshes turned by `degrees` about the vertical (camera y) axis through their common centre; 90 puts the camera
    at the left."""
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    allp = np.concatenate(list(vertices_cam))
    centre = (allp.min(0) + allp.max(0)) / 2
    return [(v - centre) @ rot.T for v in vertices_cam]


def _paint(meshes: list[np.ndarray], faces: np.ndarray, size: int, scale: float, centre: np.ndarray, caption: str,
           origin: tuple[float, float] | None = None) -> np.ndarray:
    """Orthographic picture (looking along +z) of meshes in panel axes; `centre` (x, y) lands on `origin` (default:
    the middle of the panel)."""
    canvas = np.full((size, size, 3), 40, np.uint8)
    origin = origin or (size / 2, size / 2)
    for i, p in enumerate(meshes):
        uv = (p[:, :2] - centre) * scale + origin
        draw_mesh(canvas, uv, p, faces, PERSON_COLORS[i % len(PERSON_COLORS)])
    cv2.putText(canvas, caption, (8, size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (220, 220, 220), 1)
    return canvas


def _fitted_view(vertices_cam: np.ndarray, faces: np.ndarray, size: int, degrees: float, caption: str) -> np.ndarray:
    """All meshes turned by `degrees` (see `_turned`) and fitted to a square panel."""
    if len(vertices_cam) == 0:
        return np.full((size, size, 3), 40, np.uint8)
    meshes = _turned(vertices_cam, degrees)
    allp = np.concatenate(meshes)
    lo, hi = allp[:, :2].min(0), allp[:, :2].max(0)
    scale = 0.85 * size / max(float((hi - lo).max()), 1e-6)
    return _paint(meshes, faces, size, scale, (lo + hi) / 2, caption)


def side_view(vertices_cam: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """Orthographic view from the camera's right side (looking along -x) of all meshes, fitted to a square."""
    return _fitted_view(vertices_cam, faces, size, 90.0, "side view (camera at left)")


def three_quarter_view(vertices_cam: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """Orthographic view of all meshes turned 45 degrees about the vertical axis (halfway to `side_view`)."""
    return _fitted_view(vertices_cam, faces, size, 45.0, "three-quarter view (45 deg)")


def views_picture(image_rgb: np.ndarray, vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray,
                  keypoints_2d: np.ndarray | None, boxes: np.ndarray | None, banner: list[str]) -> np.ndarray:
    """Four panels under a banner: the photo, the meshes over it, a three-quarter view and a side view."""
    h = image_rgb.shape[0]
    return compose([image_rgb, overlay(image_rgb, vertices_cam, faces, K, keypoints_2d, boxes),
                    three_quarter_view(vertices_cam, faces, h), side_view(vertices_cam, faces, h)], banner)


def turntable(vertices_cam: np.ndarray, faces: np.ndarray, size: int = 384, frames: int = 36,
              label: str | None = None) -> list[np.ndarray]:
    """`frames` square (size x size) views of the meshes turning once about the vertical axis, at one fixed scale,
    starting from the camera's view; `label` (e.g. the weights line) is written, wrapped, across the top of each."""
    if len(vertices_cam) == 0:
        return [np.full((size, size, 3), 40, np.uint8) for _ in range(frames)]
    font = min(max(size / 800, 0.3), 0.5)
    lines = _wrap(label, size - 16, font) if label else []
    top, bottom = _line_step(font) * len(lines) + 6, 22  # label band; bottom strip for the angle caption
    centred = np.concatenate(_turned(vertices_cam, 0.0))
    radius = float(np.hypot(centred[:, 0], centred[:, 2]).max())  # largest half-width over all turns
    scale = min(0.9 * size / max(2 * radius, 1e-6), 0.95 * (size - top - bottom) / max(float(np.ptp(centred[:, 1])), 1e-6))
    origin = (size / 2, (size + top - bottom) / 2)
    out = []
    for k in range(frames):
        degrees = 360.0 * k / frames
        canvas = _paint(_turned(vertices_cam, degrees), faces, size, scale, np.zeros(2), f"{degrees:.0f} deg", origin)
        for i, line in enumerate(lines):
            cv2.putText(canvas, line, (8, _line_step(font) * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, font,
                        _text_color(label), 1, cv2.LINE_AA)
        out.append(canvas)
    return out


def write_gif(path: str | Path, frames: list[np.ndarray], fps: float = 12) -> None:
    """Write RGB frames as a looping animated GIF (Pillow)."""
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)


def _text_color(line: str) -> tuple[int, int, int]:
    """Orange for lines that warn about random weights or a synthetic rig, light grey otherwise."""
    return (255, 120, 80) if ("RANDOM" in line or "SYNTHETIC" in line) else (230, 230, 230)


def _line_step(font: float) -> int:
    """Pixels between text lines at Hershey font scale `font`."""
    return int(30 * font) + 6


def _wrap(text: str, width: int, font: float) -> list[str]:
    """`text` split at spaces into lines no wider than `width` px (a longer single word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] <= width:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines


def compose(panels: list[np.ndarray], banner: list[str]) -> np.ndarray:
    """Panels side by side (same height) under a banner of text lines."""
    h = max(p.shape[0] for p in panels)
    row = np.concatenate([cv2.resize(p, (int(p.shape[1] * h / p.shape[0]), h)) for p in panels], axis=1)
    band = np.full((24 * len(banner) + 10, row.shape[1], 3), 20, np.uint8)
    for i, line in enumerate(banner):
        cv2.putText(band, line, (10, 24 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.55, _text_color(line), 1, cv2.LINE_AA)
    return np.concatenate([band, row], axis=0)


def write_png(path: str | Path, image_rgb: np.ndarray) -> None:
    """Write an RGB image as PNG."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
