"""Track ids over time: births, continuation, deaths by misses and by time, detector ids, crossings, time jumps."""
import time

import numpy as np
import pytest

from sam3d_body_ros.smoothing import BodySmoother
from sam3d_body_ros.tracks import Tracker, box_iou

NS = 1_000_000_000
DT = NS // 30  # 30 Hz header stamps


def _box(cx: float, cy: float = 300.0, w: float = 100.0, h: float = 200.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_box_iou():
    a = np.array([_box(100), _box(100)])
    b = np.array([_box(100), _box(150), _box(400)])
    np.testing.assert_allclose(box_iou(a, b), [[1, 50 / 150, 0], [1, 50 / 150, 0]])


def test_birth_continuation_and_death_by_missed_count():
    tr = Tracker("iou", max_missed=2, max_age_s=100.0)
    assert tr.update(0, np.array([_box(100), _box(400)]), []) == [1, 2]
    assert tr.update(DT, np.array([_box(105), _box(395)]), []) == [1, 2]
    # person 2 missed for 2 updates: still alive, it comes back with its id; a newcomer gets a fresh id
    assert tr.update(2 * DT, np.array([_box(110)]), []) == [1]
    assert tr.update(3 * DT, np.zeros((0, 4)), []) == []  # nobody detected: person 1 misses once too
    assert tr.ended == []
    assert tr.update(4 * DT, np.array([_box(120), _box(380), _box(700)]), []) == [1, 2, 3]
    # person 2 missed 3 updates (> max_missed): ended on the third, and it is a new track when it reappears
    for k in (5, 6):
        assert tr.update(k * DT, np.array([_box(120)]), []) == [1]
        assert tr.ended == []
    assert tr.update(7 * DT, np.array([_box(120)]), []) == [1]
    assert tr.ended == [2, 3]
    assert tr.active_ids == [1]
    assert tr.update(8 * DT, np.array([_box(120), _box(380)]), []) == [1, 4]


def test_death_by_time_counts_dropped_frames():
    tr = Tracker("iou", max_missed=100, max_age_s=0.5)
    assert tr.update(0, np.array([_box(100), _box(400)]), []) == [1, 2]
    assert tr.update(12 * DT, np.array([_box(100), _box(400)]), []) == [1, 2]  # 0.4 s gap: kept
    assert tr.update(13 * DT, np.array([_box(100)]), []) == [1]
    assert tr.update(26 * DT, np.array([_box(100)]), []) == [1]  # person 2 unseen for 0.47 s
    assert tr.ended == []
    assert tr.update(29 * DT, np.array([_box(100), _box(400)]), []) == [1, 3]  # 0.53 s: ended before matching
    assert tr.ended == [2]


def test_ids_follow_boxes_in_shuffled_order():
    rng = np.random.default_rng(0)
    centres = np.array([100.0, 300.0, 500.0, 700.0, 900.0])
    tr = Tracker("iou")
    first = tr.update(0, np.array([_box(c) for c in centres]), [])
    assert first == [1, 2, 3, 4, 5]
    for k in range(1, 20):
        order = rng.permutation(len(centres))
        boxes = np.array([_box(c + 2.0 * k) for c in centres[order]]) + rng.normal(0, 1.0, (5, 4))
        assert tr.update(k * DT, boxes, []) == [first[i] for i in order]


def _crossing(n_frames: int = 30, noise: float = 2.0, seed: int = 0):
    """Two persons (same box size) swapping x positions at 10 px/frame over n_frames: (stamp, boxes) per frame."""
    rng = np.random.default_rng(seed)
    for k in range(n_frames):
        s = k / (n_frames - 1)
        boxes = np.array([_box(200 + 290 * s), _box(490 - 290 * s)]) + rng.normal(0, noise, (2, 4))
        yield k * DT, boxes


def _switches(id_rows: list[list[int]]) -> int:
    """Id switches (MOT IDSW): frame-to-frame changes of the id given to each person (persons in a fixed order)."""
    return sum(a != b for prev, cur in zip(id_rows, id_rows[1:]) for a, b in zip(prev, cur))


def test_two_persons_crossing_keep_their_ids():
    # 30 frames: the closest frames are 10 px apart, and the last box of each person is where the other one is next
    for seed in range(10):
        tr = Tracker("iou")
        ids = [tr.update(t, boxes, []) for t, boxes in _crossing(seed=seed)]
        assert ids[0] == [1, 2] and _switches(ids) <= 1, ids
    # 31 frames: one frame with both boxes at the same place (ids arbitrary there); the tracks still come out right
    for seed in range(10):
        tr = Tracker("iou")
        ids = [tr.update(t, boxes, []) for t, boxes in _crossing(n_frames=31, seed=seed)]
        assert ids[-1] == [1, 2] and _switches(ids[:15] + ids[16:]) == 0, ids


def test_constant_velocity_prediction_bridges_dropped_frames():
    # 30 px/frame, then two dropped frames: the last box overlaps the next one by IoU 0.05, the prediction by ~1
    tr = Tracker("iou", iou_threshold=0.3)
    ids = [tr.update(k * DT, np.array([_box(100 + 30 * k)]), []) for k in (0, 1, 2, 3, 4, 7, 8)]
    assert ids == [[1]] * 7


def test_3d_positions_break_near_ties():
    # both detections overlap both tracks; IoU alone pairs them crosswise, the 3D positions say otherwise
    boxes0 = np.array([[0, 0, 100, 200], [20, 0, 120, 200]], float)
    pos0 = np.array([[0, 0, 2.0], [0, 0, 5.0]])
    boxes1 = np.array([[12, 0, 112, 200], [8, 0, 108, 200]], float)
    pos1 = np.array([[0, 0, 2.0], [0, 0, 5.0]])
    plain = Tracker("iou")
    plain.update(0, boxes0, [])
    assert plain.update(DT, boxes1, []) == [2, 1]
    with_3d = Tracker("iou")
    with_3d.update(0, boxes0, [], positions=pos0)
    assert with_3d.update(DT, boxes1, [], positions=pos1) == [1, 2]


def test_detector_ids_are_honoured():
    # persons a and b trade places abruptly at frame 10; the detector's ids follow the persons, the boxes do not
    frames = [(np.array([_box(100), _box(400)]) if k < 10 else np.array([_box(400), _box(100)])) for k in range(20)]
    by_id, by_iou = Tracker("detector"), Tracker("iou")
    ids = [by_id.update(k * DT, boxes, ["a", "b"]) for k, boxes in enumerate(frames)]
    assert ids[0] == [1, 2] and _switches(ids) == 0
    assert _switches([by_iou.update(k * DT, boxes, ["a", "b"]) for k, boxes in enumerate(frames)]) > 0
    # an unknown id may not take over a track bound to another id, even at IoU 1
    assert by_id.update(20 * DT, np.array([_box(100)]), ["c"]) == [3]


def test_detector_mode_falls_back_to_iou_and_binds_new_ids():
    tr = Tracker("detector")
    assert tr.update(0, np.array([_box(100), _box(400)]), ["", "7"]) == [1, 2]
    assert tr.update(DT, np.array([_box(402), _box(103)]), ["", ""]) == [2, 1]  # id-less boxes: by IoU
    assert tr.update(2 * DT, np.array([_box(106), _box(404)]), ["9", "7"]) == [1, 2]  # "9" adopts anonymous 1
    assert tr.update(3 * DT, np.array([_box(400), _box(100)]), ["9", "7"]) == [1, 2]  # then ids rule
    with pytest.raises(ValueError):
        tr.update(4 * DT, np.array([_box(100)]), [])


def test_time_jump_backwards_resets():
    tr = Tracker("iou")
    assert tr.update(10 * NS, np.array([_box(100), _box(400)]), []) == [1, 2]
    assert tr.update(10 * NS + DT, np.array([_box(100), _box(400)]), []) == [1, 2]
    assert tr.update(5 * NS, np.array([_box(100), _box(400)]), []) == [3, 4]
    assert tr.ended == [1, 2]
    assert tr.update(5 * NS + DT, np.array([_box(100)]), []) == [3]
    assert tr.ended == []
    tr.reset()
    assert tr.ended == [3, 4]
    assert tr.update(6 * NS, np.array([_box(100)]), []) == [5]


def test_off_mode_is_frame_index():
    tr = Tracker("off")
    assert tr.update(0, np.array([_box(100), _box(400)]), []) == [0, 1]
    assert tr.update(DT, np.array([_box(400)]), []) == [0]
    with pytest.raises(ValueError):
        Tracker("sort")


def test_cost_per_frame_eight_persons():
    """Tracker + BodySmoother per frame for 8 persons with the model's field sizes (prints the time)."""
    rng = np.random.default_rng(0)
    n = 8
    centres = np.linspace(100, 1500, n)
    tr = Tracker("iou")
    sm = BodySmoother(rotations={"global_rot"})
    sizes = {"body_pose_params": 133, "shape_params": 45, "scale_params": 28, "hand_pose_params": 108, "pred_cam_t": 3}
    base = {k: rng.normal(size=(n, s)).astype(np.float32) for k, s in sizes.items()}
    rot = np.linalg.qr(rng.normal(size=(n, 3, 3)))[0]
    rot *= np.linalg.det(rot)[:, None, None]
    frames = 300
    t_track, t_smooth = [], []
    for k in range(frames):
        boxes = np.array([_box(c + k) for c in centres]) + rng.normal(0, 1.0, (n, 4))
        values = {key: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for key, v in base.items()}
        values["global_rot"] = rot
        t0 = time.perf_counter()
        ids = tr.update(k * DT, boxes, [], positions=base["pred_cam_t"])
        t1 = time.perf_counter()
        for gone in tr.ended:
            sm.drop(gone)
        out = sm.update_many(ids, k * DT, values)
        t2 = time.perf_counter()
        if k >= 30:
            t_track.append(t1 - t0)
            t_smooth.append(t2 - t1)
    assert ids == list(range(1, n + 1))
    assert out["body_pose_params"].shape == (n, 133) and out["global_rot"].shape == (n, 3, 3)
    total = np.add(t_track, t_smooth)
    print(f"\n8 persons per frame (median): Tracker.update {np.median(t_track) * 1e3:.3f} ms + "
          f"BodySmoother.update_many {np.median(t_smooth) * 1e3:.3f} ms = {np.median(total) * 1e3:.3f} ms "
          f"(mean {total.mean() * 1e3:.3f} ms)")
    sm_loop = BodySmoother(rotations={"global_rot"})
    t0 = time.perf_counter()
    for k in range(100):
        for i in range(n):
            sm_loop.update(i + 1, k * DT, {key: v[i] for key, v in values.items()})
    print(f"8 persons per frame, BodySmoother.update per person: {(time.perf_counter() - t0) * 10:.3f} ms")
