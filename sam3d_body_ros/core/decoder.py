"""Promptable decoder of SAM 3D Body: pre-LN token layers (self-attn, cross-attn to the image, FFN) and their parts.

Module and parameter names follow upstream (`decoder.layers.{i}.{ln_pe_1, ln_pe_2, ln1, self_attn, ln2_1, ln2_2,
cross_attn, ln3, ffn}`, `decoder.norm_final`) so checkpoint keys load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderConfig

LN_EPS = 1e-6


class LayerNorm32(nn.LayerNorm):
    """LayerNorm evaluated in float32 and cast back to the input dtype (upstream `LayerNorm32`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class FFN(nn.Module):
    """Two-layer feed-forward net without residual; keys `layers.0.0` (hidden) and `layers.1` (output)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(in_dim, hidden_dim), act()), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MLP(nn.Module):
    """DETR-style MLP: `num_layers` Linear layers with ReLU between them; keys `layers.{i}`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (k/v may come from another width) and SDPA."""

    def __init__(self, inner_dim: int, num_heads: int, query_dim: int, kv_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(query_dim, inner_dim)
        self.k_proj = nn.Linear(kv_dim, inner_dim)
        self.v_proj = nn.Linear(kv_dim, inner_dim)
        self.proj = nn.Linear(inner_dim, query_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.num_heads, -1).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q (N,T,query_dim), k/v (N,S,kv_dim), optional boolean `attn_mask` broadcastable to (N,heads,T,S) (True =
        attend) -> (N,T,query_dim)."""
        n, t, _ = q.shape
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)), attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(n, t, -1))


class DecoderLayer(nn.Module):
    """One pre-LN decoder layer with re-normalised PEs (REPEAT_PE); layer 0 skips the PE in self-attention."""

    def __init__(self, cfg: DecoderConfig, context_dim: int, skip_first_pe: bool) -> None:
        super().__init__()
        dim, inner = cfg.dim, cfg.heads * cfg.dim_head
        self.skip_first_pe = skip_first_pe
        self.ln_pe_1 = LayerNorm32(dim, eps=LN_EPS)
        self.ln_pe_2 = LayerNorm32(context_dim, eps=LN_EPS)
        self.ln1 = LayerNorm32(dim, eps=LN_EPS)
        self.self_attn = Attention(inner, cfg.heads, dim, dim)
        self.ln2_1 = LayerNorm32(dim, eps=LN_EPS)
        self.ln2_2 = LayerNorm32(context_dim, eps=LN_EPS)
        self.cross_attn = Attention(inner, cfg.heads, dim, context_dim)
        self.ln3 = LayerNorm32(dim, eps=LN_EPS)
        self.ffn = FFN(dim, cfg.mlp_dim, dim, act=nn.GELU)

    def forward(self, x: torch.Tensor, context: torch.Tensor, x_pe: torch.Tensor, context_pe: torch.Tensor,
                self_attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N,T,dim) tokens, context (N,HW,C) image tokens, x_pe (N,T,dim), context_pe (1|N,HW,C) -> new tokens.

        `self_attn_mask` (boolean, broadcastable to (N,heads,T,T)) restricts which tokens the self-attention reads.
        """
        x_pe = self.ln_pe_1(x_pe)
        context_pe = self.ln_pe_2(context_pe)
        h = self.ln1(x)
        qk = h if self.skip_first_pe else h + x_pe
        x = x + self.self_attn(qk, qk, h, self_attn_mask)
        ctx = self.ln2_2(context)
        x = x + self.cross_attn(self.ln2_1(x) + x_pe, ctx + context_pe, ctx)
        return x + self.ffn(self.ln3(x))


class PromptableDecoder(nn.Module):
    """The layer stack and final norm; the head runs the layers itself because predictions interleave with them."""

    def __init__(self, cfg: DecoderConfig, context_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, context_dim, skip_first_pe=(i == 0)) for i in range(cfg.depth))
        self.norm_final = LayerNorm32(cfg.dim, eps=LN_EPS)
