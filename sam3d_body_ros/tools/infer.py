"""`sam3d-body infer`: one image + boxes -> outputs .npz and a picture of the mesh over the photo."""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from ..core.errors import CONFIG_ERRORS, InputError
from ..pipeline import BodyPipeline, BodyResult
from . import render
from .options import fail, settings_from_args


def mesh_in_camera(result: BodyResult) -> np.ndarray:
    """(N,V,3) vertices in the camera frame (metres)."""
    return result.outputs["pred_vertices"] + result.outputs["pred_cam_t"][:, None, :]


def run_infer(args: argparse.Namespace) -> int:
    """Execute the `infer` command; user errors become one-line CliErrors."""
    bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise fail("cannot read image", args.image, "give a path to a PNG/JPEG file that exists")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxes = np.array(args.box, dtype=np.float64)
    try:
        pipe = BodyPipeline(settings_from_args(args))
    except CONFIG_ERRORS as e:
        raise fail(str(e)) from None
    try:
        result = pipe.infer(image, boxes)
    except InputError as e:
        raise fail(f"bad input: {e}", args.image, "boxes are X1 Y1 X2 Y2 in pixels inside the image, X2>X1, Y2>Y1") from None
    K = result.K
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
        o = result.outputs
        render.write_png(args.render, render.views_picture(image, mesh_in_camera(result), result.faces, K,
                                                           o["pred_keypoints_2d"], o["bbox"], banner))
        print(f"wrote {args.render}")
    if args.spin:
        render.write_gif(args.spin, render.turntable(mesh_in_camera(result), result.faces, label=pipe.weights_status))
        print(f"wrote {args.spin}")
    return 0
