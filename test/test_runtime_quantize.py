"""INT8 QDQ quantization: Embedl's GEMM-only Q/DQ placement (checked by walking the graph) and fidelity vs fp32 on
crops of real photos.

Random init sets DINOv3's layer-scale to 1e-5, which makes every block nearly an identity and hides quantization
error; the backbone here uses layer-scale 1.0 and random q/v biases (as research/export_quant_probe.md did).
Asserted bound: INT8 feature rel. L2 error < 1 % and every token's cosine > 0.999 vs fp32 (measured: ~0.07 %),
and > 1e-5 so the quantization is real."""
import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from matplotlib import cbook
from skimage import data

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.errors import InputError
from sam3d_body_ros.runtime.backend import create_backend
from sam3d_body_ros.tools.fidelity import feature_fidelity, token_cosine
from sam3d_body_ros.tools.onnx_export import export_backbone, export_onnx
from sam3d_body_ros.tools.quantize import (
    Sample,
    attention_gemms,
    augmented_views,
    load_samples,
    qdq_placement,
    quantize_onnx,
    samples_to_crops,
)


def rgb(image):
    return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3])


def whole(name, image):
    return Sample(name, image, np.array([[0.0, 0.0, image.shape[1], image.shape[0]]]))


@pytest.fixture(scope="module")
def photos():
    hopper = cv2.cvtColor(cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.COLOR_BGR2RGB)
    return [
        whole("astronaut", data.astronaut()),
        Sample("camera", rgb(data.camera()), np.array([[150.0, 20.0, 420.0, 500.0]])),
        whole("grace_hopper", hopper),
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    backbone = export_backbone(TINY, seed=1, layer_scale=1.0)
    fp32 = export_onnx(backbone, d / "fp32.onnx")
    # calibration on other pictures than the evaluation photos, with augmented views
    calib = [whole(n, rgb(getattr(data, n)())) for n in ("chelsea", "coffee", "rocket", "coins")]
    calib += [v for i, s in enumerate(calib) for v in augmented_views(s, 2, seed=i)]
    int8 = quantize_onnx(fp32, d / "int8.onnx", samples_to_crops(calib), progress=False)
    return backbone, fp32, int8


def producers(model):
    return {out: n for n in model.graph.node for out in n.output}


def test_qdq_on_every_weight_gemm_and_nowhere_else(models):
    _, fp32, int8 = models
    model = onnx.load(str(int8))
    prod = producers(model)
    inits = {t.name for t in model.graph.initializer}

    def from_dq(name):
        n = prod.get(name)
        return n is not None and n.op_type == "DequantizeLinear"

    weight_gemms, attention = [], []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            w = prod.get(n.input[1])
            is_weight = w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits
            (weight_gemms if is_weight else attention).append(n)
    assert len(weight_gemms) == 5 * TINY.backbone.depth  # qkv, proj, fc1_g, fc1_x, fc2
    for n in weight_gemms:
        assert from_dq(n.input[0]) and from_dq(n.input[1]), n.name
        q = prod[n.input[0]].input[0]  # activation DQ <- QuantizeLinear
        assert prod[q].op_type == "QuantizeLinear"
    # attention products (Q.K^T, P.V) and softmax stay float
    assert len(attention) == 2 * TINY.backbone.depth
    for n in model.graph.node:
        if n in attention or n.op_type in ("Conv", "LayerNormalization", "Softmax"):
            assert not any(from_dq(i) for i in n.input), (n.op_type, n.name)
    # fp32 graph: the attention GEMMs found by name before quantization are the ones left float
    assert sorted(attention_gemms(onnx.load(str(fp32)))) == sorted(n.name for n in attention)
    # no output Q/DQ before the bias Add, no Q/DQ feeding residual adds
    assert {prod[i].op_type for n in model.graph.node if n.op_type == "Add" for i in n.input if i in prod} & {
        "DequantizeLinear"
    } == set()


def test_placement_summary_matches_and_detects_violations(models, tmp_path):
    _, fp32, int8 = models
    summary = qdq_placement(int8)
    assert summary["problems"] == []
    assert summary["ops_with_dq_inputs"] == {"MatMul": 10}
    assert (summary["weight_gemms"], summary["attention_gemms"]) == (10, 4)
    assert summary["quantize_linear"] == 8  # LN1 out, attn out, LN2 out (shared by fc1_g/fc1_x), SwiGLU out
    # a model quantized everywhere (ORT's default op types) breaks the scheme, and the walk says where
    from onnxruntime.quantization import QuantFormat, quantize_static

    class Reader:
        def __init__(self):
            self.items = iter([{"crops": np.random.default_rng(0).normal(size=(1, 3, 512, 512)).astype(np.float32)}])

        def get_next(self):
            return next(self.items, None)

    bad = tmp_path / "bad.onnx"
    quantize_static(str(fp32), str(bad), Reader(), quant_format=QuantFormat.QDQ)
    problems = qdq_placement(bad)["problems"]
    assert any(p.startswith("Conv") for p in problems)
    assert any(p.startswith("LayerNormalization") for p in problems)
    assert any(p.startswith("attention") for p in problems)


def test_int8_features_stay_close_to_fp32_on_photo_crops(models, photos):
    backbone, fp32, int8 = models
    crops = samples_to_crops(photos)
    assert crops.shape == (3, 3, 512, 512)
    q = create_backend("onnxruntime", TINY, backbone_file=int8, precision="int8")
    assert q.precision == "int8"
    with torch.no_grad():
        ref = backbone(crops)
    m = feature_fidelity(q(crops), ref)
    assert 1e-5 < m["rel_l2"] < 0.01, m
    assert all(e < 0.01 for e in m["rel_l2_per_image"])
    assert m["token_cos_min"] > 0.999 and m["finite"]
    assert token_cosine(ref, ref).min() > 0.999999


def test_int8_precision_needs_a_qdq_file(models):
    with pytest.raises(ValueError, match="no Q/DQ"):
        create_backend("onnxruntime", TINY, backbone_file=models[1], precision="int8")


def test_load_samples_with_boxes_and_augmented_views(tmp_path):
    img = rgb(data.camera())
    cv2.imwrite(str(tmp_path / "camera.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "unlisted.png"), img)
    (tmp_path / "boxes.json").write_text(json.dumps({"camera.png": [[150, 20, 420, 500], [10, 10, 60, 100]]}))
    (s,) = load_samples(tmp_path, tmp_path / "boxes.json")
    assert s.name == "camera.png" and s.boxes.shape == (2, 4) and np.array_equal(s.image, img)
    (whole_img,) = [x for x in load_samples(tmp_path) if x.name == "camera.png"]
    assert whole_img.boxes.tolist() == [[0, 0, 512, 512]]
    views = augmented_views(s, 6, seed=0)
    assert len(views) == 6 and all(v.image.shape == img.shape and v.image.dtype == np.uint8 for v in views)
    for v in views:  # box centres stay on the person (or its mirror image)
        cx = (v.boxes[0, 0] + v.boxes[0, 2]) / 2
        assert min(abs(cx - 285), abs(cx - (512 - 285))) < 1e-6
    assert any(not np.array_equal(v.image, img) for v in views)
    with pytest.raises(InputError, match="no usable images"):
        load_samples(tmp_path, _write(tmp_path / "none.json", {}))


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_large_model_layout_with_external_data(monkeypatch, tmp_path, photos):
    """The > 2 GB path of the full model, forced at tiny size: weights in .onnx.data for export and quantization."""
    from sam3d_body_ros.tools import onnx_export, quantize

    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT_BYTES", 1_000_000)
    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT_BYTES", 1_000_000)
    backbone = export_backbone(TINY, seed=4, layer_scale=1.0)
    fp32 = export_onnx(backbone, tmp_path / "a" / "fp32.onnx")
    assert (tmp_path / "a" / "fp32.onnx.data").stat().st_size > 2_000_000 > fp32.stat().st_size
    crops = samples_to_crops(photos)
    int8 = quantize_onnx(fp32, tmp_path / "b" / "int8.onnx", crops, progress=False)
    assert [p.name for p in sorted((tmp_path / "b").iterdir())] == ["int8.onnx", "int8.onnx.data"]
    assert qdq_placement(int8)["problems"] == []
    with torch.no_grad():
        ref = backbone(crops)
    assert feature_fidelity(create_backend("onnxruntime", TINY, backbone_file=int8)(crops), ref)["rel_l2"] < 0.01
