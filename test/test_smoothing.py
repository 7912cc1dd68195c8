"""One-Euro smoothing of arrays and rotations, and the per-track BodySmoother."""
import numpy as np
import pytest
import roma
import torch

from sam3d_body_ros.smoothing import (
    DEFAULT_BETA,
    DEFAULT_MIN_CUTOFF,
    BodySmoother,
    OneEuro,
    RotationOneEuro,
    quat_exp,
    quat_log,
    quat_mul,
    quat_to_rotmat,
    rotmat_to_quat,
)

NS = 1_000_000_000
RATE = 30.0
DT = NS // 30


def _rz(deg: np.ndarray) -> np.ndarray:
    t = np.radians(deg)
    c, s, z, o = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(*t.shape, 3, 3)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic distance (rad) between rotation matrices."""
    return np.linalg.norm(quat_log(rotmat_to_quat(np.swapaxes(a, -1, -2) @ b)), axis=-1)


def _random_rotmats(rng: np.random.Generator, n: int) -> np.ndarray:
    return quat_to_rotmat(quat_exp(rng.normal(size=(n, 3))))


def test_constant_signal_stays_constant():
    x = np.linspace(-2, 3, 15, dtype=np.float32).reshape(5, 3)
    f = OneEuro()
    for k in range(100):
        y = f(k * DT, x)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, x)


def test_noise_on_a_constant_is_reduced_3x():
    rng = np.random.default_rng(0)
    f = OneEuro()
    err_in, err_out = [], []
    for k in range(600):
        x = 0.5 + rng.normal(0, 0.01, 300)
        y = f(k * DT, x)
        if k >= 30:
            err_in.append(x - 0.5)
            err_out.append(y - 0.5)
    reduction = np.sqrt(np.mean(np.square(err_in)) / np.mean(np.square(err_out)))
    assert reduction >= 3.0, reduction


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0])
def test_steady_state_lag_at_constant_velocity(speed):
    f = OneEuro()
    t = np.arange(150) / RATE
    out = np.array([f(k * DT, np.array([speed * tk, -speed * tk])) for k, tk in enumerate(t)])
    lag_frames = (speed * t[-1] - out[-1, 0]) / (speed / RATE)
    assert lag_frames == pytest.approx((t[-1] * -speed - out[-1, 1]) / (-speed / RATE))
    # the module docstring's relation: L = rate / (2 pi (min_cutoff + beta v (1 + L)))
    a, b, c = DEFAULT_BETA * speed, DEFAULT_MIN_CUTOFF + DEFAULT_BETA * speed, -RATE / (2 * np.pi)
    assert lag_frames == pytest.approx((-b + np.sqrt(b * b - 4 * a * c)) / (2 * a), rel=1e-3)
    if speed >= 1.0:
        assert lag_frames <= 1.0  # at most one frame period at 1 unit/s and faster


def test_filter_is_timed_by_stamps():
    # after a 1 s gap a small change is followed much more than after one frame period
    fast, slow = OneEuro(), OneEuro()
    fast(0, np.zeros(1))
    slow(0, np.zeros(1))
    assert slow(NS, np.full(1, 0.01))[0] > 3 * fast(DT, np.full(1, 0.01))[0] > 0


def test_repeated_stamp_holds_and_backwards_stamp_restarts():
    f = OneEuro()
    f(0, np.zeros(2))
    y = f(DT, np.ones(2))
    np.testing.assert_array_equal(f(DT, np.full(2, 5.0)), y)
    np.testing.assert_array_equal(f(0, np.full(2, 7.0)), np.full(2, 7.0))
    f.reset()
    np.testing.assert_array_equal(f(5 * DT, np.full(2, -1.0)), np.full(2, -1.0))


def test_so3_maps_match_roma():
    rng = np.random.default_rng(1)
    R = np.concatenate([_random_rotmats(rng, 200), _rz(np.array([0.0, 180.0, 179.9999, -180.0])),
                        quat_to_rotmat(np.array([[1.0, 0, 0, 0], [0, 0.6, 0.8, 0]]))])
    q_ref = roma.rotmat_to_unitquat(torch.from_numpy(R)).numpy()
    q = rotmat_to_quat(R)
    np.testing.assert_allclose(np.abs((q * q_ref).sum(-1)), 1.0, atol=1e-12)  # same rotation, up to sign
    np.testing.assert_allclose(quat_to_rotmat(q), R, atol=1e-12)
    np.testing.assert_allclose(quat_to_rotmat(q_ref), roma.unitquat_to_rotmat(torch.from_numpy(q_ref)).numpy(),
                               atol=1e-12)
    p = np.roll(q_ref, 1, axis=0)
    np.testing.assert_allclose(quat_mul(p, q_ref),
                               roma.quat_product(torch.from_numpy(p), torch.from_numpy(q_ref)).numpy(), atol=1e-12)
    rv_ref = roma.unitquat_to_rotvec(torch.from_numpy(q_ref)).numpy()
    rv = quat_log(q)
    assert np.linalg.norm(rv, axis=-1).max() <= np.pi + 1e-12
    np.testing.assert_allclose(quat_to_rotmat(quat_exp(rv)), roma.rotvec_to_rotmat(torch.from_numpy(rv_ref)).numpy(),
                               atol=1e-9)
    small = rv_ref[:200]  # away from pi the rotation vector is unique
    np.testing.assert_allclose(quat_log(q_ref[:200]), small, atol=1e-9)
    np.testing.assert_allclose(quat_exp(small), roma.rotvec_to_unitquat(torch.from_numpy(small)).numpy(), atol=1e-12)
    np.testing.assert_array_equal(quat_log(np.array([0.0, 0, 0, 1])), np.zeros(3))


def test_rotation_across_the_pi_wrap_is_tracked_without_a_jump():
    # about z at 60 deg/s (2 deg per frame) from 120 deg through +-180 deg to -60 deg; on the way (at -90 deg) the
    # quaternion of the measurement flips sign
    deg = 120.0 + 2.0 * np.arange(91)
    truth = _rz(deg)
    f = RotationOneEuro()
    out = np.array([f(k * DT, R) for k, R in enumerate(truth)])
    steps = np.degrees(_angle(out[:-1], out[1:]))
    assert steps.max() <= 2.0 * 1.25, steps  # the catch-up after the start overshoots a little
    np.testing.assert_allclose(steps[20:], 2.0, rtol=0.01)  # then the true rate, across +-180 and -90 deg
    err = np.degrees(_angle(out, truth))
    assert err[15:].max() <= 2.0, err  # within one frame's rotation once settled
    np.testing.assert_allclose(out @ np.swapaxes(out, -1, -2), np.broadcast_to(np.eye(3), out.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(out), 1.0, atol=1e-12)
    np.testing.assert_allclose(out[:, 2, 2], 1.0, atol=1e-12)  # the rotation axis stays z


def test_rotation_noise_is_reduced_3x():
    rng = np.random.default_rng(2)
    R0 = _random_rotmats(rng, 64)
    f = RotationOneEuro()
    err_in, err_out = [], []
    for k in range(600):
        R = R0 @ quat_to_rotmat(quat_exp(rng.normal(0, 0.005, (64, 3))))  # ~0.5 deg geodesic noise
        out = f(k * DT, R)
        if k >= 30:
            err_in.append(_angle(R0, R))
            err_out.append(_angle(R0, out))
    reduction = np.sqrt(np.mean(np.square(err_in)) / np.mean(np.square(err_out)))
    assert reduction >= 3.0, reduction
    np.testing.assert_allclose(np.linalg.det(out), 1.0, atol=1e-12)


def _person(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"body_pose_params": rng.normal(size=(n, 133)).astype(np.float32),
            "pred_cam_t": rng.normal(size=(n, 3)), "global_rot": _random_rotmats(rng, n)}


def test_body_smoother_first_sample_passes_through_and_tracks_are_independent():
    rng = np.random.default_rng(3)
    sm = BodySmoother(rotations={"global_rot"})
    first = _person(rng, 3)
    first["global_rot"][0] *= 1.0 + 1e-6  # not exactly orthonormal: still returned as given
    out = sm.update_many([7, 8, 9], 0, first)
    for k, v in first.items():
        assert out[k].dtype == v.dtype
        np.testing.assert_array_equal(out[k], v)
    second = _person(rng, 3)
    batched = sm.update_many([7, 8, 9], DT, second)
    # the same through per-person calls, in another order
    sm2 = BodySmoother(rotations={"global_rot"})
    for i in (2, 0, 1):
        sm2.update([7, 8, 9][i], 0, {k: v[i] for k, v in first.items()})
    for i in (1, 2, 0):
        single = sm2.update([7, 8, 9][i], DT, {k: v[i] for k, v in second.items()})
        for k in second:
            np.testing.assert_allclose(single[k], batched[k][i], rtol=1e-6, atol=1e-12)
    for k in second:  # smoothed: between the two samples, not equal to the new one
        assert not np.allclose(batched[k], second[k])
    np.testing.assert_allclose(np.linalg.det(batched["global_rot"]), 1.0, atol=1e-12)


def test_body_smoother_drop_reset_and_backwards_stamp():
    rng = np.random.default_rng(4)
    sm = BodySmoother(rotations={"global_rot"})
    a, b, c, d = (_person(rng, 2) for _ in range(4))
    sm.update_many([1, 2], 0, a)
    sm.drop(1)
    sm.drop(99)
    out = sm.update_many([1, 2], DT, b)
    np.testing.assert_array_equal(out["pred_cam_t"][0], b["pred_cam_t"][0])  # dropped: starts over
    assert not np.allclose(out["pred_cam_t"][1], b["pred_cam_t"][1])
    sm.update_many([1, 2], 2 * DT, c)
    out = sm.update_many([1], DT, {k: v[:1] for k, v in d.items()})  # track 1 goes back in time: restarts
    for k in d:
        np.testing.assert_array_equal(out[k][0], d[k][0])
    out = sm.update_many([2], 3 * DT, {k: v[1:] for k, v in d.items()})  # track 2 is unaffected
    assert not np.allclose(out["pred_cam_t"][0], d["pred_cam_t"][1])
    sm.reset()
    out = sm.update_many([2], 4 * DT, {k: v[1:] for k, v in a.items()})
    np.testing.assert_array_equal(out["global_rot"][0], a["global_rot"][1])


def test_body_smoother_per_field_parameters():
    rng = np.random.default_rng(5)
    sm = BodySmoother(rotations={"global_rot"}, params={"pred_cam_t": (1e9, 0.0, 1.0)})
    a, b = _person(rng, 2), _person(rng, 2)
    sm.update_many([1, 2], 0, a)
    out = sm.update_many([1, 2], DT, b)
    np.testing.assert_allclose(out["pred_cam_t"], b["pred_cam_t"], rtol=1e-6)  # huge cutoff: follows at once
    assert not np.allclose(out["body_pose_params"], b["body_pose_params"], rtol=0.01)


def test_body_smoother_rejects_bad_input():
    rng = np.random.default_rng(6)
    sm = BodySmoother(rotations={"global_rot"})
    with pytest.raises(ValueError):
        sm.update_many([1, 1], 0, _person(rng, 2))
    with pytest.raises(ValueError):
        sm.update(1, 0, {"global_rot": np.zeros(3)})
    with pytest.raises(ValueError):
        sm.update_many([1, 2], 0, {"pred_cam_t": np.zeros((3, 3))})
    with pytest.raises(ValueError):
        BodySmoother(min_cutoff=0.0).update(1, 0, {"x": np.zeros(2)})
    out = sm.update_many([], 0, {"pred_cam_t": np.zeros((0, 3)), "global_rot": np.zeros((0, 3, 3))})
    assert out["pred_cam_t"].shape == (0, 3) and out["global_rot"].shape == (0, 3, 3)


def test_angles_are_filtered_on_the_circle():
    # an angle turning at 60 deg/s through +-180 deg (the decoder's atan2 jumps from +pi to -pi there), next to one
    # at rest with noise; as a plain scalar the jump would be averaged (a value near 0, the opposite direction)
    rng = np.random.default_rng(7)
    turning = np.radians(120.0 + 2.0 * np.arange(91))
    sm = BodySmoother(angles={"angles"})
    out = []
    for k, a in enumerate(turning):
        angles = np.array([[np.arctan2(np.sin(a), np.cos(a)), 0.3 + rng.normal(0, 0.01)]])
        out.append(sm.update(1, k * DT, {"angles": angles, "values": np.ones((1, 2))}))
    got = np.array([o["angles"][0] for o in out])
    assert np.abs(got).max() <= np.pi
    step = np.degrees(np.angle(np.exp(1j * np.diff(got[:, 0]))))  # wrapped frame-to-frame change
    assert step.min() > 0 and step.max() <= 2.0 * 1.25, step  # always forward, no jump across the wrap
    err = np.degrees(np.angle(np.exp(1j * (got[:, 0] - turning))))
    assert np.abs(err[15:]).max() <= 2.0, err  # within a frame's turn of the truth once settled
    assert np.std(got[30:, 1]) < 0.01 / 3  # the other angle in the block is smoothed as usual
    np.testing.assert_array_equal(np.array([o["values"] for o in out]), 1.0)
