"""Pictures of results: mesh and skeleton over the photo, a side view, and a banner saying what ran."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .camera import project_points
from .keypoints import SKELETON_EDGES

PERSON_COLORS = [(80, 170, 255), (255, 140, 60), (110, 220, 110), (230, 90, 200), (240, 220, 80)]


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


def side_view(vertices_cam: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """Orthographic view from the camera's right side (looking along -x) of all meshes, fitted to a square."""
    canvas = np.full((size, size, 3), 40, np.uint8)
    if len(vertices_cam) == 0:
        return canvas
    rot = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # camera z -> panel x
    pts = [v @ rot.T for v in vertices_cam]
    allp = np.concatenate(pts)
    lo, hi = allp[:, :2].min(0), allp[:, :2].max(0)
    scale = 0.85 * size / max(float((hi - lo).max()), 1e-6)
    centre = (lo + hi) / 2
    for i, p in enumerate(pts):
        uv = (p[:, :2] - centre) * scale + size / 2
        draw_mesh(canvas, uv, p, faces, PERSON_COLORS[i % len(PERSON_COLORS)])
    cv2.putText(canvas, "side view (camera at left)", (8, size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (220, 220, 220), 1)
    return canvas


def compose(panels: list[np.ndarray], banner: list[str]) -> np.ndarray:
    """Panels side by side (same height) under a banner of text lines."""
    h = max(p.shape[0] for p in panels)
    row = np.concatenate([cv2.resize(p, (int(p.shape[1] * h / p.shape[0]), h)) for p in panels], axis=1)
    band = np.full((24 * len(banner) + 10, row.shape[1], 3), 20, np.uint8)
    for i, line in enumerate(banner):
        color = (255, 120, 80) if ("RANDOM" in line or "SYNTHETIC" in line) else (230, 230, 230)
        cv2.putText(band, line, (10, 24 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.55, color, 1, cv2.LINE_AA)
    return np.concatenate([band, row], axis=0)


def write_png(path, image_rgb: np.ndarray) -> None:
    """Write an RGB image as PNG."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
