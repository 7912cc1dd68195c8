"""`sam3d-body bench`: timings of the backbone backends, the decoder + MHR head and the whole per-frame pipeline.

Random weights (speed does not depend on them). CUDA events for GPU-only stages, wall clock (synchronised)
for the pipeline, whose outputs come back to the host. Prints a table and writes one JSON file.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import ModelConfig, get_config
from .fidelity import rel_l2


def _stats(times_ms: list[float], batch: int = 1) -> dict[str, float]:
    ts = np.sort(np.asarray(times_ms))
    med = float(np.median(ts))
    return {"median_ms": med, "p95_ms": float(np.percentile(ts, 95)), "mean_ms": float(ts.mean()),
            "per_s": 1000.0 * batch / med}


def time_cuda(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    """Per-call device times (ms) with CUDA events after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in ev]


def time_wall(fn: Callable[[], Any], warmup: int, iters: int, sync: Callable[[], None]) -> list[float]:
    """Per-call wall-clock times (ms) of a call that ends synchronised."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        out.append(1000.0 * (time.perf_counter() - t))
    return out


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, driver, library versions."""
    import timm

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                           "numpy": np.__version__, "host": platform.node()}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            pass
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["device"] = platform.processor() or "cpu"
    return env


def fidelity_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random backbone weights in timm keys with layer-scale 0.1 and random q/v biases.

    timm's 1e-5 layer-scale init makes each block ~identity and would hide reduced-precision error.
    """
    from ..core.synthetic import random_backbone

    return random_backbone(cfg, seed, layer_scale=0.1).encoder.state_dict()


def synthetic_frame(persons: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1280x720 textured RGB image and `persons` side-by-side person boxes (xyxy px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:720, 0:1280]
    base = np.stack([(xx * 0.2) % 255, (yy * 0.3) % 255, ((xx + yy) * 0.1) % 255], -1)
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    w = 1280 / max(persons, 1)
    boxes = np.array([[i * w + 0.1 * w, 80.0, i * w + 0.9 * w, 680.0] for i in range(persons)], np.float32)
    return image, boxes


def head_inputs(cfg: ModelConfig, persons: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Decoder inputs for `persons` crops of a synthetic frame: features, center, side, affine, K."""
    from ..core.camera import default_intrinsics
    from ..core.crop import prepare_crops

    image, boxes = synthetic_frame(persons)
    crops = prepare_crops(image, boxes, cfg.backbone.img_size)
    g = torch.Generator().manual_seed(persons)
    feats = torch.randn(persons, cfg.backbone.embed_dim, cfg.backbone.grid, cfg.backbone.grid, generator=g)
    K = torch.as_tensor(default_intrinsics(1280, 720), dtype=torch.float32).expand(persons, 3, 3).contiguous()
    return tuple(t.to(device) for t in (feats, crops.center, crops.side, crops.affine, K))


PARTS = ("backbone", "decoder", "pipeline", "node")
BASELINE = ("timm-compile", "bf16")  # every backbone row is also reported as a speed ratio to this one


class TimmCompileBaseline:
    """What a user gets from timm in three lines: the plain timm model in bf16, `torch.compile` with CUDA graphs
    (mode reduce-overhead); no code of this package on the timed path except the reshape to (N,C,h,w) float32."""

    name = "timm-compile"

    def __init__(self, encoder: torch.nn.Module, device: torch.device, num_prefix_tokens: int, grid: int) -> None:
        self.device, self.precision = device, "bf16"
        self.encoder = encoder.to(device, torch.bfloat16).eval()
        self.forward = torch.compile(self.encoder.forward_features, mode="reduce-overhead")
        self.prefix, self.grid = num_prefix_tokens, grid

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        tokens = self.forward(crops.to(self.device, torch.bfloat16))[:, self.prefix:]
        n, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(n, c, self.grid, self.grid).float()


