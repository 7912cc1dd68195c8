"""Prediction heads of SAM 3D Body: MHR parameter head (exact upstream parameter decoding + MHR) and camera head.

Parameter layout of the 519-d pose vector: 6 global rot (6D) | 260 body cont | 45 shape | 28 scale PCA |
108 hands (2 x 54 cont) | 72 face (x 0). Names follow upstream (`head_pose.*`, `head_camera.*`).
"""
from __future__ import annotations

import math

import roma
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decoder import FFN
from .mhr import MHRBody

NUM_GLOBAL_6D = 6
NUM_BODY_CONT = 260
NUM_BODY_PARAMS = 133  # Euler / translation body params; the last 3 (jaw) are dropped before MHR
NUM_SHAPE = 45
NUM_SCALE = 28
NUM_HAND_CONT = 54  # per hand
NUM_HAND_PARAMS = 27  # per hand
NUM_FACE = 72
NUM_POSE = NUM_GLOBAL_6D + NUM_BODY_CONT + NUM_SHAPE + NUM_SCALE + 2 * NUM_HAND_CONT + NUM_FACE  # 519
NUM_CAM = 3  # (s, tx, ty)
NUM_POSE_PARAMS = 136  # 3 trans + 3 rot + 130 body (hands scattered in)
NUM_NONHAND_PARAMS = 145  # MHR params the hand decoder's head zeroes (`nonhand_param_idxs`)
NUM_BODY_MODEL_POSE = 130  # body params fed to MHR (the 133 without the jaw)
RIGHT_HAND_KEYPOINTS = range(21, 42)  # MHR70 keypoints the hand decoder's head keeps (the others are zeroed)

# Upstream index tables (sam_3d_body/models/modules/mhr_utils.py): where each decoded body value goes in the 133.
BODY_3DOF_PARAM_IDXS = (
    (0, 2, 4), (6, 8, 10), (12, 13, 14), (15, 16, 17), (18, 19, 20), (21, 22, 23), (24, 25, 26), (27, 28, 29),
    (34, 35, 36), (37, 38, 39), (44, 45, 46), (53, 54, 55), (64, 65, 66), (85, 69, 73), (86, 70, 79), (87, 71, 82),
    (88, 72, 76), (91, 92, 93), (112, 96, 100), (113, 97, 106), (114, 98, 109), (115, 99, 103), (130, 131, 132),
)
BODY_1DOF_PARAM_IDXS = (
    1, 3, 5, 7, 9, 11, 30, 31, 32, 33, 40, 41, 42, 43, 47, 48, 49, 50, 51, 52, 56, 57, 58, 59, 60, 61, 62, 63, 67, 68,
    74, 75, 77, 78, 80, 81, 83, 84, 89, 90, 94, 95, 101, 102, 104, 105, 107, 108, 110, 111, 116, 117, 118, 119, 120,
    121, 122, 123,
)
BODY_TRANS_PARAM_IDXS = (124, 125, 126, 127, 128, 129)
BODY_HAND_PARAM_IDXS = tuple(range(62, 116))  # hand DoFs inside the 133 (zeroed; hands come from the hand cont)
HAND_JOINT_DOFS = (3, 1, 1, 3, 1, 1, 3, 1, 1, 3, 1, 1, 2, 3, 1, 1)  # per hand joint, 27 in all


def _body_order() -> torch.Tensor:
    """Position in the 133 of each decoded value, in decode order [3-DoF eulers, 1-DoF angles, translations]."""
    flat = [i for triple in BODY_3DOF_PARAM_IDXS for i in triple] + list(BODY_1DOF_PARAM_IDXS)
    return torch.tensor(flat + list(BODY_TRANS_PARAM_IDXS))


def _hand_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hand cont indices of 3-DoF / 1-DoF values and param positions of their results."""
    cont3, cont1, par3, par1 = [], [], [], []
    c = p = 0
    for k in HAND_JOINT_DOFS:
        (cont3 if k == 3 else cont1).extend(range(c, c + 2 * k))
        (par3 if k == 3 else par1).extend(range(p, p + k))
        c += 2 * k
        p += k
    return tuple(torch.tensor(v) for v in (cont3, cont1, par3, par1))  # type: ignore[return-value]


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) = two columns -> (..., 3, 3) rotation by Gram-Schmidt (upstream `rot6d_to_rotmat`)."""
    return roma.special_gramschmidt(x.unflatten(-1, (2, 3)).transpose(-1, -2))


