"""`pt2` backend: a `torch.export` ExportedProgram of the backbone (ours or Embedl's embedl_sam3dbody_int8.pt2)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.export.passes import move_to_device_pass

from ..core.backbone import DINOv3Backbone
from ..core.config import ModelConfig
from ..core.errors import WeightsError
from .artifact_check import check_backbone_signature, program_signature, run_batched
from .backend import BackendRequest, BackendSpec


def export_program(module: DINOv3Backbone, path: str | Path, *, max_batch: int = 64) -> Path:
    """torch.export the backbone with a dynamic batch 1..max_batch and save it as a .pt2 file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = module.encoder.patch_embed.img_size
    # A batch-1 example specialises the batch to 1 (research/export_quant_probe.md §2), so trace with 2.
    example = torch.randn(2, 3, *size)
    with torch.no_grad():
        program = torch.export.export(
            module.eval(), (example,), dynamic_shapes={"crops": {0: torch.export.Dim("batch", min=1, max=max_batch)}}
        )
    torch.export.save(program, str(path))
    return path


def _quantized(program: torch.export.ExportedProgram) -> bool:
    """True when the graph calls quantize/dequantize ops (an INT8 program such as Embedl's)."""
    return any(
        n.op == "call_function" and "quantize" in str(n.target) for n in program.graph.nodes
    )


class Pt2Backend:
    """Runs a loaded ExportedProgram on `device`; features are float32 on that device."""

    name = "pt2"

    def __init__(self, path: str | Path, cfg: ModelConfig, device: torch.device) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"backbone .pt2 not found ({self.path}): make one with `sam3d-body export-pt2`")
        try:
            program = torch.export.load(str(self.path))
        except Exception as e:  # noqa: BLE001 - torch raises many types for foreign/corrupt archives
            raise WeightsError(f"torch.export.load cannot read {self.path}: {e}".splitlines()[0]) from e
        self.signature = check_backbone_signature(*program_signature(program), cfg, self.path)
        self.precision = "int8" if _quantized(program) else "fp32"
        self.device = device
        # Also rewrites devices baked into graph nodes (a program exported on CUDA can run on the CPU and back).
        self.module = move_to_device_pass(program, device).module()

    def _run(self, crops: torch.Tensor) -> torch.Tensor:
        return self.module(crops.to(self.device, torch.float32, non_blocking=True).contiguous()).float()

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return run_batched(self._run, crops, self.signature.fixed_batch)


def build(req: BackendRequest) -> Pt2Backend:
    """Load the .pt2 (the program carries its weights and precision)."""
    backend = Pt2Backend(req.backbone_file, req.cfg, req.device)
    if req.precision == "int8" and backend.precision != "int8":
        raise ValueError(f"precision int8 asked, but {req.backbone_file} holds no quantize ops")
    return backend


SPEC = BackendSpec(
    name="pt2", devices=("cpu", "cuda"), precisions=("fp32", "int8"), auto_precision={"cpu": "fp32", "cuda": "fp32"},
    file_hint="X.pt2 (make one with `sam3d-body export-pt2` or use Embedl's embedl_sam3dbody_int8.pt2)",
    build=build,
)
