"""Fused fp8 kernels (Triton interpreter on the CPU) against eager torch references, and the fused-fp8 backend.

The wrappers interpret CPU tensors per call (no TRITON_INTERPRET needed, nothing global changes), so these tests run
in the normal pytest process. Tolerances: "exact" where kernel and reference do the same fp32 operations on the
same operands (rounding to e4m3, the bf16a prologue); "fp32 order" (rtol ~1e-5) where the kernel sums in a different
order (GEMM accumulation, LayerNorm mean/variance), which can also move a value sitting on an e4m3 rounding tie by
one e4m3 step.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from sam3d_body_ros.core.config import TINY  # noqa: E402
from sam3d_body_ros.core.errors import RuntimeUnavailable  # noqa: E402
from sam3d_body_ros.core.synthetic import random_backbone  # noqa: E402
from sam3d_body_ros.runtime import fp8_kernels as fk  # noqa: E402
from sam3d_body_ros.runtime.backend import backend_spec, create_backend  # noqa: E402
from sam3d_body_ros.runtime.fused_fp8_backend import FusedFp8Block, fuse_fp8_blocks  # noqa: E402
from sam3d_body_ros.tools.fidelity import rel_l2  # noqa: E402

M, N, H = 37, 96, 48  # M, N, H: tails of the 32 x 64 interpreter tiles


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weights(rows: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    wq, sw = fk.quantize_rows_ref(torch.randn(rows, k, generator=g) * 0.05)
    return wq, sw.reshape(-1), torch.randn(rows, generator=g)


def _activations(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(M, k, generator=_gen(seed)) * torch.linspace(0.1, 10, M).unsqueeze(1)
    return fk.quantize_rows_ref(x)


def test_e4m3_rounding_matches_torch_on_ties_and_subnormals():
    # grid values, the midpoints between them (ties: round to even) and their fp32 neighbours, subnormals, saturation
    codes = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    mids = (codes[1:] + codes[:-1]) / 2
    vals = torch.cat([codes, mids, torch.nextafter(mids, torch.zeros(())), torch.nextafter(mids, torch.full((), 1e9)),
                      torch.tensor([2.0**-10, 3 * 2.0**-11, 1e-30, 450.0, 463.9, 1e6])])
    vals = torch.cat([vals, -vals, torch.randn(600, generator=_gen(0)) * 50])
    k = 64
    vals = torch.cat([vals, torch.zeros(-vals.numel() % k)]).reshape(-1, k)
    eye = torch.eye(k).to(torch.float8_e4m3fn)
    amax = torch.full((vals.shape[0],), 448.0)  # scale 1: the GEMM with the identity returns the quantized values
    got = fk.fp8_linear_bf16a(vals, amax, eye, torch.ones(k), None, out_dtype=torch.float32)
    want = vals.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(got, want)


@pytest.mark.parametrize("k", [64, 80])
def test_layernorm_quant(k):
    g = _gen(1)
    x = (torch.randn(M, k, generator=g) * 3 + torch.randn(M, 1, generator=g)).to(torch.bfloat16)
    w, b = torch.randn(k, generator=g), torch.randn(k, generator=g)
    q, s = fk.layernorm_quant(x, w, b, 1e-5)
    qr, sr = fk.layernorm_quant_ref(x, w, b, 1e-5)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (M, k) and s.shape == (M, 1) and s.dtype == torch.float32
    torch.testing.assert_close(s, sr, rtol=1e-5, atol=0)
    diff = q.float() != qr.float()
    assert diff.float().mean() < 0.01  # fp32 order: only values on a rounding tie may move ...
    assert ((q.float() - qr.float()).abs() <= qr.float().abs() / 8 + 2.0**-9).all()  # ... by one e4m3 step


@pytest.mark.parametrize("k", [64, 80])
@pytest.mark.parametrize("epilogue", ["none", "bias", "residual"])
def test_fp8_linear(k, epilogue):
    q, sa = _activations(k, 2)
    wq, sw, bias = _weights(N, k, 3)
    g = _gen(4)
    residual = torch.randn(M, N, generator=g).to(torch.bfloat16) if epilogue == "residual" else None
    gamma = torch.rand(N, generator=g) + 0.5 if epilogue == "residual" else None
    bias = None if epilogue == "none" else bias
    got = fk.fp8_linear(q, sa, wq, sw, bias, residual, gamma, out_dtype=torch.float32)
    want = fk.fp8_linear_ref(q, sa, wq, sw, bias, residual, gamma, out_dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())  # fp32 order
    out = fk.fp8_linear(q, sa, wq, sw, bias, residual, gamma)  # default dtype: residual's, else bf16
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=2**-7, atol=1e-6)
    assert not torch.equal(got, fk.fp8_linear_ref(q, sa * 1.01, wq, sw, bias, residual, gamma, torch.float32))


@pytest.mark.parametrize("k", [64, 80])
def test_fp8_swiglu_and_row_amax(k):
    q, sa = _activations(k, 5)
    wq, sw, bias = _weights(2 * H, k, 6)
    h, amax = fk.fp8_swiglu(q, sa, wq, sw, bias, out_dtype=torch.float32)
    hr, amaxr = fk.fp8_swiglu_ref(q, sa, wq, sw, bias, out_dtype=torch.float32)
    assert h.shape == (M, H) and amax.shape == (M,)
    torch.testing.assert_close(h, hr, rtol=1e-5, atol=1e-5 * hr.abs().max().item())  # fp32 order
    assert torch.equal(amax, h.abs().amax(dim=1))  # the atomic max is exactly the row max of what was computed
    torch.testing.assert_close(amax, amaxr, rtol=1e-5, atol=0)
    hb, amaxb = fk.fp8_swiglu(q, sa, wq, sw, bias)
    assert hb.dtype == torch.bfloat16 and torch.equal(amaxb, amax)
    torch.testing.assert_close(hb.float(), hr, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("k", [64, 80])
@pytest.mark.parametrize("amax_factor", [1.0, 0.5])  # 0.5: an amax below the true max saturates at +-448
def test_bf16a_prologue_equals_quantize_then_fp8_linear(k, amax_factor):
    g = _gen(7)
    h = (torch.randn(M, k, generator=g) * torch.linspace(0.01, 5, M).unsqueeze(1)).to(torch.bfloat16)
    amax = h.float().abs().amax(dim=1) * amax_factor
    wq, sw, bias = _weights(N, k, 8)
    residual = torch.randn(M, N, generator=g)
    gamma = torch.rand(N, generator=g)
    got = fk.fp8_linear_bf16a(h, amax, wq, sw, bias, residual, gamma)
    q, sa = fk.quantize_rows_ref(h, amax)
    assert torch.equal(got, fk.fp8_linear(q, sa, wq, sw, bias, residual, gamma))  # exact: same rounding
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fk.fp8_linear_bf16a_ref(h, amax, wq, sw, bias, residual, gamma), rtol=1e-5,
                               atol=1e-5)


def test_fp8_linear_rejects_wrong_operands():
    q, sa = _activations(64, 9)
    wq, sw, bias = _weights(N, 64, 10)
    with pytest.raises(ValueError, match="weights must be"):
        fk.fp8_linear(q, sa, wq.float(), sw, bias)
    with pytest.raises(ValueError, match="does not match"):
        fk.fp8_linear(q[:, :32], sa, wq, sw, bias)
    with pytest.raises(ValueError, match="activations"):
        fk.fp8_linear(q.float(), sa, wq, sw, bias)


# ---------------------------------------------------------------------------------------------
# the block and the backend
# ---------------------------------------------------------------------------------------------

PATCHES = 64  # tokens after the prefix: a slice of the real RoPE table keeps the interpreter quick


@pytest.fixture(scope="module")
def tiny_block():
    """A tiny backbone's first EvaBlock with layer scale 1 (not ~identity), its RoPE slice and an input."""
    module = random_backbone(TINY, seed=3, layer_scale=1.0).eval()
    enc = module.encoder
    rope = enc.rope.get_embed()[:PATCHES]
    x = torch.randn(2, enc.num_prefix_tokens + PATCHES, TINY.backbone.embed_dim, generator=_gen(11))
    with torch.no_grad():
        ref = enc.blocks[0](x, rope=rope)
    return enc.blocks[0], rope, x, ref


