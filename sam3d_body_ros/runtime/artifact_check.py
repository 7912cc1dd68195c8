"""I/O signature checks for backbone artifacts (ours or Embedl's .onnx / .pt2): one crop input, one feature output."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.config import ModelConfig
from ..core.errors import WeightsError

Dim = int | str | None  # static size, symbolic name, or unknown


@dataclass(frozen=True)
class TensorSig:
    """Name, shape (ints for static dims, names for symbolic ones) and dtype name of one graph input/output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({dims}) {self.dtype}"


@dataclass(frozen=True)
class BackboneSignature:
    """A checked backbone signature: tensor names and the batch size when the artifact fixes it."""

    input_name: str
    output_name: str
    fixed_batch: int | None  # None = dynamic batch
    channels: int


def expected_signature_text(cfg: ModelConfig) -> str:
    """Human description of the backbone I/O the package expects for `cfg`."""
    b = cfg.backbone
    return (
        f"one input (N,3,{b.img_size},{b.img_size}) float32 and one output "
        f"(N,{b.embed_dim},{b.grid},{b.grid}) float32"
    )


def check_backbone_signature(
    inputs: list[TensorSig], outputs: list[TensorSig], cfg: ModelConfig, source: str | Path
) -> BackboneSignature:
    """Accept any single-input/single-output graph with the backbone's shapes; raise WeightsError saying what differs."""
    b = cfg.backbone
    problems: list[str] = []
    if len(inputs) != 1:
        problems.append(f"it has {len(inputs)} inputs")
    if len(outputs) != 1:
        problems.append(f"it has {len(outputs)} outputs")
    if not problems:
        problems += _shape_problems("input", inputs[0], (3, b.img_size, b.img_size))
        problems += _shape_problems("output", outputs[0], (b.embed_dim, b.grid, b.grid))
        if outputs[0].shape[1:2] and isinstance(outputs[0].shape[1], int) and outputs[0].shape[1] != b.embed_dim:
            other = "full" if outputs[0].shape[1] == 1280 else "tiny" if outputs[0].shape[1] == 128 else None
            if other and other != cfg.name:
                problems.append(f"it looks like a --config {other} backbone while --config {cfg.name} is selected")
    if problems:
        found = "inputs [" + "; ".join(map(str, inputs)) + "], outputs [" + "; ".join(map(str, outputs)) + "]"
        raise WeightsError(
            f"backbone artifact {source} does not fit the {cfg.name} model: expected {expected_signature_text(cfg)}, "
            f"found {found}: " + "; ".join(problems)
        )
    batch_in, batch_out = inputs[0].shape[0], outputs[0].shape[0]
    fixed = batch_in if isinstance(batch_in, int) else None
    if fixed is not None and isinstance(batch_out, int) and batch_out != fixed:
        raise WeightsError(f"backbone artifact {source} maps batch {fixed} to batch {batch_out}")
    return BackboneSignature(inputs[0].name, outputs[0].name, fixed, b.embed_dim)


def _shape_problems(kind: str, sig: TensorSig, expected_tail: tuple[int, ...]) -> list[str]:
    problems = []
    if sig.dtype != "float32":
        problems.append(f"{kind} {sig.name!r} is {sig.dtype}, not float32")
    if len(sig.shape) != 1 + len(expected_tail):
        problems.append(f"{kind} {sig.name!r} has rank {len(sig.shape)}, not {1 + len(expected_tail)}")
        return problems
    batch = sig.shape[0]
    if isinstance(batch, int) and batch < 1:
        problems.append(f"{kind} {sig.name!r} has batch size {batch}")
    for axis, (got, want) in enumerate(zip(sig.shape[1:], expected_tail), start=1):
        if isinstance(got, int) and got != want:  # symbolic sizes cannot be checked statically
            problems.append(f"{kind} {sig.name!r} axis {axis} is {got}, not {want}")
    return problems


def onnx_signature(path: str | Path) -> tuple[list[TensorSig], list[TensorSig]]:
    """Graph inputs (initializers excluded) and outputs of an ONNX file, read without its external weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError/OSError variants
        raise WeightsError(f"cannot read ONNX file {path}: {e}") from e
    inits = {t.name for t in model.graph.initializer}

    def sig(v: onnx.ValueInfoProto) -> TensorSig:
        t = v.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "undefined"
        return TensorSig(v.name, dims, dtype)

    return [sig(v) for v in model.graph.input if v.name not in inits], [sig(v) for v in model.graph.output]


def program_signature(program: torch.export.ExportedProgram) -> tuple[list[TensorSig], list[TensorSig]]:
    """User inputs and outputs of a torch.export program, with symbolic sizes as strings."""
    nodes = {n.name: n for n in program.graph.nodes}

    def sig(name: str) -> TensorSig:
        val = nodes[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            return TensorSig(name, (), type(val).__name__)
        dims = tuple(int(d) if isinstance(d, int) else str(d) for d in val.shape)
        return TensorSig(name, dims, str(val.dtype).removeprefix("torch."))

    gs = program.graph_signature
    return [sig(n) for n in gs.user_inputs], [sig(n) for n in gs.user_outputs]


def run_batched(
    fn: Callable[[torch.Tensor], torch.Tensor],
    crops: torch.Tensor,
    fixed_batch: int | None,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Call `fn` on all crops at once, in zero-padded chunks when the artifact fixes the batch size, or in chunks
    of at most `max_batch` when its dynamic batch is bounded."""
    step = fixed_batch or max_batch
    if step is None or crops.shape[0] == step or (fixed_batch is None and crops.shape[0] <= step):
        return fn(crops)
    chunks = []
    for start in range(0, crops.shape[0], step):
        part = crops[start : start + step]
        n = part.shape[0]
        if fixed_batch is not None and n < fixed_batch:
            part = torch.cat([part, part.new_zeros((fixed_batch - n, *part.shape[1:]))])
        chunks.append(fn(part)[:n])
    return torch.cat(chunks)
