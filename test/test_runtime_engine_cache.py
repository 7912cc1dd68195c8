"""TensorRT surroundings that run without TensorRT: cache keys and stale/foreign engines, profile shapes, the I/O plan
from the ONNX graph, precision rules, build progress, and the error when TensorRT is missing."""
import dataclasses
import json
import logging
import sys

import cv2
import pytest
from onnx_factory import patch_conv_onnx
from skimage import data

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.errors import WeightsError
from sam3d_body_ros.runtime.backend import create_backend
from sam3d_body_ros.runtime.engine_cache import (
    BuildSettings,
    EngineCache,
    EngineKey,
    ProgressPrinter,
    TensorRTUnavailable,
    check_engine_record,
    default_cache_dir,
    default_opt_batch,
    engine_precision,
    io_plan,
    make_key,
    onnx_content_hash,
    profile_shapes,
)
from sam3d_body_ros.tools.cli import main

KEY = EngineKey("10.16.1.11", "NVIDIA H100 80GB HBM3", "9.0", "ab" * 32, "int8", 8, 4)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A small real graph with the tiny backbone's I/O: (N,3,512,512) 'input' -> (N,128,32,32) 'output'."""
    return patch_conv_onnx(tmp_path_factory.mktemp("trt") / "bb.onnx")[0]


def test_every_key_field_changes_the_key_and_the_engine_file(tmp_path):
    cache = EngineCache(tmp_path)
    other = {
        "trt_version": "10.16.0.1",
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "onnx_sha256": "cd" * 32,
        "precision": "fp16",
        "max_batch": 16,
        "opt_batch": 1,
    }
    assert set(other) == {f.name for f in dataclasses.fields(EngineKey)}
    digests = {KEY.digest()}
    paths = {cache.engine_path(KEY)}
    for field, value in other.items():
        changed = dataclasses.replace(KEY, **{field: value})
        digests.add(changed.digest())
        paths.add(cache.engine_path(changed))
    assert len(digests) == len(paths) == 1 + len(other)
    assert KEY.digest() == EngineKey(*dataclasses.astuple(KEY)).digest()  # stable


def test_cache_builds_once_then_loads(tmp_path, caplog):
    cache, builds = EngineCache(tmp_path / "c"), []

    def build():
        builds.append(1)
        return b"engine-bytes-1"

    caplog.set_level(logging.INFO, logger="sam3d_body_ros")
    path, built = cache.get_or_build(KEY, build)
    assert built and path.read_bytes() == b"engine-bytes-1" and "building TensorRT int8 engine" in caplog.text
    path2, built2 = cache.get_or_build(KEY, build)
    assert (path2, built2) == (path, False) and len(builds) == 1 and "cache hit" in caplog.text
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["key"]["gpu_name"] == KEY.gpu_name and len(record["engine_sha256"]) == 64