def gemm_peaks(device: torch.device, size: int = 8192) -> dict[str, float]:
    """TFLOP/s of one large square GEMM in bf16 and in fp8 e4m3 with row-wise scales (the 8-bit GEMMs' ceiling)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()
    sa = torch.ones(size, 1, device=device)
    sb = torch.ones(1, size, device=device)
    flop = 2 * size**3
    peaks = {"size": size}
    for label, fn in (("bf16_tflops", lambda: a @ b),
                      ("fp8_rowwise_tflops", lambda: torch._scaled_mm(a8, b8, scale_a=sa, scale_b=sb,
                                                                      out_dtype=torch.bfloat16, use_fast_accum=True))):
        peaks[label] = flop / (float(np.median(time_cuda(fn, 10, 50))) * 1e-3) / 1e12
    return peaks


def kernel_table(backend: Any, crops: torch.Tensor, top: int = 15) -> dict[str, Any]:
    """GPU time per kernel of one backbone forward (compiled, not graph-replayed, so the profiler sees each
    kernel): the `top` kernels by time, and the total."""
    from torch.profiler import ProfilerActivity, profile

    x = crops.to(backend.device, getattr(backend, "dtype", torch.bfloat16))
    calls = 5
    with torch.inference_mode():
        for _ in range(3):
            backend.module(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                backend.module(x)
            torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in kernels) / calls / 1000.0
    return {"batch": int(crops.shape[0]), "gpu_ms_per_forward": total,
            "kernels": [{"kernel": e.key[:120], "calls_per_forward": e.count / calls,
                         "ms_per_forward": e.device_time_total / calls / 1000.0} for e in kernels[:top]]}


KERNEL_TABLE_BACKENDS = ("torch-int8", "fused-fp8")  # the 8-bit paths: per-kernel GPU time at batch 1


def _make_backbone(name: str, precision: str, cfg: ModelConfig, device: torch.device,
                   state: dict[str, torch.Tensor], seed: int) -> Any:
    """A backend by name with the given timm weights; "torch-eager" is the plain eager reference, "timm-compile"
    the baseline (TimmCompileBaseline)."""
    from ..core.backbone import build_backbone
    from ..runtime.backend import create_backend
    from ..runtime.torch_backend import TorchBackend

    if name not in (BASELINE[0], "torch-eager"):
        return create_backend(name, cfg, device=device, precision=precision, backbone_state=state, seed=seed)
    module = build_backbone(cfg)
    module.load_timm_state(state)
    if name == BASELINE[0]:
        return TimmCompileBaseline(module.encoder, device, module.num_prefix_tokens, module.grid)
    return TorchBackend(module, device, precision, compile=False, cuda_graphs=False, fuse=False)


def parse_backends(spec: str) -> list[tuple[str, str]]:
    """'torch:bf16,torch-int8:fp8' -> [(backend, precision), ...]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, precision = item.partition(":")
        out.append((name, precision or "fp32"))
    return out


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """All measurements; returns the JSON-ready result."""
    from ..core.synthetic import random_head
    from ..pipeline import BodyPipeline, PipelineSettings
    from ..runtime.torch_backend import TorchBackend, head_runner, make_runner

    device = torch.device(args.device)
    cfg = get_config(args.config)
    is_cuda = device.type == "cuda"
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    batches = [int(b) for b in args.batches.split(",")]
    warmup, iters = args.warmup, args.iters
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench {time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    result: dict[str, Any] = {"config": cfg.name, "warmup": warmup, "iters": iters, **environment(device)}
    timer = (lambda fn: time_cuda(fn, warmup, iters)) if is_cuda else (
        lambda fn: time_wall(fn, warmup, iters, lambda: None))

    parts = set(args.parts.split(","))
    pipeline_spec = parse_backends(args.pipeline_backend)[0]
    pipeline_backend = None
    # ---- backbone: each backend/precision at each batch, fidelity vs eager fp32 ----
    if "backbone" in parts:
        state = fidelity_state(cfg, args.seed)
        gen = torch.Generator().manual_seed(args.seed + 7)
        crops = torch.randn(max(batches), 3, cfg.backbone.img_size, cfg.backbone.img_size, generator=gen).to(device)
        from ..core.backbone import build_backbone

        ref_module = build_backbone(cfg)
        ref_module.load_timm_state(state)
        reference = TorchBackend(ref_module, device, "fp32", compile=False, cuda_graphs=False)
        with torch.inference_mode():
            ref_feats = reference(crops)
        del reference, ref_module
        rows: list[dict[str, Any]] = []
        kernels: list[dict[str, Any]] = []
        specs = [("torch-eager", "bf16")] + ([BASELINE] if is_cuda else []) + parse_backends(args.backends)
        for name, precision in specs:
            t0 = time.perf_counter()
            try:
                backend = _make_backbone(name, precision, cfg, device, state, args.seed)
            except Exception as e:  # noqa: BLE001 - e.g. fp8 on a GPU without it: report and go on
                rows.append({"backend": name, "precision": precision, "error": repr(e)[:300]})
                log(f"backbone {name}/{precision} FAILED: {e!r}"[:300])
                continue
            for b in batches:
                x = crops[:b]
                try:
                    t1 = time.perf_counter()
                    with torch.inference_mode():
                        feats = backend(x)
                    first_s = time.perf_counter() - t1
                    with torch.inference_mode():
                        st = _stats(timer(lambda: backend(x)), b)
                except Exception as e:  # noqa: BLE001 - a backend failing at one batch: report and go on
                    rows.append({"backend": name, "precision": precision, "batch": b, "error": repr(e)[:300]})
                    log(f"backbone {name}/{precision} b{b} FAILED: {e!r}"[:300])
                    continue
                row = {"backend": name, "precision": precision, "batch": b, "median_ms": st["median_ms"],
                       "p95_ms": st["p95_ms"], "crops_per_s": st["per_s"], "first_call_s": first_s,
                       "feature_rel_l2_vs_fp32": rel_l2(feats, ref_feats[:b])}
                rows.append(row)
                log(f"backbone {name}/{precision} b{b}: {row['median_ms']:.2f} ms, rel L2 {row['feature_rel_l2_vs_fp32']:.2e}")
            if is_cuda and name in KERNEL_TABLE_BACKENDS and hasattr(backend, "module"):
                try:
                    kernels.append({"backend": name, "precision": precision, **kernel_table(backend, crops[:1])})
                except Exception as e:  # noqa: BLE001 - the profile is extra information
                    log(f"kernel table {name}/{precision} FAILED: {e!r}"[:300])
            log(f"  ({name}/{precision} built+timed in {time.perf_counter() - t0:.0f}s)")
            if (name, precision) == pipeline_spec:
                pipeline_backend = backend  # compiled and captured already: the pipeline runs it
            del backend
            if is_cuda:
                torch.cuda.empty_cache()
        base = {r["batch"]: r["median_ms"] for r in rows if (r["backend"], r["precision"]) == BASELINE and "error" not in r}
        for r in rows:
            if r.get("batch") in base and "error" not in r:
                r["speedup_vs_baseline"] = base[r["batch"]] / r["median_ms"]
        result["backbone"] = rows
        if kernels:
            result["backbone_kernels"] = kernels
        if is_cuda:
            result["gemm_peak"] = gemm_peaks(device)
            log(f"GEMM peak (8192^3): bf16 {result['gemm_peak']['bf16_tflops']:.0f} TFLOP/s, "
                f"fp8 row-wise {result['gemm_peak']['fp8_rowwise_tflops']:.0f} TFLOP/s")
        _save(args.out, result)

    # ---- decoder + MHR (body mode): eager, graph replay, and the pipeline's path (compiled regions, TF32, graph) ----
    if "decoder" in parts:
        head = random_head(cfg, seed=args.seed).to(device).eval()
        paths: dict[str, Callable[..., Any]] = {"eager": head}
        if is_cuda:
            paths["graph"] = make_runner(head, device, compile=False)
            # the pipeline's path (compiled regions, TF32, graphs) on a head of its own: compiling works in place
            paths["compiled+graph+tf32"] = head_runner(random_head(cfg, seed=args.seed).to(device).eval(), device)
        dec_rows = []
        for persons in [int(p) for p in args.decoder_persons.split(",")]:
            inputs = head_inputs(cfg, persons, device)
            with torch.inference_mode():
                ref = head(*inputs)
            for label, fn in paths.items():
                try:
                    with torch.inference_mode():
                        t1 = time.perf_counter()
                        out = fn(*inputs)
                        first_s = time.perf_counter() - t1
                        st = _stats(timer(lambda: fn(*inputs)), persons)
                    err = max(rel_l2(out[k], ref[k]) for k in ("pred_vertices", "pred_keypoints_3d", "pred_cam_t"))
                    dev_mm = 1000.0 * float((out["pred_vertices"] - ref["pred_vertices"]).norm(dim=-1).max())
                    dec_rows.append({"path": label, "persons": persons, "median_ms": st["median_ms"],
                                     "p95_ms": st["p95_ms"], "first_call_s": first_s, "rel_l2_vs_eager": err,
                                     "max_vertex_dev_mm": dev_mm})
                    log(f"decoder+MHR {label} {persons}p: {st['median_ms']:.2f} ms (first call {first_s:.1f} s, "
                        f"rel vs eager {err:.1e}, max vertex {dev_mm:.3f} mm)")
                except Exception as e:  # noqa: BLE001 - a failing optional path is reported, the bench goes on
                    dec_rows.append({"path": label, "persons": persons, "error": repr(e)[:300]})
                    log(f"decoder+MHR {label} {persons}p FAILED: {e!r}"[:300])
        result["decoder"] = dec_rows
        _save(args.out, result)
        del paths, head
        if is_cuda:
            torch.cuda.empty_cache()

    # ---- whole pipeline per frame: crop -> outputs on the host ----
    if "pipeline" in parts:
        pipe_rows: list[dict[str, Any]] = []
        result["pipeline"] = pipe_rows
        try:
            backend, precision = pipeline_spec
            pipe = BodyPipeline(PipelineSettings(model_config=cfg.name, backend=backend, device=str(device),
                                                 precision=precision, seed=args.seed), pipeline_backend)
            pipeline_backend = None
            sync = (lambda: torch.cuda.synchronize(device)) if is_cuda else (lambda: None)
            persons_list = [int(p) for p in args.pipeline_persons.split(",")]
            runs = [(pipe, p) for p in sorted(set(persons_list + [args.memory_persons]))]
            if args.full_persons:  # `full` mode (hand refinement) on the same backbone
                full = BodyPipeline(PipelineSettings(model_config=cfg.name, device=str(device), seed=args.seed,
                                                     mode="full"), pipe.backend)
                runs += [(full, int(p)) for p in args.full_persons.split(",")]
            for pipe, persons in runs:
                mode = pipe.settings.mode
                image, boxes = synthetic_frame(persons)
                pipe.infer(image, boxes)  # compile / capture
                if is_cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(device)
                stages: list[dict[str, float]] = []

                def frame() -> None:
                    stages.append(pipe.infer(image, boxes).timings_ms)

                st = _stats(time_wall(frame, warmup, iters, sync), 1)
                if persons == args.memory_persons and is_cuda and mode == "body":
                    result["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    result["peak_gpu_mem_persons"] = persons
                if persons in persons_list or mode != "body":
                    stage_med = {k: float(np.median([s[k] for s in stages[warmup:]])) for k in stages[0]}
                    pipe_rows.append({"persons": persons, "mode": mode, "backend": pipe.backend_name,
                                      "median_ms": st["median_ms"], "p95_ms": st["p95_ms"], "frames_per_s": st["per_s"],
                                      "stage_median_ms": stage_med})
                    log(f"pipeline {mode} {persons}p ({pipe.backend_name}): {st['median_ms']:.2f} ms, "
                        f"p95 {st['p95_ms']:.2f}")
        except Exception as e:  # noqa: BLE001 - keep the backbone/decoder numbers when the pipeline fails
            result["pipeline_error"] = repr(e)[:500]
            log(f"pipeline FAILED: {e!r}"[:300])
        pipe = None
        if is_cuda:
            torch.cuda.empty_cache()
        _save(args.out, result)

    # ---- node end to end over loopback DDS (its own process; needs rclpy and vision_msgs) ----
    if "node" in parts:
        extras = ["5@mesh_triangles:=0", "1,5@mode:=full"] if args.node_extra is None else args.node_extra
        specs = ([args.node_persons] if args.node_persons else []) + [e for e in extras if e]
        for spec in specs:  # PERSONS[@NAME:=VALUE;...], e.g. "5@mesh_triangles:=0": 5 persons, full-resolution markers
            persons, _, params = spec.partition("@")
            run = run_node_bench(args, cfg.name, log, persons.split(","), params.split(";"))
            result.setdefault("node", []).extend(run.get("node", []))
            if "node_run" in run:
                result.setdefault("node_runs", []).append(run["node_run"])
            else:
                result.setdefault("node_errors", []).append({"params": params, "error": run["node_error"]})
            _save(args.out, result)

    result["total_s"] = time.perf_counter() - t_start
    return result


def run_node_bench(args: argparse.Namespace, config: str, log: Callable[[str], None], persons: list[str],
                   params: list[str]) -> dict[str, Any]:
    """`sam3d_body_ros.tools.latency_bench` in a subprocess (node parameters `params`, NAME:=VALUE);
    {"node": rows, "node_run": details} or {"node_error"}."""
    import sys
    import tempfile

    backend, precision = parse_backends(args.node_backend or args.pipeline_backend)[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "node.json"
        cmd = [sys.executable, "-m", "sam3d_body_ros.tools.latency_bench", "--config", config, "--device", args.device,
               "--backend", backend, "--precision", precision, "--rate", str(args.node_rate),
               "--duration", str(args.node_duration), "--warmup", str(args.node_warmup),
               "--persons", *persons, "--timeout", str(args.node_timeout), "--out", str(out),
               *(a for p in params if p for a in ("--param", p))]
        log("node: " + " ".join(cmd[2:]))
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=args.node_timeout + 60)
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
        if proc.returncode != 0 or not out.exists():
            return {"node_error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}"}
        doc = json.loads(out.read_text())
    label = {"backend": backend, "precision": precision, "params": ";".join(filter(None, params))}
    return {"node": [dict(row, **label) for row in doc.pop("node")], "node_run": doc}


def _save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


def print_table(r: dict[str, Any]) -> None:
    """Human-readable summary of a bench result (the sections it has)."""
    print(f"\n{r.get('device')} | driver {r.get('driver', '-')} | torch {r['torch']} | timm {r['timm']} | config {r['config']}")
    if r.get("backbone"):
        print(f"{'backbone':<14}{'prec':<6}{'batch':>5}{'median ms':>11}{'p95 ms':>9}{'crops/s':>9}{'relL2 fp32':>12}"
              f"{'x baseline':>11}")
        for b in r["backbone"]:
            if "error" in b:
                print(f"{b['backend']:<14}{b['precision']:<6}{b.get('batch', ''):>5}  ERROR {b['error'][:60]}")
                continue
            ratio = f"{b['speedup_vs_baseline']:.2f}" if "speedup_vs_baseline" in b else "-"
            print(f"{b['backend']:<14}{b['precision']:<6}{b['batch']:>5}{b['median_ms']:>11.2f}{b['p95_ms']:>9.2f}"
                  f"{b['crops_per_s']:>9.0f}{b['feature_rel_l2_vs_fp32']:>12.2e}{ratio:>11}")
    if "gemm_peak" in r:
        g = r["gemm_peak"]
        print(f"GEMM peak {g['size']}^3: bf16 {g['bf16_tflops']:.0f}, fp8 row-wise {g['fp8_rowwise_tflops']:.0f} TFLOP/s")
    for k in r.get("backbone_kernels", []):
        print(f"kernels of {k['backend']}/{k['precision']} b{k['batch']}: {k['gpu_ms_per_forward']:.2f} ms GPU per forward")
        for e in k["kernels"][:8]:
            print(f"  {e['ms_per_forward']:7.3f} ms {e['calls_per_forward']:5.0f}x  {e['kernel'][:80]}")
    if r.get("decoder"):
        print(f"{'decoder+MHR':<14}{'path':<14}{'pers':>5}{'median ms':>11}{'p95 ms':>9}")
        for d in r["decoder"]:
            if "error" in d:
                print(f"{'':<14}{d['path']:<14}{d['persons']:>5}  ERROR {d['error'][:60]}")
            else:
                print(f"{'':<14}{d['path']:<14}{d['persons']:>5}{d['median_ms']:>11.2f}{d['p95_ms']:>9.2f}")
    if r.get("pipeline"):
        print(f"{'pipeline':<14}{'':<6}{'pers':>5}{'median ms':>11}{'p95 ms':>9}  stages (median ms)")
        for p in r["pipeline"]:
            stages = " ".join(f"{k} {v:.1f}" for k, v in p["stage_median_ms"].items())
            label = f"{p['backend']} {p.get('mode', 'body')}"
            print(f"{label:<20}{p['persons']:>5}{p['median_ms']:>11.2f}{p['p95_ms']:>9.2f}  {stages}")
    if r.get("node"):
        print(f"{'node (DDS)':<14}{'':<6}{'pers':>5}{'median ms':>11}{'p95 ms':>9}{'answered':>10}{'rate Hz':>9}")
        for n in r["node"]:
            label = f"{n['backend']}/{n['precision']} {n['params']}"
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            print(f"{label:<20}{n['persons']:>5}{fmt(n['median_ms']):>11}{fmt(n['p95_ms']):>9}"
                  f"{n['answered']:>6}/{n['sent']:<3}{n['rate_hz']:>9.2f}")
    for e in r.get("node_errors", []):
        print(f"node {e['params']}: not measured ({e['error'][:200]})")
    if "peak_gpu_mem_gib" in r:
        print(f"peak GPU memory ({r['peak_gpu_mem_persons']} persons, whole pipeline): {r['peak_gpu_mem_gib']:.2f} GiB")
    print(f"total {r['total_s']:.0f} s")


def _bench(args: argparse.Namespace) -> int:
    from .options import fail

    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        raise fail(f"unknown --parts {', '.join(sorted(unknown))}", None, f"choose from {','.join(PARTS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise fail("CUDA is not available", None, "run on a GPU machine or pass --device cpu --config tiny")
    result = run_bench(args)
    _save(args.out, result)
    print_table(result)
    print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` sub-command."""
    p = subparsers.add_parser("bench", help="time backbone backends, decoder + MHR and the whole pipeline (JSON + table)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated sections to run (default all: "
                   f"{','.join(PARTS)}); e.g. two calls 'backbone,decoder,pipeline' and 'node' on a 10-minute budget")
    p.add_argument("--config", default="full", choices=["tiny", "full"],
                   help="model size (default full: the real 840M backbone; tiny for a quick check on a CPU)")
    p.add_argument("--device", default="cuda", help="torch device to time on (default cuda)")
    p.add_argument("--backends", default="torch:bf16,torch:fp16,torch-int8:fp8,fused-fp8:fp8",
                   help="backbone backend:precision list (an eager bf16 reference is always timed first)")
    p.add_argument("--batches", default="1,8", help="backbone batch sizes to time (default 1,8)")
    p.add_argument("--decoder-persons", default="1,8", help="persons per decoder + MHR run (default 1,8)")
    p.add_argument("--pipeline-persons", default="1,5", help="persons per whole-frame run (default 1,5)")
    p.add_argument("--full-persons", default="1,5", help="persons per whole-frame run in `full` mode (hand "
                                                         "refinement; default 1,5; '' skips)")
    p.add_argument("--pipeline-backend", default="torch-int8:fp8", help="backend:precision of the pipeline runs")
    p.add_argument("--memory-persons", type=int, default=8, help="persons of the frame whose peak GPU memory is reported")
    p.add_argument("--node-persons", default="1,5,8", help="persons counts of the node bench over DDS at default settings ('' skips these rows; "
                        "--node-extra rows still run)")
    p.add_argument("--node-extra", action="append",
                   help="more node rows as PERSONS@NAME:=VALUE;NAME:=VALUE (repeatable; default: 5 persons with "
                        "full-resolution markers, and 1 and 5 persons in `full` mode; '' for none)")
    p.add_argument("--node-backend", default="", help="backend:precision of the node (default: the pipeline's)")
    p.add_argument("--node-rate", type=float, default=30.0, help="image rate of the node bench in Hz (default 30)")
    p.add_argument("--node-duration", type=float, default=15.0, help="measured seconds per persons count")
    p.add_argument("--node-warmup", type=float, default=3.0, help="uncounted streaming seconds per persons count")
    p.add_argument("--node-timeout", type=float, default=300.0, help="s to wait for the node process to get ready")
    p.add_argument("--warmup", type=int, default=50, help="untimed iterations before each timing (default 50)")
    p.add_argument("--iters", type=int, default=200, help="timed iterations (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", type=Path, default=Path("bench/results.json"), help="results JSON (table printed too)")
    p.set_defaults(func=_bench)
