"""The `sam3d-body` CLI: info, infer on a real photo, one-line errors with exit code 2."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from sam3d_body_ros.cli import main
from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.pipeline import output_shapes


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sam3d_body_ros", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_info_full_reports_upstream_sizes_without_weights(capsys):
    assert main(["info", "--config", "full"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone_params"] == 840_591_360
    assert (info["mhr_vertices"], info["mhr_faces"], info["mhr_joints"], info["keypoints"]) == (18439, 36874, 127, 70)
    assert 30e6 < info["decoder_params"] < 110e6


def test_info_tiny(capsys):
    assert main(["info", "--config", "tiny"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mhr_vertices"] == TINY.mhr.num_vertices and info["mhr_joints"] == 127 and info["keypoints"] == 70


@pytest.fixture(scope="module")
def camera_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "camera.png"
    cv2.imwrite(str(path), data.camera())  # the real scikit-image photo of a man with a camera
    return path


def test_infer_on_real_photo_writes_npz_and_png(camera_png, tmp_path):
    out, png = tmp_path / "r.npz", tmp_path / "r.png"
    box = ["--box", 150, 20, 420, 500]
    r = run_cli("infer", camera_png, *box, "--config", "tiny", "--out", out, "--render", png)
    assert r.returncode == 0, r.stderr
    assert "RANDOM" in r.stdout
    res = np.load(out)
    for name, shape in output_shapes(TINY).items():
        assert res[name].shape == (1, *shape) and np.isfinite(res[name]).all(), name
    assert "SYNTHETIC" in str(res["weights_status"])
    pic = cv2.imread(str(png))
    assert pic is not None and pic.shape[1] >= 2 * 512  # photo + side view
    # the overlay changed pixels inside the person box of the photo panel
    band = pic.shape[0] - 512
    panel = cv2.cvtColor(pic[band:, :512], cv2.COLOR_BGR2GRAY).astype(int)
    assert np.abs(panel - data.camera().astype(int))[20:500, 150:420].mean() > 5


@pytest.mark.parametrize(
    "image, box, match",
    [("missing.png", [0, 0, 10, 10], "cannot read image"),
     (None, [600, 600, 700, 700], "outside"),
     (None, [100, 100, 100, 300], "zero or negative size"),
     (None, ["nan", 10, 100, 100], "NaN")],
)
def test_bad_input_is_one_line_exit_2(camera_png, tmp_path, capsys, image, box, match):
    path = tmp_path / image if image else camera_png
    assert main(["infer", str(path), "--box", *map(str, box), "--config", "tiny"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam3d-body: error:") and match in lines[0]
