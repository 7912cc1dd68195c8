"""Compact mesh outputs: every person's vertices as one sensor_msgs/PointCloud2 (x, y, z float32 + person uint32,
16 bytes a point: 0.3 MB a person instead of 2.7 MB of TRIANGLE_LIST markers), the template triangles once as a
shape_msgs/Mesh, and a reduced triangle list for RViz markers whose vertices are a gather of the full mesh."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from std_msgs.msg import Header

from .cdr import CdrWriter

POINT_STEP = 16
# sensor_msgs/PointField: name, offset, datatype (FLOAT32 = 7, UINT32 = 6), count
POINT_FIELDS = (("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("person", 12, 6, 1))


def point_cloud_cdr(header: Header, vertices: np.ndarray, person_ids: np.ndarray) -> bytes:
    """Serialized sensor_msgs/PointCloud2 of (N,V,3) vertices (metres, the header's frame), person-major, each point
    tagged with its person's id (track id when tracking, else the index in the frame); one row, dense."""
    n, v = vertices.shape[:2]
    points = np.empty((n, v, 4), "<f4")
    points[..., :3] = vertices
    points[..., 3].view("<u4")[:] = np.asarray(person_ids, np.uint32)[:, None]
    w = CdrWriter()
    w.header(header)
    w.u32(1, n * v)  # height, width
    w.u32(len(POINT_FIELDS))
    for name, offset, datatype, count in POINT_FIELDS:
        w.string(name)
        w.u32(offset)
        w.u8(datatype)
        w.u32(count)
    w.boolean(False)  # is_bigendian
    w.u32(POINT_STEP, POINT_STEP * n * v)  # point_step, row_step
    w.u32(points.nbytes)
    w.raw(points)
    w.boolean(True)  # is_dense
    return w.getvalue()


def template_mesh(faces: np.ndarray, vertices: np.ndarray):
    """shape_msgs/Mesh of the model's triangles over its rest-pose vertices (metres); the point cloud's points of one
    person, in order, are these vertices posed, so `faces` index them."""
    from geometry_msgs.msg import Point
    from shape_msgs.msg import Mesh, MeshTriangle

    mesh = Mesh()
    mesh.triangles = [MeshTriangle(vertex_indices=tri) for tri in np.asarray(faces, np.uint32)]
    mesh.vertices = [Point(x=x, y=y, z=z) for x, y, z in np.asarray(vertices, np.float64).tolist()]
    return mesh


@dataclass(frozen=True)
class ReducedMesh:
    """A display mesh: `faces` index the full mesh's vertices `keep` (so a frame's reduced vertices are one gather)."""

    keep: np.ndarray  # (V',) indices into the full mesh's vertices
    faces: np.ndarray  # (F',3) indices into `keep`

    def triangle_points(self, vertices: np.ndarray) -> np.ndarray:
        """(N,V,3) full-mesh vertices -> (N,3F',3) TRIANGLE_LIST points of the reduced mesh."""
        return vertices[:, self.keep[self.faces.reshape(-1)]]


def reduce_mesh(vertices: np.ndarray, faces: np.ndarray, triangles: int) -> ReducedMesh:
    """About `triangles` triangles of (V,3) rest-pose vertices / (F,3) faces by quadric decimation
    (fast-simplification), each reduced vertex snapped to its nearest full-mesh vertex; triangles <= 0 or >= F: the
    full mesh."""
    faces = np.asarray(faces, np.int64)
    if triangles <= 0 or triangles >= len(faces):
        return ReducedMesh(np.arange(len(vertices)), faces)
    import fast_simplification
    from scipy.spatial import cKDTree

    points, tris = fast_simplification.simplify(np.asarray(vertices, np.float32), faces.astype(np.int32),
                                                target_reduction=1.0 - triangles / len(faces))
    _, nearest = cKDTree(vertices).query(points)
    snapped = nearest[tris]
    snapped = snapped[(snapped[:, 0] != snapped[:, 1]) & (snapped[:, 1] != snapped[:, 2])
                      & (snapped[:, 0] != snapped[:, 2])]  # triangles that collapsed when snapping
    keep, local = np.unique(snapped, return_inverse=True)
    return ReducedMesh(keep, local.reshape(-1, 3))
