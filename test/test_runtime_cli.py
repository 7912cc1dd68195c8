"""CLI: export-onnx, export-pt2 and quantize on the tiny model, then `infer --backend onnxruntime` with the result."""
import contextlib
import io
import json
import re
import shutil

import cv2
import numpy as np
import pytest
from matplotlib import cbook
from skimage import data

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.tools.cli import main


@pytest.fixture(scope="module")
def export_run(tmp_path_factory):
    out, printed = tmp_path_factory.mktemp("cli") / "bb.onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export-onnx", "--config", "tiny", "--seed", "2", "--layer-scale", "1.0", "--out", str(out)])
    return code, out, printed.getvalue()


@pytest.fixture(scope="module")
def exported(export_run):
    assert export_run[0] == 0
    return export_run[1]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(d / "astronaut.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "camera.png"), data.camera())
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), d / "grace_hopper.jpg")
    (d / "boxes.json").write_text(
        json.dumps({"astronaut.png": [[100, 0, 460, 512]], "camera.png": [[150, 20, 420, 500]], "grace_hopper.jpg": [[60, 30, 460, 600]]})
    )
    return d


def test_export_onnx_prints_verification(export_run):
    code, path, out = export_run
    assert code == 0 and path.is_file()
    err = float(re.search(r"rel\. L2 error ([0-9.e+-]+)", out).group(1))
    assert err < 1e-4 and "RANDOM weights (seed 2, layer-scale 1.0)" in out


def test_export_pt2(tmp_path, capsys):
    assert main(["export-pt2", "--config", "tiny", "--out", str(tmp_path / "bb.pt2")]) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"rel\. L2 error ([0-9.e+-]+)", out).group(1)) < 1e-6


def test_quantize_writes_qdq_onnx_and_report(exported, photo_dir, tmp_path, capsys):
    out, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    args = ["quantize", "--config", "tiny", "--onnx", str(exported), "--images", str(photo_dir)]
    args += ["--boxes", str(photo_dir / "boxes.json"), "--augment", "2", "--eval-count", "2", "--out", str(out), "--report", str(report)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "int8 vs fp32 (onnxruntime)" in printed and "rel L2 %" in printed
    r = json.loads(report.read_text())
    assert r["calibration"] == {"images": 3, "crops": 9, "augmented_views_per_image": 2, "method": "minmax"}
    assert r["placement"]["problems"] == [] and r["placement"]["ops_with_dq_inputs"] == {"MatMul": 10}
    m = r["int8_vs_fp32"]
    assert 1e-5 < m["rel_l2"] < 0.01 and m["token_cos_min"] > 0.999 and len(m["rel_l2_per_image"]) == 2
    # whole pipeline (decoder + MHR) run with either backbone: vertex deviation in mm
    assert 0 < m["vertex_mean_mm"] <= m["vertex_max_mm"] < 10 and "RANDOM" in m["mesh"]


def test_quantize_refuses_a_mismatching_onnx(exported, photo_dir, tmp_path, capsys):
    args = ["quantize", "--config", "full", "--onnx", str(exported), "--images", str(photo_dir), "--out", str(tmp_path / "q.onnx")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sam3d-body: error: backbone artifact") and "axis 1 is 128, not 1280" in err
    assert len(err.splitlines()) == 1


def test_infer_with_onnxruntime_backend(exported, photo_dir, tmp_path, capsys):
    out = tmp_path / "r.npz"
    args = ["infer", str(photo_dir / "camera.png"), "--box", "150", "20", "420", "500", "--config", "tiny"]
    args += ["--backend", "onnxruntime", "--backbone-file", str(exported), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    res = np.load(out)
    assert res["pred_vertices"].shape == (1, TINY.mhr.num_vertices, 3) and np.isfinite(res["pred_vertices"]).all()


def test_export_onnx_from_weights_dir(tmp_path, capsys):
    """--weights: the backbone of an upstream-layout checkpoint (DINOv3 names) is what gets exported."""
    import torch
    from ckpt_factory import write_tiny_checkpoint

    from sam3d_body_ros.core.backbone import build_backbone
    from sam3d_body_ros.runtime.backend import create_backend

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", seed=5)
    out = tmp_path / "w.onnx"
    assert main(["export-onnx", "--weights", str(ckpt.path), "--out", str(out)]) == 0
    assert "weights: " in capsys.readouterr().out
    ref_module = build_backbone(TINY).eval()
    ref_module.load_timm_state(ckpt.backbone_timm_state)
    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ref_module(x)
    y = create_backend("onnxruntime", TINY, backbone_file=out)(x)
    assert torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref) < 1e-4
    assert main(["export-onnx", "--weights", str(ckpt.path), "--layer-scale", "1", "--out", str(out)]) == 2


def test_onnxruntime_and_torch_give_the_same_vertices_for_the_same_seed(photo_dir, tmp_path, capsys):
    onnx = tmp_path / "seed3.onnx"
    assert main(["export-onnx", "--config", "tiny", "--seed", "3", "--out", str(onnx)]) == 0
    image = str(photo_dir / "astronaut.png")
    common = [image, "--box", "100", "0", "460", "512", "--box", "10", "300", "90", "480", "--config", "tiny", "--seed", "3"]
    assert main(["infer", *common, "--backend", "torch", "--out", str(tmp_path / "t.npz")]) == 0
    assert main(["infer", *common, "--backend", "onnxruntime", "--backbone-file", str(onnx),
                 "--out", str(tmp_path / "o.npz")]) == 0
    t, o = np.load(tmp_path / "t.npz"), np.load(tmp_path / "o.npz")
    assert t["pred_vertices"].shape == (2, TINY.mhr.num_vertices, 3)
    assert np.abs(t["pred_vertices"] - o["pred_vertices"]).max() < 1e-4  # metres
    assert np.abs(t["pred_cam_t"] - o["pred_cam_t"]).max() < 1e-4
