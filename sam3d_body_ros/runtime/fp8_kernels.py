"""Triton kernels for the fused 8-bit (e4m3) transformer block, with eager torch references of the same math.

Quantization is symmetric per row: scale = max(rowmax|y|, 1e-12) / 448 and q = e4m3(clamp(y * (448 / max(...)),
+-448)) with round-to-nearest-even, so that every kernel producing fp8 operands agrees bit for bit with
`quantize_rows_ref` (up to fp32 summation order in its own reductions).

Kernels:
  * `layernorm_quant`: LayerNorm (fp32 math) -> per-row e4m3 + scale, one pass.
  * `fp8_linear`: e4m3 GEMM (fp32 accumulate), epilogue y = acc*sa*sw + bias, optionally out = residual + gamma*y.
  * `fp8_linear_bf16a`: the same GEMM with a bf16 A operand quantized in its prologue from a given per-row amax.
  * `fp8_swiglu`: stacked [gate; value] e4m3 GEMM, epilogue silu(g)*v (bf16) and per-row max|h| (atomic max).

Every wrapper runs CUDA tensors through the compiled kernel (autotuned) and CPU tensors through Triton's interpreter
(for tests): one kernel source. The interpreter's fp32 -> fp8 and fp32 -> bf16 casts do not round like the GPU
(Triton 3.8's `_convert_float` drops the mantissa carry and truncates bf16), so on the CPU the kernels pre-round to
the e4m3 grid in fp32 bit arithmetic (constexpr EMULATE; the cast is then exact) and store fp32 outputs, which the
wrapper rounds to bf16 with torch. The wrappers are torch custom ops (`torch.ops.sam3d_fp8.*`), opaque to
torch.compile and capturable in CUDA graphs.
"""
# No `from __future__ import annotations` here: Triton reads the kernels' `tl.constexpr` annotations and
# torch.library.custom_op the wrappers' type hints as objects.
import functools
import types
from typing import Optional

import torch

try:  # triton is optional for the package; the fused-fp8 backend's `requires` reports it missing
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = types.SimpleNamespace(constexpr=None)  # lets the kernel definitions below evaluate their annotations

FP8_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
AMAX_EPS = 1e-12

# ---------------------------------------------------------------------------------------------
# torch references (the tests' oracle; `FusedFp8Block(impl="reference")` runs them)
# ---------------------------------------------------------------------------------------------


def quantize_rows_ref(x: torch.Tensor, amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantization as the kernels do it -> (q (M,K) e4m3, scale (M,1) f32); amax (M,) defaults to
    the row max of |x|."""
    xf = x.float()
    a = xf.abs().amax(dim=1) if amax is None else amax.float()
    a = a.clamp(min=AMAX_EPS).unsqueeze(1)
    inv = torch.full_like(a, FP8_MAX) / a  # a true division (`FP8_MAX / a` is reciprocal-then-multiply in torch)
    q = (xf * inv).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, a / FP8_MAX


def layernorm_quant_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm in fp32, then `quantize_rows_ref`."""
    y = torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps)
    return quantize_rows_ref(y)


