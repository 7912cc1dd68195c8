"""CLI commands for backbone deployment: export-onnx, export-pt2, quantize, build-engine."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ..core.config import ModelConfig, get_config
from ..core.errors import CONFIG_ERRORS, InputError, WeightsError
from .options import add_model_args, fail


def _add_source_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, ("--config", "--weights", "--seed"))
    p.add_argument(
        "--layer-scale",
        type=float,
        help="random weights only: set every block's layer-scale gamma (timm's random 1e-5 hides quantization error)",
    )


def _backbone(args: argparse.Namespace) -> tuple[ModelConfig, torch.nn.Module, str]:
    """(config, fp32 CPU backbone, description of its weights) from --weights or --seed."""
    from .onnx_export import export_backbone

    if args.weights is None:
        cfg = get_config(args.config)
        module = export_backbone(cfg, seed=args.seed, layer_scale=args.layer_scale)
        gamma = f", layer-scale {args.layer_scale}" if args.layer_scale is not None else ""
        return cfg, module, f"RANDOM weights (seed {args.seed}{gamma})"
    if args.layer_scale is not None:
        raise fail("--layer-scale applies to random weights only", args.weights, "drop --layer-scale or --weights")
    from ..core.checkpoint import load_checkpoint

    try:
        loaded = load_checkpoint(args.weights)
    except (WeightsError, OSError) as e:
        raise fail(str(e), args.weights, "point --weights at the folder with model.ckpt") from e
    return loaded.cfg, export_backbone(loaded.cfg, backbone_state=loaded.backbone_state), f"weights: {loaded.source}"


def _verify_crops(cfg: ModelConfig, n: int = 2, seed: int = 0) -> torch.Tensor:
    """Deterministic stand-in crops (unit-normal like ImageNet-normalised images) for export checks."""
    s = cfg.backbone.img_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _export_onnx(args: argparse.Namespace) -> int:
    from ..runtime.ort_backend import OrtBackend
    from .fidelity import rel_l2
    from .onnx_export import export_onnx

    cfg, module, weights = _backbone(args)
    print(f"exporting the {cfg.name} backbone ({weights}) to {args.out} (opset {args.opset}, batch 1..{args.max_batch})")
    t0 = time.perf_counter()
    try:
        path = export_onnx(module, args.out, max_batch=args.max_batch, opset=args.opset)
    except ValueError as e:
        raise fail(str(e), args.out, "use --opset 18 or higher") from e
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    print(f"wrote {path}" + (f" + {data.name}" if data.exists() else "") + f" ({size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    crops = _verify_crops(cfg)
    with torch.inference_mode():
        ref = module(crops)
    err = rel_l2(OrtBackend(path, cfg)(crops), ref)
    print(f"verified with onnxruntime vs torch fp32 on batch {crops.shape[0]}: rel. L2 error {err:.2e}")
    if err > 1e-3:
        raise fail(f"exported graph disagrees with torch (rel. L2 {err:.2e})", path, "report this as a bug")
    return 0


def _export_pt2(args: argparse.Namespace) -> int:
    from ..runtime.pt2_backend import Pt2Backend, export_program
    from .fidelity import rel_l2

    cfg, module, weights = _backbone(args)
    print(f"torch.export of the {cfg.name} backbone ({weights}) to {args.out} (batch 1..{args.max_batch})")
    path = export_program(module, args.out, max_batch=args.max_batch)
    crops = _verify_crops(cfg, n=3)
    with torch.inference_mode():
        ref = module(crops)
    err = rel_l2(Pt2Backend(path, cfg, torch.device("cpu"))(crops), ref)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); reloaded and verified on batch 3: rel. L2 error {err:.2e}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from ..runtime.artifact_check import check_backbone_signature, onnx_signature
    from ..runtime.ort_backend import OrtBackend
    from .fidelity import feature_fidelity, format_table, mesh_deviation
    from .onnx_export import export_onnx
    from .quantize import (
        augmented_views,
        load_samples,
        qdq_placement,
        quantize_onnx,
        samples_to_crops,
    )

    t0 = time.perf_counter()
    try:
        samples = load_samples(args.images, args.boxes)
    except InputError as e:
        raise fail(str(e), args.boxes or args.images, "pass a folder of person crops, or images plus --boxes JSON") from e
    calib = samples + [v for i, s in enumerate(samples) for v in augmented_views(s, args.augment, seed=args.seed + i)]
    with tempfile.TemporaryDirectory(prefix="sam3d-quant-") as tmp:
        if args.onnx is None:
            cfg, module, weights = _backbone(args)
            src = export_onnx(module, Path(tmp) / "backbone_fp32.onnx")
            del module
            print(f"exported the fp32 {cfg.name} backbone ({weights}) for calibration")
        else:
            cfg, src, weights = get_config(args.config), args.onnx, f"ONNX {args.onnx}"
            try:
                check_backbone_signature(*onnx_signature(src), cfg, src)
            except WeightsError as e:
                raise fail(str(e), src, "export one with `sam3d-body export-onnx` for this --config") from e
        crops = samples_to_crops(calib, cfg.backbone.img_size)
        print(f"calibrating on {crops.shape[0]} crops from {len(samples)} images ({args.augment} augmented views each), {args.method}")
        quantize_onnx(src, args.out, crops, method=args.method)
        placement = qdq_placement(args.out)
        print(
            f"wrote {args.out}: {placement['quantize_linear']} Q / {placement['dequantize_linear']} DQ, "
            f"ops with quantized inputs {placement['ops_with_dq_inputs']}, "
            f"attention GEMMs kept float: {placement['attention_gemms']}"
        )
        evals = samples[: args.eval_count]
        eval_crops = samples_to_crops(evals, cfg.backbone.img_size)
        metrics = feature_fidelity(OrtBackend(args.out, cfg)(eval_crops), OrtBackend(src, cfg)(eval_crops))
        metrics.update(
            mesh_deviation(evals, src, args.out, model_config=cfg.name, weights_dir=args.weights, seed=args.seed)
        )
    report = {
        "model_config": cfg.name,
        "source": weights,
        "int8_onnx": str(args.out),
        "calibration": {
            "images": len(samples),
            "crops": int(crops.shape[0]),
            "augmented_views_per_image": args.augment,
            "method": args.method,
        },
        "placement": placement,
        "evaluation": {"crops": int(eval_crops.shape[0]), "images": [s.name for s in evals], "reference": "fp32 ONNX on onnxruntime"},
        "int8_vs_fp32": metrics,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(format_table({"int8 vs fp32 (onnxruntime)": metrics}))
    if isinstance(metrics.get("mesh"), str) and "vertex_mean_mm" not in metrics:
        print(f"mesh deviation {metrics['mesh']}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.report}")
    if placement["problems"]:
        raise fail("quantized graph breaks the GEMM-only Q/DQ scheme: " + "; ".join(placement["problems"][:5]), args.out)
    return 0


def _build_engine(args: argparse.Namespace) -> int:
    from ..runtime.engine_cache import (
        BuildSettings,
        default_cache_dir,
        default_opt_batch,
        engine_precision,
    )
    from ..runtime.ort_backend import is_quantized

    cfg = get_config(args.config)
    if not args.onnx.is_file():
        raise fail("ONNX file not found", args.onnx, "make one with `sam3d-body export-onnx` or `sam3d-body quantize`")
    try:
        precision = engine_precision(args.precision or "fp16", is_quantized(args.onnx))
        settings = BuildSettings(
            precision=precision,
            max_batch=args.max_batch,
            opt_batch=args.opt_batch or default_opt_batch(args.max_batch),
            workspace_gib=args.workspace_gib,
        )
        from ..runtime.tensorrt_backend import engine_for_onnx, import_tensorrt

        import_tensorrt()
        if not torch.cuda.is_available():
            raise fail("no CUDA device", None, "build engines on the machine (GPU) that will run them")
        path, built = engine_for_onnx(args.onnx, cfg, settings, args.cache_dir or default_cache_dir(), torch.device(args.device))
    except CONFIG_ERRORS as e:
        raise fail(str(e), args.onnx) from e
    print(f"{'built' if built else 'cached'} {precision} engine: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add export-onnx, export-pt2, quantize and build-engine to the `sam3d-body` parser."""
    p = subparsers.add_parser("export-onnx", help="export the backbone to ONNX (opset >= 18, dynamic batch) and verify it")
    _add_source_args(p)
    p.add_argument("--out", type=Path, required=True, help="output .onnx (weights go to FILE.onnx.data above 2 GB)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18; default 18)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the graph accepts (default 64)")
    p.set_defaults(func=_export_onnx)

    p = subparsers.add_parser("export-pt2", help="torch.export the backbone (dynamic batch) to a .pt2 for --backend pt2")
    _add_source_args(p)
    p.add_argument("--out", type=Path, required=True, help="output .pt2")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the program accepts (default 64)")
    p.set_defaults(func=_export_pt2)

    p = subparsers.add_parser(
        "quantize",
        help="calibrate an INT8 QDQ backbone ONNX (Q/DQ on GEMMs only) and report its fidelity",
        description="INT8 post-training quantization with ONNX Runtime. The full-size model needs a host with "
        ">= 64 GiB RAM (e.g. the 128 GiB GPU machine); it is OOM-killed on 24 GiB.",
    )
    _add_source_args(p)
    p.add_argument("--onnx", type=Path, help="fp32 backbone ONNX to quantize (default: export one from --weights/--seed)")
    p.add_argument("--images", type=Path, required=True, help="folder of person crops, or of images with --boxes")
    p.add_argument("--boxes", type=Path, help='JSON {"image.jpg": [[x1,y1,x2,y2], ...]}: person boxes per image')
    p.add_argument("--augment", type=int, default=0, help="extra random views (flip, colour, box scale) per image")
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"], help="calibration method")
    p.add_argument("--eval-count", type=int, default=8, help="images (not augmented) for the fidelity report (default 8)")
    p.add_argument("--out", type=Path, required=True, help="output INT8 QDQ .onnx")
    p.add_argument("--report", type=Path, help="write the fidelity report JSON here")
    p.set_defaults(func=_quantize)

    p = subparsers.add_parser("build-engine", help="build (or fetch from the cache) a TensorRT engine from a backbone ONNX")
    p.add_argument("--onnx", type=Path, required=True, help="QDQ ONNX for int8, plain ONNX for fp16/fp32")
    add_model_args(p, ("--config",))
    p.add_argument("--precision", choices=["int8", "fp16", "fp32"], help="default: int8 for a QDQ ONNX, else fp16")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimisation profile (default 8)")
    p.add_argument("--opt-batch", type=int, help="batch the kernels are tuned for (default min(4, max batch))")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace (default 4 GiB)")
    p.add_argument("--cache-dir", type=Path, help="engine cache folder (default $SAM3D_BODY_ENGINE_CACHE or ~/.cache/sam3d_body_ros/engines)")
    p.add_argument("--device", default="cuda:0", help="CUDA device to build for (default cuda:0)")
    p.set_defaults(func=_build_engine)

