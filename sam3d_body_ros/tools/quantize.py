"""INT8 QDQ post-training quantization of the backbone ONNX (ONNX Runtime `quantize_static`), Embedl's scheme.

Q/DQ go on both inputs of every weight GEMM (qkv, proj, fc1_g, fc1_x, fc2: 5 per block) and nowhere else: the
patch-embed Conv, every LayerNorm, RoPE, the residual stream and attention (Q.K^T, softmax, P.V) stay in
floating point (TensorRT cannot run INT8 attention at 1029 tokens; see research/trt_int8.md §2.4).
ONNX-level PTQ of the full 840 M backbone needs far more than 24 GiB of RAM (research/export_quant_probe.md §0.6):
run full-size quantization on a host with >= 64 GiB (the GPU machines have 128 GiB), e.g. bench/fidelity_full.py.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.crop import prepare_crops
from ..core.errors import InputError
from .onnx_export import PROTOBUF_LIMIT_BYTES

GEMM_OPS = ("MatMul", "Gemm")
FLOAT_OPS = ("Conv", "LayerNormalization", "Softmax")  # must never take a DequantizeLinear input
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
METHODS = ("minmax", "percentile", "entropy")
# shape-only ops a constant weight may pass through on its way to a GEMM
_PASS_THROUGH = ("Transpose", "Reshape", "Cast", "Identity", "Unsqueeze", "Squeeze")


@dataclass
class Sample:
    """One calibration/evaluation image with its person boxes (xyxy px)."""

    name: str
    image: np.ndarray  # (H,W,3) uint8 RGB
    boxes: np.ndarray  # (N,4) float64


def load_samples(images_dir: str | Path, boxes_file: str | Path | None = None) -> list[Sample]:
    """Images of a folder, sorted by name; boxes from a JSON {file name: [[x1,y1,x2,y2], ...]} or the whole image."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"calibration image folder not found: {images_dir}")
    boxes_map: dict[str, list[list[float]]] | None = None
    if boxes_file is not None:
        try:
            boxes_map = json.loads(Path(boxes_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read boxes JSON {boxes_file}: {e}") from e
        if not isinstance(boxes_map, dict):
            raise InputError(f"boxes JSON {boxes_file} must map image file names to lists of [x1,y1,x2,y2]")
    samples = []
    for path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"cannot decode image {path}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        if boxes_map is None:
            boxes = np.array([[0.0, 0.0, w, h]])  # the image is a person crop
        elif path.name in boxes_map:
            boxes = np.asarray(boxes_map[path.name], dtype=np.float64).reshape(-1, 4)
        else:
            continue  # images without boxes are not part of the calibration set
        samples.append(Sample(path.name, image, boxes))
    if not samples:
        raise InputError(f"no usable images in {images_dir} (looked for {', '.join(IMAGE_SUFFIXES)}" +
                         (f" named in {boxes_file})" if boxes_file else ")"))
    return samples


def augmented_views(sample: Sample, count: int, seed: int = 0) -> list[Sample]:
    """`count` random variants of a sample: horizontal flip, brightness/contrast/saturation jitter, box scale 0.85-1.2."""
    rng = np.random.default_rng(seed)
    views = []
    h, w = sample.image.shape[:2]
    for i in range(count):
        img = sample.image.astype(np.float32)
        boxes = sample.boxes.copy()
        if rng.random() < 0.5:
            img = img[:, ::-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        grey = img.mean(axis=2, keepdims=True)
        img = grey + rng.uniform(0.6, 1.4) * (img - grey)  # saturation
        img = rng.uniform(0.7, 1.3) * (img - img.mean()) + img.mean() + rng.uniform(-25, 25)  # contrast, brightness
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = (boxes[:, 2:] - boxes[:, :2]) / 2 * rng.uniform(0.85, 1.2)
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        views.append(Sample(f"{sample.name}#aug{i}", np.ascontiguousarray(img.clip(0, 255).astype(np.uint8)), boxes))
    return views


def samples_to_crops(samples: list[Sample], size: int = 512) -> torch.Tensor:
    """All person crops of all samples, (M,3,size,size) ImageNet-normalised, in sample order."""
    return torch.cat([prepare_crops(s.image, s.boxes, size).images for s in samples])


class _CropReader:
    """ONNX Runtime CalibrationDataReader (duck-typed) over crops, one batch per call, with a tqdm progress bar."""

    def __init__(self, input_name: str, crops: torch.Tensor, batch_size: int, progress: bool) -> None:
        from tqdm import tqdm

        self.input_name = input_name
        self.batches: Iterator[torch.Tensor] = iter(crops.split(batch_size))
        self.bar = tqdm(total=crops.shape[0], desc="calibrating", unit="crop", disable=not progress)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            self.bar.close()
            return None
        self.bar.update(batch.shape[0])
        return {self.input_name: np.ascontiguousarray(batch.numpy())}


def _graph_maps(model) -> tuple[set[str], dict[str, object]]:
    """Constant tensor names (initializers) and tensor name -> producing node."""
    inits = {t.name for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    return inits, producers


def _is_constant(name: str, inits: set[str], producers: dict[str, object]) -> bool:
    if name in inits:
        return True
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type == "Constant":
        return True
    if node.op_type in _PASS_THROUGH or node.op_type == "DequantizeLinear":
        return _is_constant(node.input[0], inits, producers)
    return False


def attention_gemms(model) -> list[str]:
    """Names of MatMul/Gemm nodes with no constant input: activation x activation products (attention)."""
    inits, producers = _graph_maps(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type in GEMM_OPS and not any(_is_constant(i, inits, producers) for i in n.input[:2])
    ]


def qdq_placement(path: str | Path) -> dict[str, object]:
    """Walk a QDQ graph: which ops take DequantizeLinear inputs, and where Embedl's GEMM-only scheme is broken."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits, producers = _graph_maps(model)

    def dq_fed(name: str) -> bool:
        node = producers.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producers.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    ops_with_dq: dict[str, int] = {}
    problems: list[str] = []
    weight_gemms = attention = 0
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fed = [dq_fed(i) for i in n.input if i]
        if any(fed):
            ops_with_dq[n.op_type] = ops_with_dq.get(n.op_type, 0) + 1
        if n.op_type in GEMM_OPS:
            if any(_is_constant(i, inits, producers) for i in n.input[:2]):
                weight_gemms += 1
                if not all(fed[:2]):
                    problems.append(f"weight {n.op_type} {n.name} lacks Q/DQ on an input")
            else:
                attention += 1
                if any(fed):
                    problems.append(f"attention {n.op_type} {n.name} is quantized")
        elif n.op_type in FLOAT_OPS and any(fed):
            problems.append(f"{n.op_type} {n.name} takes a quantized input")
    counts = {op: sum(1 for n in model.graph.node if n.op_type == op) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {
        "quantize_linear": counts["QuantizeLinear"],
        "dequantize_linear": counts["DequantizeLinear"],
        "weight_gemms": weight_gemms,
        "attention_gemms": attention,
        "ops_with_dq_inputs": dict(sorted(ops_with_dq.items())),
        "problems": problems,
    }


class _DropPreprocessHint(logging.Filter):
    """Drops ONNX Runtime's 'consider pre-processing' warning: its optimisations add non-standard ops TensorRT rejects."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextmanager
def _quiet_preprocess_hint() -> Iterator[None]:
    root = logging.getLogger()
    hint_filter = _DropPreprocessHint()
    root.addFilter(hint_filter)
    try:
        yield
    finally:
        root.removeFilter(hint_filter)


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    crops: torch.Tensor,
    *,
    method: str = "minmax",
    batch_size: int = 1,
    progress: bool = True,
) -> Path:
    """Calibrate `src` (fp32 backbone ONNX) on `crops` and write the INT8 QDQ model `dst` (external data if > 2 GB)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(src), load_external_data=False)
    (input_name,) = [v.name for v in graph.graph.input if v.name not in {t.name for t in graph.graph.initializer}]
    large = src.stat().st_size + sum(
        p.stat().st_size for p in src.parent.glob(src.name + "*.data")
    ) > PROTOBUF_LIMIT_BYTES
    with _quiet_preprocess_hint():
        quantize_static(
            str(src),
            str(dst),
            _CropReader(input_name, crops, batch_size, progress),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(GEMM_OPS),
            nodes_to_exclude=attention_gemms(graph),  # attention stays floating point
            per_channel=True,  # weights per output channel, activations per tensor (what TensorRT supports)
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy,
            }[method],
            use_external_data_format=large,
            extra_options={
                "ActivationSymmetric": True,  # TensorRT only runs symmetric (zero-point 0) INT8
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": list(GEMM_OPS),  # no Q/DQ before the bias Add
            },
        )
    return dst
