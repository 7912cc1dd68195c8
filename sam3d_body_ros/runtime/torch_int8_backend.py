"""`torch-int8` backend: the bf16 backbone with 8-bit GEMMs in the transformer blocks.

Weights are quantized once per output channel, activations per token at run time (symmetric):
`int8` uses `torch._int_mm` (int32 accumulate), `fp8` uses `torch._scaled_mm` with e4m3 operands
(Hopper and newer). Patch embedding, norms, RoPE, attention (SDPA) and residuals stay in bf16.
On CPU the same quantized operands are multiplied in float32 (an emulation with identical rounding).
"""
from __future__ import annotations

import torch
from torch import nn

from .backend import BackendSpec
from .torch_backend import TorchBackend, backbone_module

QUANT_MODES = ("int8", "fp8")
_QMAX = {"int8": 127.0, "fp8": 448.0}


def _quantize_rows(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization of a 2-D tensor -> (q, scale (rows, 1) float32)."""
    xf = x.float()
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _QMAX[mode]
    if mode == "int8":
        return torch.round(xf / scale).clamp(-127, 127).to(torch.int8), scale
    return (xf / scale).to(torch.float8_e4m3fn), scale


class QuantLinear(nn.Module):
    """y = x W^T + b with W quantized per output channel and x quantized per row at run time."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mode: str) -> None:
        super().__init__()
        if mode not in QUANT_MODES:
            raise ValueError(f"quantization mode must be one of {QUANT_MODES}, got {mode!r}")
        self.mode = mode
        self.out_features, self.in_features = weight.shape
        q, scale = _quantize_rows(weight.detach(), mode)
        self.register_buffer("weight_q", q)  # (out, in)
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, out) float32
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        xq, xs = _quantize_rows(x2, self.mode)
        if not x.is_cuda:
            y = (xq.float() * xs) @ (self.weight_q.float() * self.weight_scale.t()).t()
        elif self.mode == "fp8":
            y = torch._scaled_mm(
                xq, self.weight_q.t(), scale_a=xs, scale_b=self.weight_scale, out_dtype=torch.bfloat16, use_fast_accum=True
            )
        else:
            y = torch._int_mm(xq, self.weight_q.t()).float() * xs * self.weight_scale
        if self.bias is not None:
            y = y.float() + self.bias
        return y.to(x.dtype).reshape(*lead, self.out_features)


# Measured on the H100 (bench/NOTES.md): 8-bit pays for the wide GEMMs whose activation quantization fuses into
# the LayerNorm before them (qkv, SwiGLU fc1); proj and fc2 lose more to quantizing their input than they gain.
DEFAULT_LAYERS = ("qkv", "fc1", "fc1_g", "fc1_x")
ALL_LAYERS = ("qkv", "proj", "fc1", "fc1_g", "fc1_x", "fc2")


def quantize_block_linears(module: nn.Module, mode: str, layers: tuple[str, ...] = DEFAULT_LAYERS) -> int:
    """Replace the nn.Linear children named in `layers` under `module` by QuantLinear; returns the count.

    timm's EvaAttention adds cat(q_bias, k_bias, v_bias) through F.linear on qkv.weight: that bias is folded in.
    """
    count = 0
    for parent in list(module.modules()):
        if "qkv" in layers and isinstance(getattr(parent, "qkv", None), nn.Linear) and getattr(parent, "q_bias", None) is not None:
            bias = torch.cat((parent.q_bias, parent.k_bias, parent.v_bias))
            parent.qkv = QuantLinear(parent.qkv.weight, bias, mode)
            parent.q_bias = parent.k_bias = parent.v_bias = None
            count += 1
        for name, child in list(parent.named_children()):
            if name in layers and isinstance(child, nn.Linear):
                setattr(parent, name, QuantLinear(child.weight, child.bias, mode))
                count += 1
    return count


class TorchInt8Backend(TorchBackend):
    """Like the torch backend (compile + CUDA graphs on CUDA) with 8-bit GEMMs in the encoder blocks."""

    name = "torch-int8"

    def __init__(self, module: nn.Module, device: torch.device, precision: str, *,
                 layers: tuple[str, ...] = DEFAULT_LAYERS, **kwargs: object) -> None:
        self.layers = layers
        super().__init__(module, device, precision, **kwargs)

    def compute_dtype(self, precision: str) -> torch.dtype:
        if precision not in QUANT_MODES:
            raise ValueError(f"{self.name} backend precision must be one of {QUANT_MODES}, got {precision!r}")
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    def prepare(self, module: nn.Module) -> nn.Module:
        module = super().prepare(module)
        quantize_block_linears(module.encoder.blocks, self.precision, self.layers)
        return module


SPEC = BackendSpec(
    name="torch-int8", devices=("cpu", "cuda"), precisions=QUANT_MODES,
    auto_precision={"cpu": "int8", "cuda": "fp8"}, file_hint=None,
    build=lambda req: TorchInt8Backend(backbone_module(req), req.device, req.precision),
)
