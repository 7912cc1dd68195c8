"""bench/fidelity_full.py end to end at tiny size on the CPU: photos, export, quantize, comparisons, JSON report,
and reuse of finished stages on a rerun."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("fidelity_full", REPO / "bench" / "fidelity_full.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fidelity_script_at_tiny_size(tmp_path):
    script = load_script()
    out = tmp_path / "fidelity.json"
    argv = ["--config", "tiny", "--layer-scale", "1.0", "--views", "2", "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    argv += ["--no-mesh"]  # mesh deviation (fidelity.mesh_deviation) is covered by the quantize CLI test
    assert script.main(argv) == 0
    rep = json.loads(out.read_text())
    assert rep["model_config"] == "tiny" and rep["calibration"]["crops"] == 6 and rep["eval_crops"] == 3
    assert rep["calibration"]["photos"] == ["astronaut.png", "camera.png", "grace_hopper.jpg"]
    assert rep["placement"]["problems"] == [] and rep["placement"]["ops_with_dq_inputs"] == {"MatMul": 10}
    cmp = rep["comparisons"]
    assert cmp["onnx fp32 (ORT CPU) vs torch fp32 (CPU)"]["rel_l2"] < 1e-4
    assert 1e-5 < cmp["onnx int8 (ORT CPU) vs torch fp32 (CPU)"]["rel_l2"] < 0.01
    assert 1e-5 < cmp["onnx int8 vs onnx fp32 (ORT CPU)"]["rel_l2"] < 0.01
    assert set(rep["stages_s"]) >= {"export onnx", "quantize", "onnxruntime int8"}
    # a second run with the same settings reuses the exported and quantized models
    assert script.main(argv) == 0
    assert not {"export onnx", "quantize"} & set(json.loads(out.read_text())["stages_s"])
