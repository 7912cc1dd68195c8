"""Output messages of one frame: mesh/skeleton MarkerArray, joint/keypoint PoseArrays, Detection3DArray."""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseArray
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..core.keypoints import PELVIS_KEYPOINTS, SKELETON_EDGES

MESH_NS = "mesh"
SKELETON_NS = "skeleton"
# RGBA in [0, 1], one per person slot (cycled).
PERSON_COLORS = [(0.31, 0.67, 1.0), (1.0, 0.55, 0.24), (0.43, 0.86, 0.43), (0.9, 0.35, 0.78), (0.94, 0.86, 0.31)]
SKELETON_EDGE_ARRAY = np.array(SKELETON_EDGES, dtype=np.int64)


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, dtype=np.float64).tolist()]


def _color(slot: int, alpha: float) -> ColorRGBA:
    r, g, b = PERSON_COLORS[slot % len(PERSON_COLORS)]
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def mesh_marker(header: Header, slot: int, vertices: np.ndarray, faces: np.ndarray, alpha: float = 0.8) -> Marker:
    """TRIANGLE_LIST of a camera-frame mesh (m): 3 points per face, one colour per person slot."""
    m = Marker(header=header, ns=MESH_NS, id=slot, type=Marker.TRIANGLE_LIST, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = 1.0
    m.color = _color(slot, alpha)
    m.points = _points(vertices[faces.reshape(-1)])
    return m


def skeleton_marker(header: Header, slot: int, keypoints: np.ndarray, width: float = 0.01) -> Marker:
    """LINE_LIST over SKELETON_EDGES of camera-frame MHR70 keypoints (m)."""
    m = Marker(header=header, ns=SKELETON_NS, id=slot, type=Marker.LINE_LIST, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.scale.x = width
    m.color = _color(slot, 1.0)
    m.points = _points(keypoints[SKELETON_EDGE_ARRAY.reshape(-1)])
    return m


def delete_marker(header: Header, ns: str, slot: int) -> Marker:
    """DELETE of one (ns, id) slot."""
    return Marker(header=header, ns=ns, id=slot, action=Marker.DELETE)


def marker_array(header: Header, vertices: np.ndarray | None, faces: np.ndarray | None, keypoints: np.ndarray,
                 previous_slots: int, clear_all: bool = False) -> MarkerArray:
    """Markers of N persons (slot i -> id i in ns `mesh` and `skeleton`; no mesh when `vertices` is None),
    DELETEs for the slots [N, previous_slots) no longer used, and a leading DELETEALL if `clear_all`."""
    out = MarkerArray()
    if clear_all:
        out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    n = len(keypoints)
    for i in range(n):
        if vertices is not None:
            out.markers.append(mesh_marker(header, i, vertices[i], faces))
        out.markers.append(skeleton_marker(header, i, keypoints[i]))
    for i in range(n, previous_slots):
        out.markers += [delete_marker(header, MESH_NS, i), delete_marker(header, SKELETON_NS, i)]
    return out


def pose_array(header: Header, positions: np.ndarray, quats_xyzw: np.ndarray | None = None) -> PoseArray:
    """PoseArray of (..., 3) positions flattened person-major; identity orientation when no quaternions."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3).tolist()
    quat = (np.asarray(quats_xyzw, dtype=np.float64).reshape(-1, 4).tolist() if quats_xyzw is not None
            else [[0.0, 0.0, 0.0, 1.0]] * len(pos))
    out = PoseArray(header=header)
    poses = []
    for (x, y, z), (qx, qy, qz, qw) in zip(pos, quat):
        p = Pose()
        p.position.x, p.position.y, p.position.z = x, y, z
        p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = qx, qy, qz, qw
        poses.append(p)
    out.poses = poses
    return out


def bodies(header: Header, vertices: np.ndarray, keypoints: np.ndarray, ids: list[str], class_ids: list[str],
           scores: np.ndarray):
    """Detection3DArray: per person bbox = mesh AABB (camera frame), results[0] = input class/score with
    pose = pelvis (mean of the hip keypoints), id = input detection id."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    out = Detection3DArray(header=header)
    for i in range(len(vertices)):
        lo, hi = vertices[i].min(axis=0).astype(np.float64), vertices[i].max(axis=0).astype(np.float64)
        centre, size = (lo + hi) / 2.0, hi - lo
        pelvis = keypoints[i, list(PELVIS_KEYPOINTS)].mean(axis=0).astype(np.float64)
        det = Detection3D(header=header, id=ids[i])
        det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.center.position.z = centre.tolist()
        det.bbox.center.orientation.w = 1.0
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = size.tolist()
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = class_ids[i]
        hyp.hypothesis.score = float(scores[i])
        hyp.pose.pose.position.x, hyp.pose.pose.position.y, hyp.pose.pose.position.z = pelvis.tolist()
        hyp.pose.pose.orientation.w = 1.0
        det.results.append(hyp)
        out.detections.append(det)
    return out