def _run(block, rope, x, **kwargs):
    with torch.no_grad():
        return FusedFp8Block(block, dtype=torch.float32, **kwargs)(x, rope=rope)


def test_block_exact_wiring_matches_timm(tiny_block):
    block, rope, x, ref = tiny_block
    assert rel_l2(_run(block, rope, x, impl="exact"), ref) < 1e-6
    assert rel_l2(_run(block, rope, x, impl="exact", proj_fp8=True), ref) < 1e-6


@pytest.mark.parametrize("proj_fp8", [False, True])
def test_block_kernels_match_reference_and_fp8_error(tiny_block, proj_fp8):
    block, rope, x, ref = tiny_block
    got = _run(block, rope, x, proj_fp8=proj_fp8)  # Triton kernels (interpreted)
    emul = _run(block, rope, x, impl="reference", proj_fp8=proj_fp8)
    assert rel_l2(got, emul) < 1e-5  # same quantization, fp32 summation order only
    # fp8 error on the block's own contribution (the residual would hide it): present, and bounded
    err = rel_l2(got - x, ref - x)
    assert 1e-3 < err < 0.1, err
    assert rel_l2(got, ref) < 3e-2


def test_block_rejects_what_it_does_not_support(tiny_block):
    block, rope, x, _ = tiny_block
    fused = FusedFp8Block(block, dtype=torch.float32, impl="reference")
    with pytest.raises(NotImplementedError, match="attention mask"):
        fused(x, rope=rope, attn_mask=torch.ones(1))
    import copy

    bad = copy.deepcopy(block)
    bad.attn.q_norm = torch.nn.LayerNorm(bad.attn.head_dim)
    with pytest.raises(ValueError, match="q_norm"):
        FusedFp8Block(bad)


