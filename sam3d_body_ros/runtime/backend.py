"""One interface for every backbone runtime: (N,3,512,512) float32 crops in, (N,C,32,32) features out.

Each backend module describes itself with a `SPEC` (BackendSpec); `create_backend` resolves "auto" choices, checks a
request against the spec and calls the module's `build`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..core.config import ModelConfig

# backend name -> module that defines SPEC (imported on demand: onnxruntime, TensorRT are optional)
BACKENDS: dict[str, str] = {
    "torch": "sam3d_body_ros.runtime.torch_backend",
    "torch-int8": "sam3d_body_ros.runtime.torch_int8_backend",
    "fused-fp8": "sam3d_body_ros.runtime.fused_fp8_backend",
    "onnxruntime": "sam3d_body_ros.runtime.ort_backend",
    "tensorrt": "sam3d_body_ros.runtime.tensorrt_backend",
    "pt2": "sam3d_body_ros.runtime.pt2_backend",
}
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper; older GPUs fall back to int8


@runtime_checkable
class BackboneBackend(Protocol):
    """A backbone runtime; features stay on `device` (GPU-resident for GPU backends)."""

    name: str
    device: torch.device
    precision: str

    def __call__(self, crops: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class BackendRequest:
    """What a backend is built from, "auto" choices already resolved."""

    cfg: ModelConfig
    device: torch.device
    precision: str
    backbone_state: dict[str, torch.Tensor] | None = None  # timm keys (torch-based backends)
    backbone_file: Path | None = None  # .onnx / .engine / .pt2 (file-based backends)
    seed: int = 0  # random weights when neither is given


@dataclass(frozen=True)
class BackendSpec:
    """A backend's description: where it runs, which precisions it takes, what `auto` picks, whether it needs a file."""

    name: str
    devices: tuple[str, ...]  # torch device types
    precisions: tuple[str, ...]
    auto_precision: dict[str, str]  # device type -> precision "auto" picks
    file_hint: str | None  # None: takes weights from --weights; else the file it needs, and how to make one
    build: Callable[[BackendRequest], BackboneBackend]
    requires: Callable[[], object] | None = None  # raises RuntimeUnavailable when the runtime library is missing


def backend_spec(name: str) -> BackendSpec:
    """The SPEC of backend `name`; ValueError for an unknown name."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose auto or one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).SPEC


def resolve_backend(name: str, device: torch.device) -> str:
    """"auto" -> torch-int8 on CUDA (cuBLAS fp8 GEMMs: the fastest measured path; fused-fp8 was slower on the H200,
    6.11 vs 4.86 ms at batch 1, bench/RESULTS.md), torch on CPU."""
    if name != "auto":
        return name
    return "torch-int8" if device.type == "cuda" else "torch"


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when a GPU is usable, else cpu; ValueError for a CUDA device this machine does not have."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a torch device: use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked, but no usable CUDA GPU is visible: use device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked, but only {torch.cuda.device_count()} GPU(s) are visible")
    return dev


def resolve_precision(spec: BackendSpec, precision: str, device: torch.device) -> str:
    """"auto" -> the spec's choice for the device (fp8 only where the GPU has it); ValueError for one it cannot run."""
    if precision == "auto":
        precision = spec.auto_precision[device.type]
        if precision == "fp8" and torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
            precision = "int8"
    if precision not in spec.precisions:
        raise ValueError(f"the {spec.name} backend takes precision auto or one of {', '.join(spec.precisions)}, "
                         f"not {precision!r}")
    return precision


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
    """Build the backend called `name` ("auto" name/device/precision resolved); RuntimeUnavailable when its library is
    missing, ValueError for a request its spec does not allow (unknown name, wrong device or precision, file missing
    or not taken)."""
    device = resolve_device(device)
    spec = backend_spec(resolve_backend(name, device))
    if spec.requires is not None:
        spec.requires()
    if device.type not in spec.devices:
        raise ValueError(f"the {spec.name} backend runs on {' or '.join(spec.devices)}, not on {device}")
    if spec.file_hint and backbone_file is None:
        raise ValueError(f"the {spec.name} backend needs --backbone-file / backbone_file: {spec.file_hint}")
    if not spec.file_hint and backbone_file is not None:
        raise ValueError(f"the {spec.name} backend takes its weights from --weights / weights_dir; use "
                         f"--backend pt2, onnxruntime or tensorrt for a backbone file")
    request = BackendRequest(cfg, device, resolve_precision(spec, precision, device), backbone_state,
                             Path(backbone_file) if backbone_file else None, seed)
    return spec.build(request)
