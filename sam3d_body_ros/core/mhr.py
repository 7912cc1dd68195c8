"""MHR (Momentum Human Rig) body model in plain PyTorch: rig tensors, asset loader, synthetic rig, forward.

Conventions (those of upstream's TorchScript `assets/mhr_model.pt`, built on pymomentum):
- units cm, Y up; a skeleton state is [t(3), q(4) xyzw, s(1)] per joint;
- joint parameters (J, 7) = parameter_transform @ [model_params, 0 * identity] are
  [tx, ty, tz, rx, ry, rz, log2 scale]; rotations are XYZ Euler, R = Rz(rz) Ry(ry) Rx(rx);
- local state: t = offset + (tx, ty, tz), q = prerotation * q_euler, s = 2^log2scale;
- FK: t_g = t_p + s_p R_p t, q_g = q_p q, s_g = s_p s;
- pose correctives: 6D (first two columns of R_euler minus identity) of joints 2..J-1 ->
  SparseLinear -> ReLU -> Linear -> (V, 3) offsets added to the rest shape before skinning;
- LBS: v = sum_k w_k (global_k * inverse_bind_pose_k)(v_rest).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import roma
import torch
import torch.nn.functional as F
from torch import nn

from sam3d_body_ros.core.config import MHRConfig
from sam3d_body_ros.core.keypoints import MHR_JOINT_NAMES, MHR_JOINT_PARENTS

# MHRRig tensor field -> dotted attribute path inside upstream's `mhr_model.pt`.
ASSET_TENSORS: dict[str, str] = {
    "base_shape": "character_torch.blend_shape.base_shape",
    "identity_vectors": "character_torch.blend_shape.shape_vectors",
    "expression_vectors": "face_expressions_model.shape_vectors",
    "parameter_transform": "character_torch.parameter_transform.parameter_transform",
    "joint_parents": "character_torch.skeleton.joint_parents",
    "joint_offsets": "character_torch.skeleton.joint_translation_offsets",
    "joint_prerotations": "character_torch.skeleton.joint_prerotations",
    "inverse_bind_pose": "character_torch.linear_blend_skinning.inverse_bind_pose",
    "skin_vert_indices": "character_torch.linear_blend_skinning.vert_indices_flattened",
    "skin_joint_indices": "character_torch.linear_blend_skinning.skin_indices_flattened",
    "skin_weights": "character_torch.linear_blend_skinning.skin_weights_flattened",
    "corrective_sparse_indices": "pose_correctives_model.pose_dirs_predictor.0.sparse_indices",
    "corrective_sparse_weights": "pose_correctives_model.pose_dirs_predictor.0.sparse_weight",
    "corrective_out_weight": "pose_correctives_model.pose_dirs_predictor.2.weight",
    "faces": "character_torch.mesh.faces",
}
# Attribute (a list of str) holding the joint names inside `mhr_model.pt`.
ASSET_JOINT_NAMES = "character_torch.skeleton.joint_names"

_INDEX_FIELDS = ("joint_parents", "skin_vert_indices", "skin_joint_indices", "corrective_sparse_indices", "faces")
# Joints 0 (body_world) and 1 (root) carry no pose-corrective features.
_NUM_GLOBAL_JOINTS = 2


class MHRAssetError(ValueError):
    """An MHR asset file is missing or malformed (the message names the file and the problem)."""


@dataclass
class MHRRig:
    """Every static tensor of an MHR character (float32 / int64, CPU); ASSET_TENSORS maps fields to upstream names."""

    base_shape: torch.Tensor  # (V, 3) cm
    identity_vectors: torch.Tensor  # (45, V, 3)
    expression_vectors: torch.Tensor  # (72, V, 3)
    parameter_transform: torch.Tensor  # (J*7, num_model_params + 45)
    joint_parents: torch.Tensor  # (J,) int64, -1 for the root
    joint_offsets: torch.Tensor  # (J, 3) cm, in the parent frame
    joint_prerotations: torch.Tensor  # (J, 4) xyzw
    inverse_bind_pose: torch.Tensor  # (J, 8) [t, q xyzw, s]
    skin_vert_indices: torch.Tensor  # (K,) int64
    skin_joint_indices: torch.Tensor  # (K,) int64
    skin_weights: torch.Tensor  # (K,)
    corrective_sparse_indices: torch.Tensor  # (2, nnz) int64: (hidden unit, input feature)
    corrective_sparse_weights: torch.Tensor  # (nnz,)
    corrective_out_weight: torch.Tensor  # (V*3, H)
    faces: torch.Tensor  # (F, 3) int64
    joint_names: tuple[str, ...]

    @property
    def num_vertices(self) -> int:
        return self.base_shape.shape[0]

    @property
    def num_joints(self) -> int:
        return self.joint_parents.shape[0]

    @property
    def num_identity(self) -> int:
        return self.identity_vectors.shape[0]

    @property
    def num_expr(self) -> int:
        return self.expression_vectors.shape[0]

    @property
    def num_model_params(self) -> int:
        return self.parameter_transform.shape[1] - self.num_identity

    @property
    def corrective_hidden(self) -> int:
        return self.corrective_out_weight.shape[1]

    def validate(self) -> None:
        """Raise ValueError naming the first field whose shape, dtype or values are inconsistent."""
        V, J = self.num_vertices, self.num_joints
        n_feat = 6 * (J - _NUM_GLOBAL_JOINTS)
        expected = {
            "base_shape": (V, 3),
            "identity_vectors": (self.num_identity, V, 3),
            "expression_vectors": (self.num_expr, V, 3),
            "parameter_transform": (J * 7, self.parameter_transform.shape[1]),
            "joint_parents": (J,),
            "joint_offsets": (J, 3),
            "joint_prerotations": (J, 4),
            "inverse_bind_pose": (J, 8),
            "skin_vert_indices": (self.skin_weights.shape[0],),
            "skin_joint_indices": (self.skin_weights.shape[0],),
            "corrective_sparse_indices": (2, self.corrective_sparse_weights.shape[0]),
            "corrective_out_weight": (V * 3, self.corrective_hidden),
            "faces": (self.faces.shape[0], 3),
        }
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, torch.Tensor):
                continue
            want = torch.int64 if f.name in _INDEX_FIELDS else torch.float32
            if value.dtype != want:
                raise ValueError(f"{f.name}: expected dtype {want}, got {value.dtype}")
        if len(self.joint_names) != J:
            raise ValueError(f"joint_names: expected {J} names, got {len(self.joint_names)}")
        if self.num_model_params <= 0:
            columns = self.parameter_transform.shape[1]
            raise ValueError(f"parameter_transform: {columns} columns leave no model parameters")
        _joint_depths(self.joint_parents.tolist())  # raises on a malformed tree
        ranges = {
            "skin_vert_indices": (self.skin_vert_indices, V),
            "skin_joint_indices": (self.skin_joint_indices, J),
            "faces": (self.faces, V),
            "corrective_sparse_indices[0]": (self.corrective_sparse_indices[0], self.corrective_hidden),
            "corrective_sparse_indices[1]": (self.corrective_sparse_indices[1], n_feat),
        }
        for name, (index, upper) in ranges.items():
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= upper):
                raise ValueError(f"{name}: indices must lie in [0, {upper})")


def _joint_depths(parents: list[int]) -> list[int]:
    """Depth of every joint in the kinematic tree (roots have parent -1 and depth 0)."""
    n = len(parents)
    depth = [-1] * n
    for start in range(n):
        chain, j = [], start
        while j >= 0 and depth[j] < 0:
            if j >= n or j in chain or len(chain) > n:
                raise ValueError(f"joint_parents: joint {start} has an invalid parent chain")
            chain.append(j)
            j = parents[j]
            if j >= n or j < -1:
                raise ValueError(f"joint_parents: parent index {j} out of range")
        base = -1 if j < 0 else depth[j]
        for k, joint in enumerate(reversed(chain)):
            depth[joint] = base + 1 + k
    return depth


def load_mhr_asset(path: str | Path) -> MHRRig:
    """Read the rig tensors of upstream's TorchScript `assets/mhr_model.pt`; raise MHRAssetError if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise MHRAssetError(f"MHR asset {path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet it is the asset's format
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError/ValueError/zipfile errors depending on the damage
        raise MHRAssetError(f"MHR asset {path}: not a TorchScript archive ({type(exc).__name__})") from exc

    def resolve(dotted: str, kind: str) -> object:
        obj: object = module
        for part in dotted.split("."):
            try:
                obj = getattr(obj, part)
            except (AttributeError, RuntimeError):
                raise MHRAssetError(f"MHR asset {path}: missing {kind} {dotted}") from None
        return obj

    values: dict[str, object] = {}
    for name, dotted in ASSET_TENSORS.items():
        tensor = resolve(dotted, "buffer")
        if not isinstance(tensor, torch.Tensor):
            raise MHRAssetError(f"MHR asset {path}: {dotted} is not a tensor")
        tensor = tensor.detach()
        values[name] = tensor.to(torch.int64 if name in _INDEX_FIELDS else torch.float32).contiguous()
    names = resolve(ASSET_JOINT_NAMES, "attribute")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise MHRAssetError(f"MHR asset {path}: {ASSET_JOINT_NAMES} is not a list of strings")
    rig = MHRRig(**values, joint_names=tuple(names))
    try:
        rig.validate()
    except ValueError as exc:
        raise MHRAssetError(f"MHR asset {path}: malformed rig: {exc}") from None
    return rig


