"""The `sam3d-body` CLI: info, infer on a real photo, one-line errors with exit code 2."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.pipeline import output_shapes
from sam3d_body_ros.tools.cli import main


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
    gif = tmp_path / "r.gif"
    r = run_cli("infer", camera_png, *box, "--config", "tiny", "--out", out, "--render", png, "--spin", gif)
    assert r.returncode == 0, r.stderr
    assert "RANDOM" in r.stdout
    res = np.load(out)
    for name, shape in output_shapes(TINY).items():
        assert res[name].shape == (1, *shape) and np.isfinite(res[name]).all(), name
    assert "SYNTHETIC" in str(res["weights_status"])
    pic = cv2.imread(str(png))
    assert pic is not None and pic.shape[1] == 4 * 512  # photo, overlay, three-quarter and side views
    # the overlay changed pixels inside the person box of the photo (second panel)
    band = pic.shape[0] - 512
    panel = cv2.cvtColor(pic[band:, 512:1024], cv2.COLOR_BGR2GRAY).astype(int)
    assert np.abs(panel - data.camera().astype(int))[20:500, 150:420].mean() > 5
    from PIL import Image

    with Image.open(gif) as g:
        assert g.n_frames == 36 and g.size == (384, 384)


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


@pytest.fixture(scope="module")
def broken_weights(tmp_path_factory):
    """Weights folders whose model.ckpt is empty / random bytes (an interrupted or wrong download)."""
    from ckpt_factory import variant, write_tiny_checkpoint

    good = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "good", seed=3)
    out = {}
    for name, content in (("empty", b""), ("random", np.random.default_rng(0).bytes(4096))):
        ckpt = variant(good, tmp_path_factory.mktemp(name) / "w")
        (ckpt.path / "model.ckpt").write_bytes(content)
        out[name] = ckpt.path
    return out


@pytest.mark.parametrize("extra, match", [(["--device", "cuda"], "no usable CUDA GPU"),
                                          (["--weights", "empty"], "model.ckpt is empty"),
                                          (["--weights", "random"], "model.ckpt is not a PyTorch checkpoint")])
def test_configuration_errors_are_one_line_exit_2(camera_png, broken_weights, capsys, extra, match):
    extra = [str(broken_weights.get(a, a)) for a in extra]
    assert main(["infer", str(camera_png), "--box", "150", "20", "420", "500", *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam3d-body: error:") and match in lines[0], lines


def test_every_option_has_help_and_model_commands_share_defaults():
    from sam3d_body_ros.tools.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    defaults = {}
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        config = next((a for a in p._actions if a.dest == "config"), None)
        if name in ("info", "infer", "features") and config is not None:
            defaults[name] = config.default
    assert set(defaults.values()) == {"tiny"} and len(defaults) == 3, defaults
