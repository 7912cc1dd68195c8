"""The node in-process over loopback DDS: outputs for a real photo with two person boxes, and every kind of
bad input followed by a valid frame that must still be answered correctly."""
import itertools

import numpy as np
import pytest
import rclpy
import roma
import torch
from rclpy.parameter import Parameter
from ros_fixtures import (
    BOXES,
    FRAME_ID,
    PHOTO,
    K,
    Probe,
    Spinner,
    camera_info,
    header,
    init_context,
    resend_until,
    wait_for,
)

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.keypoints import MHR70_NAMES, MHR_JOINT_NAMES, SKELETON_EDGES
from sam3d_body_ros.ros.conversions import array_to_image, stamp_ns
from sam3d_body_ros.ros.node import FLIP, MeshNode

IDS, SCORES = ["alice", "bob"], np.array([0.93, 0.71])
V, F = TINY.mhr.num_vertices, TINY.mhr.num_faces


@pytest.fixture(scope="module")
def ros():
    ctx = init_context(__name__)
    node = MeshNode(context=ctx, parameter_overrides=[
        Parameter("diagnostics_period", value=0.2), Parameter("camera_info_wait", value=0.1)])
    probe = Probe(ctx)
    spinner = Spinner(ctx, node, probe)
    stamps = itertools.count(1)
    yield node, probe, stamps
    spinner.stop()
    node.destroy_node()
    probe.destroy_node()
    rclpy.shutdown(context=ctx)


def valid(probe, stamps, **kw):
    """Send valid frames until one is answered on every output; return (header, outputs)."""
    got = resend_until(probe, lambda: probe.send_frame(next(stamps), ids=IDS, scores=SCORES, **kw), timeout=20.0)
    assert got is not None, "node did not answer a valid frame"
    return got


def meshes(markers):
    return [m for m in markers.markers if m.ns == "mesh" and m.action == m.ADD]


def warned(probe, kind, before=0, timeout=5.0):
    """Wait until diagnostics count more than `before` warnings of `kind`; return the diagnostics."""
    def check():
        d = probe.diagnostics()
        key = f"warning.{kind}"
        return d if key in d and int(d[key].split("x")[0]) > before else None
    d = wait_for(check, timeout)
    assert d is not None, f"no diagnostics warning of kind {kind}: {probe.diagnostics()}"
    return d


def count(probe, kind):
    value = probe.diagnostics().get(f"warning.{kind}")
    return int(value.split("x")[0]) if value else 0


def points(marker):
    return np.array([[p.x, p.y, p.z] for p in marker.points])