def euler_xyz_to_quat(angles: torch.Tensor) -> torch.Tensor:
    """XYZ Euler angles (..., 3) -> unit quaternions (..., 4) xyzw of R = Rz Ry Rx (q = qz qy qx)."""
    c = torch.cos(0.5 * angles)
    s = torch.sin(0.5 * angles)
    cx, cy, cz = c.unbind(-1)
    sx, sy, sz = s.unbind(-1)
    return torch.stack(
        (
            sx * cy * cz - cx * sy * sz,
            cx * sy * cz + sx * cy * sz,
            cx * cy * sz - sx * sy * cz,
            cx * cy * cz + sx * sy * sz,
        ),
        dim=-1,
    )


def _affine(linear: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) linear part and (..., 3) translation -> (..., 4, 4) homogeneous transforms."""
    top = torch.cat((linear, translation[..., None]), dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat((top, bottom), dim=-2)


def _quat_left_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions (..., 4) xyzw -> (..., 4, 4) matrices L with L(q) p = q * p (Hamilton product)."""
    x, y, z, w = q.unbind(-1)
    rows = (w, -z, y, x, z, w, -x, y, -y, x, w, z, -x, -y, -z, w)
    return torch.stack(rows, dim=-1).view(*q.shape[:-1], 4, 4)


