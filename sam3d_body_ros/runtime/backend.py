"""One interface for every backbone runtime: (N,3,512,512) float32 crops in, (N,C,32,32) features out."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..core.config import ModelConfig

# backend name -> module defining `create(cfg, *, device, precision, backbone_state, backbone_file, seed)`
BACKENDS: dict[str, str] = {
    "torch": "sam3d_body_ros.runtime.torch_backend",
    "onnxruntime": "sam3d_body_ros.runtime.ort_backend",
    "pt2": "sam3d_body_ros.runtime.pt2_backend",
    "tensorrt": "sam3d_body_ros.runtime.tensorrt_backend",
    "torch-int8": "sam3d_body_ros.runtime.torch_int8_backend",
}


@runtime_checkable
class BackboneBackend(Protocol):
    """A backbone runtime; features stay on `device` (GPU-resident for GPU backends)."""

    name: str
    device: torch.device
    precision: str

    def __call__(self, crops: torch.Tensor) -> torch.Tensor: ...


def create_backend(
    name: str,
    cfg: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    backbone_state: dict[str, torch.Tensor] | None = None,
    backbone_file: str | Path | None = None,
    seed: int = 0,
) -> BackboneBackend:
    """Instantiate the backend called `name`; raise ValueError listing the known names otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    return module.create(
        cfg,
        device=torch.device(device),
        precision=precision,
        backbone_state=backbone_state,
        backbone_file=Path(backbone_file) if backbone_file else None,
        seed=seed,
    )