def rotmat_to_euler(convention: str, rotmat: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """Rotation (..., 3, 3) -> Tait-Bryan angles (..., 3) equal to `roma.rotmat_to_euler(convention, R)`, without
    host syncs: roma's quaternion algorithm (from SciPy), its masked assignments as `where`.

    Lower-case conventions are extrinsic, upper-case intrinsic (roma's rule).
    """
    extrinsic = convention.islower()
    i, j, k = ("xyz".index(axis) for axis in (convention if extrinsic else convention.lower()[::-1]))
    if i == k:
        raise ValueError(f"only Tait-Bryan conventions (three distinct axes) are supported, got {convention!r}")
    sign = (i - j) * (j - k) * (k - i) // 2
    q = roma.rotmat_to_unitquat(rotmat).unbind(-1)
    qk = q[k] if sign > 0 else -q[k]
    a, b, c, d = q[3] - q[j], q[i] + qk, q[j] + q[3], qk - q[i]
    mid = 2 * torch.atan2(torch.hypot(c, d), torch.hypot(a, b))
    case1 = mid.abs() <= epsilon
    case2 = (mid - math.pi).abs() <= epsilon
    half_sum = torch.atan2(b, a)
    half_diff = torch.atan2(d, c)
    # roma's angle_first / angle_third: the first and third angle of the sequence, in the output's order.
    first, third = (half_sum - half_diff, half_sum + half_diff) if extrinsic else (half_sum + half_diff,
                                                                                  half_sum - half_diff)
    degenerate_first = torch.where(case2, (-2 if extrinsic else 2) * half_diff, first)
    first = torch.where(case1, 2 * half_sum, degenerate_first)
    third = torch.where(case1 | case2, torch.zeros_like(mid), third)
    if sign < 0:  # roma negates the sequence's third angle
        first, third = (first, -third) if extrinsic else (-first, third)
    angles = torch.stack([first, mid - math.pi / 2, third], dim=-1)
    angles = torch.where(angles < -math.pi, angles + 2 * math.pi, angles)
    return torch.where(angles > math.pi, angles - 2 * math.pi, angles)


def intrinsic_zyx_euler(rotmat: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """`roma.rotmat_to_euler("ZYX", R)` without host syncs: how upstream turns the predicted global rotation into
    the three numbers it feeds MHR as XYZ Euler parameters."""
    return rotmat_to_euler("ZYX", rotmat, epsilon)


def xyz_euler_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) two columns -> MHR XYZ Euler (..., 3), R = Rz Ry Rx, with upstream's gimbal-lock fallback."""
    c1 = F.normalize(x[..., :3], dim=-1)
    c3 = F.normalize(torch.linalg.cross(c1, x[..., 3:], dim=-1), dim=-1)
    c2 = torch.linalg.cross(c3, c1, dim=-1)
    m = torch.stack([c1, c2, c3], dim=-1)
    sy = torch.sqrt(m[..., 0, 0] ** 2 + m[..., 1, 0] ** 2)
    singular = (sy < 1e-6).to(x.dtype)
    ex = torch.atan2(m[..., 2, 1], m[..., 2, 2]) * (1 - singular) + torch.atan2(-m[..., 1, 2], m[..., 1, 1]) * singular
    ey = torch.atan2(-m[..., 2, 0], sy)
    ez = torch.atan2(m[..., 1, 0], m[..., 0, 0]) * (1 - singular)
    return torch.stack([ex, ey, ez], dim=-1)


def _sincos_angle(pairs: torch.Tensor) -> torch.Tensor:
    """(..., 2k) as k (sin, cos) pairs -> (..., k) angles."""
    pairs = pairs.unflatten(-1, (-1, 2))
    return torch.atan2(pairs[..., 0], pairs[..., 1])


def body_params_to_cont(params: torch.Tensor) -> torch.Tensor:
    """(..., 133) Euler/translation body params -> (..., 260) cont (upstream `compact_model_params_to_cont_body`)."""
    order = _body_order().to(params.device)
    n3 = 3 * len(BODY_3DOF_PARAM_IDXS)
    n1 = len(BODY_1DOF_PARAM_IDXS)
    vals = params[..., order]
    rot = roma.euler_to_rotmat("xyz", vals[..., :n3].unflatten(-1, (-1, 3)))
    cont3 = torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1).flatten(-2)
    ang1 = vals[..., n3 : n3 + n1]
    cont1 = torch.stack([ang1.sin(), ang1.cos()], dim=-1).flatten(-2)
    return torch.cat([cont3, cont1, vals[..., n3 + n1 :]], dim=-1)


