"""Parameter decoding tables and the MHR / camera heads."""
import math

import pytest
import roma
import torch

from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.heads import (
    BODY_1DOF_PARAM_IDXS,
    BODY_3DOF_PARAM_IDXS,
    BODY_HAND_PARAM_IDXS,
    BODY_TRANS_PARAM_IDXS,
    HAND_JOINT_DOFS,
    NUM_POSE,
    BodyDecoding,
    body_params_to_cont,
    intrinsic_zyx_euler,
    rot6d_to_rotmat,
    xyz_euler_from_6d,
)
from sam3d_body_ros.core.synthetic import random_head


def _cont_3dof(angles: torch.Tensor) -> torch.Tensor:
    """Independent encoder: XYZ Euler (R = Rz Ry Rx, roma extrinsic "xyz") -> first two columns (6)."""
    R = roma.euler_to_rotmat("xyz", angles)
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def _sincos(angle: torch.Tensor) -> torch.Tensor:
    return torch.stack([angle.sin(), angle.cos()], dim=-1)


def _body_cont(params: torch.Tensor) -> torch.Tensor:
    """Build the 260 cont from known 133 params with the documented layout [3-DoF 6D | 1-DoF sin,cos | trans]."""
    three = [_cont_3dof(params[:, list(t)]) for t in BODY_3DOF_PARAM_IDXS]
    one = [_sincos(params[:, i]) for i in BODY_1DOF_PARAM_IDXS]
    trans = params[:, list(BODY_TRANS_PARAM_IDXS)]
    return torch.cat(three + one + [trans], dim=1)


def test_body_tables_are_a_permutation_of_the_133_params():
    idx = [i for t in BODY_3DOF_PARAM_IDXS for i in t] + list(BODY_1DOF_PARAM_IDXS) + list(BODY_TRANS_PARAM_IDXS)
    assert sorted(idx) == list(range(133))
    assert 6 * len(BODY_3DOF_PARAM_IDXS) + 2 * len(BODY_1DOF_PARAM_IDXS) + len(BODY_TRANS_PARAM_IDXS) == 260


def test_body_cont_decodes_to_known_angles():
    g = torch.Generator().manual_seed(0)
    params = (torch.rand(4, 133, generator=g) * 2 - 1) * 1.4  # |pitch| < pi/2: unique XYZ Euler
    params[:, list(BODY_TRANS_PARAM_IDXS)] *= 5
    cont = _body_cont(params)
    assert cont.shape == (4, 260)
    decoded = BodyDecoding().body(cont)
    keep = torch.ones(133, dtype=torch.bool)
    keep[list(BODY_HAND_PARAM_IDXS)] = False
    keep[130:] = False
    torch.testing.assert_close(decoded[:, keep], params[:, keep], atol=2e-5, rtol=0)
    assert (decoded[:, ~keep] == 0).all()  # hand DoFs and jaw are zeroed as upstream
    torch.testing.assert_close(body_params_to_cont(params), cont, atol=1e-6, rtol=0)


def test_body_cont_decoding_ignores_6d_scale():
    """6D columns need not be unit length: Gram-Schmidt normalises them (as the network output is raw)."""
    params = torch.zeros(1, 133)
    params[0, 0], params[0, 2], params[0, 4] = 0.3, -0.2, 0.5
    cont = _body_cont(params)
    cont[:, :3] *= 2.5
    cont[:, 3:6] = cont[:, 3:6] * 0.7 + 0.1 * cont[:, :3]  # skewed second column, same plane
    torch.testing.assert_close(BodyDecoding().body(cont)[0, [0, 2, 4]], torch.tensor([0.3, -0.2, 0.5]), atol=1e-5,
                               rtol=0)


def test_hand_cont_decodes_to_known_angles():
    g = torch.Generator().manual_seed(1)
    angles = (torch.rand(3, 2, 27, generator=g) * 2 - 1) * 1.4
    parts, p = [], 0
    for k in HAND_JOINT_DOFS:
        if k == 3:
            parts.append(_cont_3dof(angles[..., p : p + 3]))
        else:
            parts.append(_sincos(angles[..., p : p + k]).flatten(-2))
        p += k
    cont = torch.cat(parts, dim=-1)
    assert cont.shape == (3, 2, 54)
    torch.testing.assert_close(BodyDecoding().hand(cont), angles, atol=2e-5, rtol=0)


