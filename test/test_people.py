"""People over time on the CPU: MHRHead's factored body evaluation (bit for bit), the pipeline's re-evaluation of given
parameters, how the MHR parameters are filtered, smoothed bodies that stay consistent, and bench/track_quality.py's
figures against the issue's targets."""
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import roma
import skimage.data
import torch

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.heads import (
    NUM_FACE,
    NUM_GLOBAL_6D,
    NUM_HAND_CONT,
    NUM_SCALE,
    NUM_SHAPE,
    intrinsic_zyx_euler,
    rot6d_to_rotmat,
)
from sam3d_body_ros.core.synthetic import random_head
from sam3d_body_ros.people import (
    GLOBAL_ROTATION,
    ParamLayout,
    People,
    PeopleSettings,
    euler_xyz_to_rotmat,
    rotmat_to_euler_xyz,
)
from sam3d_body_ros.pipeline import BodyPipeline
from sam3d_body_ros.ros.node import people_settings
from sam3d_body_ros.ros.params import SCHEMA, TRACKING_CHOICES, defaults
from sam3d_body_ros.tracks import MODES, Tracker

REPO = Path(__file__).resolve().parents[1]
DT = 1_000_000_000 // 30
BOXES = np.array([[120.0, 20.0, 440.0, 512.0], [170.0, 20.0, 330.0, 210.0]])


def _forward_before_factoring(hp, token, init_pose, keypoints_only):
    """MHRHead.forward as one function, as it was before `body` was factored out (same helpers)."""
    pred = hp.proj(token) + init_pose
    global_6d, body_cont, shape, scale, hand, face = torch.split(
        pred, [NUM_GLOBAL_6D, 260, NUM_SHAPE, NUM_SCALE, 2 * NUM_HAND_CONT, NUM_FACE], dim=1)
    face = face * 0
    global_rot = intrinsic_zyx_euler(rot6d_to_rotmat(global_6d))
    body = hp.decoding.body(body_cont)
    hands = hp.hand_params(hand)
    pose = torch.cat([torch.zeros_like(global_rot), global_rot, body[:, :130]], dim=1)
    pose = pose.index_copy(1, hp.hand_joint_idxs_left, hands[:, 0])
    pose = pose.index_copy(1, hp.hand_joint_idxs_right, hands[:, 1])
    model_params = torch.cat([pose, hp.scale_mean + scale @ hp.scale_comps], dim=1)
    fast = hp.keypoint_rig is not None
    subset = hp.keypoint_rig if fast and keypoints_only else None
    if subset is None:
        verts_cm, skel = hp.mhr(shape, model_params, face)
    else:
        verts_cm, skel = hp.mhr(shape, model_params, face, vertices=subset)
    verts = verts_cm / 100.0
    joints = skel[..., :3] / 100.0
    global_rots = roma.unitquat_to_rotmat(skel[..., 3:7])
    if fast:
        kp_verts = verts if subset is not None else verts[:, hp.keypoint_rig.index]
        keypoints = hp.keypoint_weights @ torch.cat([kp_verts, joints], dim=1)
    else:
        keypoints = hp.keypoint_mapping[: hp.num_keypoints] @ torch.cat([verts, joints], dim=1)
    flip = hp.axis_flip
    out = {} if keypoints_only else {"pred_vertices": verts * flip}
    out.update({"pred_keypoints_3d": keypoints * flip, "pred_joint_coords": joints * flip,
                "pred_global_rots": global_rots, "global_rot": global_rot, "body_pose_params": body,
                "hand_pose_params": hand, "scale_params": scale, "shape_params": shape, "expr_params": face,
                "mhr_model_params": model_params, "pred_pose_raw": torch.cat([global_6d, body_cont], dim=1)})
    return out


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("keypoints_only", [False, True])
def test_factored_forward_is_bit_identical(fast, keypoints_only):
    head = random_head(TINY, seed=5).eval()
    hp = head.head_pose
    if not fast:
        hp.keypoint_rig = None
    g = torch.Generator().manual_seed(6)
    token = torch.randn(3, TINY.decoder.dim, generator=g)
    init = head.init_pose.weight + 0.2 * torch.randn(1, head.init_pose.weight.shape[1], generator=g)
    with torch.no_grad():
        new = hp(token, init, keypoints_only=keypoints_only)
        old = _forward_before_factoring(hp, token, init, keypoints_only)
        again = hp.body(new["shape_params"], new["mhr_model_params"], new["expr_params"], keypoints_only)
    assert list(new) == list(old)
    for name in old:
        assert torch.equal(new[name], old[name]), name
    for name in again:  # the factored part called again on forward's own decoded parameters
        assert torch.equal(again[name], old[name]), name