def test_block_compiles_with_the_custom_ops(tiny_block):
    block, rope, x, _ = tiny_block
    fused = FusedFp8Block(block, dtype=torch.float32)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)  # fake kernels traced, real ones run
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, rope=rope), fused(x, rope=rope), rtol=0, atol=0)


def test_fuse_fp8_blocks_whole_backbone_fidelity():
    module = random_backbone(TINY, seed=3, layer_scale=0.1).eval()
    crops = torch.randn(1, 3, 512, 512, generator=_gen(12))
    with torch.no_grad():
        ref = module(crops)
        assert fuse_fp8_blocks(module, dtype=torch.float32, impl="reference") == TINY.backbone.depth
        blocks = module.encoder.blocks
        assert all(isinstance(b, FusedFp8Block) for b in blocks)
        assert blocks[-1].out_dtype == torch.float32 and blocks[0].out_dtype is None
        got = module(crops)
    assert 1e-4 < rel_l2(got, ref) < 3e-2


def test_backend_requires_a_gpu_with_fp8():
    spec = backend_spec("fused-fp8")
    assert spec.devices == ("cuda",) and spec.precisions == ("fp8",) and spec.auto_precision == {"cuda": "fp8"}
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this machine has an fp8 GPU")
    with pytest.raises(RuntimeUnavailable, match=r"fused-fp8 backend needs .*compute capability >= 8\.9"):
        spec.requires()
    with pytest.raises(RuntimeUnavailable, match="fused-fp8"):
        create_backend("fused-fp8", TINY, device="cpu")
