"""MHR (Momentum Human Rig) body model in plain PyTorch: rig tensors, asset loader, forward.

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

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import roma
import torch
import torch.nn.functional as F
from torch import nn

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
NUM_GLOBAL_JOINTS = 2


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

    # Sizes read off the rig's tensors (one-line properties of the same shape, not repeated logic).
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
        n_feat = 6 * (J - NUM_GLOBAL_JOINTS)
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
    """XYZ Euler angles (..., 3) -> unit quaternions (..., 4) xyzw of R = Rz Ry Rx (q = qz qy qx).

    Equal to `roma.euler_to_unitquat("xyz", angles)` (tested), in closed form: roma's version composes three
    quaternions and, under torch.export's fake tensors, takes its list-of-angles branch and fails."""
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
        corrective_in = torch.zeros(H, 6 * (J - NUM_GLOBAL_JOINTS), dtype=torch.float32)
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
        rot = roma.unitquat_to_rotmat(euler_xyz_to_quat(joint_params[:, NUM_GLOBAL_JOINTS:, 3:6]))
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