class MHRBody(nn.Module):
    """Batched MHR forward: (identity, model params, expression) -> (vertices cm, skeleton state).

    All rig tensors are non-persistent buffers (they come from the asset, never from model.ckpt).
    The forward has no host syncs and no loop over the batch; FK takes log2(tree depth) steps.
    `fk_dtype` is the dtype of FK and skinning transforms (upstream runs FK in float64). On the full
    synthetic rig at random poses, float32 FK moves vertices by at most 9e-5 cm versus float64 FK
    (test_mhr.py::test_fk_dtype_float64_agrees bounds it at 1e-3 cm), i.e. under a micrometre.
    """

    def __init__(self, rig: MHRRig, fk_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        rig.validate()
        self.joint_names = rig.joint_names
        self.fk_dtype = fk_dtype
        self.num_vertices = rig.num_vertices
        self.num_joints = rig.num_joints
        self.num_identity = rig.num_identity
        self.num_expr = rig.num_expr
        self.num_model_params = rig.num_model_params
        V, J, H = rig.num_vertices, rig.num_joints, rig.corrective_hidden

        def buffer(name: str, tensor: torch.Tensor) -> None:
            self.register_buffer(name, tensor, persistent=False)

        buffer("base_shape", rig.base_shape.reshape(V * 3))
        buffer("blend_directions", torch.cat((rig.identity_vectors, rig.expression_vectors)).reshape(-1, V * 3))
        buffer("parameter_transform", rig.parameter_transform[:, : self.num_model_params].contiguous())
        buffer("joint_offsets", rig.joint_offsets)
        buffer("joint_prerotations", rig.joint_prerotations)
        buffer("inverse_bind_pose", rig.inverse_bind_pose)
        skin = torch.zeros(V, J, dtype=torch.float32)
        skin.index_put_((rig.skin_vert_indices, rig.skin_joint_indices), rig.skin_weights, accumulate=True)
        buffer("skin_weights", skin)
        corrective_in = torch.zeros(H, 6 * (J - _NUM_GLOBAL_JOINTS), dtype=torch.float32)
        corrective_in.index_put_(tuple(rig.corrective_sparse_indices), rig.corrective_sparse_weights, accumulate=True)
        buffer("corrective_in_weight", corrective_in)
        buffer("corrective_out_weight", rig.corrective_out_weight)
        buffer("corrective_feature_offset", torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        buffer("faces", rig.faces)
        # FK by pointer doubling: step k composes each joint with its ancestor 2^k levels up (index J = identity,
        # the ancestor of roots), so ceil(log2(depth + 1)) steps replace one step per tree level.
        _joint_depths(rig.joint_parents.tolist())  # raises on a malformed tree
        ancestor = torch.cat((torch.where(rig.joint_parents < 0, J, rig.joint_parents), torch.tensor([J])))
        self._fk_steps: list[str] = []
        while bool((ancestor < J).any()):
            name = f"fk_ancestor_{len(self._fk_steps)}"
            buffer(name, ancestor)
            self._fk_steps.append(name)
            ancestor = ancestor[ancestor]

    def joint_parameters(self, model_params: torch.Tensor) -> torch.Tensor:
        """Model parameters (B, 204) -> joint parameters (B, J, 7) [t, XYZ Euler, log2 scale]."""
        return (model_params @ self.parameter_transform.T).view(model_params.shape[0], self.num_joints, 7)

    def forward_kinematics(self, joint_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint parameters (B, J, 7) -> world transforms (B, J, 4, 4) [s R | t] and skeleton state (B, J, 8).

        Both are in fk_dtype. Each joint carries two 4x4 matrices through the tree: its similarity transform
        and the left-multiplication matrix of its quaternion, so the state's quaternion is the same product
        q_parent * q_local (same sign) that upstream computes. Pointer doubling: after step k each joint holds
        the product of the locals of its 2^(k+1) nearest ancestors-or-self (4 steps for MHR's depth 15).
        """
        jp = joint_params.to(self.fk_dtype)
        q_local = roma.quat_product(self.joint_prerotations.to(jp.dtype), euler_xyz_to_quat(jp[..., 3:6]))
        q_local = F.normalize(q_local, dim=-1)
        linear = roma.unitquat_to_rotmat(q_local) * torch.exp2(jp[..., 6:7])[..., None]
        translation = jp[..., :3] + self.joint_offsets.to(jp.dtype)
        local = torch.stack((_affine(linear, translation), _quat_left_matrix(q_local)), dim=2)  # (B, J, 2, 4, 4)
        identity = torch.eye(4, dtype=jp.dtype, device=jp.device).expand(local.shape[0], 1, 2, 4, 4)
        world = torch.cat((local, identity), dim=1)
        for name in self._fk_steps:
            world = _matmul4(world.index_select(1, getattr(self, name)), world)
        transform = world[:, : self.num_joints, 0]
        scale = transform[..., :3, 0].norm(dim=-1, keepdim=True)
        return transform, torch.cat((transform[..., :3, 3], world[:, : self.num_joints, 1, :, 3], scale), dim=-1)

    def skeleton_state(self, joint_params: torch.Tensor) -> torch.Tensor:
        """Joint parameters (B, J, 7) -> global skeleton state (B, J, 8) [t cm, q xyzw, s] in fk_dtype."""
        return self.forward_kinematics(joint_params)[1]

    def pose_correctives(self, joint_params: torch.Tensor, vertices: VertexSubset | None = None) -> torch.Tensor:
        """Joint parameters (B, J, 7) -> corrective vertex offsets (B, V, 3) in cm (of `vertices` only if given)."""
        rig = self if vertices is None else vertices
        rot = roma.unitquat_to_rotmat(euler_xyz_to_quat(joint_params[:, _NUM_GLOBAL_JOINTS:, 3:6]))
        features = torch.cat((rot[..., :, 0], rot[..., :, 1]), dim=-1) - self.corrective_feature_offset
        hidden = F.relu(F.linear(features.flatten(1), self.corrective_in_weight))
        return F.linear(hidden, rig.corrective_out_weight).view(joint_params.shape[0], rig.num_vertices, 3)

    def skin(self, world: torch.Tensor, rest_vertices: torch.Tensor,
             vertices: VertexSubset | None = None) -> torch.Tensor:
        """Linear blend skinning of rest vertices (B, V, 3) by world transforms (B, J, 4, 4) -> (B, V, 3).

        With `vertices`, rest_vertices (B, S, 3) are those of the subset. The per-vertex 3x4 transform is applied as
        broadcast multiply-adds (a batched matmul of B*V tiny matrices runs as slow small-tile GEMMs on the GPU).
        """
        rig = self if vertices is None else vertices
        bind = self.inverse_bind_pose.to(world.dtype)
        bind_linear = roma.unitquat_to_rotmat(F.normalize(bind[:, 3:7], dim=-1)) * bind[:, 7:8, None]
        skinning = _matmul4(world, _affine(bind_linear, bind[:, :3]))[..., :3, :]  # (B, J, 3, 4)
        skinning = skinning.to(rest_vertices.dtype)
        blended = (rig.skin_weights @ skinning.flatten(2)).view(*rest_vertices.shape, 4)  # (B, V, 3, 4)
        return (blended[..., :3] * rest_vertices[..., None, :]).sum(-1) + blended[..., 3]

    def vertex_subset(self, index: torch.Tensor) -> VertexSubset:
        """The rig rows of vertices `index` (S,) int64, for `forward(..., vertices=...)` (built once, not per call)."""
        return VertexSubset(self, index)

    def forward(
        self,
        identity: torch.Tensor,
        model_params: torch.Tensor,
        expr: torch.Tensor | None = None,
        apply_correctives: bool = True,
        vertices: VertexSubset | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(identity (B|1, 45), model_params (B, 204), expr (B|1, 72) | None) -> (verts (B,V,3) cm, skel (B,J,8)).

        With `vertices` (from `vertex_subset`), blend shapes, correctives and skinning run on those S vertices only
        and verts is (B,S,3): the same values as the full mesh's rows `vertices.index`, at a fraction of the cost.
        """
        rig = self if vertices is None else vertices
        dtype = self.base_shape.dtype
        batch = model_params.shape[0]
        model_params = model_params.to(dtype)
        if expr is None:
            expr = model_params.new_zeros(batch, self.num_expr)
        coeffs = torch.cat((identity.to(dtype).expand(batch, -1), expr.to(dtype).expand(batch, -1)), dim=1)
        rest = (rig.base_shape + coeffs @ rig.blend_directions).view(batch, rig.num_vertices, 3)
        joint_params = self.joint_parameters(model_params)
        world, skel_state = self.forward_kinematics(joint_params)
        if apply_correctives:
            rest = rest + self.pose_correctives(joint_params, vertices)
        return self.skin(world, rest, vertices), skel_state.to(dtype)


class VertexSubset(nn.Module):
    """The vertex-dependent rig tensors of MHRBody restricted to vertices `index` (non-persistent buffers).

    Rows of the rest shape, blend shapes, skin weights and of the pose-corrective output layer (3 per vertex), so an
    MHR evaluation on the subset reads S/V of those tensors.
    """

    def __init__(self, body: MHRBody, index: torch.Tensor) -> None:
        super().__init__()
        index = index.to(device=body.base_shape.device, dtype=torch.int64)
        rows = (index[:, None] * 3 + torch.arange(3, device=index.device)).reshape(-1)  # x, y, z rows per vertex
        self.num_vertices = index.shape[0]
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("base_shape", body.base_shape[rows], persistent=False)
        self.register_buffer("blend_directions", body.blend_directions[:, rows].contiguous(), persistent=False)
        self.register_buffer("skin_weights", body.skin_weights[index], persistent=False)
        self.register_buffer("corrective_out_weight", body.corrective_out_weight[rows], persistent=False)


def _matmul4(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Products of stacks of 4x4 matrices (..., 4, 4) as broadcast multiply-adds (batched 4x4 GEMMs are slow on GPU)."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)

# ---------------------------------------------------------------------------------------------
# Synthetic rig: same structure and conventions as the real asset, deterministic, any size.
# ---------------------------------------------------------------------------------------------

_JOINT = {name: index for index, name in enumerate(MHR_JOINT_NAMES)}
_X, _Y, _Z = torch.eye(3, dtype=torch.float64)

# 22 three-DoF joints, 58 one-DoF joints (joint, Euler channel 3..5) and 6 translation DoFs fill the
# 130 body pose parameters after the 6 root parameters (global translation, global rotation).
_THREE_DOF = (
    "c_spine0", "c_spine1", "c_spine2", "c_spine3", "c_neck", "c_head", "l_upleg", "r_upleg",
    "l_talocrural", "r_talocrural", "l_clavicle", "r_clavicle", "l_uparm", "r_uparm", "l_wrist", "r_wrist",
    "l_thumb0", "r_thumb0", "l_thumb1", "r_thumb1", "l_pinky0", "r_pinky0",
)
_ONE_DOF = tuple(
    [(f"{side}_{name}", 5) for side in "lr"
     for name in ("lowleg", "lowarm", "subtalar", "transversetarsal", "ball")]
    + [(f"{side}_wrist_twist", 3) for side in "lr"]
    + [(f"{side}_{finger}{k}", axis) for side in "lr" for finger in ("index", "middle", "ring", "pinky")
       for k, axis in ((1, 5), (1, 4), (2, 5), (3, 5))]
    + [(f"{side}_thumb{k}", 5) for side in "lr" for k in (2, 3)]
    + [(f"{side}_eye", axis) for side in "lr" for axis in (3, 4)]
    + [(f"c_tongue{k}", 3) for k in range(5)] + [("c_teeth", 3)]
)
_TRANSLATION_DOF = (
    ("l_clavicle", 1), ("l_clavicle", 2), ("r_clavicle", 1), ("r_clavicle", 2), ("c_jaw", 1), ("c_jaw", 2),
)

# Tube path through the body (consecutive joints are ancestor/descendant), radii (lateral, sagittal) cm.
_LEFT_ARM = (
    "l_clavicle", "l_uparm", "l_lowarm", "l_wrist", "l_middle1", "l_middle2", "l_middle3", "l_middle_null",
)
_RIGHT_ARM = tuple(name.replace("l_", "r_", 1) for name in _LEFT_ARM)
_BODY_PATH = (
    ("l_ball", "l_transversetarsal", "l_subtalar", "l_foot", "l_lowleg", "l_upleg", "root",
     "c_spine0", "c_spine1", "c_spine2", "c_spine3", "c_neck", "c_head", "c_head_null", "c_head", "c_neck",
     "c_spine3")
    + _LEFT_ARM + _LEFT_ARM[-2::-1] + ("c_spine3",) + _RIGHT_ARM + _RIGHT_ARM[-2::-1]
    + ("c_spine3", "c_spine2", "c_spine1", "c_spine0", "root", "r_upleg", "r_lowleg", "r_foot", "r_subtalar",
       "r_transversetarsal", "r_ball")
)
_RADII = {
    "ball": (4.0, 1.8), "transversetarsal": (4.5, 3.0), "subtalar": (4.0, 4.5), "foot": (4.0, 4.0),
    "lowleg": (5.5, 5.5), "upleg": (8.5, 8.5), "root": (16.0, 11.0), "c_spine0": (15.0, 10.5),
    "c_spine1": (14.0, 10.0), "c_spine2": (15.5, 10.5), "c_spine3": (16.0, 10.5), "c_neck": (5.5, 5.5),
    "c_head": (8.0, 10.0), "c_head_null": (3.0, 3.0), "clavicle": (6.0, 5.5), "uparm": (5.0, 5.0),
    "lowarm": (4.2, 4.2), "wrist": (3.0, 2.2), "middle1": (4.2, 1.5), "middle2": (1.0, 1.0),
    "middle3": (0.9, 0.9), "middle_null": (0.5, 0.5),
}
# MHR70 keypoints placed on joints (where real SAM 3D Body outputs put them within ~3 cm); each finger's
# tip, first, second and third joint keypoints are its _null, 3, 2 and 1 joints. The others sit on the
# mesh near a target point (below).
_KEYPOINT_JOINTS = {
    1: "l_eye_null", 2: "r_eye_null", 5: "l_uparm", 6: "r_uparm", 7: "l_lowarm", 8: "r_lowarm",
    9: "l_upleg", 10: "r_upleg", 11: "l_lowleg", 12: "r_lowleg", 13: "l_talocrural", 14: "r_talocrural",
    41: "r_wrist", 62: "l_wrist", 69: "c_neck",
    **{
        first + 4 * f + k: f"{side}_{finger}{suffix}"
        for side, first in (("r", 21), ("l", 42))
        for f, finger in enumerate(("thumb", "index", "middle", "ring", "pinky"))
        for k, suffix in enumerate(("_null", "3", "2", "1"))
    },
}
# (anchor joint, offset cm with x mirrored for right-side keypoints).
_KEYPOINT_SURFACE = {
    0: ("c_head", (0.0, 3.0, 10.0)), 3: ("c_head", (8.0, 4.0, -1.0)), 4: ("c_head", (-8.0, 4.0, -1.0)),
    15: ("l_ball", (-1.5, 0.0, 4.0)), 16: ("l_ball", (3.0, 0.0, 2.0)), 17: ("l_subtalar", (0.0, -3.0, -4.0)),
    18: ("r_ball", (1.5, 0.0, 4.0)), 19: ("r_ball", (-3.0, 0.0, 2.0)), 20: ("r_subtalar", (0.0, -3.0, -4.0)),
    63: ("l_lowarm", (0.0, 0.0, -4.5)), 64: ("r_lowarm", (0.0, 0.0, -4.5)),
    65: ("l_lowarm", (0.0, 0.0, 4.5)), 66: ("r_lowarm", (0.0, 0.0, 4.5)),
    67: ("l_uparm", (0.0, 5.0, 0.0)), 68: ("r_uparm", (0.0, 5.0, 0.0)),
}


def _vec(*xyz: float) -> torch.Tensor:
    """A float64 3-vector."""
    return torch.tensor(xyz, dtype=torch.float64)


def _rest_joint_positions() -> torch.Tensor:
    """Rest positions (127, 3) float64 of a ~172 cm A-posed person: cm, Y up, facing +Z, left side at +X."""
    t = _vec
    p: dict[str, torch.Tensor] = {
        "body_world": t(0, 0, 0), "root": t(0, 92.4, 0), "c_spine0": t(0, 100, -1.5),
        "c_spine1": t(0, 111, -2.5), "c_spine2": t(0, 123, -3), "c_spine3": t(0, 135, -2.5),
        "c_neck": t(0, 147, -3.5), "c_head": t(0, 156, -1.5), "c_jaw": t(0, 157, 1.5), "c_teeth": t(0, 155, 8.5),
        "c_jaw_null": t(0, 149, 9), "c_head_null": t(0, 172.5, -1),
    }
    p["c_neck_twist0_proc"] = torch.lerp(p["c_neck"], p["c_head"], 1 / 3)
    p["c_neck_twist1_proc"] = torch.lerp(p["c_neck"], p["c_head"], 2 / 3)
    for k in range(5):
        p[f"c_tongue{k}"] = t(0, 154, 3 + 1.3 * k)
    arm = F.normalize(t(48, -42, 0), dim=0)
    thumb = F.normalize(arm + 0.9 * _Z, dim=0)
    for side, sign in (("l", 1.0), ("r", -1.0)):
        q: dict[str, torch.Tensor] = {
            "upleg": t(9.5, 87, 0), "lowleg": t(10, 48, 1.5), "foot": t(10.5, 8.5, -3),
            "talocrural": t(10.5, 7.5, -3), "subtalar": t(10.5, 5, -4), "transversetarsal": t(10.5, 4, 4),
            "ball": t(11, 2, 11), "clavicle": t(2.5, 143, 1), "uparm": t(17, 142, -3),
            "eye": t(3.2, 163, 6.5), "eye_null": t(3.2, 163, 9.5),
        }
        q["lowarm"] = q["uparm"] + 27 * arm - _Z
        q["wrist"] = q["wrist_twist"] = q["lowarm"] + 24 * arm + 1.5 * _Z
        q["pinky0"] = q["wrist"] + 3.0 * arm - 1.6 * _Z
        fingers = {"index": (9.4, 2.4, (4.0, 2.5, 2.0)), "middle": (9.8, 0.8, (4.5, 2.8, 2.1)),
                   "ring": (9.4, -0.8, (4.2, 2.6, 2.0)), "pinky": (8.8, -2.4, (3.3, 2.0, 1.8))}
        for finger, (reach, spread, lengths) in fingers.items():
            joint = q["wrist"] + reach * arm + spread * _Z
            for name, length in zip((f"{finger}1", f"{finger}2", f"{finger}3", f"{finger}_null"), (*lengths, 0.0)):
                q[name] = joint
                joint = joint + length * arm
        joint = q["thumb0"] = q["wrist"] + 1.5 * arm + 1.8 * _Z
        for name, length in (("thumb1", 3.2), ("thumb2", 3.0), ("thumb3", 2.7), ("thumb_null", 2.2)):
            joint = q[name] = joint + length * thumb
        for k in range(5):
            q[f"uparm_twist{k}_proc"] = torch.lerp(q["uparm"], q["lowarm"], k / 5)
            q[f"upleg_twist{k}_proc"] = torch.lerp(q["upleg"], q["lowleg"], k / 5)
        for k in range(1, 5):
            q[f"lowarm_twist{k}_proc"] = torch.lerp(q["lowarm"], q["wrist"], k / 5)
            q[f"lowleg_twist{k}_proc"] = torch.lerp(q["lowleg"], q["foot"], k / 5)
        mirror = t(sign, 1, 1)
        p.update({f"{side}_{name}": position * mirror for name, position in q.items()})
    return torch.stack([p[name] for name in MHR_JOINT_NAMES])


def _rotation_from_x(direction: torch.Tensor) -> torch.Tensor:
    """The smallest rotation (3, 3) taking the x axis onto the unit vector `direction`."""
    c = float(direction[0])
    if c < -1 + 1e-9:
        return torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))
    v = torch.linalg.cross(_X, direction)
    vx = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + vx + vx @ vx / (1 + c)


def _rest_frames(positions: torch.Tensor) -> torch.Tensor:
    """Rest global rotations (J, 3, 3): each joint's x axis points along its bone (to its farthest real child)."""
    parents = MHR_JOINT_PARENTS
    frames = torch.empty(len(parents), 3, 3, dtype=torch.float64)
    directions = torch.empty(len(parents), 3, dtype=torch.float64)
    for j, parent in enumerate(parents):
        children = [c for c, p in enumerate(parents) if p == j and not MHR_JOINT_NAMES[c].endswith("_proc")]
        offsets = [positions[c] - positions[j] for c in children]
        offsets = [o for o in offsets if float(o.norm()) > 1e-6]
        if offsets:
            direction = max(offsets, key=lambda o: float(o.norm()))
        elif parent >= 0 and float((positions[j] - positions[parent]).norm()) > 1e-6:
            direction = positions[j] - positions[parent]
        else:
            direction = directions[parent] if parent >= 0 else _Y
        directions[j] = F.normalize(direction, dim=0)
        frames[j] = torch.eye(3, dtype=torch.float64) if j == 0 else _rotation_from_x(directions[j])
    return frames


@dataclass
class _SyntheticGeometry:
    """Deterministic rest geometry of the synthetic body at one mesh size."""

    joints: torch.Tensor  # (J, 3) rest joint positions
    frames: torch.Tensor  # (J, 3, 3) rest global rotations
    vertices: torch.Tensor  # (V, 3)
    normals: torch.Tensor  # (V, 3)
    faces: torch.Tensor  # (F, 3) int64
    skin_joints: torch.Tensor  # (V, 3) int64
    skin_weights: torch.Tensor  # (V, 3)


def _uv_grid(num_vertices: int) -> tuple[int, int]:
    """Split V - 2 into rings x segments (rings >= segments, as close to square as the factors allow)."""
    n = num_vertices - 2
    segments = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0) if n > 0 else 0
    if segments < 3:
        raise ValueError(f"num_vertices={num_vertices}: V - 2 must factor as rings x segments with both >= 3")
    return n // segments, segments


def _point_segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distances (P, S) from points (P, 3) to segments a (S, 3) -> b (S, 3)."""
    ab = b - a
    u = (((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (points[:, None] - (a + u[..., None] * ab)).norm(dim=-1)


def _is_ancestor(ancestor: int, joint: int) -> bool:
    """Whether `ancestor` lies on the parent chain of `joint`."""
    while joint >= 0:
        if joint == ancestor:
            return True
        joint = MHR_JOINT_PARENTS[joint]
    return False


def _synthetic_geometry(cfg: MHRConfig) -> _SyntheticGeometry:
    """A closed UV-sphere mesh (F = 2V - 4) swept along a path through the skeleton, skinned to its bones."""
    if cfg.num_faces != 2 * cfg.num_vertices - 4:
        raise ValueError(f"num_faces={cfg.num_faces} must equal 2 * num_vertices - 4 for a closed genus-0 mesh")
    if (cfg.num_joints, cfg.num_identity) != (len(MHR_JOINT_NAMES), 45):
        raise ValueError(f"the synthetic rig has MHR's {len(MHR_JOINT_NAMES)} joints and 45 identity components")
    rings, segments = _uv_grid(cfg.num_vertices)
    joints = _rest_joint_positions()
    frames = _rest_frames(joints)
    path_index = torch.tensor([_JOINT[n] for n in _BODY_PATH])
    path = joints[path_index]
    radii = torch.tensor([_RADII.get(n, _RADII.get(n[2:], (3.0, 3.0))) for n in _BODY_PATH], dtype=torch.float64)
    seg_len = (path[1:] - path[:-1]).norm(dim=-1)
    cum = torch.cat((torch.zeros(1, dtype=torch.float64), seg_len.cumsum(0)))
    arc = (torch.arange(rings, dtype=torch.float64) + 0.5) / rings * cum[-1]
    seg = (torch.searchsorted(cum, arc, right=True) - 1).clamp(0, len(seg_len) - 1)
    u = ((arc - cum[seg]) / seg_len[seg]).unsqueeze(-1)
    centers = torch.lerp(path[seg], path[seg + 1], u)
    radius = torch.lerp(radii[seg], radii[seg + 1], u)
    tangent = F.normalize(path[seg + 1] - path[seg], dim=-1)
    reference = torch.where((tangent @ _Z).abs()[:, None] > 0.8, _Y, _Z)
    sagittal = F.normalize(reference - (reference * tangent).sum(-1, keepdim=True) * tangent, dim=-1)
    lateral = torch.linalg.cross(sagittal, tangent)  # lateral x sagittal = tangent: rings run counter-clockwise
    theta = torch.arange(segments, dtype=torch.float64) / segments * 2 * math.pi
    radial = torch.cos(theta)[None, :, None] * lateral[:, None] + torch.sin(theta)[None, :, None] * sagittal[:, None]
    ring_points = centers[:, None] + radial * torch.stack(
        (radius[:, 0:1] * torch.cos(theta), radius[:, 1:2] * torch.sin(theta)), -1
    ).norm(dim=-1)[..., None]
    start = centers[0] - tangent[0] * 0.5 * radius[0].min()
    end = centers[-1] + tangent[-1] * 0.5 * radius[-1].min()
    vertices = torch.cat((start[None], ring_points.reshape(-1, 3), end[None]))
    normals = torch.cat((-tangent[:1], radial.reshape(-1, 3), tangent[-1:]))

    ring = torch.arange(rings * segments).view(rings, segments) + 1
    nxt = torch.roll(ring, -1, dims=1)
    last = rings * segments + 1
    cap_start = torch.stack((torch.zeros(segments, dtype=torch.int64), nxt[0], ring[0]), -1)
    tube = torch.stack(
        (torch.stack((ring[:-1], nxt[:-1], nxt[1:]), -1), torch.stack((ring[:-1], nxt[1:], ring[1:]), -1)), 2
    ).reshape(-1, 3)
    cap_end = torch.stack((torch.full((segments,), last), ring[-1], nxt[-1]), -1)
    faces = torch.cat((cap_start, tube, cap_end))

    # Bones = path segments owned by their ancestor joint; ring centres get weights by distance to bones.
    pairs = {}
    for a, b in zip(path_index[:-1].tolist(), path_index[1:].tolist()):
        owner, other = (a, b) if _is_ancestor(a, b) else (b, a)
        pairs[(owner, other)] = None
    owners = torch.tensor([o for o, _ in pairs])
    distance = _point_segment_distance(centers, joints[owners], joints[torch.tensor([c for _, c in pairs])])
    per_joint = torch.zeros(rings, len(MHR_JOINT_NAMES), dtype=torch.float64)
    per_joint.index_add_(1, owners, torch.exp(-((distance / 4.0) ** 2)))
    weight, joint = per_joint.topk(3, dim=1)
    weight = weight / weight.sum(-1, keepdim=True)
    ring_of_vertex = torch.cat((torch.zeros(1, dtype=torch.int64), torch.arange(rings).repeat_interleave(segments),
                                torch.full((1,), rings - 1)))
    return _SyntheticGeometry(joints, frames, vertices, normals, faces, joint[ring_of_vertex], weight[ring_of_vertex])


def _parameter_transform(cfg: MHRConfig) -> torch.Tensor:
    """(J*7, num_model_params + num_identity): root, body DoFs, twist couplings and 68 joint scales."""
    J = len(MHR_JOINT_NAMES)
    pose: list[tuple[str, int]] = [("root", c) for c in range(6)]
    pose += [(name, c) for name in _THREE_DOF for c in (3, 4, 5)]
    pose += list(_ONE_DOF) + list(_TRANSLATION_DOF)
    scaled = [
        n for n in MHR_JOINT_NAMES[1:] if not n.endswith(("_null", "_proc")) and not n.startswith(("c_tongue", "c_teeth"))
    ]
    num_pose = cfg.num_model_params - len(scaled)
    if len(pose) != num_pose:
        raise ValueError(
            f"num_model_params={cfg.num_model_params}: the synthetic rig has {len(pose)} pose + {len(scaled)} scales"
        )
    transform = torch.zeros(J * 7, cfg.num_model_params + cfg.num_identity)
    for column, (name, channel) in enumerate(pose):
        transform[_JOINT[name] * 7 + channel, column] = 1.0
    for column, name in enumerate(scaled, start=num_pose):
        transform[_JOINT[name] * 7 + 6, column] = 1.0
    column = {key: c for c, key in enumerate(pose)}
    for side in "lr":
        for k in range(5):
            transform[_JOINT[f"{side}_uparm_twist{k}_proc"] * 7 + 3, column[(f"{side}_uparm", 3)]] = (k + 1) / 6
            transform[_JOINT[f"{side}_upleg_twist{k}_proc"] * 7 + 3, column[(f"{side}_upleg", 3)]] = (k + 1) / 6
        for k in range(1, 5):
            transform[_JOINT[f"{side}_lowarm_twist{k}_proc"] * 7 + 3, column[(f"{side}_wrist_twist", 3)]] = k / 5
            transform[_JOINT[f"{side}_lowleg_twist{k}_proc"] * 7 + 3, column[(f"{side}_talocrural", 3)]] = k / 5
    for k, name in enumerate(("c_neck_twist0_proc", "c_neck_twist1_proc")):
        transform[_JOINT[name] * 7 + 4, column[("c_neck", 4)]] = (k + 1) / 3
    return transform


def _region_mask(points: torch.Tensor, centres: torch.Tensor, radius: float) -> torch.Tensor:
    """Smooth mask (P,) that is 1 near any of the centres (C, 3) and fades out over `radius` cm."""
    return torch.exp(-((torch.cdist(points, centres).min(dim=1).values / radius) ** 2))


def _smooth_fields(points: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random smooth scalar fields (count, P) over points (P, 3), ~unit amplitude, wavelengths ~ 0.3-1 m."""
    freq = torch.randn(count, 4, 3, generator=generator, dtype=torch.float64) / 15.0
    phase = torch.rand(count, 4, 1, generator=generator, dtype=torch.float64) * 2 * math.pi
    return torch.cos(freq @ points.T + phase).sum(1) / 2.0


def synthetic_rig(cfg: MHRConfig, seed: int = 0) -> MHRRig:
    """A deterministic humanoid rig with MHR's structure at `cfg` sizes (127 real joint names/parents, F = 2V - 4)."""
    geometry = _synthetic_geometry(cfg)
    generator = torch.Generator().manual_seed(seed)
    J, V, H = len(MHR_JOINT_NAMES), cfg.num_vertices, cfg.corrective_hidden
    parents = torch.tensor(MHR_JOINT_PARENTS)
    joints, frames = geometry.joints, geometry.frames

    # Rest pose = zero parameters: local offsets/prerotations reproduce the rest frames, scale 1.
    has_parent = parents >= 0
    parent_frames = torch.where(has_parent[:, None, None], frames[parents.clamp_min(0)], torch.eye(3).double())
    parent_joints = torch.where(has_parent[:, None], joints[parents.clamp_min(0)], torch.zeros(3).double())
    offsets = (parent_frames.transpose(1, 2) @ (joints - parent_joints)[..., None]).squeeze(-1)
    prerotations = roma.rotmat_to_unitquat(parent_frames.transpose(1, 2) @ frames)
    bind_rotation = frames.transpose(1, 2)
    bind_translation = -(bind_rotation @ joints[..., None]).squeeze(-1)
    inverse_bind = torch.cat((bind_translation, roma.rotmat_to_unitquat(bind_rotation), torch.ones(J, 1).double()), -1)

    points, normals = geometry.vertices, geometry.normals
    head = _region_mask(points, joints[[_JOINT["c_head"]]], 12.0)
    hands = _region_mask(points, joints[[_JOINT["l_wrist"], _JOINT["r_wrist"]]], 12.0)
    # MHR's identity space: 20 body, 20 head and 5 hand components.
    identity_masks = torch.cat((torch.ones(20, V).double(), head.expand(20, V), hands.expand(5, V)))
    identity = 0.5 * _smooth_fields(points, cfg.num_identity, generator) * identity_masks
    expression = 0.3 * _smooth_fields(points, cfg.num_expr, generator) * head

    # Pose correctives: hidden unit h reads the 6D features of joint 2 + h % (J - 2) and of its parent.
    blocks = torch.arange(H) % (J - _NUM_GLOBAL_JOINTS)
    parent_blocks = parents[blocks + _NUM_GLOBAL_JOINTS] - _NUM_GLOBAL_JOINTS
    rows, cols = [], []
    for block, valid in ((blocks, torch.ones(H, dtype=torch.bool)), (parent_blocks, parent_blocks >= 0)):
        hidden = torch.arange(H)[valid].repeat_interleave(6)
        rows.append(hidden)
        cols.append((block[valid, None] * 6 + torch.arange(6)).reshape(-1))
    sparse_indices = torch.stack((torch.cat(rows), torch.cat(cols)))
    sparse_weights = 0.5 * torch.randn(sparse_indices.shape[1], generator=generator)
    hidden_joints = joints[blocks + _NUM_GLOBAL_JOINTS].float()
    locality = torch.exp(-((torch.cdist(points.float(), hidden_joints) / 10.0) ** 2))  # (V, H)
    out_weight = torch.randn(V, 3, H, generator=generator).mul_(0.1 * locality[:, None]).view(V * 3, H)

    rig = MHRRig(
        base_shape=points.float(),
        identity_vectors=(identity[..., None] * normals).float(),
        expression_vectors=(expression[..., None] * normals).float(),
        parameter_transform=_parameter_transform(cfg),
        joint_parents=parents,
        joint_offsets=offsets.float(),
        joint_prerotations=prerotations.float(),
        inverse_bind_pose=inverse_bind.float(),
        skin_vert_indices=torch.arange(V).repeat_interleave(geometry.skin_joints.shape[1]),
        skin_joint_indices=geometry.skin_joints.reshape(-1),
        skin_weights=geometry.skin_weights.reshape(-1).float(),
        corrective_sparse_indices=sparse_indices,
        corrective_sparse_weights=sparse_weights,
        corrective_out_weight=out_weight,
        faces=geometry.faces,
        joint_names=MHR_JOINT_NAMES,
    )
    rig.validate()
    return rig


def synthetic_keypoint_mapping(cfg: MHRConfig, seed: int = 0) -> torch.Tensor:
    """(num_regressed_keypoints, V + J) sparse convex weights over [vertices; joints] of the synthetic rig.

    The first 70 rows put the MHR70 keypoints on anatomically matching joints or nearby surface vertices;
    the remaining rows are seeded random 4-vertex combinations on the head (face keypoints upstream).
    """
    geometry = _synthetic_geometry(cfg)
    V, J = cfg.num_vertices, len(MHR_JOINT_NAMES)
    generator = torch.Generator().manual_seed(seed)
    mapping = torch.zeros(cfg.num_regressed_keypoints, V + J)
    for keypoint, name in _KEYPOINT_JOINTS.items():
        mapping[keypoint, V + _JOINT[name]] = 1.0
    for keypoint, (name, offset) in _KEYPOINT_SURFACE.items():
        target = geometry.joints[_JOINT[name]] + torch.tensor(offset, dtype=torch.float64)
        distance, nearest = (geometry.vertices - target).norm(dim=-1).topk(4, largest=False)
        weight = 1.0 / (distance + 1.0)
        mapping[keypoint, nearest] = (weight / weight.sum()).float()
    head_distance = (geometry.vertices - geometry.joints[_JOINT["c_head"]]).norm(dim=-1)
    face = head_distance.topk(min(64, V), largest=False).indices
    rest = cfg.num_regressed_keypoints - cfg.num_keypoints
    picks = face[torch.rand(rest, len(face), generator=generator).argsort(dim=1)[:, :4]]
    weight = torch.rand(rest, 4, generator=generator) + 0.1
    mapping[cfg.num_keypoints :].scatter_(1, picks, weight / weight.sum(-1, keepdim=True))
    return mapping