def test_foreign_or_altered_engine_is_rebuilt(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.store(KEY, b"good")
    # a foreign engine copied over ours (same file name, different bytes) is not loaded
    path.write_bytes(b"foreign plan")
    assert cache.lookup(KEY) is None
    path, built = cache.get_or_build(KEY, lambda: b"rebuilt")
    assert built and path.read_bytes() == b"rebuilt" and cache.lookup(KEY) == path
    # a record written for another key (stale) is not trusted either
    meta = path.with_suffix(".json")
    record = json.loads(meta.read_text())
    record["key"]["trt_version"] = "10.3.0"
    meta.write_text(json.dumps(record))
    assert cache.lookup(KEY) is None
    meta.unlink()
    assert cache.lookup(KEY) is None  # engine without record


def test_prebuilt_engine_record_for_another_gpu_is_refused(tmp_path):
    path = EngineCache(tmp_path).store(KEY, b"plan")
    check_engine_record(path, KEY.trt_version, KEY.gpu_name, (9, 0))  # same setup: fine
    with pytest.raises(WeightsError, match=r"gpu_name 'NVIDIA H100 80GB HBM3' != 'NVIDIA L4'.*compute_capability"):
        check_engine_record(path, KEY.trt_version, "NVIDIA L4", (8, 9))
    with pytest.raises(WeightsError, match="trt_version"):
        check_engine_record(path, "11.0.0", KEY.gpu_name, (9, 0))


def test_timing_cache_is_per_trt_and_gpu(tmp_path):
    cache = EngineCache(tmp_path)
    a = cache.timing_cache_path(KEY)
    assert a == cache.timing_cache_path(dataclasses.replace(KEY, precision="fp16", onnx_sha256="0" * 64))
    assert a != cache.timing_cache_path(dataclasses.replace(KEY, gpu_name="NVIDIA L4", compute_capability="8.9"))
    assert a.name == "timing-trt10.16.1.11-NVIDIA-H100-80GB-HBM3-sm9.0.cache"


def test_key_hashes_onnx_content_including_external_data(tiny_onnx, tmp_path):
    import onnx

    settings = BuildSettings(precision="fp16", max_batch=8, opt_batch=4)
    key = make_key(tiny_onnx, settings, "10.16.1.11", "GPU", (9, 0))
    assert key.onnx_sha256 == onnx_content_hash(tiny_onnx) and key.compute_capability == "9.0"
    # the same graph with its weights in a .data file: hash covers the data; changing the data changes the key
    ext = tmp_path / "ext.onnx"
    onnx.save_model(onnx.load(str(tiny_onnx)), str(ext), save_as_external_data=True, location="ext.onnx.data")
    h1 = onnx_content_hash(ext)
    data = bytearray((tmp_path / "ext.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "ext.onnx.data").write_bytes(bytes(data))
    assert onnx_content_hash(ext) != h1
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(WeightsError, match="ext.onnx.data"):
        onnx_content_hash(ext)


def test_profile_shapes():
    assert profile_shapes(8, default_opt_batch(8), 512) == ((1, 3, 512, 512), (4, 3, 512, 512), (8, 3, 512, 512))
    assert profile_shapes(2, default_opt_batch(2), 512)[1] == (2, 3, 512, 512)
    with pytest.raises(ValueError, match="opt batch"):
        profile_shapes(4, 6, 512)


def test_io_plan_from_onnx_graph(tiny_onnx):
    plan = io_plan(tiny_onnx, TINY)
    assert (plan.input_name, plan.output_name, plan.fixed_batch) == ("input", "output", None)
    assert plan.input_shape(3) == (3, 3, 512, 512) and plan.output_shape(3) == (3, 128, 32, 32)


def test_precision_rules():
    assert engine_precision("fp32", quantized=True) == "int8"  # a QDQ graph always builds INT8
    assert engine_precision("fp16", quantized=False) == "fp16"
    with pytest.raises(ValueError, match="QDQ ONNX"):
        engine_precision("int8", quantized=False)
    with pytest.raises(ValueError, match="must be one of"):
        engine_precision("bf8", quantized=False)


def test_progress_printer_prints_phases_throttled(caplog):
    caplog.set_level(logging.INFO, logger="sam3d_body_ros")
    p = ProgressPrinter()
    p.phase_start("Building engine", None, 100)
    p.phase_start("Tactic selection", "Building engine", 3)
    for i in range(100):
        assert p.step_complete("Building engine", i)
    for i in range(3):
        p.step_complete("Tactic selection", i)
    p.phase_finish("Tactic selection")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "Building engine (100 steps)" and lines[1] == "  Tactic selection (3 steps)"
    assert sum(line.startswith("Building engine: ") for line in lines) == 10  # every 10 %
    assert "  Tactic selection: 3/3" in lines


def test_missing_tensorrt_gives_install_instructions(monkeypatch, tiny_onnx, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(TensorRTUnavailable) as e:
        create_backend("tensorrt", TINY, device="cpu", backbone_file=tiny_onnx)
    msg = str(e.value)
    assert "pip install tensorrt-cu12==10." in msg and "JetPack" in msg and "apt" in msg and ">= 10" in msg
    assert main(["build-engine", "--onnx", str(tiny_onnx), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam3d-body: error: TensorRT >= 10 is needed") and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
    image = tmp_path / "camera.png"
    cv2.imwrite(str(image), data.camera())
    args = ["infer", str(image), "--box", "150", "20", "420", "500", "--backend", "tensorrt", "--backbone-file", str(tiny_onnx)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pip install tensorrt-cu12==10." in err and len(err.strip().splitlines()) == 1


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAM3D_BODY_ENGINE_CACHE", str(tmp_path / "engines"))
    assert default_cache_dir() == tmp_path / "engines"
    monkeypatch.delenv("SAM3D_BODY_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "sam3d_body_ros" / "engines"

