"""Camera model: intrinsics default, CLIFF translation, ray map, projection; fitted on real SAM 3D Body outputs."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sam3d_body_ros.core.camera import (
    RAY_CHANNELS,
    cam_translation,
    cliff_condition,
    default_intrinsics,
    project_points,
    ray_fourier_features,
    ray_map,
    resolve_intrinsics,
)
from sam3d_body_ros.core.errors import InputError

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mhr"
REAL_DUMPS = ("img_subj00.npz", "img_subj01.npz")


def _affine(center: torch.Tensor, side: torch.Tensor, size: int = 512) -> torch.Tensor:
    s = size / side
    a = torch.zeros(len(side), 2, 3, dtype=torch.float64)
    a[:, 0, 0] = s
    a[:, 1, 1] = s
    a[:, :, 2] = size / 2 - s[:, None] * center
    return a


def test_default_intrinsics_is_diagonal_focal_and_centre():
    K = default_intrinsics(640, 480)
    assert K.shape == (3, 3)
    np.testing.assert_allclose(K, [[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])


@pytest.mark.parametrize("name", REAL_DUMPS)
def test_real_outputs_reproject_with_fitted_pinhole(name):
    """Fit f, cx, cy by linear least squares on a real dump, then reproject with project_points: < 1 px."""
    d = np.load(FIXTURES / name, allow_pickle=True)
    pts = (d["pred_keypoints_3d"] + d["pred_cam_t"]).astype(np.float64)
    uv = d["pred_keypoints_2d"].astype(np.float64)
    assert (pts[:, 2] > 0).all()
    n = len(pts)
    # u = f x/z + cx ; v = f y/z + cy  ->  A [f, cx, cy] = b
    A = np.zeros((2 * n, 3))
    A[:n, 0] = pts[:, 0] / pts[:, 2]
    A[:n, 1] = 1.0
    A[n:, 0] = pts[:, 1] / pts[:, 2]
    A[n:, 2] = 1.0
    f, cx, cy = np.linalg.lstsq(A, np.concatenate([uv[:, 0], uv[:, 1]]), rcond=None)[0]
    assert f > 0
    if "focal_length" in d.files:
        assert f == pytest.approx(float(d["focal_length"]), rel=1e-3)
    K = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=torch.float64)[None]
    reproj = project_points(torch.from_numpy(pts)[None], K)[0].numpy()
    err = np.linalg.norm(reproj - uv, axis=1)
    assert err.max() < 1.0, f"max reprojection error {err.max():.3f} px"


def test_project_points_matches_opencv():
    rng = np.random.default_rng(0)
    pts = rng.uniform([-1, -1, 2], [1, 1, 6], size=(2, 30, 3))
    K = np.array([[[900.0, 0, 310], [0, 880, 250], [0, 0, 1]], [[500.0, 0, 100], [0, 500, 90], [0, 0, 1]]])
    ours = project_points(torch.from_numpy(pts), torch.from_numpy(K)).numpy()
    for i in range(2):
        ref, _ = cv2.projectPoints(pts[i], np.zeros(3), np.zeros(3), K[i], None)
        np.testing.assert_allclose(ours[i], ref[:, 0], atol=1e-9)


@pytest.mark.parametrize("principal", [(320.0, 240.0), (300.0, 260.0)])
def test_box_centre_projects_to_box_centre_when_tx_ty_zero(principal):
    """CLIFF: with tx = ty = 0 the model origin projects onto the box centre, at depth 2f/(side*s)."""
    K = torch.tensor([[[700.0, 0, principal[0]], [0, 700.0, principal[1]], [0, 0, 1]]], dtype=torch.float64).expand(3, 3, 3)
    center = torch.tensor([[100.0, 80.0], [320.0, 240.0], [500.0, 400.0]], dtype=torch.float64)
    side = torch.tensor([150.0, 300.0, 90.0], dtype=torch.float64)
    pred_cam = torch.tensor([[-0.8, 0, 0], [-1.2, 0, 0], [-0.5, 0, 0]], dtype=torch.float64)
    t = cam_translation(pred_cam, center, side, K)
    np.testing.assert_allclose(t[:, 2], 2 * 700.0 / (side * -pred_cam[:, 0]), rtol=1e-9)
    uv = project_points(t[:, None, :], K)[:, 0]
    np.testing.assert_allclose(uv, center, atol=1e-6)


def test_cam_translation_signs_follow_upstream():
    """Upstream flips s and ty: a positive ty moves the body up (negative camera y), tx moves it right."""
    K = torch.tensor([[[700.0, 0, 320], [0, 700.0, 240], [0, 0, 1]]]).expand(2, 3, 3)
    center = torch.tensor([[320.0, 240.0]] * 2)
    side = torch.tensor([200.0, 200.0])
    t = cam_translation(torch.tensor([[-1.0, 0.3, 0.2], [-1.0, 0.0, 0.0]]), center, side, K)
    assert t[0, 0] - t[1, 0] == pytest.approx(0.3)
    assert t[0, 1] - t[1, 1] == pytest.approx(-0.2)


def test_cliff_condition_uses_intrinsic_centre_and_focal():
    K = torch.tensor([[[800.0, 0, 300], [0, 810.0, 250], [0, 0, 1]]])
    cond = cliff_condition(torch.tensor([[460.0, 90.0]]), torch.tensor([200.0]), K)
    np.testing.assert_allclose(cond[0], [160 / 800, -160 / 800, 200 / 800], rtol=1e-6)


def test_ray_map_rays_hit_the_image_pixels_of_the_crop():
    """K @ [rx, ry, 1] of crop pixel (u, v) is the image pixel that the inverse crop affine gives for (u, v)."""
    center = torch.tensor([[300.0, 200.0], [80.0, 420.0]], dtype=torch.float64)
    side = torch.tensor([260.0, 700.0], dtype=torch.float64)
    affine = _affine(center, side)
    K = torch.tensor([[[900.0, 0, 330], [0, 910, 230], [0, 0, 1]]], dtype=torch.float64).expand(2, 3, 3)
    rays = ray_map(affine, K, 512)
    assert rays.shape == (2, 2, 512, 512)
    for i in range(2):
        inv = cv2.invertAffineTransform(affine[i].numpy())
        for u, v in ((0, 0), (511, 0), (256, 256), (17, 400)):
            img = inv @ np.array([u, v, 1.0])
            hit = K[i].numpy() @ np.array([rays[i, 0, v, u].item(), rays[i, 1, v, u].item(), 1.0])
            np.testing.assert_allclose(hit[:2], img, atol=1e-9)


def test_ray_fourier_features_layout():
    rays = torch.tensor([[[0.25, -0.5, 1.0]]])
    feats = ray_fourier_features(rays)
    assert feats.shape == (1, 1, RAY_CHANNELS) == (1, 1, 99)
    bands = torch.linspace(1, 32, 16)
    np.testing.assert_allclose(feats[0, 0, :3], rays[0, 0])
    np.testing.assert_allclose(feats[0, 0, 3:19], torch.sin(torch.pi * 0.25 * bands), atol=1e-6)  # x, all bands
    np.testing.assert_allclose(feats[0, 0, 19:35], torch.sin(torch.pi * -0.5 * bands), atol=1e-6)  # then y
    np.testing.assert_allclose(feats[0, 0, 51:67], torch.cos(torch.pi * 0.25 * bands), atol=1e-6)  # cos after sin


def test_resolve_intrinsics_is_the_one_rule():
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    got, note = resolve_intrinsics(K, 640, 480)
    np.testing.assert_array_equal(got, K)
    assert note is None
    for missing, why in ((None, "no camera intrinsics"), (np.zeros((3, 3)), "all zero")):
        got, note = resolve_intrinsics(missing, 640, 480)
        np.testing.assert_array_equal(got, default_intrinsics(640, 480))
        assert why in note
    for bad, match in ((np.full((3, 3), np.nan), "NaN"), (np.diag([-5.0, 510, 1]), "focal"), (np.eye(2), "3x3")):
        with pytest.raises(InputError, match=match):
            resolve_intrinsics(bad, 640, 480)
