"""`onnxruntime` backend: an fp32 or INT8 QDQ backbone ONNX (ours or Embedl's) on ONNX Runtime's CPU provider."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.config import ModelConfig
from ..core.errors import WeightsError
from .artifact_check import check_backbone_signature, onnx_signature, run_batched
from .backend import BackendRequest, BackendSpec


def is_quantized(path: str | Path) -> bool:
    """True when the ONNX graph holds QuantizeLinear/DequantizeLinear nodes (an INT8 QDQ model)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


class OrtBackend:
    """Runs a backbone ONNX with ONNX Runtime on the CPU; features are returned as CPU float32 tensors."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, cfg: ModelConfig, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"backbone ONNX not found ({self.path}): make one with `sam3d-body export-onnx`")
        self.signature = check_backbone_signature(*onnx_signature(self.path), cfg, self.path)
        self.precision = "int8" if is_quantized(self.path) else "fp32"
        self.device = torch.device("cpu")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types (e.g. missing .onnx.data)
            raise WeightsError(
                f"onnxruntime cannot load {self.path}: {e}".splitlines()[0]
                + " (an ONNX with external weights needs its .onnx.data file beside it)"
            ) from e

    def _run(self, crops: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(crops.detach().to("cpu", torch.float32).numpy())
        (y,) = self.session.run([self.signature.output_name], {self.signature.input_name: x})
        return torch.from_numpy(y)

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return run_batched(self._run, crops, self.signature.fixed_batch)


def build(req: BackendRequest) -> OrtBackend:
    """Load the ONNX (it carries the weights and decides fp32 or int8)."""
    backend = OrtBackend(req.backbone_file, req.cfg)
    if req.precision == "int8" and backend.precision != "int8":
        raise ValueError(f"precision int8 asked, but {req.backbone_file} has no Q/DQ nodes; quantize it with "
                         f"`sam3d-body quantize`")
    return backend


SPEC = BackendSpec(
    name="onnxruntime", devices=("cpu",), precisions=("fp32", "int8"), auto_precision={"cpu": "fp32"},
    file_hint="X.onnx (make one with `sam3d-body export-onnx`, an INT8 one with `sam3d-body quantize`, or use "
              "Embedl's embedl_sam3dbody_int8.onnx)",
    build=build,
)