def test_global_rotation_6d_to_rotmat_to_zyx_matches_roma():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 6, generator=g)
    R = rot6d_to_rotmat(x)
    torch.testing.assert_close(R, roma.special_gramschmidt(x.reshape(-1, 2, 3).transpose(1, 2)), atol=1e-6, rtol=0)
    torch.testing.assert_close(intrinsic_zyx_euler(R), roma.rotmat_to_euler("ZYX", R), atol=1e-6, rtol=0)
    locked = roma.euler_to_rotmat("ZYX", torch.tensor([[0.3, math.pi / 2, 0.2], [-1.0, -math.pi / 2, 0.4]]))
    torch.testing.assert_close(intrinsic_zyx_euler(locked), roma.rotmat_to_euler("ZYX", locked), atol=1e-6, rtol=0)


def test_xyz_euler_gimbal_lock_keeps_the_rotation():
    R = roma.euler_to_rotmat("xyz", torch.tensor([[0.4, math.pi / 2, 0.0], [0.0, -math.pi / 2, 0.0]]))
    e = xyz_euler_from_6d(torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1))
    torch.testing.assert_close(roma.euler_to_rotmat("xyz", e), R, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def head():
    return random_head(TINY, seed=3).eval()


def test_mhr_head_assembles_model_params_and_flips_outputs(head):
    hp = head.head_pose
    g = torch.Generator().manual_seed(4)
    token = torch.randn(2, TINY.decoder.dim, generator=g)
    init = head.init_pose.weight + 0.1 * torch.randn(1, NUM_POSE, generator=g)
    with torch.no_grad():
        hp.hand_pose_mean.add_(0.05 * torch.randn(54, generator=g))
        out = hp(token, init)
        pred = hp.proj(token) + init
    torch.testing.assert_close(out["pred_pose_raw"], pred[:, :266])
    shape, scale, hand, face = pred[:, 266:311], pred[:, 311:339], pred[:, 339:447], pred[:, 447:]
    torch.testing.assert_close(out["shape_params"], shape)
    torch.testing.assert_close(out["hand_pose_params"], hand)
    assert (out["expr_params"] == 0).all() and out["expr_params"].shape == face.shape
    mp = out["mhr_model_params"]
    assert (mp[:, :3] == 0).all()
    torch.testing.assert_close(mp[:, 3:6], out["global_rot"])
    torch.testing.assert_close(mp[:, 136:], hp.scale_mean + scale @ hp.scale_comps)
    hands = hp.decoding.hand(hp.hand_pose_mean + hand.view(2, 2, 54) @ hp.hand_pose_comps)
    torch.testing.assert_close(mp[:, hp.hand_joint_idxs_left], hands[:, 0])
    torch.testing.assert_close(mp[:, hp.hand_joint_idxs_right], hands[:, 1])
    body_slots = torch.ones(136, dtype=torch.bool)
    body_slots[:6] = False
    body_slots[hp.hand_joint_idxs_left] = False
    body_slots[hp.hand_joint_idxs_right] = False
    torch.testing.assert_close(mp[:, :136][:, body_slots], out["body_pose_params"][:, :130][:, body_slots[6:]])
    # MHR outputs: cm -> m, Y-up -> camera axes on positions only; keypoints regressed before the flip
    with torch.no_grad():
        verts_cm, skel = hp.mhr(shape, mp, face * 0)
    flip = torch.tensor([1.0, -1.0, -1.0])
    torch.testing.assert_close(out["pred_vertices"], verts_cm / 100 * flip)
    torch.testing.assert_close(out["pred_joint_coords"], skel[..., :3] / 100 * flip)
    kp = hp.keypoint_mapping[:70] @ torch.cat([verts_cm, skel[..., :3]], dim=1) / 100
    torch.testing.assert_close(out["pred_keypoints_3d"], kp * flip, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["pred_global_rots"], roma.unitquat_to_rotmat(skel[..., 3:7]))


def test_camera_head_is_init_plus_delta(head):
    token = torch.randn(3, TINY.decoder.dim)
    with torch.no_grad():
        torch.testing.assert_close(head.head_camera(token, head.init_camera.weight),
                                   head.head_camera.proj(token) + head.init_camera.weight)
