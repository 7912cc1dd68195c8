"""Device exploration: backbone variants (eager / compile / CUDA graph, bf16 / int8 / fp8) at batch 1 and 8.

Run on the GPU machine from the repo root: `python bench/gpu_backbone.py [--only NAME,...] [--budget-s 500]`.
Writes $OUT/backbone_variants.json and prints a table last.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3d_body_ros.core.config import get_config  # noqa: E402
from sam3d_body_ros.core.synthetic import random_backbone  # noqa: E402
from sam3d_body_ros.runtime.torch_backend import TorchBackend  # noqa: E402
from sam3d_body_ros.runtime.torch_int8_backend import TorchInt8Backend  # noqa: E402
from sam3d_body_ros.tools.fidelity import rel_l2  # noqa: E402


def time_fn(fn, x, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn(x)
        ends[i].record()
    torch.cuda.synchronize()
    ts = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    med = ts[len(ts) // 2]
    p95 = ts[int(0.95 * (len(ts) - 1))]
    return {"median_ms": med, "p95_ms": p95, "min_ms": ts[0]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--profile", default="")
    args = ap.parse_args()
    t0 = time.time()
    out_dir = Path(os.environ.get("OUT", "/tmp/out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    cfg = get_config("full")
    batches = [int(b) for b in args.batches.split(",")]
    env = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    try:
        import timm
        import triton

        env["timm"] = timm.__version__
        env["triton"] = triton.__version__
    except ImportError as e:
        env["import_error"] = str(e)
    print(json.dumps(env), flush=True)

    base = random_backbone(cfg, seed=0, layer_scale=0.1)  # fp32 CPU
    gen = torch.Generator().manual_seed(123)
    x8 = torch.randn(8, 3, 512, 512, generator=gen).to(dev)

    # fp32 reference (no TF32) for fidelity
    ref_mod = copy.deepcopy(base).to(dev).eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        ref = ref_mod(x8).float()
        r32 = time_fn(ref_mod, x8[:1], 3, 10)
    del ref_mod
    torch.cuda.empty_cache()
    print(f"fp32 eager b1 {r32['median_ms']:.2f} ms  ({time.time()-t0:.0f}s)", flush=True)

    variants = {
        "bf16-eager": lambda m: TorchBackend(m, dev, "bf16", compile=False, cuda_graphs=False),
        "bf16-compile-default": lambda m: TorchBackend(m, dev, "bf16", compile=True, cuda_graphs=False, compile_mode="default"),
        "bf16-compile-default-graph": lambda m: TorchBackend(m, dev, "bf16", compile=True, cuda_graphs=True, compile_mode="default"),
        "bf16-eager-graph": lambda m: TorchBackend(m, dev, "bf16", compile=False, cuda_graphs=True),
        "fp8-compile-default-graph": lambda m: TorchInt8Backend(m, dev, "fp8", compile=True, cuda_graphs=True, compile_mode="default"),
        "int8-compile-default-graph": lambda m: TorchInt8Backend(m, dev, "int8", compile=True, cuda_graphs=True, compile_mode="default"),
        "bf16-blocks-default-graph": lambda m: TorchBackend(m, dev, "bf16", compile="regions", cuda_graphs=True, compile_mode="default"),
        "fp16-blocks-default-graph": lambda m: TorchBackend(m, dev, "fp16", compile="regions", cuda_graphs=True, compile_mode="default"),
        "bf16-blocks-nofuse-graph": lambda m: TorchBackend(m, dev, "bf16", compile="regions", cuda_graphs=True, compile_mode="default", fuse=False),
        "fp8-blocks-default-graph": lambda m: TorchInt8Backend(m, dev, "fp8", compile="regions", cuda_graphs=True, compile_mode="default"),
        "bf16-blocks-maxat-graph": lambda m: TorchBackend(m, dev, "bf16", compile="regions", cuda_graphs=True),
        "fp8-blocks-maxat-graph": lambda m: TorchInt8Backend(m, dev, "fp8", compile="regions", cuda_graphs=True),
        "bf16-compile-maxat-graph": lambda m: TorchBackend(m, dev, "bf16", compile=True, cuda_graphs=True),
        "fp8-compile-maxat-graph": lambda m: TorchInt8Backend(m, dev, "fp8", compile=True, cuda_graphs=True),
    }
    only = [v for v in args.only.split(",") if v]
    results = []
    for name, make in variants.items():
        if only and name not in only:
            continue
        if time.time() - t0 > args.budget_s:
            print(f"skip {name}: budget", flush=True)
            continue
        try:
            backend = make(copy.deepcopy(base))
            for b in batches:
                t1 = time.time()
                with torch.inference_mode():
                    y = backend(x8[:b])  # first call: compile + capture
                torch.cuda.synchronize()
                first_s = time.time() - t1
                fid = rel_l2(y, ref[:b])
                tm = time_fn(backend, x8[:b], args.warmup, args.iters)
                row = {"variant": name, "batch": b, **tm, "crops_per_s": 1000 * b / tm["median_ms"],
                       "first_call_s": first_s, "rel_l2_vs_fp32": fid,
                       "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
                results.append(row)
                print(json.dumps(row), flush=True)
                if args.profile == name and b == 1:
                    from torch.profiler import ProfilerActivity, profile

                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            backend(x8[:1])
                        torch.cuda.synchronize()
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20), flush=True)
            del backend
        except Exception as e:  # record and go on: one broken variant must not lose the others
            import traceback

            traceback.print_exc()
            results.append({"variant": name, "error": repr(e)[:500]})
        torch.cuda.empty_cache()
        (out_dir / "backbone_variants.json").write_text(json.dumps({"env": env, "fp32_b1_ms": r32, "rows": results}, indent=1))

    print(f"\nfp32 eager (no TF32) b1: {r32['median_ms']:.2f} ms; total {time.time()-t0:.0f}s")
    print(f"{'variant':32s} {'b':>2s} {'med ms':>8s} {'p95 ms':>8s} {'crops/s':>8s} {'first s':>8s} {'relL2':>9s}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:32s} ERROR {r['error'][:80]}")
        else:
            print(f"{r['variant']:32s} {r['batch']:2d} {r['median_ms']:8.2f} {r['p95_ms']:8.2f} {r['crops_per_s']:8.0f} "
                  f"{r['first_call_s']:8.1f} {r['rel_l2_vs_fp32']:9.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