@pytest.fixture(scope="module")
def pipe():
    return BodyPipeline()


def test_evaluate_bodies_reproduces_infer(pipe):
    result = pipe.infer(skimage.data.astronaut(), BOXES)
    o = result.outputs
    again = pipe.evaluate_bodies(o["shape_params"], o["mhr_model_params"], o["expr_params"], o["pred_cam_t"], result.K)
    assert set(again) == {"pred_vertices", "pred_keypoints_3d", "pred_joint_coords", "pred_global_rots",
                          "pred_keypoints_2d"}
    for name, value in again.items():
        np.testing.assert_array_equal(value, o[name], err_msg=name)


def test_euler_conversions_match_roma():
    rng = np.random.default_rng(0)
    e = rng.uniform(-np.pi, np.pi, (500, 3))
    e[:, 1] /= 2.0  # pitch in [-pi/2, pi/2]: the branch both return
    R = euler_xyz_to_rotmat(e)
    np.testing.assert_allclose(R, roma.euler_to_rotmat("xyz", torch.from_numpy(e)).numpy(), atol=1e-12)
    np.testing.assert_allclose(rotmat_to_euler_xyz(R), roma.rotmat_to_euler("xyz", torch.from_numpy(R)).numpy(),
                               atol=1e-9)
    locked = euler_xyz_to_rotmat(np.array([[0.4, np.pi / 2, -0.3], [-1.0, -np.pi / 2, 0.5]]))
    np.testing.assert_allclose(euler_xyz_to_rotmat(rotmat_to_euler_xyz(locked)), locked, atol=1e-9)