def test_outputs_for_two_persons(ros):
    node, probe, stamps = ros
    assert node.cdr_ok  # the fast marker path is the one under test here
    h, out = valid(probe, stamps)
    for name, msg in out.items():
        headers = [m.header for m in msg.markers] if name == "markers" else [msg.header]
        assert all(x.frame_id == FRAME_ID and stamp_ns(x) == stamp_ns(h) for x in headers), name

    # What the pipeline gives for the same inputs, turned into camera-frame metres by hand.
    ref = node.pipeline.infer(PHOTO, BOXES, K)
    o, faces = ref.outputs, ref.faces
    cam_t = o["pred_cam_t"][:, None]
    bodies = out["bodies"].detections
    track_ids = [int(b.id) for b in bodies]  # tracking iou (the default): track ids, not the detection ids
    assert len(set(track_ids)) == 2
    mesh = meshes(out["markers"])
    assert [m.id for m in mesh] == track_ids
    for i, m in enumerate(mesh):
        assert m.type == m.TRIANGLE_LIST and len(m.points) == 3 * F == 3840
        np.testing.assert_allclose(points(m), (o["pred_vertices"][i] + cam_t[i])[faces.reshape(-1)], atol=1e-5)
    skel = [m for m in out["markers"].markers if m.ns == "skeleton" and m.action == m.ADD]
    assert [m.id for m in skel] == track_ids and all(m.type == m.LINE_LIST for m in skel)
    kp_cam = o["pred_keypoints_3d"] + cam_t
    np.testing.assert_allclose(points(skel[1]), kp_cam[1][np.array(SKELETON_EDGES).reshape(-1)], atol=1e-5)

    joints = out["joints"].poses
    assert len(joints) == 2 * 127
    pos = np.array([[p.position.x, p.position.y, p.position.z] for p in joints]).reshape(2, 127, 3)
    np.testing.assert_allclose(pos, o["pred_joint_coords"] + cam_t, atol=1e-5)
    quat = np.array([[p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w] for p in joints])
    rot = roma.unitquat_to_rotmat(torch.from_numpy(quat)).numpy().reshape(2, 127, 3, 3)
    np.testing.assert_allclose(rot, FLIP @ o["pred_global_rots"], atol=1e-4)

    kps = out["keypoints"].poses
    assert len(kps) == 2 * 70
    np.testing.assert_allclose([[p.position.x, p.position.y, p.position.z] for p in kps], kp_cam.reshape(-1, 3),
                               atol=1e-5)
    assert all(p.orientation.w == 1.0 for p in kps)

    assert [b.results[0].hypothesis.class_id for b in bodies] == ["person", "person"]
    np.testing.assert_allclose([b.results[0].hypothesis.score for b in bodies], SCORES)
    for i, b in enumerate(bodies):
        verts = o["pred_vertices"][i] + cam_t[i, 0]
        c, s = b.bbox.center.position, b.bbox.size
        np.testing.assert_allclose([c.x, c.y, c.z], (verts.min(0) + verts.max(0)) / 2, atol=1e-5)
        np.testing.assert_allclose([s.x, s.y, s.z], verts.max(0) - verts.min(0), atol=1e-5)
        pelvis = b.results[0].pose.pose.position
        np.testing.assert_allclose([pelvis.x, pelvis.y, pelvis.z], kp_cam[i, [9, 10]].mean(0), atol=1e-5)

    assert list(node.get_parameter("joint_names").value) == list(MHR_JOINT_NAMES)
    assert list(node.get_parameter("keypoint_names").value) == list(MHR70_NAMES)
    d = wait_for(lambda: (lambda d: d if d.get("frames_processed", "0") != "0" else None)(probe.diagnostics()), 3.0)
    assert d["backend"] == "torch/fp32" and "RANDOM" in d["weights"] and d["model_config"] == "tiny"
    assert {"crop_ms", "backbone_ms", "decoder_ms", "publish_ms", "total_ms", "rate_hz"} <= set(d)


