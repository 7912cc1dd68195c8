"""Whole pipeline on real photos at tiny size: shapes, finiteness, batching, intrinsics, bad input."""
import numpy as np
import pytest
from skimage import data

from sam3d_body_ros.core.camera import project_points
from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.errors import InputError
from sam3d_body_ros.pipeline import BodyPipeline, PipelineSettings, output_shapes

BOXES = np.array([[140.0, 30.0, 380.0, 510.0], [20.0, 250.0, 130.0, 500.0]])


@pytest.fixture(scope="module")
def pipe():
    return BodyPipeline(PipelineSettings(model_config="tiny", seed=0))


def test_outputs_have_upstream_fields_and_shapes(pipe):
    res = pipe.infer(data.astronaut(), BOXES)
    assert res.num_persons == 2
    for name, shape in output_shapes(TINY).items():
        assert res.outputs[name].shape == (2, *shape), name
        assert np.isfinite(res.outputs[name]).all(), name
    np.testing.assert_allclose(res.outputs["bbox"], BOXES)
    assert res.faces.shape == (TINY.mhr.num_faces, 3) and res.faces.max() < TINY.mhr.num_vertices
    assert set(res.timings_ms) == {"crop", "backbone", "decoder", "total"}
    assert "RANDOM" in pipe.weights_status and "SYNTHETIC" in pipe.weights_status


def test_keypoints_2d_are_the_projection_of_keypoints_3d(pipe):
    img = data.astronaut()
    res = pipe.infer(img, BOXES)
    o = res.outputs
    f = np.hypot(*img.shape[:2])
    K = np.array([[f, 0, 256], [0, f, 256], [0, 0, 1.0]])
    np.testing.assert_allclose(o["focal_length"], f, rtol=1e-5)
    import torch

    pts = torch.as_tensor(o["pred_keypoints_3d"] + o["pred_cam_t"][:, None])
    proj = project_points(pts, torch.as_tensor(K, dtype=torch.float32).expand(2, 3, 3)).numpy()
    np.testing.assert_allclose(o["pred_keypoints_2d"], proj, rtol=1e-4, atol=1e-2)


def test_given_intrinsics_are_used(pipe):
    img = data.astronaut()
    K = np.array([[800.0, 0, 250], [0, 800.0, 260], [0, 0, 1]])
    res = pipe.infer(img, BOXES[:1], K)
    np.testing.assert_allclose(res.outputs["focal_length"], 800.0)


def test_persons_do_not_influence_each_other(pipe):
    img = data.astronaut()
    both = pipe.infer(img, BOXES).outputs
    for i in range(2):
        one = pipe.infer(img, BOXES[i : i + 1]).outputs
        np.testing.assert_allclose(both["pred_vertices"][i], one["pred_vertices"][0], atol=1e-4)


def test_seed_makes_weights_reproducible(pipe):
    img = data.astronaut()
    again = BodyPipeline(PipelineSettings(model_config="tiny", seed=0)).infer(img, BOXES[:1]).outputs
    other = BodyPipeline(PipelineSettings(model_config="tiny", seed=1)).infer(img, BOXES[:1]).outputs
    ref = pipe.infer(img, BOXES[:1]).outputs
    np.testing.assert_allclose(again["pred_vertices"], ref["pred_vertices"], atol=1e-6)
    assert np.abs(other["pred_vertices"] - ref["pred_vertices"]).max() > 1e-3


def test_no_boxes_gives_empty_result_with_shapes(pipe):
    res = pipe.infer(data.astronaut(), np.zeros((0, 4)))
    assert res.num_persons == 0
    assert res.outputs["pred_vertices"].shape == (0, TINY.mhr.num_vertices, 3)


@pytest.mark.parametrize(
    "K, match",
    [(np.full((3, 3), np.nan), "NaN"), (np.eye(2), "3x3"), (np.diag([0.0, 1.0, 1.0]), "focal")],
)
def test_bad_intrinsics_rejected(pipe, K, match):
    with pytest.raises(InputError, match=match):
        pipe.infer(data.astronaut(), BOXES[:1], K)