def test_param_layout_of_the_synthetic_rig(pipe):
    transform = pipe.head.head_pose.mhr.parameter_transform.numpy()
    layout = ParamLayout.from_transform(transform)
    triples, angles, scalars = layout.triples, layout.angles, layout.scalars
    assert tuple(triples[0]) == GLOBAL_ROTATION
    assert sorted(np.concatenate([triples.ravel(), angles, scalars]).tolist()) == list(range(transform.shape[1]))
    channel = np.arange(transform.shape[0]) % 7
    rotation_rows = np.isin(channel, (3, 4, 5))
    for triple in triples:  # each: one joint's rx, ry, rz, each driven by its parameter alone (weight 1)
        rows = [np.flatnonzero(transform[:, p] * rotation_rows) for p in triple]
        joints = {int(r // 7) for rr in rows for r in rr if np.abs(transform[r]).sum() == 1.0}
        assert len(joints) == 1 and [int(rr[0] % 7) for rr in rows] == [3, 4, 5]
    assert not transform[~rotation_rows][:, angles].any() and transform[:, angles].any(axis=0).all()
    assert set(range(136, transform.shape[1])) <= set(scalars.tolist())  # the joint scales
    # the rig's twist couplings (one angle driving several joints) leave those joints out of the triples
    assert len(triples) > 10 and len(angles) > 10


def _noisy(result, rng, scale=0.02):
    o = dict(result.outputs)
    for name in ("mhr_model_params", "shape_params", "pred_cam_t"):
        o[name] = (o[name] + rng.normal(0, scale, o[name].shape)).astype(np.float32)
    return dataclasses.replace(result, outputs=o)


def test_smoothed_bodies_are_consistent_and_tracks_restart(pipe):
    rng = np.random.default_rng(1)
    result = pipe.infer(skimage.data.astronaut(), BOXES)
    people = People(pipe, PeopleSettings())
    frames = [_noisy(result, rng) for _ in range(6)]
    ids, first = people.update(0, BOXES, [], frames[0])
    assert ids == [1, 2]
    for name in ("mhr_model_params", "shape_params", "pred_cam_t"):  # a track's first frame passes through
        np.testing.assert_allclose(first[name], frames[0].outputs[name], atol=1e-6, err_msg=name)
    for k, frame in enumerate(frames[1:], start=1):
        ids, out = people.update(k * DT, BOXES, [], frame)
    assert ids == [1, 2] and set(people.timings_ms) == {"track", "smooth", "smooth_body"}
    raw = frames[-1].outputs
    assert not np.allclose(out["mhr_model_params"], raw["mhr_model_params"], atol=1e-3)
    # mesh, joints and keypoints are the body model of the published (smoothed) parameters
    body = pipe.evaluate_bodies(out["shape_params"], out["mhr_model_params"], out["expr_params"], out["pred_cam_t"],
                                result.K)
    for name, value in body.items():
        np.testing.assert_array_equal(out[name], value, err_msg=name)
    np.testing.assert_array_equal(out["global_rot"], out["mhr_model_params"][:, 3:6])
    assert out["pred_vertices"].dtype == np.float32 and out["mhr_model_params"].dtype == np.float32
    # a time jump: new tracks, whose first frame passes through again
    ids, out = people.update(0, BOXES, [], frames[-1])
    assert ids == [3, 4]
    np.testing.assert_allclose(out["mhr_model_params"], raw["mhr_model_params"], atol=1e-6)
    people.configure(dataclasses.replace(people.settings, tracking="off"))  # off: indices, outputs untouched
    ids, out = people.update(DT, BOXES, [], frames[0])
    assert ids == [0, 1] and out is frames[0].outputs and people.tracker.ended == []


def test_node_parameters_map_to_the_people_defaults():
    assert people_settings(defaults()) == PeopleSettings()
    assert TRACKING_CHOICES == MODES
    assert "must be positive" in SCHEMA["smoothing_min_cutoff"].check(0.0)  # One-Euro needs cutoffs > 0
    assert "must be positive" in SCHEMA["smoothing_d_cutoff"].check(0)
    assert SCHEMA["smoothing_beta"].check(0.0) is None


def test_tracker_configure_keeps_ids_increasing():
    tr = Tracker("iou")
    assert tr.update(0, BOXES, []) == [1, 2]
    tr.configure("iou", max_missed=3, max_age_s=0.5)  # same mode: tracks kept
    assert tr.update(DT, BOXES, []) == [1, 2] and tr.max_missed == 3 and tr.max_age_ns == 500_000_000
    tr.configure("detector", 3, 0.5)  # a new mode ends every track
    assert tr.ended == [1, 2]
    assert tr.update(2 * DT, BOXES, ["a", "b"]) == [3, 4]
    with pytest.raises(ValueError):
        tr.configure("sort", 3, 0.5)


def _bench():
    spec = importlib.util.spec_from_file_location("track_quality", REPO / "bench" / "track_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_track_quality_meets_the_targets():
    """bench/track_quality.py at half length: jitter >= 3x lower, lag <= 1 frame, no switches with detector ids,
    at most one with iou on the crossing (its timing is printed, not asserted: this machine is shared)."""
    bench = _bench()
    report = bench.measure(frames=30, cost_frames=30, seeds=20)
    print("\n" + bench.table(report))
    a, b, t = report["constant_velocity"], report["crossing"], report["targets"]
    assert a["jitter_reduction"] >= t["jitter_reduction_min"]
    assert 0.0 < a["lag_frames"] <= t["lag_frames_max"]
    assert a["switches_detector"] == b["switches_detector"] == 0
    assert a["switches_iou"] == 0 and b["switches_iou"] <= t["switches_iou_max"]
    assert all(s["max"] <= 4 for s in b["iou_over_seeds"])
