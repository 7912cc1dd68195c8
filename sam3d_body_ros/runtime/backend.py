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

# precision "auto" -> (on CUDA, on CPU). torch on CUDA: fp16 runs at bf16's speed with ~8x lower feature error
# (bench/RESULTS.md); torch-int8 on CUDA: fp8 where the GPU has it (compute capability >= 8.9), else int8.
AUTO_PRECISION: dict[str, tuple[str, str]] = {
    "torch": ("fp16", "fp32"),
    "torch-int8": ("fp8", "int8"),
    "onnxruntime": ("fp32", "fp32"),
    "pt2": ("fp32", "fp32"),
    "tensorrt": ("fp16", "fp16"),
}


def resolve_backend(name: str, device: torch.device) -> str:
    """"auto" -> torch-int8 on CUDA (8-bit GEMMs: the fastest measured path, bench/RESULTS.md), torch on CPU."""
    if name != "auto":
        return name
    return "torch-int8" if device.type == "cuda" else "torch"


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when a GPU is usable, else cpu; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(name: str, precision: str, device: torch.device) -> str:
    """"auto" -> the backend's default on `device` (AUTO_PRECISION); anything else as given."""
    if precision != "auto":
        return precision
    on_cuda, on_cpu = AUTO_PRECISION[name]
    if device.type != "cuda":
        return on_cpu
    if on_cuda == "fp8" and torch.cuda.get_device_capability(device) < (8, 9):
        return "int8"
    return on_cuda


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
    precision: str = "auto",
    backbone_state: dict[str, torch.Tensor] | None = None,
    backbone_file: str | Path | None = None,
    seed: int = 0,
) -> BackboneBackend:
    """Instantiate the backend called `name` ("auto" name/device/precision resolved); ValueError for an unknown name."""
    device = resolve_device(device)
    name = resolve_backend(name, device)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or auto")
    module = importlib.import_module(BACKENDS[name])
    return module.create(
        cfg,
        device=device,
        precision=resolve_precision(name, precision, device),
        backbone_state=backbone_state,
        backbone_file=Path(backbone_file) if backbone_file else None,
        seed=seed,
    )
