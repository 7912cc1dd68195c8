"""Device micro-benchmarks behind the backbone numbers: GEMM shapes (bf16 / fp8 rowwise / int8), SDPA backends,
and a torch.profiler kernel table of compiled backbone variants. Writes $OUT/profile.json; tables printed.
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
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3d_body_ros.core.config import get_config  # noqa: E402
from sam3d_body_ros.core.synthetic import random_backbone  # noqa: E402
from sam3d_body_ros.runtime.torch_backend import TorchBackend  # noqa: E402
from sam3d_body_ros.runtime.torch_int8_backend import TorchInt8Backend  # noqa: E402

SHAPES = [(1280, 3840, "qkv"), (1280, 1280, "proj"), (1280, 5120, "fc1_g/x"), (1280, 10240, "fc1 stacked"), (5120, 1280, "fc2")]


def gemms(tokens: list[int]) -> list[dict]:
    rows = []
    dev = "cuda"
    for m in tokens:
        for k, n, what in SHAPES:
            a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
            flop = 2 * m * n * k
            t_bf16 = do_bench(lambda: F.linear(a, w), warmup=25, rep=100, return_mode="median")
            a8 = a.to(torch.float8_e4m3fn)
            w8 = w.to(torch.float8_e4m3fn)
            sa = torch.ones(m, 1, device=dev)
            sb = torch.ones(1, n, device=dev)
            t_fp8 = do_bench(lambda: torch._scaled_mm(a8, w8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=True),
                             warmup=25, rep=100, return_mode="median")
            ai = torch.randint(-127, 127, (m, k), device=dev, dtype=torch.int8)
            wi = torch.randint(-127, 127, (n, k), device=dev, dtype=torch.int8)
            t_i8 = do_bench(lambda: torch._int_mm(ai, wi.t()), warmup=25, rep=100, return_mode="median")
            r = {"M": m, "K": k, "N": n, "what": what, "bf16_ms": t_bf16, "fp8_ms": t_fp8, "int8_ms": t_i8,
                 "bf16_tflops": flop / t_bf16 / 1e9, "fp8_tflops": flop / t_fp8 / 1e9, "int8_tops": flop / t_i8 / 1e9}
            rows.append(r)
    return rows


def sdpa(batches: list[int]) -> list[dict]:
    rows = []
    for b in batches:
        q, k, v = (torch.randn(b, 20, 1029, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flop = 4 * b * 20 * 1029 * 1029 * 64
        for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                         ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
            try:
                with sdpa_kernel([be]):
                    t = do_bench(lambda: F.scaled_dot_product_attention(q, k, v), warmup=25, rep=100, return_mode="median")
                rows.append({"batch": b, "backend": name, "ms": t, "tflops": flop / t / 1e9})
            except RuntimeError as e:
                rows.append({"batch": b, "backend": name, "error": str(e)[:200]})
    return rows




def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="bf16-blocks,fp8-blocks")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "/tmp/out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res: dict = {"gemm": gemms([1029, 8232]), "sdpa": sdpa([1, 8])}
    (out_dir / "profile.json").write_text(json.dumps(res, indent=1))
    print(f"micro done {time.time()-t0:.0f}s", flush=True)

    dev = torch.device("cuda")
    base = random_backbone(get_config("full"), seed=0, layer_scale=0.1)
    x8 = torch.randn(8, 3, 512, 512, device=dev)
    makers = {
        "bf16-blocks": lambda m: TorchBackend(m, dev, "bf16", compile="regions", cuda_graphs=False, compile_mode="default"),
        "bf16-blocks-nofuse": lambda m: TorchBackend(m, dev, "bf16", compile="regions", cuda_graphs=False, compile_mode="default", fuse=False),
        "fp8-blocks": lambda m: TorchInt8Backend(m, dev, "fp8", compile="regions", cuda_graphs=False, compile_mode="default"),
    }
    from torch.profiler import ProfilerActivity, profile

    res["profiles"] = {}
    for name in [p for p in args.profile.split(",") if p]:
        be = makers[name](copy.deepcopy(base))
        for b in [int(v) for v in args.batches.split(",")]:
            with torch.inference_mode():
                for _ in range(3):
                    be(x8[:b])
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        be(x8[:b])
                    torch.cuda.synchronize()
            ka = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
            total = sum(e.device_time_total for e in ka)
            top = [{"name": e.key[:90], "calls": e.count // 5, "ms_per_fwd": e.device_time_total / 5 / 1000,
                    "pct": 100 * e.device_time_total / max(total, 1)} for e in ka[:18]]
            res["profiles"][f"{name}-b{b}"] = {"gpu_ms_per_fwd": total / 5 / 1000, "top": top}
            print(f"\n== {name} batch {b}: GPU busy {total/5/1000:.2f} ms per forward ({time.time()-t0:.0f}s)")
            for t in top:
                print(f"  {t['pct']:5.1f}% {t['ms_per_fwd']:7.3f} ms {t['calls']:4d}x  {t['name']}")
            (out_dir / "profile.json").write_text(json.dumps(res, indent=1))
        del be
        torch.cuda.empty_cache()

    print("\nGEMM (ms, TFLOP/s)")
    for r in res["gemm"]:
        print(f"  M={r['M']:5d} {r['what']:12s} K={r['K']:5d} N={r['N']:5d}  bf16 {r['bf16_ms']:.4f} ({r['bf16_tflops']:.0f})"
              f"  fp8 {r['fp8_ms']:.4f} ({r['fp8_tflops']:.0f})  int8 {r['int8_ms']:.4f} ({r['int8_tops']:.0f})")
    print("SDPA (B,20,1029,64) bf16")
    for r in res["sdpa"]:
        print("  ", r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