def fp8_linear_ref(q: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
                   residual: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """acc*sa*sw + bias (+ residual + gamma*y) in fp32 from the dequantized operands; rounded once to out_dtype."""
    y = (q.float() @ wq.float().t()) * sa.reshape(-1, 1).float() * sw.reshape(1, -1).float()
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = residual.float() + (gamma.float() if gamma is not None else 1.0) * y
    return y.to(out_dtype or (residual.dtype if residual is not None else torch.bfloat16))


def fp8_swiglu_ref(q: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
                   out_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked gate/value GEMM -> (silu(g)*v rounded to out_dtype, row max |h| of the fp32 h)."""
    gv = fp8_linear_ref(q, sa, wq, sw, bias, out_dtype=torch.float32)
    g, v = gv.chunk(2, dim=1)
    h = torch.nn.functional.silu(g) * v
    return h.to(out_dtype), h.abs().amax(dim=1)


def fp8_linear_bf16a_ref(h: torch.Tensor, amax: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor,
                         bias: torch.Tensor | None, residual: torch.Tensor | None = None,
                         gamma: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Quantize h per row with the given amax, then `fp8_linear_ref`."""
    q, sa = quantize_rows_ref(h, amax)
    return fp8_linear_ref(q, sa, wq, sw, bias, residual, gamma, out_dtype)


# ---------------------------------------------------------------------------------------------
# Triton kernels (plain functions: jitted for the GPU, interpreted for CPU tensors)
# ---------------------------------------------------------------------------------------------
# The e4m3 conversion is written out in each kernel (a @triton.jit helper cannot be called from an interpreted
# kernel). EMULATE (CPU only) rounds v to the e4m3 grid first: normals by RTNE on the fp32 bits (keep 3 of 23
# mantissa bits, the carry may enter the exponent), subnormals (|v| < 2^-6, step 2^-9) by the fp32 add of 2^14
# (whose ulp is 2^-9, round-to-nearest-even); the exact value then casts correctly in the interpreter.
# The kernels use only builtins of triton.language plus the two combine functions below (no tl.sum / tl.max /
# tl.cdiv: those are @triton.jit library functions that an interpreted kernel cannot call unless TRITON_INTERPRET
# was set before triton was imported), so CPU tensors can be interpreted per call in any process.


def _add(a, b):
    return a + b


def _max(a, b):
    return tl.maximum(a, b)


if triton is not None:  # triton's own combine functions where present: the interpreter reduces those with numpy
    _add = getattr(tl.standard, "_sum_combine", None) or triton.jit(_add)
    _max = getattr(tl.standard, "_elementwise_max", None) or triton.jit(_max)


def _layernorm_quant_kernel(x_ptr, w_ptr, b_ptr, q_ptr, s_ptr, M, K, stride_x, eps,
                            ROWS: tl.constexpr, BLOCK_K: tl.constexpr, EMULATE: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.reduce(x, 1, _add) / K
    d = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.reduce(d * d, 1, _add) / K
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    amax = tl.maximum(tl.reduce(tl.where(mask, tl.abs(y), 0.0), 1, _max), 1e-12)
    c448 = tl.full(amax.shape, 448.0, tl.float32)
    tl.store(s_ptr + rows, tl.math.div_rn(amax, c448), mask=rmask)  # div_rn: IEEE division, as torch on the CPU
    v = y * tl.math.div_rn(c448, amax)[:, None]
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    if EMULATE:
        av = tl.abs(v)
        ab = av.to(tl.int32, bitcast=True)
        rn = ((ab + 0x7FFFF + ((ab >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
        r = tl.where(av < 0.015625, (av + 16384.0) - 16384.0, rn)
        v = tl.where(v < 0, -r, r)
    tl.store(q_ptr + rows[:, None] * K + cols[None, :], v.to(tl.float8e4nv), mask=mask)


def _fp8_gemm_kernel(a_ptr, sa_ptr, b_ptr, sw_ptr, bias_ptr, res_ptr, gamma_ptr, out_ptr,
                     M, N, K, stride_am, stride_bn, stride_rm, stride_om,
                     HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, A_BF16: tl.constexpr, EVEN_K: tl.constexpr,
                     EMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
    # out[M, N] = epilogue(A[M, K] @ B[N, K]^T); grouped tile order for L2 reuse of B
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    num_in_group = GROUP_M * num_pid_n
    group_id = pid // num_in_group
    first_m = group_id * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % num_in_group) % group_size)
    pid_n = (pid % num_in_group) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ram = tl.where(rm < M, rm, 0)  # clamped rows/cols: unmasked loads, masked store
    rbn = tl.where(rn < N, rn, 0)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + ram[:, None] * stride_am + rk[None, :]
    b_ptrs = b_ptr + rbn[None, :] * stride_bn + rk[:, None]
    if A_BF16:  # sa_ptr holds the per-row amax of A
        amax = tl.maximum(tl.load(sa_ptr + ram), 1e-12)
        c448 = tl.full(amax.shape, 448.0, tl.float32)
        inv = tl.math.div_rn(c448, amax)
        scale_a = tl.math.div_rn(amax, c448)
    else:
        scale_a = tl.load(sa_ptr + ram)

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            kmask = rk < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kmask[:, None], other=0.0)
        if A_BF16:
            v = a.to(tl.float32) * inv[:, None]
            v = tl.minimum(tl.maximum(v, -448.0), 448.0)
            if EMULATE:
                av = tl.abs(v)
                ab = av.to(tl.int32, bitcast=True)
                rn8 = ((ab + 0x7FFFF + ((ab >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
                r = tl.where(av < 0.015625, (av + 16384.0) - 16384.0, rn8)
                v = tl.where(v < 0, -r, r)
            a = v.to(tl.float8e4nv)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    nmask = rn < N
    sw = tl.load(sw_ptr + rn, mask=nmask, other=0.0)
    y = acc * scale_a[:, None] * sw[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=nmask, other=0.0)[None, :]
    mask = (rm < M)[:, None] & nmask[None, :]
    if HAS_RES:
        res = tl.load(res_ptr + rm[:, None] * stride_rm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        gam = tl.load(gamma_ptr + rn, mask=nmask, other=0.0)
        y = res + gam[None, :] * y
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _fp8_swiglu_kernel(a_ptr, sa_ptr, b_ptr, sw_ptr, bias_ptr, h_ptr, amax_ptr,
                       M, H, K, stride_am, stride_bn, stride_hm,
                       HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # h[M, H] = silu(A @ Bg^T) * (A @ Bv^T), B = [Bg; Bv] (2H, K); A tile loaded once for both accumulators
    # The grouped tile order is spelled out again (as in _fp8_gemm_kernel): a shared @triton.jit helper cannot be
    # called from these kernels when they run in the interpreter ("Cannot call @triton.jit'd outside of a kernel").
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (H + BLOCK_N - 1) // BLOCK_N
    num_in_group = GROUP_M * num_pid_n
    group_id = pid // num_in_group
    first_m = group_id * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % num_in_group) % group_size)
    pid_n = (pid % num_in_group) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ram = tl.where(rm < M, rm, 0)
    rbn = tl.where(rn < H, rn, 0)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + ram[:, None] * stride_am + rk[None, :]
    bg_ptrs = b_ptr + rbn[None, :] * stride_bn + rk[:, None]
    bv_ptrs = bg_ptrs + H * stride_bn
    acc_g = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc_v = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            bg = tl.load(bg_ptrs)
            bv = tl.load(bv_ptrs)
        else:
            kmask = rk < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
            bg = tl.load(bg_ptrs, mask=kmask[:, None], other=0.0)
            bv = tl.load(bv_ptrs, mask=kmask[:, None], other=0.0)
        acc_g = tl.dot(a, bg, acc_g)
        acc_v = tl.dot(a, bv, acc_v)
        a_ptrs += BLOCK_K
        bg_ptrs += BLOCK_K
        bv_ptrs += BLOCK_K

    nmask = rn < H
    scale_a = tl.load(sa_ptr + ram)
    g = acc_g * scale_a[:, None] * tl.load(sw_ptr + rn, mask=nmask, other=0.0)[None, :]
    v = acc_v * scale_a[:, None] * tl.load(sw_ptr + H + rn, mask=nmask, other=0.0)[None, :]
    if HAS_BIAS:
        g += tl.load(bias_ptr + rn, mask=nmask, other=0.0)[None, :]
        v += tl.load(bias_ptr + H + rn, mask=nmask, other=0.0)[None, :]
    h = g / (1.0 + tl.exp(-g)) * v
    rmask = rm < M
    mask = rmask[:, None] & nmask[None, :]
    tl.store(h_ptr + rm[:, None] * stride_hm + rn[None, :], h.to(h_ptr.dtype.element_ty), mask=mask)
    row_max = tl.reduce(tl.where(mask, tl.abs(h), 0.0), 1, _max)
    tl.atomic_max(amax_ptr + rm, row_max, mask=rmask)


# ---------------------------------------------------------------------------------------------
# launch plumbing: autotuned JIT kernels on the GPU, the interpreter with one fixed config on the CPU
# ---------------------------------------------------------------------------------------------

_GEMM_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    (128, 128, 128, 8, 3), (128, 128, 128, 4, 4), (128, 256, 128, 8, 3),
    (64, 128, 128, 4, 4), (64, 256, 128, 8, 3), (128, 64, 128, 4, 4),
]
_SWIGLU_CONFIGS = [
    (128, 128, 128, 8, 3), (128, 64, 128, 4, 4), (128, 64, 128, 8, 3), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4),
]
_CPU_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4}  # interpreter: one small config
_GPU_GROUP_M = 8
_LN_CPU_ROWS = 16


def _configs(table: list[tuple[int, int, int, int, int]]) -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": _GPU_GROUP_M},
                          num_warps=w, num_stages=s) for bm, bn, bk, w, s in table]


@functools.cache
def _interpreted(fn):
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(fn)


@functools.cache
def _gpu_kernel(name: str):
    if name == "layernorm_quant":
        return triton.jit(_layernorm_quant_kernel)
    if name == "gemm":
        return triton.autotune(configs=_configs(_GEMM_CONFIGS), key=["M", "N", "K", "HAS_RES", "A_BF16"])(
            triton.jit(_fp8_gemm_kernel))
    if name == "swiglu":
        return triton.autotune(configs=_configs(_SWIGLU_CONFIGS), key=["M", "H", "K"])(triton.jit(_fp8_swiglu_kernel))
    raise KeyError(name)


def _check_fp8_operands(q: torch.Tensor, wq: torch.Tensor) -> None:
    if wq.dtype != FP8_DTYPE or wq.dim() != 2 or not wq.is_contiguous():
        raise ValueError(f"weights must be a contiguous 2-D {FP8_DTYPE} tensor, got {wq.dtype} {tuple(wq.shape)}")
    if q.dim() != 2 or q.stride(1) != 1 or q.shape[1] != wq.shape[1]:
        raise ValueError(f"activation {tuple(q.shape)} (stride {q.stride()}) does not match weights {tuple(wq.shape)}")


def _layernorm_quant_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    m, k = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    block_k = triton.next_power_of_2(k)
    if x.device.type == "cpu":
        _interpreted(_layernorm_quant_kernel)[(triton.cdiv(m, _LN_CPU_ROWS),)](
            x, weight, bias, q, s, m, k, x.stride(0), eps, ROWS=_LN_CPU_ROWS, BLOCK_K=block_k, EMULATE=True)
    else:
        _gpu_kernel("layernorm_quant")[(m,)](x, weight, bias, q, s, m, k, x.stride(0), eps, ROWS=1,
                                             BLOCK_K=block_k, EMULATE=False, num_warps=8 if k >= 2048 else 4)
    return q, s


def _gemm_impl(a: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None, gamma: torch.Tensor | None, out_dtype: torch.dtype,
               a_bf16: bool) -> torch.Tensor:
    _check_fp8_operands(a if a_bf16 else a, wq)
    if not a_bf16 and a.dtype != FP8_DTYPE:
        raise ValueError(f"fp8_linear takes {FP8_DTYPE} activations, got {a.dtype}")
    m, k = a.shape
    n = wq.shape[0]
    if residual is not None:
        if residual.shape != (m, n) or residual.stride(1) != 1:
            raise ValueError(f"residual must be ({m}, {n}) with unit column stride, got {tuple(residual.shape)}")
        if gamma is None:
            gamma = torch.ones(n, dtype=torch.float32, device=a.device)
    cpu = a.device.type == "cpu"
    out = torch.empty((m, n), dtype=torch.float32 if cpu else out_dtype, device=a.device)
    dummy = sw  # never read when the matching flag is off
    args = (a, sa, wq, sw, dummy if bias is None else bias, dummy if residual is None else residual,
            dummy if gamma is None else gamma, out, m, n, k, a.stride(0), wq.stride(0),
            0 if residual is None else residual.stride(0), out.stride(0))
    flags = {"HAS_BIAS": bias is not None, "HAS_RES": residual is not None, "A_BF16": a_bf16}
    if cpu:
        grid = (triton.cdiv(m, _CPU_BLOCKS["BLOCK_M"]) * triton.cdiv(n, _CPU_BLOCKS["BLOCK_N"]),)
        _interpreted(_fp8_gemm_kernel)[grid](*args, **flags, EVEN_K=k % _CPU_BLOCKS["BLOCK_K"] == 0, EMULATE=True,
                                             **_CPU_BLOCKS)
        return out.to(out_dtype)
    _gpu_kernel("gemm")[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)](
        *args, **flags, EVEN_K=k % 128 == 0, EMULATE=False)
    return out


def _swiglu_impl(q: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    _check_fp8_operands(q, wq)
    m, k = q.shape
    if wq.shape[0] % 2:
        raise ValueError(f"stacked SwiGLU weights need an even row count, got {wq.shape[0]}")
    hdim = wq.shape[0] // 2
    cpu = q.device.type == "cpu"
    h = torch.empty((m, hdim), dtype=torch.float32 if cpu else out_dtype, device=q.device)
    amax = torch.zeros((m,), dtype=torch.float32, device=q.device)
    args = (q, sa, wq, sw, sw if bias is None else bias, h, amax, m, hdim, k, q.stride(0), wq.stride(0), h.stride(0))
    if cpu:
        grid = (triton.cdiv(m, _CPU_BLOCKS["BLOCK_M"]) * triton.cdiv(hdim, _CPU_BLOCKS["BLOCK_N"]),)
        _interpreted(_fp8_swiglu_kernel)[grid](*args, HAS_BIAS=bias is not None,
                                               EVEN_K=k % _CPU_BLOCKS["BLOCK_K"] == 0, **_CPU_BLOCKS)
        return h.to(out_dtype), amax
    _gpu_kernel("swiglu")[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(hdim, meta["BLOCK_N"]),)](
        *args, HAS_BIAS=bias is not None, EVEN_K=k % 128 == 0)
    return h, amax


# ---------------------------------------------------------------------------------------------
# torch custom ops (opaque to torch.compile: one op per kernel launch) and the public wrappers
# ---------------------------------------------------------------------------------------------

# Optional[...] rather than `X | None` in these signatures: older torch.library schema inference needs it.
if triton is not None:
    @torch.library.custom_op("sam3d_fp8::layernorm_quant", mutates_args=())
    def _layernorm_quant_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        return _layernorm_quant_impl(x, weight, bias, eps)

    @_layernorm_quant_op.register_fake
    def _(x, weight, bias, eps):
        return x.new_empty(x.shape, dtype=FP8_DTYPE), x.new_empty((x.shape[0], 1), dtype=torch.float32)

    @torch.library.custom_op("sam3d_fp8::linear", mutates_args=())
    def _linear_op(a: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor,
                   bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],  # noqa: UP045
                   gamma: Optional[torch.Tensor], out_dtype: torch.dtype, a_bf16: bool) -> torch.Tensor:  # noqa: UP045
        return _gemm_impl(a, sa, wq, sw, bias, residual, gamma, out_dtype, a_bf16)

    @_linear_op.register_fake
    def _(a, sa, wq, sw, bias, residual, gamma, out_dtype, a_bf16):
        return a.new_empty((a.shape[0], wq.shape[0]), dtype=out_dtype)

    @torch.library.custom_op("sam3d_fp8::swiglu", mutates_args=())
    def _swiglu_op(q: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor,
                   bias: Optional[torch.Tensor], out_dtype: torch.dtype  # noqa: UP045
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        return _swiglu_impl(q, sa, wq, sw, bias, out_dtype)

    @_swiglu_op.register_fake
    def _(q, sa, wq, sw, bias, out_dtype):
        m = q.shape[0]
        return q.new_empty((m, wq.shape[0] // 2), dtype=out_dtype), q.new_empty((m,), dtype=torch.float32)


def layernorm_quant(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm of (M,K) rows in fp32 -> (e4m3 (M,K), per-row scale (M,1) f32), one kernel."""
    return torch.ops.sam3d_fp8.layernorm_quant(x, weight.float(), bias.float(), float(eps))


def fp8_linear(q: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = (q @ wq^T)*sa*sw + bias, or residual + gamma*y with a residual; one GEMM, fused epilogue.

    out_dtype defaults to the residual's dtype, else bf16."""
    out_dtype = out_dtype or (residual.dtype if residual is not None else torch.bfloat16)
    return torch.ops.sam3d_fp8.linear(q, sa, wq, sw, bias, residual, gamma, out_dtype, False)


def fp8_linear_bf16a(h: torch.Tensor, amax: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor,
                     bias: torch.Tensor | None, residual: torch.Tensor | None = None,
                     gamma: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """fp8_linear of h (M,K) bf16/fp32 quantized per row in the GEMM prologue with the given amax (M,) f32;
    equals `fp8_linear(*quantize_rows_ref(h, amax), ...)`."""
    out_dtype = out_dtype or (residual.dtype if residual is not None else torch.bfloat16)
    return torch.ops.sam3d_fp8.linear(h, amax, wq, sw, bias, residual, gamma, out_dtype, True)


def fp8_swiglu(q: torch.Tensor, sa: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
               out_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked [gate; value] (2H,K) e4m3 GEMM -> (silu(g)*v (M,H) out_dtype, row max |h| (M,) f32 via atomic max)."""
    return torch.ops.sam3d_fp8.swiglu(q, sa, wq, sw, bias, out_dtype)
