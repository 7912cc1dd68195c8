"""Index tables for the MHR70 keypoints and the 127-joint MHR skeleton (upstream order)."""
from __future__ import annotations

# The first 70 of the 308 keypoints regressed from MHR (upstream `metadata/mhr70.py`, same order).
MHR70_NAMES: tuple[str, ...] = (
    "nose", "left-eye", "right-eye", "left-ear", "right-ear",
    "left-shoulder", "right-shoulder", "left-elbow", "right-elbow", "left-hip", "right-hip",
    "left-knee", "right-knee", "left-ankle", "right-ankle",
    "left-big-toe-tip", "left-small-toe-tip", "left-heel",
    "right-big-toe-tip", "right-small-toe-tip", "right-heel",
    "right-thumb-tip", "right-thumb-first-joint", "right-thumb-second-joint", "right-thumb-third-joint",
    "right-index-tip", "right-index-first-joint", "right-index-second-joint", "right-index-third-joint",
    "right-middle-tip", "right-middle-first-joint", "right-middle-second-joint",
    "right-middle-third-joint",
    "right-ring-tip", "right-ring-first-joint", "right-ring-second-joint", "right-ring-third-joint",
    "right-pinky-tip", "right-pinky-first-joint", "right-pinky-second-joint", "right-pinky-third-joint",
    "right-wrist",
    "left-thumb-tip", "left-thumb-first-joint", "left-thumb-second-joint", "left-thumb-third-joint",
    "left-index-tip", "left-index-first-joint", "left-index-second-joint", "left-index-third-joint",
    "left-middle-tip", "left-middle-first-joint", "left-middle-second-joint", "left-middle-third-joint",
    "left-ring-tip", "left-ring-first-joint", "left-ring-second-joint", "left-ring-third-joint",
    "left-pinky-tip", "left-pinky-first-joint", "left-pinky-second-joint", "left-pinky-third-joint",
    "left-wrist",
    "left-olecranon", "right-olecranon", "left-cubital-fossa", "right-cubital-fossa",
    "left-acromion", "right-acromion", "neck",
)


def _finger_edges(wrist: int, first: int) -> list[tuple[int, int]]:
    """Edges wrist -> third joint -> second -> first -> tip for the 5 fingers starting at `first`."""
    edges = []
    for finger in range(5):
        tip = first + 4 * finger
        edges += [(wrist, tip + 3), (tip + 3, tip + 2), (tip + 2, tip + 1), (tip + 1, tip)]
    return edges


