#!/usr/bin/env python3
"""Full-size backbone deployment fidelity: export -> INT8 QDQ quantization -> onnxruntime vs torch, as one JSON report.

Steps: build the FULL DINOv3 ViT-H+/16 backbone with seeded random weights (layer-scale gammas 0.1 and random q/v
biases, as research/export_quant_probe.md; timm's 1e-5 init would hide quantization error), export it to ONNX
(dynamo, opset 18, external data), calibrate an INT8 QDQ model with ONNX Runtime (GEMM-only Q/DQ) on augmented
crops (flip, colour, box scale) of three photos, then compare on the un-augmented photo crops:
fp32 ONNX on ORT CPU vs torch fp32 (GPU), INT8 ONNX vs torch fp32, INT8 vs fp32 ONNX (+ mesh vertex deviation
through the decoder + MHR pipeline), and torch fp16/bf16 vs fp32 on the GPU. Random weights: the numbers show the
pipeline works, not the accuracy with the real checkpoint.

Needs >= 64 GiB RAM at full size (ONNX-level PTQ; the 128 GiB GPU machine is fine, 24 GiB is not).
Intermediate files go to --work-dir (default build/fidelity_full, git-ignored); a rerun after a timeout reuses
finished stages (ONNX export, quantization) when the settings match.

On the GPU machine (from the repo root), carrying build/photos and build/wheels_fidelity (+ build/wheels_cv2 only
if `import cv2` fails there), all made on the dev machine as shown below:
    pip install -q --no-deps --target /tmp/pydeps build/wheels_fidelity/*.whl && \
    PYTHONPATH=/tmp/pydeps python bench/fidelity_full.py --images build/photos --out $OUT/fidelity_full.json
Prepare on the dev machine (scikit-image + matplotlib give the photos; pip fetches the cp312 wheels):
    .venv/bin/python bench/fidelity_full.py --write-photos build/photos
    .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
        -d build/wheels_fidelity timm==1.0.31 onnxscript==0.7.2 onnx-ir==1.1.0 roma==1.8.0 ml_dtypes==0.6.0 \
        PyYAML==6.0.3 tqdm==4.70.1
If the run is cut off at the time limit, run the same command again: finished stages are reused.
Quick CPU check at tiny size:
    .venv/bin/python bench/fidelity_full.py --config tiny --out /tmp/fidelity_tiny.json

The device has Python 3.12, torch 2.11 (+cu130), onnx 1.23.1, onnxruntime 1.30.0. Wheels to carry and
`pip install --no-deps` there: timm==1.0.31, onnxscript==0.7.2, onnx-ir==1.1.0 and roma==1.8.0 (pure Python),
ml_dtypes==0.6.0 and PyYAML==6.0.3 (cp312 manylinux binaries), tqdm==4.70.1; only if their import fails:
packaging, typing_extensions, opencv-python-headless==4.13.0.92 (abi3, 60 MB: build/wheels_cv2) and torchvision matching torch 2.11
(0.26.x; timm imports it). Not needed: huggingface_hub, safetensors, scikit-image, matplotlib (photos are carried).
The script checks these imports first and names what is missing.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REQUIRED = ["numpy", "torch", "timm", "onnx", "onnxscript", "onnxruntime", "cv2", "tqdm", "roma", "yaml"]
# person boxes (xyxy px) in the three photos
PHOTO_BOXES = {
    "astronaut.png": [[130.0, 0.0, 470.0, 512.0]],
    "camera.png": [[150.0, 20.0, 420.0, 500.0]],
    "grace_hopper.jpg": [[40.0, 30.0, 480.0, 600.0]],
}


def check_imports() -> None:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - report any import failure (e.g. timm -> torchvision)
            missing.append(f"{name} ({type(e).__name__}: {e})".splitlines()[0])
    if missing:
        sys.exit("fidelity_full.py: missing modules: " + "; ".join(missing) + " -- see the docstring for the wheels")


def write_photos(folder: Path) -> None:
    """Save astronaut/camera (scikit-image) and grace_hopper (matplotlib) plus boxes.json into `folder`."""
    import shutil

    import cv2
    from matplotlib import cbook
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "camera.png"), data.camera())
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folder / "grace_hopper.jpg")
    (folder / "boxes.json").write_text(json.dumps(PHOTO_BOXES, indent=2))
    print(f"wrote {sorted(p.name for p in folder.iterdir())} to {folder}")


def stage(report: dict, name: str):
    """Context manager timing one stage into report['stages_s'] and printing it."""

    class _Stage:
        def __enter__(self):
            self.t = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)

        def __exit__(self, *exc):
            report["stages_s"][name] = round(time.perf_counter() - self.t, 1)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {report['stages_s'][name]} s", flush=True)

    return _Stage()


def eager(module, crops, device, dtype):  # noqa: ANN001, ANN201
    """Plain eager forward (no compile, no graphs, no fusions) in `dtype` on `device`; float32 CPU features."""
    import torch

    module = module.to(device=device, dtype=dtype).eval()
    with torch.inference_mode():
        return torch.cat([module(c.to(device, dtype)).float().cpu() for c in crops.split(1)])


def done(work: Path, name: str, settings: dict) -> bool:
    stamp = work / f"{name}.stamp.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == settings


def mark_done(work: Path, name: str, settings: dict) -> None:
    (work / f"{name}.stamp.json").write_text(json.dumps(settings))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="report JSON")
    ap.add_argument("--config", default="full", choices=["full", "tiny"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer-scale", type=float, default=0.1, help="block gammas of the random weights (default 0.1)")
    ap.add_argument("--images", type=Path, help="folder with the photos + boxes.json (default: scikit-image/matplotlib)")
    ap.add_argument("--views", type=int, default=8, help="augmented calibration views per photo (default 8)")
    ap.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--work-dir", type=Path, default=REPO / "build" / "fidelity_full")
    ap.add_argument("--no-mesh", action="store_true", help="skip the decoder + MHR vertex deviation")
    ap.add_argument("--write-photos", type=Path, help="only write the photos + boxes.json to this folder and exit")
    args = ap.parse_args(argv)
    if args.write_photos:
        write_photos(args.write_photos)
        return 0
    if args.out is None:
        ap.error("--out is required")
    check_imports()

    import numpy as np
    import onnxruntime
    import torch

    from sam3d_body_ros.core.config import get_config
    from sam3d_body_ros.runtime.ort_backend import OrtBackend
    from sam3d_body_ros.tools.fidelity import (
        feature_fidelity,
        format_table,
        mesh_deviation,
    )
    from sam3d_body_ros.tools.onnx_export import export_backbone, export_onnx
    from sam3d_body_ros.tools.quantize import (
        augmented_views,
        load_samples,
        qdq_placement,
        quantize_onnx,
        samples_to_crops,
    )

    cfg = get_config(args.config)
    work = args.work_dir / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    gpu = torch.device("cuda") if cuda else torch.device("cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
    torch.backends.cudnn.allow_tf32 = False
    report: dict = {
        "model_config": cfg.name,
        "weights": f"RANDOM (seed {args.seed}, layer-scale gammas {args.layer_scale}, random q/v biases)",
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "gpu": torch.cuda.get_device_name(gpu) if cuda else None,
            "cpu_count": os.cpu_count(),
        },
        "stages_s": {},
    }

    if args.images:
        samples = load_samples(args.images, args.images / "boxes.json")
    else:
        photos = Path(args.work_dir) / "photos"
        if not (photos / "boxes.json").is_file():
            write_photos(photos)
        samples = load_samples(photos, photos / "boxes.json")
    calib = [v for i, s in enumerate(samples) for v in augmented_views(s, args.views, seed=args.seed + i)]
    report["calibration"] = {
        "photos": [s.name for s in samples],
        "views_per_photo": args.views,
        "crops": sum(len(v.boxes) for v in calib),
        "method": args.method,
        "note": "augmented views only (flip, colour, box scale 0.85-1.2); evaluation on the un-augmented crops",
    }

    with stage(report, "build backbone"):
        module = export_backbone(cfg, seed=args.seed, layer_scale=args.layer_scale)

    fp32_path, int8_path = work / "backbone_fp32.onnx", work / "backbone_int8.onnx"
    export_settings = {"config": cfg.name, "seed": args.seed, "layer_scale": args.layer_scale}
    if not done(work, "export", export_settings):
        with stage(report, "export onnx"):
            export_onnx(module, fp32_path)
        mark_done(work, "export", export_settings)
    quant_settings = {**export_settings, "views": args.views, "method": args.method, "photos": report["calibration"]["photos"]}
    if not done(work, "quantize", quant_settings):
        with stage(report, "quantize"):
            quantize_onnx(fp32_path, int8_path, samples_to_crops(calib, cfg.backbone.img_size), method=args.method)
        mark_done(work, "quantize", quant_settings)
    report["placement"] = qdq_placement(int8_path)

    crops = samples_to_crops(samples, cfg.backbone.img_size)
    results: dict[str, dict] = {}
    with stage(report, "torch fp32 reference"):
        ref = eager(module, crops, gpu, torch.float32)
    if cuda:
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            with stage(report, f"torch {name}"):
                low = eager(copy.deepcopy(module), crops, gpu, dtype)
            results[f"torch {name} (GPU) vs torch fp32 (GPU)"] = feature_fidelity(low, ref)
    ref_name = "torch fp32 (GPU)" if cuda else "torch fp32 (CPU)"
    del module
    with stage(report, "onnxruntime fp32"):
        y32 = OrtBackend(fp32_path, cfg)(crops)
    with stage(report, "onnxruntime int8"):
        y8 = OrtBackend(int8_path, cfg)(crops)
    results[f"onnx fp32 (ORT CPU) vs {ref_name}"] = feature_fidelity(y32, ref)
    results[f"onnx int8 (ORT CPU) vs {ref_name}"] = feature_fidelity(y8, ref)
    int8_vs_fp32 = feature_fidelity(y8, y32)
    if not args.no_mesh:
        with stage(report, "mesh deviation (pipeline, ORT CPU)"):
            int8_vs_fp32.update(mesh_deviation(samples, fp32_path, int8_path, model_config=cfg.name, seed=args.seed))
    results["onnx int8 vs onnx fp32 (ORT CPU)"] = int8_vs_fp32
    report["comparisons"] = results
    report["eval_crops"] = int(crops.shape[0])
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    report["files_mb"] = {
        p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(work.iterdir()) if p.suffix in (".onnx", ".data")
    }

    print(format_table(results))
    print(f"placement: {report['placement']['ops_with_dq_inputs']}, problems: {report['placement']['problems'][:3]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")
    return 0 if not report["placement"]["problems"] and np.isfinite(int8_vs_fp32["rel_l2"]) else 1


if __name__ == "__main__":
    sys.exit(main())
