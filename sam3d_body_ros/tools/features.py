"""`sam3d-body features`: run only the backbone on one crop; print feature statistics and latency, picture the
features as their first three principal components in RGB, and optionally compare against a second backend."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.config import get_config
from ..core.crop import IMAGENET_MEAN, IMAGENET_STD, prepare_crops, validate_boxes
from ..core.errors import CONFIG_ERRORS
from ..runtime.backend import BackboneBackend, create_backend
from . import render
from .fidelity import rel_l2
from .options import MODEL_FLAGS, add_model_args, fail


def pca_components(features: np.ndarray, k: int = 3) -> np.ndarray:
    """(C,H,W) features -> (H,W,k) scores of the HxW tokens on their first k principal components (SVD of the
    centred tokens), each component's sign fixed so that its largest-magnitude token is positive."""
    c, h, w = features.shape
    if k > min(c, h * w):
        raise ValueError(f"{k} components asked of {h * w} tokens with {c} channels")
    tokens = features.reshape(c, h * w).T.astype(np.float64)
    u, s, _ = np.linalg.svd(tokens - tokens.mean(0), full_matrices=False)
    scores = u[:, :k] * s[:k]
    scores *= np.where(scores[np.abs(scores).argmax(0), np.arange(k)] < 0, -1.0, 1.0)
    return scores.reshape(h, w, k)


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """(C,H,W) features -> (H,W,3) uint8: components 1-3 as R, G, B, each scaled from its 1st..99th percentile to
    0..255 (a few outlier tokens do not wash out the rest)."""
    pcs = pca_components(features, 3)
    lo, hi = np.percentile(pcs, [1, 99], axis=(0, 1))
    return np.round(255 * np.clip((pcs - lo) / np.maximum(hi - lo, 1e-12), 0, 1)).astype(np.uint8)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `features` command."""
    p = subparsers.add_parser("features", help="run the backbone on one crop: feature statistics, latency, PCA picture")
    p.add_argument("image", type=Path, help="photo (PNG/JPEG)")
    p.add_argument("--box", nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"),
                   help="person box in pixels (default: the whole image)")
    add_model_args(p, tuple(f for f in MODEL_FLAGS if f != "--mode"))  # the backbone only
    p.add_argument("--save-pca", type=Path, required=True, metavar="FILE.png",
                   help="write the crop beside its features' first three principal components as RGB")
    p.add_argument("--compare", metavar="BACKEND[:PRECISION]",
                   help="also run this backend on the crop and print the features' rel. L2 error against it")
    p.add_argument("--compare-file", type=Path, help="backbone file for a --compare backend that needs one")
    p.add_argument("--repeats", type=int, default=5, help="timed backbone calls after one warm-up (default 5)")
    p.set_defaults(func=run_features)


def _device_name(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H200)`, or the plain device."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def _time_ms(backend: BackboneBackend, crops: torch.Tensor, repeats: int) -> float:
    """Median wall time of `repeats` backbone calls (GPU work included)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend(crops)
        if crops.device.type == "cuda":
            torch.cuda.synchronize(crops.device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def _crop_rgb(crop: torch.Tensor) -> np.ndarray:
    """A normalised (3,S,S) crop back to (S,S,3) uint8 RGB."""
    rgb = crop.float().cpu().permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN
    return np.round(255 * np.clip(rgb, 0, 1)).astype(np.uint8)


def run_features(args: argparse.Namespace) -> int:
    """Execute the `features` command; user errors become one-line CliErrors."""
    if args.repeats < 1:
        raise fail(f"--repeats must be at least 1, got {args.repeats}")
    bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR) if args.image.is_file() else None
    if bgr is None:
        raise fail("cannot read image", args.image, "give a path to a PNG/JPEG file that exists")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    box = np.array([args.box or [0, 0, w, h]], dtype=np.float64)
    reasons = validate_boxes(box, w, h)[1]
    if reasons:
        raise fail(f"bad box: {reasons[0]}", args.image,
                   "give --box X1 Y1 X2 Y2 in pixels inside the image, X2>X1, Y2>Y1")

    try:
        if args.weights:
            from ..core.checkpoint import load_checkpoint

            loaded = load_checkpoint(args.weights)
            cfg, state, weights = loaded.cfg, loaded.backbone_state, f"weights {args.weights}"
        else:
            cfg, state, weights = get_config(args.config), None, f"RANDOM weights (seed {args.seed})"
        backend = create_backend(args.backend, cfg, device=args.device, precision=args.precision,
                                 backbone_state=state, backbone_file=args.backbone_file, seed=args.seed)
        other = None
        if args.compare:
            name, _, precision = args.compare.partition(":")
            other = create_backend(name, cfg, device=backend.device, precision=precision or "auto",
                                   backbone_state=state, backbone_file=args.compare_file, seed=args.seed)
    except CONFIG_ERRORS as e:
        raise fail(str(e)) from None

    size = cfg.backbone.img_size
    crops = prepare_crops(image, box, size, backend.device).images
    label = f"{backend.name}/{backend.precision}"
    with torch.inference_mode():
        feats = backend(crops).float().cpu()  # the warm-up call
        latency = _time_ms(backend, crops, args.repeats)
        ref = other(crops).float().cpu() if other is not None else None
    f64 = feats.double()
    print(f"{cfg.name} backbone, {label} on {_device_name(backend.device)}, {weights}")
    print(f"features {tuple(feats.shape)}: mean {f64.mean():.4g}  std {f64.std():.4g}  min {f64.min():.4g}  "
          f"max {f64.max():.4g}")
    print(f"latency: median {latency:.2f} ms of {args.repeats} call(s) after 1 warm-up")
    if other is not None:
        print(f"rel. L2 vs {other.name}/{other.precision}: {rel_l2(feats, ref):.3e}")

    pca = cv2.resize(pca_rgb(feats[0].numpy()), (size, size), interpolation=cv2.INTER_NEAREST)
    cv2.putText(pca, f"PCA 1-3 of {feats.shape[1]} channels as RGB", (8, size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    banner = f"sam3d-body features: {args.image.name}, {cfg.name} backbone, {label} on {backend.device}, {weights}"
    try:
        render.write_png(args.save_pca, render.compose([_crop_rgb(crops[0]), pca], [banner]))
    except OSError as e:
        raise fail(str(e), fix="give --save-pca a .png path in a folder that exists") from None
    print(f"wrote {args.save_pca}")
    return 0