class BodyDecoding(nn.Module):
    """Index tables of the cont -> Euler conversions, as non-persistent buffers (move with the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("body_inverse_order", torch.argsort(_body_order()), persistent=False)
        cont3, cont1, par3, par1 = _hand_tables()
        self.register_buffer("hand_cont_3dof", cont3, persistent=False)
        self.register_buffer("hand_cont_1dof", cont1, persistent=False)
        self.register_buffer("hand_inverse_order", torch.argsort(torch.cat([par3, par1])), persistent=False)
        keep = torch.ones(NUM_BODY_PARAMS, dtype=torch.bool)
        keep[list(BODY_HAND_PARAM_IDXS)] = False
        keep[-3:] = False  # jaw
        self.register_buffer("body_keep_mask", keep, persistent=False)

    def body(self, cont: torch.Tensor) -> torch.Tensor:
        """(N,260) cont -> (N,133) params (upstream `compact_cont_to_model_params_body`); hands and jaw zeroed."""
        n3 = 6 * len(BODY_3DOF_PARAM_IDXS)
        n1 = 2 * len(BODY_1DOF_PARAM_IDXS)
        eul = xyz_euler_from_6d(cont[:, :n3].unflatten(-1, (-1, 6))).flatten(-2)
        vals = torch.cat([eul, _sincos_angle(cont[:, n3 : n3 + n1]), cont[:, n3 + n1 :]], dim=-1)
        vals = vals[:, self.body_inverse_order]
        return torch.where(self.body_keep_mask, vals, torch.zeros_like(vals))

    def hand(self, cont: torch.Tensor) -> torch.Tensor:
        """(..., 54) cont -> (..., 27) params (upstream `compact_cont_to_model_params_hand`)."""
        eul = xyz_euler_from_6d(cont[..., self.hand_cont_3dof].unflatten(-1, (-1, 6))).flatten(-2)
        vals = torch.cat([eul, _sincos_angle(cont[..., self.hand_cont_1dof])], dim=-1)
        return vals[..., self.hand_inverse_order]


class MHRHead(nn.Module):
    """Pose token -> 519-d MHR parameter vector (init + delta) -> decoded params -> MHR mesh, joints, keypoints.

    `hand_model`: the hand decoder's head (upstream `enable_hand_model`, key `head_pose_hand`): its prediction is
    wrist-centric (moved to the MHR root through `local_to_world_wrist`, `right_wrist_coords`, `root_coords`), the
    non-hand MHR params are zeroed and only the right-hand keypoints are kept.
    """

    def __init__(self, cfg: ModelConfig, mhr: nn.Module, hand_model: bool = False) -> None:
        super().__init__()
        m, dim = cfg.mhr, cfg.decoder.dim
        self.num_keypoints = m.num_keypoints
        self.hand_model = hand_model
        self.proj = FFN(dim, dim, NUM_POSE)
        num_scales = m.num_model_params - NUM_POSE_PARAMS
        # Checkpoint-carried tensors (upstream stores them as frozen parameters; same keys).
        self.register_buffer("joint_rotation", torch.zeros(m.num_joints, 3, 3))
        self.register_buffer("scale_mean", torch.zeros(num_scales))
        self.register_buffer("scale_comps", torch.zeros(NUM_SCALE, num_scales))
        self.register_buffer("faces", torch.zeros(m.num_faces, 3, dtype=torch.long))
        self.register_buffer("hand_pose_mean", torch.zeros(NUM_HAND_CONT))
        self.register_buffer("hand_pose_comps", torch.eye(NUM_HAND_CONT))
        self.register_buffer("hand_pose_comps_ori", torch.eye(NUM_HAND_CONT))
        self.register_buffer("hand_joint_idxs_left", torch.zeros(NUM_HAND_PARAMS, dtype=torch.long))
        self.register_buffer("hand_joint_idxs_right", torch.zeros(NUM_HAND_PARAMS, dtype=torch.long))
        self.register_buffer("keypoint_mapping",
                             torch.zeros(m.num_regressed_keypoints, m.num_vertices + m.num_joints))
        # Hand-decoder buffers (used when `hand_model`; present in every upstream MHR head).
        self.register_buffer("right_wrist_coords", torch.zeros(3))
        self.register_buffer("root_coords", torch.zeros(3))
        self.register_buffer("local_to_world_wrist", torch.zeros(3, 3))
        self.register_buffer("nonhand_param_idxs", torch.zeros(NUM_NONHAND_PARAMS, dtype=torch.long))
        self.decoding = BodyDecoding()
        self.register_buffer("axis_flip", torch.tensor([1.0, -1.0, -1.0]), persistent=False)  # MHR Y-up -> camera
        kept = torch.zeros(m.num_keypoints, 1, dtype=torch.bool)
        kept[RIGHT_HAND_KEYPOINTS] = True
        self.register_buffer("hand_keypoints", kept, persistent=False)
        self.mhr = mhr
        # Fast keypoints (set by `prepare_fast_keypoints`): the rig rows of the vertices the first K rows of
        # keypoint_mapping use, and those rows' weights over [those vertices; joints].
        self.register_module("keypoint_rig", None)
        self.register_buffer("keypoint_weights", None, persistent=False)
        self.register_load_state_dict_post_hook(_prepare_after_load)

    def prepare_fast_keypoints(self) -> None:
        """Index the vertices keypoint_mapping[:K] uses (once per weights: host sync) for keypoint-only MHR passes.

        Runs after every `load_state_dict`; call it after changing `keypoint_mapping` in place. A no-op when the
        body model is not an MHRBody (e.g. a meta-device shell).
        """
        if not isinstance(self.mhr, MHRBody) or self.keypoint_mapping.is_meta:
            return
        num_vertices = self.mhr.num_vertices
        rows = self.keypoint_mapping[: self.num_keypoints]
        index = rows[:, :num_vertices].ne(0).any(dim=0).nonzero().squeeze(1)
        self.keypoint_rig = self.mhr.vertex_subset(index)
        self.keypoint_weights = torch.cat([rows[:, index], rows[:, num_vertices:]], dim=1)

    def hand_params(self, hand_cont: torch.Tensor) -> torch.Tensor:
        """(N,108) predicted hand coefficients -> (N,2,27) left/right hand Euler params via mean + comps."""
        cont = self.hand_pose_mean + hand_cont.unflatten(-1, (2, NUM_HAND_CONT)) @ self.hand_pose_comps
        return self.decoding.hand(cont)

    def forward(self, token: torch.Tensor, init_pose: torch.Tensor,
                keypoints_only: bool = False) -> dict[str, torch.Tensor]:
        """token (N,dim), init_pose (1|N,519) -> decoded parameters, MHR outputs (m, camera axes) and raw pose.

        `keypoints_only` leaves out pred_vertices; once `prepare_fast_keypoints` ran, MHR then evaluates only the
        vertices the keypoints use (the other outputs are unchanged).
        """
        params = self.decode(self.proj(token) + init_pose)
        out = self.body(params["shape_params"], params["mhr_model_params"], params["expr_params"], keypoints_only)
        out.update(params)
        return out

    def decode(self, pred: torch.Tensor) -> dict[str, torch.Tensor]:
        """519-d prediction (N,519) -> decoded parameters, MHR model params and raw pose (upstream output names)."""
        global_6d, body_cont, shape, scale, hand, face = torch.split(
            pred, [NUM_GLOBAL_6D, NUM_BODY_CONT, NUM_SHAPE, NUM_SCALE, 2 * NUM_HAND_CONT, NUM_FACE], dim=1)
        face = face * 0
        global_rot = intrinsic_zyx_euler(rot6d_to_rotmat(global_6d))  # fed to MHR as its XYZ params, as upstream
        body = self.decoding.body(body_cont)
        return {
            "global_rot": global_rot,
            "body_pose_params": body,
            "hand_pose_params": hand,
            "scale_params": scale,
            "shape_params": shape,
            "expr_params": face,
            "mhr_model_params": self.model_params(global_rot, body, hand, scale),
            "pred_pose_raw": torch.cat([global_6d, body_cont], dim=1),
        }

    def model_params(self, global_rot: torch.Tensor, body: torch.Tensor, hand: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
        """Decoded global rot (N,3), body (N,133), hand coefficients (N,108), scale PCA (N,28) -> the MHR input
        (N,204) as upstream `mhr_forward` builds it: [trans * 10, global rot, body[:130]] with both hands scattered
        in, then the scales (global translation 0; the hand head's wrist-to-root move and non-hand zeroing)."""
        hands = self.hand_params(hand)
        trans = torch.zeros_like(global_rot)
        if self.hand_model:
            global_rot, trans = self.wrist_to_root(global_rot)
        pose = torch.cat([trans, global_rot, body[:, :NUM_BODY_MODEL_POSE]], dim=1)
        pose = pose.index_copy(1, self.hand_joint_idxs_left, hands[:, 0])
        pose = pose.index_copy(1, self.hand_joint_idxs_right, hands[:, 1])
        params = torch.cat([pose, self.scale_mean + scale @ self.scale_comps], dim=1)
        return params.index_fill(1, self.nonhand_param_idxs, 0.0) if self.hand_model else params

    def wrist_to_root(self, global_rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hand head: the wrist-frame rotation (N,3) -> MHR root rotation (XYZ Euler) and translation param (x 10)
        that put the right wrist at the origin (upstream `mhr_forward` with `enable_hand_model`)."""
        rot = rotmat_to_euler("xyz", roma.euler_to_rotmat("xyz", global_rot) @ self.local_to_world_wrist)
        arm = self.right_wrist_coords - self.root_coords
        trans = -(roma.euler_to_rotmat("xyz", rot) @ arm + self.root_coords)
        return rot, trans * 10

    def joint_rotations(self, model_params: torch.Tensor) -> torch.Tensor:
        """Global joint rotations (N,J,3,3) in the MHR frame of MHR model params: forward kinematics only (the
        `pred_global_rots` that `body` gives, without skinning)."""
        dtype = self.mhr.base_shape.dtype
        skel = self.mhr.skeleton_state(self.mhr.joint_parameters(model_params.to(dtype))).to(dtype)
        return roma.unitquat_to_rotmat(skel[..., 3:7])

    def body(self, shape: torch.Tensor, model_params: torch.Tensor, expr: torch.Tensor,
             keypoints_only: bool = False) -> dict[str, torch.Tensor]:
        """Decoded params: shape (N,45), model_params (N,P), expr (N,72) -> MHR vertices, keypoints, joints (m, camera
        axes) and global joint rotations (MHR frame); `keypoints_only` as in `forward`."""
        fast = self.keypoint_rig is not None
        subset = self.keypoint_rig if fast and keypoints_only else None
        if subset is None:
            verts_cm, skel = self.mhr(shape, model_params, expr)
        else:
            verts_cm, skel = self.mhr(shape, model_params, expr, vertices=subset)
        verts = verts_cm / 100.0
        joints = skel[..., :3] / 100.0
        global_rots = roma.unitquat_to_rotmat(skel[..., 3:7])
        if fast:
            kp_verts = verts if subset is not None else verts[:, self.keypoint_rig.index]
            keypoints = self.keypoint_weights @ torch.cat([kp_verts, joints], dim=1)
        else:
            keypoints = self.keypoint_mapping[: self.num_keypoints] @ torch.cat([verts, joints], dim=1)
        if self.hand_model:
            keypoints = torch.where(self.hand_keypoints, keypoints, torch.zeros_like(keypoints))
        flip = self.axis_flip  # positions only; rotations stay in the MHR frame, as upstream
        out = {} if keypoints_only else {"pred_vertices": verts * flip}
        out.update({
            "pred_keypoints_3d": keypoints * flip,
            "pred_joint_coords": joints * flip,
            "pred_global_rots": global_rots,
        })
        return out


def _prepare_after_load(head: MHRHead, _incompatible_keys: object) -> None:
    """load_state_dict post-hook: the keypoint vertex subset follows the loaded keypoint_mapping."""
    head.prepare_fast_keypoints()


class CameraHead(nn.Module):
    """Pose token -> crop camera (s, tx, ty) as init + delta (upstream `PerspectiveHead`, key `head_camera.proj`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = FFN(dim, dim, NUM_CAM)

    def forward(self, token: torch.Tensor, init_camera: torch.Tensor) -> torch.Tensor:
        return self.proj(token) + init_camera
