"""DINOv3 ViT backbone (timm): normalised 512x512 crops -> final-norm patch-token feature map."""
from __future__ import annotations

import timm
import torch
from torch import nn

from .config import ModelConfig


class DINOv3Backbone(nn.Module):
    """Wraps timm's DINOv3 ViT; returns (N, embed_dim, grid, grid) from the final-norm patch tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        b = cfg.backbone
        # dynamic_img_size=False makes timm use its cached RoPE table instead of rebuilding it on the
        # CPU every call (bit-identical output; keeps the graph exportable and CUDA-graph capturable).
        self.encoder = timm.create_model(
            b.timm_name,
            pretrained=False,
            img_size=b.img_size,
            num_classes=0,
            embed_dim=b.embed_dim,
            depth=b.depth,
            num_heads=b.num_heads,
            dynamic_img_size=False,
        )
        self.grid = b.grid
        self.num_prefix_tokens = b.num_prefix_tokens

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(crops)[:, self.num_prefix_tokens :]
        n, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(n, c, self.grid, self.grid)

    def compile_regions(self, mode: str = "default") -> None:
        """torch.compile each transformer block in place (regional compilation: one compile serves all blocks)."""
        for blk in self.encoder.blocks:
            blk.compile(mode=mode, fullgraph=True)

    def load_timm_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict in timm naming strictly, listing missing/unexpected keys on mismatch."""
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise KeyError(
                f"backbone weights do not match {type(self.encoder).__name__}: "
                f"{len(missing)} missing {missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]}"
            )


def build_backbone(cfg: ModelConfig, device: str | torch.device = "cpu") -> DINOv3Backbone:
    """Build the backbone with seeded-default timm init on `device` (use "meta" to count parameters)."""
    with torch.device(device):
        return DINOv3Backbone(cfg)


def count_params(module: nn.Module) -> int:
    """Number of learnable parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def set_layer_scale(backbone: DINOv3Backbone, layer_scale: float, seed: int) -> None:
    """Make random weights non-trivial: every block's layer-scale set to `layer_scale`, q/v biases random.

    timm's random init uses layer-scale 1e-5, which turns each block into ~identity and hides reduced-precision error.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in backbone.encoder.blocks:
            blk.gamma_1.fill_(layer_scale)
            blk.gamma_2.fill_(layer_scale)
            for bias in (blk.attn.q_bias, blk.attn.v_bias):
                bias.copy_(0.02 * torch.randn(bias.shape, generator=gen))
