"""`sam3d-body infer`: one image + boxes -> outputs .npz and a picture of the mesh over the photo."""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from .cli import fail
from .core.errors import InputError, WeightsError
from .core.pipeline import BodyPipeline, BodyResult, PipelineSettings, check_intrinsics
from .core import render


def settings_from_args(args: argparse.Namespace) -> PipelineSettings:
    """PipelineSettings from the shared model flags (--config, --weights, --backend, ...)."""
    return PipelineSettings(
        model_config=args.config,
        backend=args.backend,
        weights_dir=args.weights,
        backbone_file=args.backbone_file,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
    )


def picture(image_rgb: np.ndarray, result: BodyResult, K: np.ndarray, banner: list[str]) -> np.ndarray:
    """Overlay of every person's mesh and skeleton on the photo, a side view, and a banner."""
    o = result.outputs
    verts = o["pred_vertices"] + o["pred_cam_t"][:, None, :]
    left = render.overlay(image_rgb, verts, result.faces, K, o["pred_keypoints_2d"], o["bbox"])
    right = render.side_view(verts, result.faces, image_rgb.shape[0])
    return render.compose([left, right], banner)


def run_infer(args: argparse.Namespace) -> int:
    """Execute the `infer` command; user errors become one-line CliErrors."""
    bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise fail("cannot read image", args.image, "give a path to a PNG/JPEG file that exists")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxes = np.array(args.box, dtype=np.float64)
    try:
        pipe = BodyPipeline(settings_from_args(args))
        result = pipe.infer(image, boxes)
    except InputError as e:
        raise fail(f"bad input: {e}", args.image, "boxes are X1 Y1 X2 Y2 in pixels inside the image, X2>X1, Y2>Y1") from None
    except (WeightsError, ValueError) as e:
        raise fail(str(e)) from None
    K = check_intrinsics(None, image.shape[1], image.shape[0])
    print(f"{result.num_persons} person(s), {pipe.backend_name}, {pipe.weights_status}")
    print("  " + "  ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items()))
    if args.out:
        np.savez_compressed(args.out, **result.outputs, faces=result.faces, weights_status=np.array(pipe.weights_status))
        print(f"wrote {args.out}")
    if args.render:
        banner = [
            f"sam3d-body infer: {args.image.name}, model {pipe.cfg.name}, backend {pipe.backend_name}",
            pipe.weights_status,
        ]
        render.write_png(args.render, picture(image, result, K, banner))
        print(f"wrote {args.render}")
    return 0
