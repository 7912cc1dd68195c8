"""What the package runs without weights: a synthetic MHR rig (same structure and conventions as the real
asset, deterministic, any size) and a seeded random head on it, both flagged as such wherever they are used."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import roma
import torch
import torch.nn.functional as F

from .backbone import DINOv3Backbone, build_backbone, set_layer_scale
from .config import MHRConfig, ModelConfig
from .heads import (
    BODY_HAND_PARAM_IDXS,
    HAND_JOINT_DOFS,
    NUM_BODY_PARAMS,
    NUM_HAND_CONT,
    NUM_HAND_PARAMS,
    NUM_NONHAND_PARAMS,
    NUM_SCALE,
    MHRHead,
    body_params_to_cont,
)
from .keypoints import MHR_JOINT_NAMES, MHR_JOINT_PARENTS
from .mhr import NUM_GLOBAL_JOINTS, MHRBody, MHRRig
from .model import SAM3DBodyHead


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the draws of module constructors (timm's and torch's initialisers use the default CPU generator) for
    the block only: the caller's random state is saved and restored, so seeding here never leaks out."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_backbone(cfg: ModelConfig, seed: int, layer_scale: float | None = None) -> DINOv3Backbone:
    """The timm backbone with seeded random weights; `layer_scale` makes them non-trivial (see set_layer_scale)."""
    with seeded(seed):
        module = build_backbone(cfg)
    if layer_scale is not None:
        set_layer_scale(module, layer_scale, seed + 1)
    return module


# ---------------------------------------------------------------------------------------------
# Synthetic rig
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


def _scaled_joints() -> list[str]:
    """Joints with a scale parameter in the synthetic rig (their columns follow the pose params, in this order)."""
    return [
        n for n in MHR_JOINT_NAMES[1:] if not n.endswith(("_null", "_proc")) and not n.startswith(("c_tongue", "c_teeth"))
    ]


def _parameter_transform(cfg: MHRConfig) -> torch.Tensor:
    """(J*7, num_model_params + num_identity): root, body DoFs, twist couplings and 68 joint scales."""
    J = len(MHR_JOINT_NAMES)
    pose: list[tuple[str, int]] = [("root", c) for c in range(6)]
    pose += [(name, c) for name in _THREE_DOF for c in (3, 4, 5)]
    pose += list(_ONE_DOF) + list(_TRANSLATION_DOF)
    scaled = _scaled_joints()
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
    blocks = torch.arange(H) % (J - NUM_GLOBAL_JOINTS)
    parent_blocks = parents[blocks + NUM_GLOBAL_JOINTS] - NUM_GLOBAL_JOINTS
    rows, cols = [], []
    for block, valid in ((blocks, torch.ones(H, dtype=torch.bool)), (parent_blocks, parent_blocks >= 0)):
        hidden = torch.arange(H)[valid].repeat_interleave(6)
        rows.append(hidden)
        cols.append((block[valid, None] * 6 + torch.arange(6)).reshape(-1))
    sparse_indices = torch.stack((torch.cat(rows), torch.cat(cols)))
    sparse_weights = 0.5 * torch.randn(sparse_indices.shape[1], generator=generator)
    hidden_joints = joints[blocks + NUM_GLOBAL_JOINTS].float()
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


# ---------------------------------------------------------------------------------------------
# Random head
# ---------------------------------------------------------------------------------------------

# Synthetic hand slots for the weight-less head: MHR's body hand DoFs (BODY_HAND_PARAM_IDXS) shifted past the 6
# global params, left hand first. The real indices come from the checkpoint.
_SYNTHETIC_HAND_IDXS = torch.tensor(BODY_HAND_PARAM_IDXS) + 6
RANDOM_OUTPUT_LAYER_GAIN = 0.01  # random heads predict small deltas around the init pose / camera
# Crop camera (s, tx, ty) before upstream's sign flip of s and ty: the body (~1.8 m) fills the crop and its pelvis
# (0.92 m above the MHR origin) lands near the box centre.
RANDOM_INIT_CAMERA = (-0.9, 0.0, -0.9)
# The hand decoder's crop camera (its scale is x 10): the wrist (at the origin) at the crop centre, the ~18 cm hand
# spanning ~45 % of the crop side.
RANDOM_INIT_CAMERA_HAND = (-0.5, 0.0, 0.0)
# Upstream multiplies the global translation by 10 before MHR; the synthetic rig's translation params are cm.
_TRANSLATION_UNIT_CM = 10.0


def _hand_zero_cont() -> torch.Tensor:
    """Hand cont (54) of all-zero joint angles: 6D identity for 3-DoF joints, (sin, cos) = (0, 1) otherwise."""
    parts = [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0] if k == 3 else [0.0, 1.0] * k for k in HAND_JOINT_DOFS]
    cont = torch.tensor([v for p in parts for v in p])
    assert cont.numel() == NUM_HAND_CONT
    return cont


def _synthetic_nonhand_params(num_params: int) -> torch.Tensor:
    """The hand head's zeroed MHR params for the synthetic rig: the first NUM_NONHAND_PARAMS of those that are not
    global (6), right-hand pose or a scale of the right wrist's subtree (so the arm is at rest and the wrist where
    `right_wrist_coords` says)."""
    scaled = _scaled_joints()
    first_scale = num_params - len(scaled)
    wrist = _JOINT["r_wrist"]
    hand_scales = {first_scale + i for i, name in enumerate(scaled) if _is_ancestor(wrist, _JOINT[name])}
    kept = set(range(6)) | set(_SYNTHETIC_HAND_IDXS[NUM_HAND_PARAMS:].tolist()) | hand_scales
    return torch.tensor([i for i in range(num_params) if i not in kept][:NUM_NONHAND_PARAMS])


def _fill_pose_head(hp: MHRHead, cfg: ModelConfig, keypoint_mapping: torch.Tensor, faces: torch.Tensor) -> None:
    """Synthetic values of an MHR head's checkpoint-carried tensors (the hand head's wrist frame too)."""
    hp.joint_rotation.copy_(torch.eye(3).expand_as(hp.joint_rotation))
    hp.scale_comps.copy_(0.1 * torch.eye(NUM_SCALE, hp.scale_comps.shape[1]))
    hp.hand_pose_mean.copy_(_hand_zero_cont())
    hp.hand_joint_idxs_left.copy_(_SYNTHETIC_HAND_IDXS[:NUM_HAND_PARAMS])
    hp.hand_joint_idxs_right.copy_(_SYNTHETIC_HAND_IDXS[NUM_HAND_PARAMS:])
    hp.keypoint_mapping.copy_(keypoint_mapping)
    hp.faces.copy_(faces)
    if hp.hand_model:
        rest = _rest_joint_positions() / _TRANSLATION_UNIT_CM
        hp.right_wrist_coords.copy_(rest[_JOINT["r_wrist"]])
        hp.root_coords.copy_(rest[_JOINT["root"]])
        hp.local_to_world_wrist.copy_(torch.eye(3))
        hp.nonhand_param_idxs.copy_(_synthetic_nonhand_params(cfg.mhr.num_model_params))
    hp.prepare_fast_keypoints()


def random_head(cfg: ModelConfig, seed: int = 0, hands: bool = False) -> SAM3DBodyHead:
    """Seeded RANDOM head on a SYNTHETIC rig (no weights): a T-posed body near the init, not a real estimate.

    `hands` adds the hand decoder branch (`full` mode); the body branch is the same as without it.
    """
    with seeded(seed):
        rig = synthetic_rig(cfg.mhr, seed=seed)
        head = SAM3DBodyHead(cfg, MHRBody(rig), hands=hands)
        mapping = synthetic_keypoint_mapping(cfg.mhr, seed=seed)
        zero_pose = torch.cat([torch.tensor([1.0, 0, 0, 0, 1, 0]), body_params_to_cont(torch.zeros(NUM_BODY_PARAMS))])
        with torch.no_grad():
            for hand, camera in ((False, RANDOM_INIT_CAMERA), (True, RANDOM_INIT_CAMERA_HAND))[: 2 if hands else 1]:
                for proj in (head.part("head_pose", hand).proj, head.part("head_camera", hand).proj):
                    proj.layers[1].weight.mul_(RANDOM_OUTPUT_LAYER_GAIN)
                    proj.layers[1].bias.zero_()
                init_pose = head.part("init_pose", hand).weight
                init_pose.zero_()
                init_pose[0, : zero_pose.numel()] = zero_pose
                head.part("init_camera", hand).weight.copy_(torch.tensor([camera]))
                _fill_pose_head(head.part("head_pose", hand), cfg, mapping, rig.faces)
    head.weights_description = f"RANDOM weights (seed {seed}) + SYNTHETIC MHR rig: not a real body estimate"
    return head
