"""`fused-fp8` backend: transformer blocks as fused e4m3 Triton kernels (Hopper / Ada), the rest as `torch:bf16`.

Per block (`FusedFp8Block`, same function as timm's EvaBlock):
  LayerNorm+quantize -> qkv fp8 GEMM (+bias) -> RoPE, SDPA (bf16 torch ops, fused by torch.compile) ->
  proj (bf16 F.linear, residual + gamma_1 add left to torch.compile; or, with proj_fp8, an fp8 GEMM quantizing the
  attention output in its prologue and adding the residual in its epilogue) -> LayerNorm+quantize ->
  SwiGLU fp8 GEMM (gate and value in one program, silu(g)*v + row amax in the epilogue) ->
  fc2 fp8 GEMM (h quantized in the prologue with that amax, residual + gamma_2 in the epilogue).
The residual stream between blocks is fp32 by default (each epilogue rounds once); the last block returns bf16.
Weights are quantized once per output channel from fp32; activations per token at run time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from torch import nn

from ..core.errors import RuntimeUnavailable
from . import fp8_kernels as fk
from .backend import FP8_MIN_CAPABILITY, BackendSpec
from .torch_backend import TorchBackend, backbone_module


def _exact_layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    y = F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps)
    return y, y.new_ones((y.shape[0], 1))


def _exact_bf16a(h: torch.Tensor, amax: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
                 residual: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    return fk.fp8_linear_ref(h.float(), h.new_ones((h.shape[0], 1), dtype=torch.float32), wq, sw, bias, residual,
                             gamma, out_dtype)


# name -> (layernorm_quant, linear, linear_bf16a, swiglu)
IMPLS = {
    "triton": (fk.layernorm_quant, fk.fp8_linear, fk.fp8_linear_bf16a, fk.fp8_swiglu),
    "reference": (fk.layernorm_quant_ref, fk.fp8_linear_ref, fk.fp8_linear_bf16a_ref, fk.fp8_swiglu_ref),
    "exact": (_exact_layernorm, fk.fp8_linear_ref, _exact_bf16a, fk.fp8_swiglu_ref),  # no quantization at all
}


def _check_supported(block: nn.Module) -> None:
    attn, mlp = block.attn, block.mlp
    for what, mod in (("attn.q_norm", getattr(attn, "q_norm", None)), ("attn.k_norm", getattr(attn, "k_norm", None)),
                      ("attn.norm", getattr(attn, "norm", None)), ("mlp.norm", getattr(mlp, "norm", None))):
        if not isinstance(mod, (nn.Identity, type(None))):
            raise ValueError(f"FusedFp8Block does not support {what} = {type(mod).__name__} (must be Identity)")
    if getattr(attn, "gate", None) is not None:
        raise ValueError("FusedFp8Block does not support gated attention")
    if getattr(attn, "qkv", None) is None:
        raise ValueError("FusedFp8Block needs a fused qkv projection")
    if not isinstance(getattr(mlp, "act", None), nn.SiLU):
        raise ValueError(f"FusedFp8Block needs a SwiGLU MLP (SiLU gate), got {type(mlp).__name__}")
    for norm in (block.norm1, block.norm2):
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
            raise ValueError(f"FusedFp8Block needs affine LayerNorms, got {norm}")
    for name in ("drop_path1", "drop_path2"):
        if not isinstance(getattr(block, name, nn.Identity()), nn.Identity):
            raise ValueError(f"FusedFp8Block is inference-only: {name} must be Identity")


class FusedFp8Block(nn.Module):
    """A timm EvaBlock (SwiGLU MLP, fused qkv, RoPE) run by the fused e4m3 kernels; forward matches EvaBlock's.

    `dtype`: activations between the kernels (qkv, attention, h); `residual_dtype`: the residual stream written by
    the epilogues; `out_dtype`: the block output (None: residual_dtype). `impl`: "triton" (kernels), "reference"
    (eager torch doing the same quantization) or "exact" (no quantization: checks the block's wiring).
    """

    def __init__(self, block: nn.Module, *, dtype: torch.dtype = torch.bfloat16,
                 residual_dtype: torch.dtype = torch.float32, out_dtype: torch.dtype | None = None,
                 proj_fp8: bool = False, impl: str = "triton") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {sorted(IMPLS)}, got {impl!r}")
        _check_supported(block)
        attn, mlp = block.attn, block.mlp
        self.impl, self.dtype, self.residual_dtype, self.out_dtype = impl, dtype, residual_dtype, out_dtype
        self.proj_fp8 = proj_fp8
        self.num_heads = attn.num_heads
        self.num_prefix_tokens = attn.num_prefix_tokens
        self.rotate_half = bool(getattr(attn, "rotate_half", False))
        self.eps1, self.eps2 = float(block.norm1.eps), float(block.norm2.eps)
        dim = block.norm1.weight.shape[0]

        def f32(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().float().clone()

        self.register_buffer("ln1_w", f32(block.norm1.weight))
        self.register_buffer("ln1_b", f32(block.norm1.bias))
        self.register_buffer("ln2_w", f32(block.norm2.weight))
        self.register_buffer("ln2_b", f32(block.norm2.bias))
        ones = torch.ones(dim, device=block.norm1.weight.device)
        self.register_buffer("gamma_1", f32(block.gamma_1) if getattr(block, "gamma_1", None) is not None else ones)
        self.register_buffer("gamma_2", f32(block.gamma_2) if getattr(block, "gamma_2", None) is not None else ones)

        if getattr(attn, "q_bias", None) is not None:
            qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        else:
            qkv_bias = attn.qkv.bias
        if hasattr(mlp, "fc1"):  # FusedSwiGLU: [gate; value] already stacked
            w1, b1 = mlp.fc1.weight, mlp.fc1.bias
        else:
            w1 = torch.cat((mlp.fc1_g.weight, mlp.fc1_x.weight))
            b1 = None if mlp.fc1_g.bias is None else torch.cat((mlp.fc1_g.bias, mlp.fc1_x.bias))
        self._add_weight("qkv", attn.qkv.weight, qkv_bias)
        self._add_weight("fc1", w1, b1)
        self._add_weight("fc2", mlp.fc2.weight, mlp.fc2.bias)
        if proj_fp8:
            self._add_weight("proj", attn.proj.weight, attn.proj.bias)
        else:
            self.register_buffer("proj_w", attn.proj.weight.detach().to(dtype).clone())
            self.register_buffer("proj_b", f32(attn.proj.bias))

    def _add_weight(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if self.impl == "exact":
            wq, sw = weight.detach().float().clone(), torch.ones(weight.shape[0], device=weight.device)
        else:
            wq, sw = fk.quantize_rows_ref(weight.detach().float())
            sw = sw.reshape(-1)
        self.register_buffer(f"{name}_wq", wq.contiguous())
        self.register_buffer(f"{name}_sw", sw.contiguous())
        self.register_buffer(f"{name}_b", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None:
            raise NotImplementedError("FusedFp8Block does not take an attention mask")
        ln_quant, linear, linear_bf16a, swiglu = IMPLS[self.impl]
        b, n, c = x.shape
        x2 = x.reshape(b * n, c)

        q8, sa = ln_quant(x2, self.ln1_w, self.ln1_b, self.eps1)
        qkv = linear(q8, sa, self.qkv_wq, self.qkv_sw, self.qkv_b, out_dtype=self.dtype)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:  # as timm EvaAttention: no RoPE on the prefix (cls + register) tokens
            npt = self.num_prefix_tokens
            q = torch.cat([q[:, :, :npt, :], apply_rot_embed_cat(q[:, :, npt:, :], rope, half=self.rotate_half)],
                          dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt, :], apply_rot_embed_cat(k[:, :, npt:, :], rope, half=self.rotate_half)],
                          dim=2).type_as(v)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        o = o.transpose(1, 2).reshape(b * n, c)
        if self.proj_fp8:
            x2 = linear_bf16a(o, o.abs().amax(dim=1).float(), self.proj_wq, self.proj_sw, self.proj_b,
                              x2, self.gamma_1, out_dtype=self.residual_dtype)
        else:
            y = F.linear(o, self.proj_w).float() + self.proj_b
            x2 = (x2.float() + self.gamma_1 * y).to(self.residual_dtype)

        q8, sa = ln_quant(x2, self.ln2_w, self.ln2_b, self.eps2)
        h, amax = swiglu(q8, sa, self.fc1_wq, self.fc1_sw, self.fc1_b, out_dtype=self.dtype)
        out = linear_bf16a(h, amax, self.fc2_wq, self.fc2_sw, self.fc2_b, x2, self.gamma_2,
                           out_dtype=self.out_dtype or self.residual_dtype)
        return out.reshape(b, n, c)


def _is_eva_block(mod: nn.Module) -> bool:
    return all(hasattr(mod, a) for a in ("norm1", "attn", "norm2", "mlp")) and hasattr(mod.attn, "qkv")


def fuse_fp8_blocks(module: nn.Module, *, dtype: torch.dtype = torch.bfloat16,
                    residual_dtype: torch.dtype = torch.float32, proj_fp8: bool = False,
                    impl: str = "triton") -> int:
    """Replace every EvaBlock in `module.encoder.blocks` by a FusedFp8Block (the last one returns `dtype`, the
    others `residual_dtype`); returns the count. Weights are quantized where they are (put them on the GPU first)."""
    blocks = module.encoder.blocks
    idx = [i for i, blk in enumerate(blocks) if _is_eva_block(blk)]
    for i in idx:
        blocks[i] = FusedFp8Block(blocks[i], dtype=dtype, residual_dtype=residual_dtype,
                                  out_dtype=dtype if i == len(blocks) - 1 else None, proj_fp8=proj_fp8, impl=impl)
    return len(idx)


class FusedFp8Backend(TorchBackend):
    """The torch backend's bf16 fast path (patchify GEMM, regional compile, CUDA graphs) with FusedFp8Block blocks."""

    name = "fused-fp8"

    def __init__(self, module: nn.Module, device: torch.device, precision: str, *, proj_fp8: bool = False,
                 residual_dtype: torch.dtype = torch.float32, **kwargs: object) -> None:
        self.proj_fp8, self.residual_dtype = proj_fp8, residual_dtype
        super().__init__(module, device, precision, **kwargs)

    def compute_dtype(self, precision: str) -> torch.dtype:
        if precision != "fp8":
            raise ValueError(f"{self.name} backend precision must be fp8, got {precision!r}")
        return torch.bfloat16

    def prepare(self, module: nn.Module) -> nn.Module:
        # quantize the blocks from their fp32 weights (Module.to(bf16) would also cast fp8 buffers: keep them out)
        encoder = module.encoder
        blocks, encoder.blocks = encoder.blocks, nn.ModuleList()
        module = super().prepare(module)
        fused = []
        for blk in blocks:
            fused.append(FusedFp8Block(blk.to(self.device, torch.float32), dtype=self.dtype,
                                       residual_dtype=self.residual_dtype, proj_fp8=self.proj_fp8))
            blk.to("meta")  # free the fp32 copy
        fused[-1].out_dtype = self.dtype
        module.encoder.blocks = nn.ModuleList(fused)
        return module


def require_fused_fp8() -> None:
    """RuntimeUnavailable unless Triton is importable and a CUDA GPU with fp8 tensor cores (>= sm_89) is visible."""
    if fk.triton is None:
        raise RuntimeUnavailable("the fused-fp8 backend needs Triton (PyTorch's Linux CUDA wheels bring it: "
                                 "pip install triton); use --backend torch-int8 otherwise")
    if not torch.cuda.is_available():
        raise RuntimeUnavailable("the fused-fp8 backend needs a CUDA GPU with fp8 tensor cores (compute capability "
                                 ">= 8.9: Ada, Hopper or newer) and none is visible; use --backend torch on the CPU")
    cap = torch.cuda.get_device_capability()
    if cap < FP8_MIN_CAPABILITY:
        raise RuntimeUnavailable(f"the fused-fp8 backend needs compute capability >= 8.9 (fp8 tensor cores); "
                                 f"{torch.cuda.get_device_name()} has {cap[0]}.{cap[1]}: use --backend torch-int8")


SPEC = BackendSpec(
    name="fused-fp8", devices=("cuda",), precisions=("fp8",), auto_precision={"cuda": "fp8"}, file_hint=None,
    build=lambda req: FusedFp8Backend(backbone_module(req), req.device, req.precision),
    requires=require_fused_fp8,
)
