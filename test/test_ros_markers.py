"""Marker contents (ids and colours per person, DELETE/DELETEALL hygiene) and the numpy CDR writers (MarkerArray, PoseArray) against
rmw's own serialiser."""
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseArray
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from sam3d_body_ros.core.keypoints import PERSON_COLORS, SKELETON_EDGES
from sam3d_body_ros.ros.markers import (
    marker_array,
    marker_array_cdr,
    marker_specs,
    pose_array,
    pose_array_cdr,
)
from sam3d_body_ros.ros.node import cdr_matches_rmw

RNG = np.random.default_rng(3)
FACES = RNG.integers(0, 642, (1280, 3))


def test_slots_and_cleanup():
    kps = RNG.random((2, 70, 3))
    specs = marker_specs(RNG.random((2, 642, 3)), FACES, kps, ids=[0, 1], previous_ids=range(4), clear_all=True)
    assert [(s.ns, s.id, s.action) for s in specs] == [
        ("", 0, Marker.DELETEALL), ("mesh", 0, Marker.ADD), ("skeleton", 0, Marker.ADD), ("mesh", 1, Marker.ADD),
        ("skeleton", 1, Marker.ADD), ("mesh", 2, Marker.DELETE), ("skeleton", 2, Marker.DELETE),
        ("mesh", 3, Marker.DELETE), ("skeleton", 3, Marker.DELETE)]
    assert specs[1].type == Marker.TRIANGLE_LIST and specs[1].points.shape == (3840, 3)
    assert specs[2].type == Marker.LINE_LIST
    np.testing.assert_array_equal(specs[4].points, kps[1][np.array(SKELETON_EDGES).reshape(-1)])
    skeleton_only = marker_specs(None, FACES, kps, ids=[0, 1], previous_ids=[])
    assert [(s.ns, s.id) for s in skeleton_only] == [("skeleton", 0), ("skeleton", 1)]


def test_track_ids_set_marker_ids_colours_and_deletes():
    kps = RNG.random((2, 70, 3))
    specs = marker_specs(RNG.random((2, 642, 3)), FACES, kps, ids=[7, 3], previous_ids=[9, 3, 5])
    assert [(s.ns, s.id, s.action) for s in specs] == [
        ("mesh", 7, Marker.ADD), ("skeleton", 7, Marker.ADD), ("mesh", 3, Marker.ADD), ("skeleton", 3, Marker.ADD),
        ("mesh", 5, Marker.DELETE), ("skeleton", 5, Marker.DELETE), ("mesh", 9, Marker.DELETE),
        ("skeleton", 9, Marker.DELETE)]
    np.testing.assert_array_equal(specs[3].points, kps[1][np.array(SKELETON_EDGES).reshape(-1)])  # id 3: person 1
    for spec, track in zip(specs[:4], (7, 7, 3, 3)):  # a track keeps its colour whatever its place in the frame
        rgb = PERSON_COLORS[track % len(PERSON_COLORS)]
        np.testing.assert_allclose(spec.color[:3], np.array(rgb) / 255.0)


@pytest.mark.parametrize("frame_id", ["", "c", "camera_optical_frame"])
@pytest.mark.parametrize("persons,previous,clear,mesh", [(0, 0, False, True), (0, 2, True, True), (1, 0, True, True),
                                                         (3, 5, False, True), (2, 0, False, False)])
def test_cdr_writer_decodes_to_the_same_message(frame_id, persons, previous, clear, mesh):
    header = Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id=frame_id)
    specs = marker_specs(RNG.random((persons, 642, 3)) if mesh else None, FACES, RNG.random((persons, 70, 3)),
                         range(persons), range(previous), clear)
    ref = serialize_message(marker_array(header, specs))
    raw = marker_array_cdr(header, specs)
    assert len(raw) == len(ref)
    assert deserialize_message(raw, MarkerArray) == deserialize_message(ref, MarkerArray)


@pytest.mark.parametrize("persons,quats", [(0, False), (1, True), (3, True), (2, False)])
def test_pose_array_cdr_decodes_to_the_same_message(persons, quats):
    header = Header(stamp=Time(sec=7, nanosec=9), frame_id="camera_optical_frame")
    pos = RNG.random((persons, 127, 3)).astype(np.float32)
    q = RNG.random((persons, 127, 4)) if quats else None
    raw, ref = pose_array_cdr(header, pos, q), serialize_message(pose_array(header, pos, q))
    assert len(raw) == len(ref)
    assert deserialize_message(raw, PoseArray) == deserialize_message(ref, PoseArray)


def test_node_uses_the_cdr_writer_here():
    assert cdr_matches_rmw()
