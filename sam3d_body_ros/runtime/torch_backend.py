"""`torch` backend: the timm backbone in eager PyTorch, fp32/bf16/fp16, CPU or CUDA."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.backbone import DINOv3Backbone, build_backbone
from ..core.config import ModelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    """Runs `DINOv3Backbone` with weights cast to `precision`; returns float32 features."""

    name = "torch"

    def __init__(self, module: DINOv3Backbone, device: torch.device, precision: str) -> None:
        if precision not in DTYPES:
            raise ValueError(f"torch backend precision must be one of {sorted(DTYPES)}, got {precision!r}")
        self.device = device
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.module = module.to(device=device, dtype=self.dtype).eval()

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return self.module(crops.to(self.device, self.dtype, non_blocking=True)).float()


def create(
    cfg: ModelConfig,
    *,
    device: torch.device,
    precision: str,
    backbone_state: dict[str, torch.Tensor] | None,
    backbone_file: Path | None,
    seed: int,
) -> TorchBackend:
    """Build the backbone from `backbone_state` (timm keys) or seeded random weights."""
    if backbone_file is not None:
        raise ValueError("the torch backend takes weights from --weights; use --backend pt2/onnxruntime/tensorrt for a backbone file")
    torch.manual_seed(seed)
    module = build_backbone(cfg)
    if backbone_state is not None:
        module.load_timm_state(backbone_state)
    return TorchBackend(module, device, precision)
