"""Stamp synchroniser (no rclpy): exact and approximate matching, optional camera_info, unmatched counts."""
import pytest

from sam3d_body_ros.ros.sync import StampSynchronizer

MS = 1_000_000


def make(**kw):
    return StampSynchronizer(("image", "detections"), ("camera_info",), **kw)


def test_exact_match_with_camera_info_releases_at_once():
    s = make()
    assert s.add("image", 100 * MS, "img", 0.0) == []
    assert s.add("camera_info", 100 * MS, "info", 0.0) == []
    (frame,) = s.add("detections", 100 * MS, "det", 0.0)
    assert frame.stamp_ns == 100 * MS and frame.msgs == {"image": "img", "detections": "det", "camera_info": "info"}
    assert s.stats.frames == 1 and sum(s.stats.unmatched.values()) == 0


def test_exact_needs_equal_stamps():
    s = make()
    s.add("image", 100 * MS, "img", 0.0)
    assert s.add("detections", 101 * MS, "det", 0.0) == []
    assert s.poll(10.0) == []


def test_approximate_takes_nearest_within_slop():
    s = make(slop=0.01)
    s.add("camera_info", 100 * MS, "info", 0.0)
    s.add("detections", 92 * MS, "far", 0.0)
    s.add("detections", 104 * MS, "near", 0.0)
    (frame,) = s.add("image", 101 * MS, "img", 0.0)
    assert frame.msgs["detections"] == "near" and frame.msgs["camera_info"] == "info"
    assert s.stats.unmatched["detections"] == 1  # the older one was discarded when the frame went out


def test_missing_camera_info_waits_then_releases_without_it():
    s = make(optional_wait=0.1)
    s.add("image", 100 * MS, "img", 1.0)
    assert s.add("detections", 100 * MS, "det", 1.0) == []  # held for a late camera_info
    assert s.poll(1.05) == []
    (frame,) = s.poll(1.11)
    assert "camera_info" not in frame.msgs


def test_late_camera_info_joins_held_frame():
    s = make(optional_wait=0.1)
    s.add("image", 100 * MS, "img", 1.0)
    s.add("detections", 100 * MS, "det", 1.0)
    (frame,) = s.add("camera_info", 100 * MS, "info", 1.02)
    assert frame.msgs["camera_info"] == "info"


def test_newer_complete_frame_flushes_held_one_and_counts_orphans():
    s = make(optional_wait=5.0)
    s.add("detections", 50 * MS, "orphan", 0.0)  # detections without an image
    s.add("image", 100 * MS, "img1", 0.0)
    s.add("detections", 100 * MS, "det1", 0.0)
    s.add("image", 200 * MS, "img2", 0.1)
    s.add("camera_info", 200 * MS, "info2", 0.1)
    frames = s.add("detections", 200 * MS, "det2", 0.1)
    assert [f.msgs["image"] for f in frames] == ["img1", "img2"]
    assert "camera_info" not in frames[0].msgs and frames[1].msgs["camera_info"] == "info2"
    assert s.stats.unmatched == {"image": 0, "detections": 1, "camera_info": 0}
    assert s.stats.last_unmatched["detections"] == 50 * MS


def test_full_queue_evicts_oldest_and_counts_it():
    s = make(queue_size=3, optional_wait=0.0)
    for i in range(5):
        s.add("image", i * MS, i, 0.0)
    assert s.stats.unmatched["image"] == 2
    (frame,) = s.add("detections", 4 * MS, "d", 0.0)
    assert frame.msgs["image"] == 4 and "camera_info" not in frame.msgs
    assert s.stats.unmatched["image"] == 4  # images 2 and 3 are older than the released frame


def test_invalid_settings():
    with pytest.raises(ValueError):
        make(slop=-1.0)
    with pytest.raises(ValueError):
        make(queue_size=0)


def test_frames_come_out_in_stamp_order_even_when_inputs_arrive_late():
    s = make(optional_wait=0.0)
    s.add("image", 200 * MS, "new", 0.0)
    assert [f.msgs["image"] for f in s.add("detections", 200 * MS, "d2", 0.0)] == ["new"]
    s.add("image", 100 * MS, "late", 0.0)  # older than a frame already released: never released
    assert s.add("detections", 100 * MS, "d1", 0.0) == []
    s.add("image", 300 * MS, "newer", 0.0)
    assert [f.msgs["image"] for f in s.add("detections", 300 * MS, "d3", 0.0)] == ["newer"]
    assert s.stats.unmatched["image"] == 1 and s.stats.unmatched["detections"] == 1
