"""`sam3d-body features`: PCA of backbone features, and the command on a real photo (tiny config, CPU)."""
import argparse
import re
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from sam3d_body_ros.tools import features
from sam3d_body_ros.tools.options import CliError


def run(argv: list[str]) -> int:
    """The command as `sam3d-body` runs it: exit code, CliError printed as one line on stderr."""
    parser = argparse.ArgumentParser(prog="sam3d-body")
    features.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["features", *map(str, argv)])
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"sam3d-body: error: {e}", file=sys.stderr)
        return 2


def planted_features(seed: int = 0, c: int = 64, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(C,H,W) features along three orthogonal directions of variance 25, 9, 4 plus noise; and their (H,W,3) scores."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((c, 3)))[0]  # orthonormal columns
    scores = rng.standard_normal((h * w, 3)) * [5.0, 3.0, 2.0]
    tokens = scores @ directions.T + 0.05 * rng.standard_normal((h * w, c)) + rng.standard_normal(c)  # + an offset
    return tokens.T.reshape(c, h, w).astype(np.float32), scores.reshape(h, w, 3)


def test_pca_rgb_finds_planted_directions_in_order():
    feats, scores = planted_features()
    rgb = features.pca_rgb(feats)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    for ch in range(3):
        r = np.corrcoef(rgb[..., ch].ravel().astype(float), scores[..., ch].ravel())[0, 1]
        assert abs(r) > 0.99, (ch, r)
    assert rgb.min() == 0 and rgb.max() == 255


def test_pca_components_sign_is_deterministic():
    feats, _ = planted_features(seed=1)
    pcs = features.pca_components(feats, k=3)
    np.testing.assert_allclose(features.pca_components(-feats, k=3), pcs, atol=1e-9)
    flat = pcs.reshape(-1, 3)
    assert (flat[np.abs(flat).argmax(0), range(3)] > 0).all()


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def test_features_command_on_astronaut(astronaut_png, tmp_path, capsys):
    out = tmp_path / "out.png"
    rc = run([astronaut_png, "--config", "tiny", "--device", "cpu", "--box", 150, 20, 420, 500, "--save-pca", out,
              "--compare", "torch", "--repeats", 2])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "features (1, 128, 32, 32)" in stdout and "RANDOM weights" in stdout and "latency: median" in stdout
    rel = float(re.search(r"rel\. L2 vs torch/fp32: (\S+)", stdout).group(1))
    assert rel < 1e-7
    picture = cv2.imread(str(out))
    assert picture.shape[1] == 2 * 512 and 512 < picture.shape[0] <= 512 + 60  # crop | PCA under a one-line banner
    pca = picture[-512:, 512:]
    assert len(np.unique(pca.reshape(-1, 3), axis=0)) > 100  # a picture, not a flat panel


@pytest.mark.parametrize("argv, message", [
    (["missing.png"], "cannot read image"),
    (["{img}", "--box", 10, 10, 5, 50], "bad box"),
    (["{img}", "--backend", "onnxruntime"], "needs --backbone-file"),
    (["{img}", "--compare", "torch:int8"], "takes precision"),
    (["{img}", "--repeats", 0], "--repeats must be at least 1"),
])
def test_features_errors_are_one_line(argv, message, astronaut_png, tmp_path, capfd):
    argv = [str(astronaut_png) if a == "{img}" else a for a in argv]
    assert run([*argv, "--config", "tiny", "--device", "cpu", "--save-pca", tmp_path / "x.png"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()