# Upstream `pose_info["skeleton_info"]`: 65 links as (MHR70 index, MHR70 index).
SKELETON_EDGES: tuple[tuple[int, int], ...] = tuple(
    [(13, 11), (11, 9), (14, 12), (12, 10), (9, 10), (5, 9), (6, 10), (5, 6), (5, 7), (6, 8),
     (7, 62), (8, 41)]
    + [(1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    + [(13, 15), (13, 16), (13, 17), (14, 18), (14, 19), (14, 20)]
    + _finger_edges(62, 42)
    + _finger_edges(41, 21)
)

# COCO-17 keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles) in MHR70 indices.
COCO17_FROM_MHR70: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 62, 41, 9, 10, 11, 12, 13, 14)

# The pelvis is the mean of these two MHR70 keypoints (left hip, right hip).
PELVIS_KEYPOINTS: tuple[int, int] = (9, 10)

# Display colour of each person (8-bit RGB, cycled): pictures and RViz markers use the same table.
PERSON_COLORS: tuple[tuple[int, int, int], ...] = (
    (80, 170, 255), (255, 140, 60), (110, 220, 110), (230, 90, 200), (240, 220, 80),
)

# `character_torch.skeleton.joint_names` / `joint_parents` of upstream `mhr_model.pt` (LOD1).
MHR_JOINT_NAMES: tuple[str, ...] = (
    "body_world", "root", "l_upleg", "l_lowleg", "l_foot", "l_talocrural", "l_subtalar",
    "l_transversetarsal", "l_ball", "l_lowleg_twist1_proc", "l_lowleg_twist2_proc",
    "l_lowleg_twist3_proc", "l_lowleg_twist4_proc", "l_upleg_twist0_proc", "l_upleg_twist1_proc",
    "l_upleg_twist2_proc", "l_upleg_twist3_proc", "l_upleg_twist4_proc", "r_upleg", "r_lowleg",
    "r_foot", "r_talocrural", "r_subtalar", "r_transversetarsal", "r_ball", "r_lowleg_twist1_proc",
    "r_lowleg_twist2_proc", "r_lowleg_twist3_proc", "r_lowleg_twist4_proc", "r_upleg_twist0_proc",
    "r_upleg_twist1_proc", "r_upleg_twist2_proc", "r_upleg_twist3_proc", "r_upleg_twist4_proc",
    "c_spine0", "c_spine1", "c_spine2", "c_spine3", "r_clavicle", "r_uparm", "r_lowarm",
    "r_wrist_twist", "r_wrist", "r_pinky0", "r_pinky1", "r_pinky2", "r_pinky3", "r_pinky_null",
    "r_ring1", "r_ring2", "r_ring3", "r_ring_null", "r_middle1", "r_middle2", "r_middle3",
    "r_middle_null", "r_index1", "r_index2", "r_index3", "r_index_null", "r_thumb0", "r_thumb1",
    "r_thumb2", "r_thumb3", "r_thumb_null", "r_lowarm_twist1_proc", "r_lowarm_twist2_proc",
    "r_lowarm_twist3_proc", "r_lowarm_twist4_proc", "r_uparm_twist0_proc", "r_uparm_twist1_proc",
    "r_uparm_twist2_proc", "r_uparm_twist3_proc", "r_uparm_twist4_proc", "l_clavicle", "l_uparm",
    "l_lowarm", "l_wrist_twist", "l_wrist", "l_pinky0", "l_pinky1", "l_pinky2", "l_pinky3",
    "l_pinky_null", "l_ring1", "l_ring2", "l_ring3", "l_ring_null", "l_middle1", "l_middle2",
    "l_middle3", "l_middle_null", "l_index1", "l_index2", "l_index3", "l_index_null", "l_thumb0",
    "l_thumb1", "l_thumb2", "l_thumb3", "l_thumb_null", "l_lowarm_twist1_proc",
    "l_lowarm_twist2_proc", "l_lowarm_twist3_proc", "l_lowarm_twist4_proc", "l_uparm_twist0_proc",
    "l_uparm_twist1_proc", "l_uparm_twist2_proc", "l_uparm_twist3_proc", "l_uparm_twist4_proc",
    "c_neck", "c_neck_twist1_proc", "c_neck_twist0_proc", "c_head", "c_jaw", "c_teeth",
    "c_jaw_null", "c_tongue0", "c_tongue1", "c_tongue2", "c_tongue3", "c_tongue4", "r_eye",
    "r_eye_null", "l_eye", "l_eye_null", "c_head_null",
)

MHR_JOINT_PARENTS: tuple[int, ...] = (
    -1, 0, 1, 2, 3, 4, 5, 6, 7, 3, 3, 3, 3, 2, 2, 2, 2, 2, 1, 18, 19, 20, 21, 22, 23, 19, 19, 19,
    19, 18, 18, 18, 18, 18, 1, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 42, 48, 49, 50,
    42, 52, 53, 54, 42, 56, 57, 58, 42, 60, 61, 62, 63, 40, 40, 40, 40, 39, 39, 39, 39, 39, 37, 74,
    75, 76, 77, 78, 79, 80, 81, 82, 78, 84, 85, 86, 78, 88, 89, 90, 78, 92, 93, 94, 78, 96, 97, 98,
    99, 76, 76, 76, 76, 75, 75, 75, 75, 75, 37, 110, 110, 110, 113, 114, 114, 114, 117, 118, 119,
    120, 113, 122, 113, 124, 113,
)
