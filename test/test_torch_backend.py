"""torch / torch-int8 backends through the backend registry, and the `sam3d-body bench` command (CPU, tiny)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam3d_body_ros.core.backbone import build_backbone
from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.runtime.backend import BACKENDS, BackboneBackend, create_backend
from sam3d_body_ros.tools.bench import parse_backends, synthetic_frame

REPO = Path(__file__).resolve().parents[1]


def test_torch_backend_on_cpu_is_the_plain_module() -> None:
    backend = create_backend("torch", TINY, device="cpu", precision="fp32", seed=4)
    assert isinstance(backend, BackboneBackend)
    assert backend.runner is backend.module  # no compile / graphs / rewrites on CPU by default
    torch.manual_seed(4)
    reference = build_backbone(TINY).eval()
    x = torch.randn(2, 3, 512, 512)
    with torch.inference_mode():
        out = backend(x)
        ref = reference(x)
    assert out.dtype == torch.float32 and out.shape == (2, 128, 32, 32)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_int8_backend_is_registered() -> None:
    assert BACKENDS["torch-int8"] == "sam3d_body_ros.runtime.torch_int8_backend"
    backend = create_backend("torch-int8", TINY, device="cpu", precision="int8")
    assert backend.name == "torch-int8" and backend.precision == "int8"
    with torch.inference_mode():
        assert backend(torch.randn(1, 3, 512, 512)).shape == (1, 128, 32, 32)


@pytest.mark.parametrize("name,precision", [("torch", "int8"), ("torch", "int4"), ("torch-int8", "bf16")])
def test_unsupported_precision_is_rejected(name: str, precision: str) -> None:
    with pytest.raises(ValueError, match=f"the {name} backend takes precision auto or one of .*, not '{precision}'"):
        create_backend(name, TINY, device="cpu", precision=precision)


def test_bench_helpers() -> None:
    assert parse_backends("torch:bf16, torch-int8:fp8,torch") == [("torch", "bf16"), ("torch-int8", "fp8"), ("torch", "fp32")]
    image, boxes = synthetic_frame(5)
    assert image.shape == (720, 1280, 3) and image.dtype.name == "uint8"
    assert boxes.shape == (5, 4) and (boxes[:, 2] > boxes[:, 0]).all() and boxes[:, 2].max() <= 1280


def test_bench_command_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "sam3d_body_ros", "bench", "--config", "tiny", "--device", "cpu", "--warmup", "1",
           "--iters", "2", "--batches", "1,2", "--decoder-persons", "2", "--pipeline-persons", "1",
           "--full-persons", "1", "--memory-persons", "1", "--backends", "torch:fp32,torch-int8:int8",
           "--pipeline-backend", "torch:fp32", "--node-persons", "", "--node-extra", "1@publish_points:=false",
           "--node-rate", "5",
           "--node-duration", "3", "--node-warmup", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [(b["backend"], b["precision"], b["batch"]) for b in r["backbone"]] == [
        ("torch-eager", "bf16", 1), ("torch-eager", "bf16", 2), ("torch", "fp32", 1), ("torch", "fp32", 2),
        ("torch-int8", "int8", 1), ("torch-int8", "int8", 2)]
    for b in r["backbone"]:
        assert b["median_ms"] > 0 and b["p95_ms"] >= b["median_ms"] * 0.999 and b["crops_per_s"] > 0
    torch_fp32 = [b for b in r["backbone"] if b["backend"] == "torch"]
    assert all(b["feature_rel_l2_vs_fp32"] == 0.0 for b in torch_fp32)  # same eager fp32 module on CPU
    assert [(d["path"], d["persons"]) for d in r["decoder"]] == [("eager", 2)]
    assert [(p["mode"], p["persons"]) for p in r["pipeline"]] == [("body", 1), ("full", 1)]
    assert all(p["median_ms"] > 0 for p in r["pipeline"])
    assert "median ms" in proc.stdout and "pipeline" in proc.stdout and "node (DDS)" in proc.stdout
    check_node_rows(r)


def check_node_rows(r: dict) -> None:
    """The node bench (its own node process over loopback DDS, 5 Hz for 3 s, one parameter set on the node) merged
    into the bench JSON."""
    [run] = r["node_runs"]
    assert run["config"] == "tiny" and run["backend"] == "torch" and run["precision"] == "fp32"
    assert run["params"] == ["publish_points:=false"] and "node_errors" not in r
    [row] = r["node"]
    assert (row["backend"], row["precision"], row["params"]) == ("torch", "fp32", "publish_points:=false")
    assert row["persons"] == 1 and row["sent"] == 15
    assert 0 < row["answered"] <= row["sent"] and row["drops"] == row["sent"] - row["answered"]
    assert 0 <= row["dropped_busy"] <= row["drops"]
    assert row["node_counters"]["frames_processed"] == row["answered"]
    assert 0 < row["rate_hz"] <= 5.5
    for key in ("median_ms", "p95_ms", "max_ms", "bodies_median_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["median_ms"] <= row["p95_ms"] <= row["max_ms"]
    assert row["node_stage_ms"]["total"] > 0
    # The node process was stopped (cleanly, by SIGINT) before the bench returned.
    assert run["node_exit_code"] == 0
    assert not node_running(run["node_pid"])


def node_running(pid: int) -> bool:
    """True while a process with this pid runs the node module (a reused pid runs something else)."""
    try:
        return b"sam3d_body_ros.ros.node" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_auto_backend_device_and_precision_on_a_cpu_machine() -> None:
    from sam3d_body_ros.runtime.backend import (
        backend_spec,
        resolve_backend,
        resolve_device,
        resolve_precision,
    )

    assert resolve_device("auto") == torch.device("cpu")  # CI has no GPU
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu) == "torch" and resolve_backend("auto", cuda) == "torch-int8"
    assert resolve_backend("onnxruntime", cuda) == "onnxruntime"
    torch_spec, int8_spec = backend_spec("torch"), backend_spec("torch-int8")
    assert resolve_precision(torch_spec, "auto", cpu) == "fp32" and resolve_precision(int8_spec, "auto", cpu) == "int8"
    assert resolve_precision(torch_spec, "bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="takes precision auto or one of fp32, bf16, fp16, not 'fp8'"):
        resolve_precision(torch_spec, "fp8", cpu)
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        resolve_device("cuda")
    backend = create_backend("auto", TINY, device="auto", precision="auto")
    assert (backend.name, backend.precision, backend.device.type) == ("torch", "fp32", "cpu")
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        create_backend("tensorflow", TINY)


def test_bench_parts_run_only_the_sections_asked(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "sam3d_body_ros", "bench", "--config", "tiny", "--device", "cpu", "--warmup", "1",
           "--iters", "2", "--decoder-persons", "1", "--parts", "decoder", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [(d["path"], d["persons"]) for d in r["decoder"]] == [("eager", 1)]
    assert not {"backbone", "pipeline", "node"} & set(r) and "decoder+MHR" in proc.stdout


def test_timm_compile_baseline_is_the_plain_timm_model() -> None:
    """The baseline row of the bench (issue 14): timm's own forward_features compiled, same features as ours."""
    from sam3d_body_ros.core.synthetic import random_backbone
    from sam3d_body_ros.tools.bench import BASELINE, _make_backbone

    state = random_backbone(TINY, 0, layer_scale=0.1).encoder.state_dict()
    baseline = _make_backbone(*BASELINE, TINY, torch.device("cpu"), state, 0)
    ours = _make_backbone("torch-eager", "bf16", TINY, torch.device("cpu"), state, 0)
    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    got, want = baseline(x), ours(x)
    assert got.dtype == torch.float32 and got.shape == want.shape == (2, TINY.backbone.embed_dim, 32, 32)
    assert float((got - want).norm() / want.norm()) < 2e-2  # both bf16; compiled kernels round differently


def test_node_backend_choices_are_the_registered_backends() -> None:
    from sam3d_body_ros.ros.params import BACKEND_CHOICES

    assert BACKEND_CHOICES == ("auto", *BACKENDS)


def test_bench_rejects_an_unknown_part(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sam3d_body_ros", "bench", "--device", "cpu", "--parts", "backbne",
           "--out", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown --parts backbne: choose from backbone,decoder,pipeline,node" in proc.stderr
    assert not (tmp_path / "r.json").exists()
