"""Backbone export: ONNX (dynamo, opset 18, dynamic batch, RoPE baked) and torch.export .pt2, run through the
onnxruntime and pt2 backends and compared with the torch fp32 backbone."""
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.runtime.backend import create_backend
from sam3d_body_ros.runtime.pt2_backend import export_program
from sam3d_body_ros.tools.fidelity import rel_l2
from sam3d_body_ros.tools.onnx_export import (
    FORBIDDEN_OPS,
    export_backbone,
    export_onnx,
    graph_problems,
)


@pytest.fixture(scope="module")
def backbone():
    return export_backbone(TINY, seed=3, layer_scale=1.0)


@pytest.fixture(scope="module")
def onnx_path(backbone, tmp_path_factory):
    return export_onnx(backbone, tmp_path_factory.mktemp("onnx") / "bb.onnx", max_batch=8)


def crops(n, seed=0):
    return torch.randn(n, 3, 512, 512, generator=torch.Generator().manual_seed(seed))


def test_layer_scale_makes_blocks_non_trivial(backbone):
    default = export_backbone(TINY, seed=3)
    assert float(default.encoder.blocks[0].gamma_1[0].detach()) == pytest.approx(1e-5)
    assert torch.all(backbone.encoder.blocks[1].gamma_2 == 1.0)
    assert backbone.encoder.blocks[0].attn.q_bias.abs().sum() > 0
    x = crops(1)
    with torch.no_grad():
        assert rel_l2(default(x), backbone(x)) > 0.01  # 1.9 % after the final norm: the 2 blocks now matter


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch_fp32(backbone, onnx_path, batch):
    ort = create_backend("onnxruntime", TINY, backbone_file=onnx_path)
    x = crops(batch, seed=batch)
    y = ort(x)
    with torch.no_grad():
        ref = backbone(x)
    assert y.shape == (batch, 128, 32, 32) and y.device.type == "cpu"
    assert rel_l2(y, ref) < 1e-4
    assert ort.precision == "fp32"


def test_graph_is_clean_dynamic_and_self_contained(onnx_path):
    model = onnx.load(str(onnx_path))  # loads: no external .data file for a small model
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    assert graph_problems(onnx_path) == []
    assert {"LayerNormalization", "Conv", "MatMul", "Softmax"} <= ops
    assert model.opset_import[0].version >= 18
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert [d.dim_value for d in out.type.tensor_type.shape.dim[1:]] == [128, 32, 32]
    assert not onnx_path.with_name(onnx_path.name + ".data").exists()


def test_graph_problems_reports_runtime_rope_ops(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Cos", ["s"], ["y"])], "g", [x], [y])
    path = tmp_path / "rope.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert graph_problems(path) == ["1 x Cos", "1 x Sin"]


def test_opset_17_is_refused(backbone, tmp_path):
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(backbone, tmp_path / "x.onnx", opset=17)


def test_pt2_round_trip_through_backend(backbone, tmp_path):
    path = export_program(backbone, tmp_path / "bb.pt2", max_batch=8)
    pt2 = create_backend("pt2", TINY, backbone_file=path)
    for batch in (1, 3):
        x = crops(batch, seed=10 + batch)
        with torch.no_grad():
            ref = backbone(x)
        assert rel_l2(pt2(x), ref) < 1e-6
    assert pt2.signature.fixed_batch is None and pt2.precision == "fp32"
    ep = torch.export.load(str(path))
    assert str(ep.range_constraints[next(iter(ep.range_constraints))]).replace(" ", "") == "VR[1,8]"


def test_backends_need_a_file():
    for name in ("onnxruntime", "pt2"):
        with pytest.raises(ValueError, match="--backbone-file"):
            create_backend(name, TINY)
