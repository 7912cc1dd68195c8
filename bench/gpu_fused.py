"""Device exploration for issue 14: the fused fp8 Triton kernels and the `fused-fp8` backend on a Hopper GPU.

Run on the GPU machine from the repo root: `python3 bench/gpu_fused.py --out $OUT/fused.json` (< 3 min; a rerun is
faster: Triton's kernel cache). Sections (each one's failures are printed and recorded, the others still run):
  kernels  - every kernel vs its torch reference at full size (M = 1029 and 8232 tokens; qkv, proj, fc1 SwiGLU,
             fc2 bf16-A + residual, LayerNorm+quantize): rel. L2, median time, TFLOP/s, next to torch._scaled_mm
             rowwise and bf16 torch.mm on the same shapes, and an 8192^3 fp8 _scaled_mm peak;
  backbone - the full backbone (random weights, layer scale 0.1 as bench/gpu_backbone.py): fused-fp8 (proj bf16 and
             proj fp8), torch-int8:fp8, torch:bf16 at batch 1 and 8: median/p95 ms (CUDA events, after warm-up,
             compiled regions + CUDA graphs as the backends run) and feature rel. L2 vs an fp32 eager reference.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3d_body_ros.core.config import get_config  # noqa: E402
from sam3d_body_ros.core.synthetic import random_backbone  # noqa: E402
from sam3d_body_ros.runtime import fp8_kernels as fk  # noqa: E402
from sam3d_body_ros.tools.bench import _stats, gemm_peaks, time_cuda  # noqa: E402
from sam3d_body_ros.tools.fidelity import rel_l2  # noqa: E402

T0 = time.time()
REPORT: dict = {"env": {}, "kernels": [], "peak": {}, "backbone": [], "errors": []}


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def cuda_time(fn, warmup: int = 10, iters: int = 50) -> dict:
    """Median / p95 ms of fn() over `iters` calls timed with CUDA events (the bench command's timer)."""
    return _stats(time_cuda(fn, warmup, iters))


def section(name: str):
    """Decorator: run the section, print + record any exception, never raise."""
    def wrap(fn):
        def run(*args, **kwargs):
            log(f"== {name}")
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - one failure must not lose the other sections
                traceback.print_exc()
                REPORT["errors"].append({"section": name, "error": repr(e)[:800]})
                return None
        return run
    return wrap


def _try(label: str, fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        REPORT["errors"].append({"item": label, "error": repr(e)[:800]})
        return None


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

SHAPES = {  # name: (K, N) of the GEMM; fc1 is the stacked SwiGLU (N = 2 x 5120 weight rows -> 5120 outputs)
    "qkv": (1280, 3840), "proj": (1280, 1280), "fc1_swiglu": (1280, 10240), "fc2_bf16a_res": (5120, 1280),
}


def _weights(n: int, k: int, dev: torch.device, g: torch.Generator):
    w = torch.randn(n, k, generator=g, device=dev) * k**-0.5
    wq, sw = fk.quantize_rows_ref(w)
    return w, wq, sw.reshape(-1).contiguous(), torch.randn(n, generator=g, device=dev) * 0.1


def _baselines(name: str, m: int, k: int, n: int, x: torch.Tensor, w: torch.Tensor, row: dict) -> None:
    """torch._scaled_mm rowwise (activation quantization excluded) and bf16 torch.mm on the same shape."""
    xq, xs = fk.quantize_rows_ref(x)
    wq, ws = fk.quantize_rows_ref(w)
    ws = ws.reshape(1, -1).contiguous()
    flops = 2.0 * m * n * k

    def scaled():
        return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=True)

    t = _try(f"{name} M={m} scaled_mm", lambda: cuda_time(scaled))
    if t:
        row["scaled_mm_ms"], row["scaled_mm_tflops"] = t["median_ms"], flops / t["median_ms"] / 1e9
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    t = _try(f"{name} M={m} bf16 mm", lambda: cuda_time(lambda: torch.mm(xb, wb.t())))
    if t:
        row["bf16_mm_ms"], row["bf16_mm_tflops"] = t["median_ms"], flops / t["median_ms"] / 1e9


@section("kernels")
def bench_kernels(dev: torch.device, ms: list[int]) -> None:
    g = torch.Generator(device=dev).manual_seed(0)
    for m in ms:
        for name, (k, n) in SHAPES.items():
            def one(name=name, k=k, n=n):
                t_start = time.time()
                x = torch.randn(m, k, generator=g, device=dev) * torch.rand(m, 1, generator=g, device=dev) * 4
                w, wq, sw, bias = _weights(n, k, dev, g)
                q, sa = fk.quantize_rows_ref(x)
                row = {"kernel": name, "M": m, "K": k, "N": n}
                if name == "fc1_swiglu":
                    flops = 2.0 * m * n * k

                    def fn():
                        return fk.fp8_swiglu(q, sa, wq, sw, bias)
                    h, amax = fn()
                    hr, amaxr = fk.fp8_swiglu_ref(q, sa, wq, sw, bias, out_dtype=torch.float32)
                    row["rel_l2"] = rel_l2(h.float(), hr)
                    row["amax_rel_err"] = float(((amax - amaxr).abs() / amaxr.clamp(min=1e-12)).max())
                elif name == "fc2_bf16a_res":
                    flops = 2.0 * m * n * k
                    hb = x.to(torch.bfloat16)
                    amax = hb.float().abs().amax(dim=1)
                    res = torch.randn(m, n, generator=g, device=dev)
                    gamma = torch.rand(n, generator=g, device=dev)

                    def fn():
                        return fk.fp8_linear_bf16a(hb, amax, wq, sw, bias, res, gamma)
                    y = fn()
                    yr = fk.fp8_linear_bf16a_ref(hb, amax, wq, sw, bias, res, gamma, out_dtype=torch.float32)
                    row["rel_l2"] = rel_l2(y - res, yr - res)  # the GEMM's part (the residual would hide it)
                    qh, sh = fk.quantize_rows_ref(hb, amax)
                    row["rel_l2_vs_quantize_then_fp8_linear"] = rel_l2(y - res, fk.fp8_linear(qh, sh, wq, sw, bias, res, gamma) - res)
                else:
                    flops = 2.0 * m * n * k

                    def fn():
                        return fk.fp8_linear(q, sa, wq, sw, bias)
                    y = fn()
                    row["rel_l2"] = rel_l2(y.float(), fk.fp8_linear_ref(q, sa, wq, sw, bias, out_dtype=torch.float32))
                row["rel_l2_vs_fp32_unquantized"] = None if name != "qkv" else rel_l2(
                    fn().float(), x @ w.t() + bias)
                t = cuda_time(fn)
                row.update({"triton_ms": t["median_ms"], "triton_p95_ms": t["p95_ms"],
                            "triton_tflops": flops / t["median_ms"] / 1e9})
                _baselines(name, m, k, n, x, w, row)
                row["first_call_s"] = time.time() - t_start
                REPORT["kernels"].append(row)
                log(json.dumps(row))
            _try(f"{name} M={m}", one)

        def ln(m=m):
            x = (torch.randn(m, 1280, generator=g, device=dev) * 3).to(torch.bfloat16)
            w, b = torch.randn(1280, generator=g, device=dev), torch.randn(1280, generator=g, device=dev)
            q, s = fk.layernorm_quant(x, w, b, 1e-5)
            qr, sr = fk.layernorm_quant_ref(x, w, b, 1e-5)
            row = {"kernel": "layernorm_quant", "M": m, "K": 1280,
                   "q_mismatch_frac": float((q.float() != qr.float()).float().mean()),
                   "scale_rel_err": float(((s - sr).abs() / sr).max()),
                   "rel_l2": rel_l2(q.float() * s, qr.float() * sr)}
            t = cuda_time(lambda: fk.layernorm_quant(x, w, b, 1e-5))
            row["triton_ms"] = t["median_ms"]
            t = cuda_time(lambda: fk.quantize_rows_ref(torch.nn.functional.layer_norm(x, (1280,), w.bfloat16(), b.bfloat16())))
            row["torch_eager_ln_then_quant_ms"] = t["median_ms"]
            REPORT["kernels"].append(row)
            log(json.dumps(row))
        _try(f"layernorm_quant M={m}", ln)


@section("fp8 peak")
def bench_peak(dev: torch.device) -> None:
    REPORT["peak"] = gemm_peaks(dev)  # the same measurement as the bench command's GEMM peak row
    log(f"GEMM peak 8192^3: {REPORT['peak']}")


# ---------------------------------------------------------------------------------------------
# backbone
# ---------------------------------------------------------------------------------------------

@section("backbone")
def bench_backbone(dev: torch.device, batches: list[int], budget_s: float, only: list[str]) -> None:
    from sam3d_body_ros.runtime.fused_fp8_backend import FusedFp8Backend
    from sam3d_body_ros.runtime.torch_backend import TorchBackend
    from sam3d_body_ros.runtime.torch_int8_backend import TorchInt8Backend

    cfg = get_config("full")
    base = random_backbone(cfg, seed=0, layer_scale=0.1)  # fp32 CPU; 0.1: blocks that are not ~identity
    gen = torch.Generator().manual_seed(123)
    x8 = torch.randn(max(batches), 3, 512, 512, generator=gen).to(dev)
    ref_mod = copy.deepcopy(base).to(dev).eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        ref = ref_mod(x8).float()
    del ref_mod
    torch.cuda.empty_cache()
    log("fp32 reference done")

    variants = {
        "fused-fp8": lambda m: FusedFp8Backend(m, dev, "fp8"),
        "torch-int8:fp8": lambda m: TorchInt8Backend(m, dev, "fp8"),
        "torch:bf16": lambda m: TorchBackend(m, dev, "bf16"),
        "fused-fp8+proj-fp8": lambda m: FusedFp8Backend(m, dev, "fp8", proj_fp8=True),
        "fused-fp8+bf16-residual": lambda m: FusedFp8Backend(m, dev, "fp8", residual_dtype=torch.bfloat16),
        "fused-fp8-eager-nograph": lambda m: FusedFp8Backend(m, dev, "fp8", compile=False, cuda_graphs=False),
    }
    for name, make in variants.items():
        if only and name not in only:
            continue
        if time.time() - T0 > budget_s:
            log(f"skip {name}: over the {budget_s:.0f} s budget")
            REPORT["backbone"].append({"variant": name, "skipped": "budget"})
            continue

        def run(name=name, make=make):
            t1 = time.time()
            backend = make(copy.deepcopy(base))
            build_s = time.time() - t1
            for b in batches:
                t1 = time.time()
                with torch.inference_mode():
                    y = backend(x8[:b])  # first call: autotune + compile + graph capture
                torch.cuda.synchronize()
                first_s = time.time() - t1
                tm = cuda_time(lambda b=b, be=backend: be(x8[:b]), warmup=20, iters=100)
                row = {"variant": name, "batch": b, **tm, "crops_per_s": 1000 * b / tm["median_ms"],
                       "rel_l2_vs_fp32": rel_l2(y, ref[:b]), "first_call_s": first_s, "build_s": build_s,
                       "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
                REPORT["backbone"].append(row)
                log(json.dumps(row))
        _try(name, run)
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="fused.json")
    ap.add_argument("--sections", default="kernels,peak,backbone")
    ap.add_argument("--ms", default="1029,8232", help="token counts for the kernel section")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--only", default="", help="backbone variants, comma-separated (default all)")
    ap.add_argument("--budget-s", type=float, default=165, help="no new backbone variant starts after this")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    env = {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
           "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as e:
        env["triton_import_error"] = str(e)
    REPORT["env"] = env
    log(json.dumps(env))
    sections = set(args.sections.split(","))

    def save() -> None:
        REPORT["total_s"] = time.time() - T0
        out.write_text(json.dumps(REPORT, indent=1))

    if "kernels" in sections:
        bench_kernels(dev, [int(m) for m in args.ms.split(",")])
        save()
    if "peak" in sections:
        bench_peak(dev)
        save()
    if "backbone" in sections:
        bench_backbone(dev, [int(b) for b in args.batches.split(",")], args.budget_s,
                       [v for v in args.only.split(",") if v])
        save()

    print("\nkernel                M     K     N  relL2      triton ms  TFLOP/s  scaled_mm ms  TFLOP/s  bf16 mm ms  TFLOP/s")
    for r in REPORT["kernels"]:
        print(f"{r['kernel']:18s} {r['M']:5d} {r['K']:5d} {r.get('N', 0):5d}  {r.get('rel_l2', float('nan')):.2e}"
              f"  {r.get('triton_ms', float('nan')):9.4f}  {r.get('triton_tflops', float('nan')):7.1f}"
              f"  {r.get('scaled_mm_ms', float('nan')):12.4f}  {r.get('scaled_mm_tflops', float('nan')):7.1f}"
              f"  {r.get('bf16_mm_ms', float('nan')):10.4f}  {r.get('bf16_mm_tflops', float('nan')):7.1f}")
    if REPORT["peak"]:
        p = REPORT["peak"]
        print(f"GEMM peak {p['size']}^3: bf16 {p['bf16_tflops']:.0f}, fp8 row-wise {p['fp8_rowwise_tflops']:.0f} TFLOP/s")
    print(f"\n{'variant':26s} {'b':>2s} {'med ms':>8s} {'p95 ms':>8s} {'crops/s':>8s} {'first s':>8s} {'relL2':>9s}")
    for r in REPORT["backbone"]:
        if "median_ms" in r:
            print(f"{r['variant']:26s} {r['batch']:2d} {r['median_ms']:8.2f} {r['p95_ms']:8.2f} {r['crops_per_s']:8.0f} "
                  f"{r['first_call_s']:8.1f} {r['rel_l2_vs_fp32']:9.2e}")
        else:
            print(f"{r['variant']:26s} {r}")
    for e in REPORT["errors"]:
        print("ERROR", e)
    print(f"total {time.time() - T0:.0f} s -> {out}")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
