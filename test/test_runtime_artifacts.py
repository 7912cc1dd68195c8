"""Foreign backbone artifacts (e.g. Embedl's .onnx/.pt2): I/O signature checks with clear messages, and fixed-batch
artifacts run batch by batch. The ONNX files here are small real graphs (a 16x16/16 patch Conv) with the shapes
under test."""
import pytest
import torch
from onnx_factory import patch_conv_onnx

from sam3d_body_ros.core.config import FULL, TINY
from sam3d_body_ros.core.errors import WeightsError
from sam3d_body_ros.runtime.artifact_check import (
    TensorSig,
    check_backbone_signature,
    onnx_signature,
    program_signature,
    run_batched,
)
from sam3d_body_ros.runtime.backend import create_backend


def test_any_names_with_the_right_shapes_are_accepted(tmp_path):
    path, _ = patch_conv_onnx(tmp_path / "embedl_like.onnx", in_name="pixel_values", out_name="image_embeddings")
    sig = check_backbone_signature(*onnx_signature(path), TINY, path)
    assert (sig.input_name, sig.output_name, sig.fixed_batch, sig.channels) == ("pixel_values", "image_embeddings", None, 128)


def test_wrong_output_shape_gives_a_clear_message(tmp_path):
    path, _ = patch_conv_onnx(tmp_path / "wrong.onnx", channels=64)
    with pytest.raises(WeightsError) as e:
        create_backend("onnxruntime", TINY, backbone_file=path)
    msg = str(e.value)
    assert str(path) in msg
    assert "expected one input (N,3,512,512) float32 and one output (N,128,32,32) float32" in msg
    assert "output (N,64,32,32)" in msg and "axis 1 is 64, not 128" in msg


def test_full_artifact_with_tiny_config_is_named(tmp_path):
    path, _ = patch_conv_onnx(tmp_path / "full.onnx", channels=1280)
    with pytest.raises(WeightsError, match="looks like a --config full backbone"):
        check_backbone_signature(*onnx_signature(path), TINY, path)
    assert check_backbone_signature(*onnx_signature(path), FULL, path).channels == 1280


def test_two_outputs_are_refused(tmp_path):
    path, _ = patch_conv_onnx(tmp_path / "two.onnx", extra_output=True)
    with pytest.raises(WeightsError, match="it has 2 outputs"):
        check_backbone_signature(*onnx_signature(path), TINY, path)


def test_signature_problems_are_listed():
    ins = [TensorSig("x", (1, 3, 448, 448), "float16")]
    outs = [TensorSig("y", (1, 128, 28, 28), "float32")]
    with pytest.raises(WeightsError) as e:
        check_backbone_signature(ins, outs, TINY, "m.onnx")
    for part in ("float16, not float32", "input 'x' axis 2 is 448, not 512", "output 'y' axis 3 is 28, not 32"):
        assert part in str(e.value)


def test_fixed_batch_artifact_runs_any_batch(tmp_path):
    path, w = patch_conv_onnx(tmp_path / "b1.onnx", batch=1)
    backend = create_backend("onnxruntime", TINY, backbone_file=path)
    assert backend.signature.fixed_batch == 1
    x = torch.randn(3, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    y = backend(x)
    ref = torch.nn.functional.conv2d(x, w, stride=16)
    assert y.shape == (3, 128, 32, 32)
    assert torch.allclose(y, ref, atol=1e-4)


def test_run_batched_pads_fixed_and_splits_bounded_batches():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x * 2

    x = torch.arange(5.0).reshape(5, 1)
    assert torch.equal(run_batched(fn, x, fixed_batch=2), x * 2) and calls == [2, 2, 2]
    calls.clear()
    assert torch.equal(run_batched(fn, x, fixed_batch=None, max_batch=4), x * 2) and calls == [4, 1]
    calls.clear()
    assert torch.equal(run_batched(fn, x, fixed_batch=None), x * 2) and calls == [5]


def test_program_signature_reads_symbolic_batch(tmp_path):
    conv = torch.nn.Conv2d(3, 128, 16, 16)
    ep = torch.export.export(conv, (torch.randn(2, 3, 512, 512),), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=4)},))
    ins, outs = program_signature(ep)
    assert ins[0].shape[1:] == (3, 512, 512) and isinstance(ins[0].shape[0], str)
    assert outs[0].shape[1:] == (128, 32, 32) and outs[0].dtype == "float32"
    assert check_backbone_signature(ins, outs, TINY, "conv.pt2").fixed_batch is None
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(torch.nn.Conv2d(3, 8, 16, 16), (torch.randn(2, 3, 512, 512),)), str(path))
    with pytest.raises(WeightsError, match="axis 1 is 8, not 128"):
        create_backend("pt2", TINY, backbone_file=path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_backend("onnxruntime", TINY, backbone_file=tmp_path / "nope.onnx")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="torch.export.load cannot read"):
        create_backend("pt2", TINY, backbone_file=bad)
