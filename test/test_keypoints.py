"""MHR70 / skeleton index tables, checked for consistency and against real SAM 3D Body output dumps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.keypoints import (
    COCO17_FROM_MHR70,
    MHR70_NAMES,
    MHR_JOINT_NAMES,
    MHR_JOINT_PARENTS,
    PELVIS_KEYPOINTS,
    SKELETON_EDGES,
)
from sam3d_body_ros.core.synthetic import synthetic_keypoint_mapping

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mhr"
DUMPS = [FIXTURES / f"img_subj{i:02d}.npz" for i in (0, 1)]  # a missing ../shared fails, never skips


def test_mhr70_names_and_edges() -> None:
    assert len(MHR70_NAMES) == 70 and len(set(MHR70_NAMES)) == 70
    assert len(SKELETON_EDGES) == 65 and len(set(SKELETON_EDGES)) == 65
    assert all(0 <= a < 70 and 0 <= b < 70 and a != b for a, b in SKELETON_EDGES)
    # Every keypoint is on the drawn skeleton except the arm landmarks and the neck.
    drawn = {k for edge in SKELETON_EDGES for k in edge}
    assert set(range(70)) - drawn == {63, 64, 65, 66, 67, 68, 69}
    named = {(MHR70_NAMES[a], MHR70_NAMES[b]) for a, b in SKELETON_EDGES}
    assert ("left-elbow", "left-wrist") in named and ("right-index-third-joint", "right-index-second-joint") in named
    assert ("right-wrist", "right-thumb-third-joint") in named


def test_coco17_and_pelvis() -> None:
    coco = ("nose", "left-eye", "right-eye", "left-ear", "right-ear", "left-shoulder", "right-shoulder",
            "left-elbow", "right-elbow", "left-wrist", "right-wrist", "left-hip", "right-hip", "left-knee",
            "right-knee", "left-ankle", "right-ankle")
    assert tuple(MHR70_NAMES[i] for i in COCO17_FROM_MHR70) == coco
    assert tuple(MHR70_NAMES[i] for i in PELVIS_KEYPOINTS) == ("left-hip", "right-hip")


def test_joint_table_is_a_tree_rooted_at_body_world() -> None:
    assert len(MHR_JOINT_NAMES) == 127 == len(MHR_JOINT_PARENTS) and len(set(MHR_JOINT_NAMES)) == 127
    assert MHR_JOINT_NAMES[0] == "body_world" and MHR_JOINT_PARENTS[0] == -1
    assert all(0 <= p < j for j, p in enumerate(MHR_JOINT_PARENTS) if j > 0)  # parents precede children
    assert MHR_JOINT_NAMES[MHR_JOINT_PARENTS[MHR_JOINT_NAMES.index("r_wrist")]] == "r_wrist_twist"
    assert MHR_JOINT_NAMES[MHR_JOINT_PARENTS[MHR_JOINT_NAMES.index("c_head")]] == "c_neck"
    for side in "lr":  # each finger chain ends in a null tip below the wrist
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            j = MHR_JOINT_NAMES.index(f"{side}_{finger}_null")
            while MHR_JOINT_NAMES[j] != f"{side}_wrist":
                j = MHR_JOINT_PARENTS[j]
                assert j > 0


def load_dump(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=True) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("path", DUMPS, ids=[p.stem for p in DUMPS])
def test_real_dumps_agree_with_the_tables(path: Path) -> None:
    dump = load_dump(path)
    joints, keypoints = dump["pred_joint_coords"], dump["pred_keypoints_3d"]
    assert joints.shape == (len(MHR_JOINT_NAMES), 3) and keypoints.shape == (len(MHR70_NAMES), 3)
    # Wrist keypoints sit on the MHR wrist joints (metres in the dumps).
    assert np.linalg.norm(keypoints[41] - joints[MHR_JOINT_NAMES.index("r_wrist")]) < 0.05
    assert np.linalg.norm(keypoints[62] - joints[MHR_JOINT_NAMES.index("l_wrist")]) < 0.05
    # body_world is the origin; the left hip keypoint is closer to l_upleg than to r_upleg.
    np.testing.assert_allclose(joints[0], 0.0, atol=1e-6)
    left, right = joints[MHR_JOINT_NAMES.index("l_upleg")], joints[MHR_JOINT_NAMES.index("r_upleg")]
    assert np.linalg.norm(keypoints[9] - left) < np.linalg.norm(keypoints[9] - right)
    # The root hangs ~0.92 m below body_world; every other bone is anatomically short (no permuted table).
    assert 0.85 < np.linalg.norm(joints[1]) < 1.0
    bones = np.linalg.norm(joints[2:] - joints[list(MHR_JOINT_PARENTS[2:])], axis=1)
    assert bones.max() < 0.6


@pytest.mark.parametrize("path", DUMPS, ids=[p.stem for p in DUMPS])
def test_synthetic_joint_anchored_keypoints_match_real_model(path: Path) -> None:
    """Every MHR70 row that the synthetic mapping puts on a single joint lies within 3.5 cm of it in real outputs."""
    dump = load_dump(path)
    mapping = synthetic_keypoint_mapping(TINY.mhr, seed=0)[:70]
    joint_rows = torch.nonzero(mapping[:, TINY.mhr.num_vertices :] == 1.0)
    assert len(joint_rows) >= 50
    for keypoint, joint in joint_rows.tolist():
        distance = np.linalg.norm(dump["pred_keypoints_3d"][keypoint] - dump["pred_joint_coords"][joint])
        assert distance < 0.035, (MHR70_NAMES[keypoint], MHR_JOINT_NAMES[joint], distance)
