"""`sam3d-body demo`: node + sample camera + HOG boxes -> PNG of the received markers over the photo."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import yaml
from ros_fixtures import ros_env

from sam3d_body_ros.tools.demo import load_params

REPO = Path(__file__).resolve().parents[1]
BANNER_LINE, BANNER_PAD = 24, 10  # core.render.compose


def sam3d_body(*args: str) -> subprocess.CompletedProcess:
    """Run the `sam3d-body` CLI (as its console script does) in a subprocess on this module's ROS domain."""
    code = "import sys; from sam3d_body_ros.tools.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, text=True, capture_output=True,
                          timeout=150, env={**os.environ, **ros_env(__name__)})


def run_demo(*args: str) -> tuple[str, np.ndarray, Path]:
    out = Path(args[args.index("--out") + 1])
    res = sam3d_body("demo", *args)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"wrote {out.resolve()}" in res.stdout
    png = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    return res.stdout, png, out


def panel(png: np.ndarray, index: int, lines: int = 4, size: int = 512) -> np.ndarray:
    """Panel `index` of the picture: 0 the photo, 1 the overlay, 2 the three-quarter view, 3 the side view."""
    top = BANNER_LINE * lines + BANNER_PAD
    return png[top:top + size, index * size:(index + 1) * size].astype(int)


def test_demo_default_camera_photo_with_hog_boxes(tmp_path):
    stdout, png, _ = run_demo("--out", str(tmp_path / "demo.png"), "--spin", str(tmp_path / "spin.gif"))
    assert "boxes from OpenCV HOG people detector" in stdout
    m = re.search(r"person 0: box \[(\d+), (\d+), (\d+), (\d+)\], projected mesh \[.*\], IoU ([\d.]+)", stdout)
    assert m, stdout
    x1, y1, x2, y2 = map(int, m.groups()[:4])
    assert float(m.group(5)) > 0.3  # the mesh drawn by the node's markers lies on the detected person
    assert png.shape == (4 * BANNER_LINE + BANNER_PAD + 512, 4 * 512, 3)
    photo = np.repeat(skimage.data.camera()[:, :, None], 3, axis=2).astype(int)
    assert np.abs(panel(png, 0) - photo).max() <= 1  # the input as sent
    changed = np.abs(panel(png, 1) - photo).sum(axis=2) > 30
    assert changed[y1 + 5:y2 - 5, x1 + 5:x2 - 5].mean() > 0.3  # mesh and skeleton inside the person box
    assert changed[:, min(x2 + 80, 500):].mean() < 0.02  # the photo is untouched far right of the box
    for view in (2, 3):  # a mesh in the three-quarter and side views
        assert (np.abs(panel(png, view) - panel(png, view)[5, 5]).sum(axis=2) > 30).mean() > 0.01
    from PIL import Image

    with Image.open(tmp_path / "spin.gif") as gif:
        assert gif.n_frames == 36


def test_demo_with_image_boxes_and_params_file(tmp_path):
    cv2.imwrite(str(tmp_path / "astronaut.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    params = yaml.safe_load((REPO / "config" / "mesh.yaml").read_text())
    params["/**"]["ros__parameters"].update(model_config="full", publish_joints=False)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    stdout, png, _ = run_demo("--image", str(tmp_path / "astronaut.png"), "--box", "120", "20", "440", "512",
                              "--box", "170", "20", "330", "210", "--params-file", str(tmp_path / "p.yaml"),
                              "--config", "tiny", "--out", str(tmp_path / "sub" / "astro.png"))
    assert "person boxes from --box" in stdout and "received 2 mesh(es) (1280 triangles each)" in stdout
    assert "person 1:" in stdout and png.shape[1] == 4 * 512


def test_demo_rejects_a_box_outside_the_image(tmp_path):
    res = sam3d_body("demo", "--box", "600", "600", "700", "700", "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and not (tmp_path / "x.png").exists()
    assert res.stderr.strip().startswith("sam3d-body: error: bad --box: box 0") and "outside" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value, match", [("--device", "cuda", "no usable CUDA GPU"),
                                                ("--weights", "no_such_dir", "not found")])
def test_demo_reports_a_node_that_cannot_start(tmp_path, flag, value, match):
    res = sam3d_body("demo", flag, value, "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("sam3d-body: error: the node cannot configure:") and match in res.stderr
    assert not (tmp_path / "x.png").exists()  # no picture from random weights instead


def test_load_params_casts_and_overrides(tmp_path):
    (tmp_path / "p.yaml").write_text("/**:\n  ros__parameters:\n    score_threshold: 1\n    image_qos:\n"
                                     "      depth: 3\n    backend: onnxruntime\n")
    p = load_params(tmp_path / "p.yaml", {"backend": "torch", "device": None})
    assert p == {"score_threshold": 1.0, "image_qos.depth": 3, "backend": "torch"}
    assert isinstance(p["score_threshold"], float)
    (tmp_path / "bad.yaml").write_text("/**:\n  ros__parameters:\n    no_such_param: 1\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown parameter 'no_such_param'"):
        load_params(tmp_path / "bad.yaml", {})
    (tmp_path / "worse.yaml").write_text("/**:\n  ros__parameters:\n    backend: tensorflow\n")
    with pytest.raises(ValueError, match="backend takes one of auto, torch"):
        load_params(tmp_path / "worse.yaml", {})
    every = load_params(REPO / "config" / "mesh.yaml", {})
    from sam3d_body_ros.ros.params import SCHEMA
    assert set(every) == set(SCHEMA)  # config/mesh.yaml sets (and documents) every node parameter