def test_point_cloud_and_topology_rebuild_the_meshes(ros):
    """~/mesh/points holds every person's vertices (person field = track id); ~/mesh/faces (transient local, sent
    once at configure) holds the model's triangles: together they give exactly the mesh markers' triangles."""
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from shape_msgs.msg import Mesh

    node, probe, stamps = ros
    h, out = valid(probe, stamps)
    got = wait_for(lambda: probe.outputs_at(h, ("mesh/points", "bodies")), 10.0)
    assert got is not None
    cloud = got["mesh/points"]
    pts = np.frombuffer(bytes(cloud.data), dtype=[("xyz", "<f4", 3), ("person", "<u4")])
    track_ids = [int(b.id) for b in got["bodies"].detections]
    assert cloud.header.frame_id == FRAME_ID and cloud.width == 2 * V and cloud.point_step == 16
    np.testing.assert_array_equal(pts["person"], np.repeat(track_ids, V))
    faces = []
    late = probe.create_subscription(Mesh, "/sam3d_body/mesh/faces", faces.append,
                                     QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    try:
        assert wait_for(lambda: faces, 10.0), "no topology on ~/mesh/faces for a late subscriber"
    finally:
        probe.destroy_subscription(late)
    tri = np.array([t.vertex_indices for t in faces[0].triangles])
    np.testing.assert_array_equal(tri, node.pipeline.faces)
    verts = pts["xyz"].reshape(2, V, 3)
    for i, m in enumerate(meshes(out["markers"])):  # tiny mesh: below mesh_triangles, so markers are full resolution
        np.testing.assert_allclose(points(m), verts[i][tri.reshape(-1)], atol=1e-6)


def test_padded_bgr_image_gives_the_same_bodies(ros):
    node, probe, stamps = ros
    _, plain = valid(probe, stamps)

    def send_padded():
        h = header(next(stamps))
        img = array_to_image(PHOTO[:, :, ::-1].copy(), "bgr8", row_padding=24)
        probe.send(h, img, BOXES, camera_info(h, 512, 512), ids=IDS, scores=SCORES)
        return h
    got = resend_until(probe, send_padded, timeout=10.0)
    assert got is not None
    for a, b in zip(meshes(plain["markers"]), meshes(got[1]["markers"])):
        np.testing.assert_allclose(points(a), points(b), atol=1e-5)


def test_bad_inputs_warn_and_the_next_frame_is_answered(ros):
    node, probe, stamps = ros
    valid(probe, stamps)
    cases = []

    def bad_encoding(h):
        img = array_to_image(PHOTO, "rgb8")
        img.encoding = "yuv422"
        probe.send(h, img, BOXES, camera_info(h, 512, 512))
    cases.append(("image", bad_encoding))

    def nan_k(h):
        k = K.copy()
        k[0, 0] = np.nan
        probe.send(h, array_to_image(PHOTO, "rgb8"), BOXES, camera_info(h, 512, 512, k))
    cases.append(("intrinsics", nan_k))

    def uncalibrated(h):  # all-zero K: the ROS convention for an uncalibrated camera -> default intrinsics
        probe.send(h, array_to_image(PHOTO, "rgb8"), BOXES, camera_info(h, 512, 512, np.zeros((3, 3))))
    cases.append(("camera_info", uncalibrated))

    def wrong_size(h):
        probe.send(h, array_to_image(PHOTO, "rgb8"), BOXES, camera_info(h, 640, 480))
    cases.append(("camera_info_size", wrong_size))

    def detections_only(h):  # its image never arrives: once frames match, that is an image lost on the way in
        probe.send(h, None, BOXES)
    cases.append(("images_dropped", detections_only))

    for kind, send in cases:
        before = count(probe, kind)
        send(header(next(stamps)))
        if kind == "images_dropped":
            valid(probe, stamps)  # orphans are known once a newer frame is complete
        d = warned(probe, kind, before)
        assert d["level"] >= 1, d  # WARN while input problems are recent
        valid(probe, stamps)


def test_bad_boxes_are_dropped_per_box(ros):
    node, probe, stamps = ros
    bad = {
        "zero": [300.0, 100.0, 300.0, 200.0],
        "negative": [300.0, 200.0, 250.0, 100.0],
        "outside": [600.0, 600.0, 700.0, 700.0],
        "nan": [np.nan, 10.0, 100.0, 100.0],
    }
    for name, box in bad.items():
        before = count(probe, "box")
        boxes = np.array([BOXES[0], box])
        got = resend_until(probe, lambda: probe.send_frame(next(stamps), boxes=boxes, ids=["good", name],
                                                           scores=SCORES), timeout=10.0)
        assert got is not None, name
        out = got[1]
        [body] = out["bodies"].detections  # the good box, with its detection's score
        assert body.results[0].hypothesis.score == pytest.approx(SCORES[0]), name
        assert len(meshes(out["markers"])) == 1 and len(out["joints"].poses) == 127
        assert warned(probe, "box", before), name


def test_empty_detections_clear_outputs(ros):
    node, probe, stamps = ros
    shown = [int(b.id) for b in valid(probe, stamps)[1]["bodies"].detections]
    got = resend_until(probe, lambda: probe.send_frame(next(stamps), boxes=np.zeros((0, 4))), timeout=10.0)
    assert got is not None
    h, out = got
    deletes = {(m.ns, m.id) for m in out["markers"].markers if m.action == m.DELETE}
    assert deletes == {(ns, i) for ns in ("mesh", "skeleton") for i in shown}
    assert out["joints"].poses == [] and out["keypoints"].poses == [] and out["bodies"].detections == []
    valid(probe, stamps)


def test_slot_hands_over_newest_item_and_waits_for_the_consumer() -> None:
    """The node's hand-overs: frames replace a waiting frame (counted as dropped), results wait for the publisher."""
    import threading

    from sam3d_body_ros.ros.node import _Slot

    frames = _Slot()
    assert frames.replace("frame 1") is False and frames.replace("frame 2") is True
    assert frames.take() == "frame 2"

    results, taken = _Slot(), []
    results.put("result 1")
    producer = threading.Thread(target=results.put, args=("result 2",))
    producer.start()
    producer.join(timeout=0.2)
    assert producer.is_alive()  # the slot is full: put waits for the consumer
    taken.append(results.take())
    producer.join(timeout=5.0)
    assert not producer.is_alive() and results.take() == "result 2" and taken == ["result 1"]

    consumer = threading.Thread(target=lambda: taken.append(results.take()))
    consumer.start()
    results.close()  # wakes a waiting consumer with None
    consumer.join(timeout=5.0)
    assert not consumer.is_alive() and taken[-1] is None
