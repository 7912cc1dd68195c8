"""Pictures of results: three-quarter, side and four-panel views, turntable frames and the animated GIF (tiny meshes
from the real pipeline, CPU)."""
import numpy as np
import pytest
from PIL import Image
from skimage import data

from sam3d_body_ros.pipeline import BodyPipeline, PipelineSettings
from sam3d_body_ros.tools import render


@pytest.fixture(scope="module")
def scene():
    """(image, verts (1,V,3) camera frame, faces, K, result) of the tiny pipeline on the astronaut photo."""
    image = data.astronaut()
    r = BodyPipeline(PipelineSettings(model_config="tiny", device="cpu")).infer(image, np.array([[150.0, 20, 420, 500]]))
    verts = r.outputs["pred_vertices"] + r.outputs["pred_cam_t"][:, None]
    return image, verts, r.faces, r.K, r


def mesh_rows(frame: np.ndarray) -> np.ndarray:
    """Row indices holding painted mesh pixels (any PERSON_COLORS at any shade: the text is grey)."""
    f = frame.astype(int)
    return np.flatnonzero((f.max(-1) - f.min(-1) > 20).any(axis=1))


def blue(frame: np.ndarray) -> np.ndarray:
    """Pixels of PERSON_COLORS[0] (person 0) at any shade."""
    return frame[..., 2].astype(int) > frame[..., 0].astype(int) + 20


def orange(frame: np.ndarray) -> np.ndarray:
    """Pixels in the warning colour of RANDOM-weights text."""
    return (frame[..., 0] > 200) & (frame[..., 2] < 120)


def test_turntable_frames_turn_at_one_scale(scene):
    _, verts, faces, _, _ = scene
    body = verts[0] - verts[0].mean(0)
    two = np.stack([body + [-0.8, 0, 3.0], body + [0.8, 0, 3.0]])  # side by side: wider than tall from the front
    frames = render.turntable(two, faces, size=128, frames=8)
    assert len(frames) == 8
    assert all(f.shape == (128, 128, 3) and f.dtype == np.uint8 for f in frames)
    assert sum(not np.array_equal(frames[0], f) for f in frames[1:]) == 7
    heights = [np.ptp(mesh_rows(f)) for f in frames]  # one scale for every turn (a per-frame fit would zoom)
    assert max(heights) - min(heights) <= 3 and min(heights) > 40, heights


def test_turntable_label_is_written_on_every_frame(scene):
    _, verts, faces, _, _ = scene
    plain = render.turntable(verts, faces, size=192, frames=3)
    labelled = render.turntable(verts, faces, size=192, frames=3, label="RANDOM weights (seed 0): not a real body")
    band = labelled[0].shape[0] // 8
    for p, lab in zip(plain, labelled):
        assert orange(lab[:band]).sum() > 20 and not orange(p).any()
        assert np.flatnonzero(blue(lab).any(axis=1)).min() > band  # the body is drawn below the label, not under it


def test_write_gif_reads_back(scene, tmp_path):
    _, verts, faces, _, _ = scene
    frames = render.turntable(verts, faces, size=128, frames=8, label="RANDOM weights")
    path = tmp_path / "turn.gif"
    render.write_gif(path, frames, fps=10)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 8 and gif.size == (128, 128)
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0


def test_three_quarter_view_lies_between_front_and_side(scene):
    _, verts, faces, _, _ = scene
    quarter = render.three_quarter_view(verts, faces, 200)
    side = render.side_view(verts, faces, 200)
    assert quarter.shape == side.shape == (200, 200, 3)
    assert np.mean(np.any(quarter != side, axis=-1)) > 0.02

    def width(img):  # widest painted row, px
        return max(np.ptp(np.flatnonzero(row)) for row in blue(img) if row.any())

    front = render._fitted_view(verts, faces, 200, 0.0, "")
    assert width(side) < width(quarter) < width(front)  # T-pose arms foreshortened at 45 degrees, edge-on at 90


def test_side_view_puts_the_camera_at_the_left(scene):
    _, verts, faces, _, _ = scene
    body = verts[0] - verts[0].mean(0)
    two = np.stack([body + [0, 0, 2.0], body + [0, 0, 4.0]])  # person 0 nearer the camera
    side = render.side_view(two, faces, 256).astype(int)
    near = np.flatnonzero(blue(side).any(axis=0)).mean()  # PERSON_COLORS[0]
    far = np.flatnonzero((side[..., 0] > side[..., 2] + 20).any(axis=0)).mean()  # PERSON_COLORS[1]: orange
    assert near < far


def test_views_picture_has_four_panels(scene):
    image, verts, faces, K, r = scene
    pic = render.views_picture(image, verts, faces, K, r.outputs["pred_keypoints_2d"], r.outputs["bbox"],
                               ["sam3d-body test", "RANDOM weights"])
    h, w = image.shape[:2]
    assert pic.shape[1] == 4 * w and h < pic.shape[0] <= h + 70
    panels = [pic[-h:, i * w:(i + 1) * w] for i in range(4)]
    np.testing.assert_array_equal(panels[0], image)
    assert not np.array_equal(panels[1], image)  # mesh drawn over the photo
    np.testing.assert_array_equal(panels[2], render.three_quarter_view(verts, faces, h))
    np.testing.assert_array_equal(panels[3], render.side_view(verts, faces, h))
