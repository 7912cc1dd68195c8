"""The GPU fast path computes what the eager path computes (CPU, tiny config).

Covers batch bucketing/padding/chunking (the logic the CUDA graphs replay), the stacked SwiGLU and GEMM patchify
rewrites, per-block torch.compile, and the 8-bit GEMM emulation of the torch-int8 backend.
"""
from __future__ import annotations

import pytest
import torch

from sam3d_body_ros.core.backbone import build_backbone
from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.synthetic import random_head
from sam3d_body_ros.runtime.cuda_graph import BucketedRunner, pick_bucket
from sam3d_body_ros.runtime.torch_backend import (
    FusedSwiGLU,
    PatchLinear,
    TorchBackend,
    make_runner,
)
from sam3d_body_ros.runtime.torch_int8_backend import (
    QuantLinear,
    TorchInt8Backend,
    quantize_block_linears,
)
from sam3d_body_ros.tools.fidelity import rel_l2 as rel

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def state(layer_scaled_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tiny backbone weights with layer-scale 0.1 and random q/v biases (so reduced precision is visible)."""
    return layer_scaled_state


def backbone(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    module = build_backbone(TINY)
    module.load_timm_state(state)
    return module


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return torch.randn(11, 3, 512, 512, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def eager_features(state: dict[str, torch.Tensor], crops: torch.Tensor) -> torch.Tensor:
    return TorchBackend(backbone(state), CPU, "fp32", compile=False, cuda_graphs=False, fuse=False)(crops)


def test_pick_bucket() -> None:
    buckets = (1, 2, 4, 8)
    assert [pick_bucket(n, buckets) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    for bad in (0, 9):
        with pytest.raises(ValueError):
            pick_bucket(bad, buckets)


def test_bucketed_runner_pads_and_chunks_rows_independently(crops: torch.Tensor, state, eager_features) -> None:
    module = backbone(state).eval()
    seen: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return module(x)

    runner = BucketedRunner(fn, (1, 2, 4, 8))
    with torch.inference_mode():
        out3 = runner(crops[:3])
        out11 = runner(crops)  # 8 + 3 (padded to 4)
    assert seen == [4, 8, 4]
    assert out3.shape == (3, 128, 32, 32) and out11.shape == (11, 128, 32, 32)
    assert rel(out3, eager_features[:3]) < 1e-5
    assert rel(out11, eager_features) < 1e-5


def test_bucketed_runner_slices_every_output_of_the_head(decoder_inputs) -> None:
    head = random_head(TINY, seed=1).eval()
    inputs = decoder_inputs(TINY, 3, CPU)
    runner = BucketedRunner(head, (1, 2, 4, 8))
    with torch.inference_mode():
        ref = head(*inputs)
        out = runner(*inputs)
    assert set(out) == set(ref)
    for key in ref:
        assert out[key].shape == ref[key].shape, key
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)


def test_graphs_need_cuda(state) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        TorchBackend(backbone(state), CPU, "fp32", compile=False, cuda_graphs=True)


def test_fused_rewrites_compute_the_same_function(state, crops, eager_features) -> None:
    fast = TorchBackend(backbone(state), CPU, "fp32", compile=False, cuda_graphs=False, fuse=True)
    assert sum(isinstance(m, FusedSwiGLU) for m in fast.module.modules()) == TINY.backbone.depth
    assert isinstance(fast.module.encoder.patch_embed.proj, PatchLinear)
    with torch.inference_mode():
        assert rel(fast(crops[:4]), eager_features[:4]) < 1e-5


def test_regional_compile_matches_eager(state, crops, eager_features) -> None:
    fast = TorchBackend(backbone(state), CPU, "fp32", compile="regions", cuda_graphs=False, fuse=True)
    with torch.inference_mode():
        out = fast(crops[:2])
    assert rel(out, eager_features[:2]) < 1e-5


@pytest.mark.parametrize("mode,bound", [("int8", 0.015), ("fp8", 0.06)])
def test_quant_linear_error_is_bounded(mode: str, bound: float) -> None:
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    x = torch.randn(40, 256, generator=g)
    q = QuantLinear(lin.weight, lin.bias, mode)
    with torch.no_grad():
        err = rel(q(x), lin(x))
    assert 0 < err < bound
    if mode == "int8":  # per-channel weight rounding error is at most half a step
        w = q.weight_q.float() * q.weight_scale.t()
        assert ((w - lin.weight).abs() <= q.weight_scale.t() / 2 + 1e-7).all()


def test_qkv_bias_is_folded_into_the_quantized_projection(state) -> None:
    module = backbone(state)
    attn = module.encoder.blocks[0].attn
    x = torch.randn(2, 17, TINY.backbone.embed_dim)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
        n = quantize_block_linears(module.encoder.blocks, "int8")
        out = attn.qkv(x)
    assert n == 3 * TINY.backbone.depth  # qkv, fc1_g, fc1_x per block (proj and fc2 stay float)
    assert attn.q_bias is None and isinstance(attn.qkv, QuantLinear)
    assert rel(out, ref) < 0.02


# Tiny random blocks are close to identity (layer-scale 0.1, near-zero SwiGLU gate weights): small but non-zero error.
@pytest.mark.parametrize("mode,bound", [("int8", 2e-4), ("fp8", 5e-4)])
def test_int8_backend_tracks_fp32(state, crops, eager_features, mode: str, bound: float) -> None:
    q = TorchInt8Backend(backbone(state), CPU, mode, compile=False, cuda_graphs=False)
    with torch.inference_mode():
        err = rel(q(crops[:2]), eager_features[:2])
    assert 1e-6 < err < bound


def test_regional_head_compile_matches_eager_across_batch_sizes(decoder_inputs) -> None:
    """The pipeline's CUDA head path (compiled regions, one dynamic-batch compile for batch >= 2) = eager."""
    head = random_head(TINY, seed=4).eval()
    compiled = random_head(TINY, seed=4).eval()
    runner = make_runner(compiled, CPU, compile="regions", cuda_graphs=False)
    with torch.inference_mode():
        for persons in (1, 3, 5):
            inputs = decoder_inputs(TINY, persons, CPU)
            ref, out = head(*inputs), runner(*inputs)
            assert set(out) == set(ref)
            for key in ref:
                torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
