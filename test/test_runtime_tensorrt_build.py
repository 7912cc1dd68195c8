"""The thin TensorRT module's build path against a stand-in `tensorrt` module that records the API calls (TensorRT
cannot be installed here): profile from the ONNX input, precision flags on TensorRT 10 vs 11, timing cache, progress
monitor, and the engine cache around the build."""
import logging
import sys
import types

import pytest
from onnx_factory import patch_conv_onnx

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.runtime import tensorrt_backend
from sam3d_body_ros.runtime.engine_cache import BuildSettings


def fake_tensorrt(version, with_fp16_flag):
    calls = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class IProgressMonitor:
        def __init__(self):
            calls.append(("monitor",))

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile", name, lo, opt, hi))

    class TimingCache:
        def __init__(self, data):
            calls.append(("timing_in", bytes(data)))

        def serialize(self):
            return b"timing-v1"

    class Config:
        progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, p):
            pass

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            m = config.progress_monitor
            m.phase_start("Building engine", None, 2)
            assert m.step_complete("Building engine", 0) and m.step_complete("Building engine", 1)
            m.phase_finish("Building engine")
            calls.append(("build", config.builder_optimization_level))
            return b"PLAN"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse", path))
            return True

    trt.Logger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser = Logger, IProgressMonitor, Builder, OnnxParser
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "FP16", "INT8": "INT8"} if with_fp16_flag else {}))
    return trt, calls


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return patch_conv_onnx(tmp_path_factory.mktemp("fake") / "bb.onnx")[0]


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(tensorrt_backend, "gpu_identity", lambda device: ("NVIDIA H100 80GB HBM3", (9, 0)))


def test_trt10_build_sets_profile_flags_timing_cache_and_caches(monkeypatch, onnx_path, tmp_path, gpu, caplog):
    caplog.set_level(logging.INFO, logger="sam3d_body_ros")
    trt, calls = fake_tensorrt("10.16.1.11", with_fp16_flag=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    settings = BuildSettings(precision="int8", max_batch=8, opt_batch=4, workspace_gib=2.0)
    path, built = tensorrt_backend.engine_for_onnx(onnx_path, TINY, settings, tmp_path, "cuda")
    assert built and path.read_bytes() == b"PLAN" and path.parent == tmp_path
    assert ("parse", str(onnx_path)) in calls
    assert ("profile", "input", (1, 3, 512, 512), (4, 3, 512, 512), (8, 3, 512, 512)) in calls
    assert ("flag", "FP16") in calls and ("flag", "INT8") in calls
    assert ("workspace", 2 << 30) in calls and ("build", 3) in calls and ("monitor",) in calls
    assert ("timing_in", b"") in calls
    (timing,) = tmp_path.glob("timing-trt10.16.1.11-*-sm9.0.cache")
    assert timing.read_bytes() == b"timing-v1"
    assert "Building engine: 2/2" in caplog.text  # build progress, logged
    # same key: loaded from the cache, no second build; the timing cache is fed to a build with another key
    calls.clear()
    assert tensorrt_backend.engine_for_onnx(onnx_path, TINY, settings, tmp_path, "cuda") == (path, False)
    assert not calls
    other = BuildSettings(precision="int8", max_batch=16, opt_batch=4)
    path16, built16 = tensorrt_backend.engine_for_onnx(onnx_path, TINY, other, tmp_path, "cuda")
    assert built16 and path16 != path and ("timing_in", b"timing-v1") in calls


def test_trt11_is_strongly_typed_without_precision_flags(monkeypatch, onnx_path, tmp_path, gpu, caplog):
    trt, calls = fake_tensorrt("11.4.0.106", with_fp16_flag=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    settings = BuildSettings(precision="fp16", max_batch=2, opt_batch=2)
    path, built = tensorrt_backend.engine_for_onnx(onnx_path, TINY, settings, tmp_path, "cuda")
    assert built and not [c for c in calls if c[0] == "flag"]
    assert "strongly typed" in caplog.text
    assert ("profile", "input", (1, 3, 512, 512), (2, 3, 512, 512), (2, 3, 512, 512)) in calls


def test_static_batch_graph_gets_no_profile(monkeypatch, tmp_path, gpu):
    """A fixed-batch artifact (Embedl's card shows batch 1) is built without an optimisation profile."""
    patch_conv_onnx(tmp_path / "b1.onnx", batch=1)
    trt, calls = fake_tensorrt("10.16.1.11", with_fp16_flag=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    _, built = tensorrt_backend.engine_for_onnx(tmp_path / "b1.onnx", TINY, BuildSettings("fp16"), tmp_path / "c", "cuda")
    assert built and not [c for c in calls if c[0] == "profile"] and ("flag", "FP16") in calls


def test_old_tensorrt_is_refused(monkeypatch):
    trt, _ = fake_tensorrt("8.6.1", with_fp16_flag=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(tensorrt_backend.TensorRTUnavailable, match="found TensorRT 8.6.1"):
        tensorrt_backend.import_tensorrt()
