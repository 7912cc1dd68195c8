"""Compact outputs and raw intake, checked against rmw's own (de)serialisation: the point cloud equals the vertices,
the topology message equals the model's faces, every reduced marker vertex is a vertex of the full mesh, and an
image read from its bytes equals rclpy's message for every encoding, padded rows included."""
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from mhr_asset_factory import read_ply
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2
from shape_msgs.msg import Mesh
from std_msgs.msg import Header

from sam3d_body_ros.ros.cdr import read_image
from sam3d_body_ros.ros.conversions import ENCODINGS, array_to_image, image_to_array
from sam3d_body_ros.ros.mesh_out import point_cloud_cdr, reduce_mesh, template_mesh

LOD1 = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mhr" / "mhr_face_mask.ply"


def header() -> Header:
    h = Header(frame_id="camera_optical_frame")
    h.stamp.sec, h.stamp.nanosec = 1712, 345678
    return h


@pytest.mark.parametrize("persons", [0, 1, 3])
def test_point_cloud_decodes_to_the_vertices_and_person_ids(persons):
    rng = np.random.default_rng(persons)
    verts = rng.normal(size=(persons, 50, 3)).astype(np.float32)
    ids = np.array([7, 3, 12][:persons])
    msg = deserialize_message(point_cloud_cdr(header(), verts, ids), PointCloud2)
    assert msg.header == header() and (msg.height, msg.width) == (1, persons * 50) and msg.is_dense
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("person", 12, 6, 1)]
    points = np.frombuffer(bytes(msg.data), dtype=[("xyz", "<f4", 3), ("person", "<u4")])
    np.testing.assert_array_equal(points["xyz"], verts.reshape(-1, 3))
    np.testing.assert_array_equal(points["person"], np.repeat(ids, 50))


def test_template_mesh_holds_the_faces():
    vertices, faces = read_ply(LOD1)
    msg = deserialize_message(serialize_message(template_mesh(faces, vertices / 100.0)), Mesh)
    np.testing.assert_array_equal([t.vertex_indices for t in msg.triangles], faces)
    assert len(msg.vertices) == len(vertices) == 18439


def test_reduced_markers_are_a_gather_of_the_full_mesh():
    vertices, faces = read_ply(LOD1)  # the real MHR LOD1 topology (18,439 vertices, 36,874 triangles)
    reduced = reduce_mesh(vertices, faces, 3000)
    assert 2000 < len(reduced.faces) <= 3300 and len(reduced.keep) < len(vertices) / 4
    posed = np.random.default_rng(0).normal(size=(2, len(vertices), 3))
    points = reduced.triangle_points(posed)
    assert points.shape == (2, 3 * len(reduced.faces), 3)
    full = {tuple(p) for p in posed[1]}
    assert all(tuple(p) in full for p in points[1])  # every point is one of the person's own full-mesh vertices
    # the reduced surface still covers the body: its bounding box is the full mesh's within 3 %
    lo, hi = vertices[reduced.keep].min(0), vertices[reduced.keep].max(0)
    np.testing.assert_allclose(hi - lo, np.ptp(vertices, axis=0), rtol=0.03)
    whole = reduce_mesh(vertices, faces, 0)
    np.testing.assert_array_equal(whole.triangle_points(posed), posed[:, faces.reshape(-1)])


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("padding", [0, 24])
def test_raw_image_equals_rclpy_message(encoding, padding):
    dtype, channels = ENCODINGS[encoding]
    photo = skimage.data.astronaut()[:97, :131]
    arr = photo[:, :, :channels] if channels > 1 else photo[:, :, 0]
    if channels == 4:
        arr = np.concatenate([photo, photo[:, :, :1]], axis=2)
    arr = arr.astype(dtype) * (257 if dtype == np.uint16 else 1)
    msg = array_to_image(np.ascontiguousarray(arr), encoding, header(), row_padding=padding)
    raw = read_image(serialize_message(msg))
    for field in ("header", "height", "width", "encoding", "is_bigendian", "step"):
        assert getattr(raw, field) == getattr(msg, field), field
    assert bytes(raw.data) == bytes(msg.data)
    np.testing.assert_array_equal(image_to_array(raw), image_to_array(msg))
