"""Backbone -> ONNX (dynamo exporter, opset 18, dynamic batch, RoPE baked as a constant) and its checks."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.backbone import DINOv3Backbone, build_backbone
from ..core.config import ModelConfig
from ..core.synthetic import random_backbone

INPUT_NAME = "crops"
OUTPUT_NAME = "features"
MIN_OPSET = 18  # the dynamo exporter writes an invalid Split at opset 17 (research/export_quant_probe.md §1)
# Ops that mean RoPE is rebuilt at run time or control flow survived; TensorRT's parser should never see them.
FORBIDDEN_OPS = frozenset({"Sin", "Cos", "Range", "If", "Loop", "Scan"})
PROTOBUF_LIMIT_BYTES = 2_000_000_000  # below protobuf's 2 GiB hard limit, with headroom for the graph itself


def export_backbone(
    cfg: ModelConfig,
    *,
    seed: int = 0,
    backbone_state: dict[str, torch.Tensor] | None = None,
    layer_scale: float | None = None,
) -> DINOv3Backbone:
    """The CPU fp32 backbone to export: `backbone_state` (timm keys) or seeded random weights.

    `layer_scale` (random weights only) sets every block's gamma_1/gamma_2 and gives the q/v biases random
    values: timm's random init uses gamma 1e-5, which makes each block nearly an identity and hides quantization
    error (the probe used 1.0 for tiny and 0.1 for the full model).
    """
    if backbone_state is None:
        return random_backbone(cfg, seed, layer_scale).eval()
    if layer_scale is not None:
        raise ValueError("layer_scale only applies to random weights, not to a loaded checkpoint")
    module = build_backbone(cfg)
    module.load_timm_state(backbone_state)
    return module.eval()


def param_bytes(module: torch.nn.Module) -> int:
    """Bytes held by parameters and buffers (what the ONNX initializers will weigh)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def export_onnx(module: DINOv3Backbone, path: str | Path, *, max_batch: int = 64, opset: int = MIN_OPSET) -> Path:
    """Export with a dynamic batch 1..max_batch; weights go to `<path>.data` only when the model exceeds 2 GB."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported: the dynamo exporter needs opset >= {MIN_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = module.encoder.patch_embed.img_size
    example = torch.randn(2, 3, *size)  # batch >= 2 so the batch dimension is traced as symbolic
    large = param_bytes(module) > PROTOBUF_LIMIT_BYTES
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()  # a stale sidecar from an earlier large export must not sit beside a self-contained file
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"crops": {0: torch.export.Dim("batch", min=1, max=max_batch)}},
            external_data=large,
            verbose=False,
        )
    problems = graph_problems(path)
    if problems:
        raise RuntimeError(f"exported graph {path} is not deployable: " + "; ".join(problems))
    return path


def graph_problems(path: str | Path) -> list[str]:
    """Run-time RoPE (Sin/Cos/Range) or control flow (If/Loop/Scan) left in an ONNX graph, one line per op type."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FORBIDDEN_OPS:
            found[node.op_type] = found.get(node.op_type, 0) + 1
    return [f"{n} x {op}" for op, n in sorted(found.items())]
