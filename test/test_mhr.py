"""MHR body model: forward vs an independent float64 reference, loader, synthetic rig, real LOD1 topology."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import roma
import torch
from mhr_asset_factory import read_ply, write_mhr_asset

from sam3d_body_ros.core.config import FULL, TINY
from sam3d_body_ros.core.keypoints import (
    MHR70_NAMES,
    MHR_JOINT_NAMES,
    MHR_JOINT_PARENTS,
)
from sam3d_body_ros.core.mhr import (
    MHRAssetError,
    MHRBody,
    MHRRig,
    euler_xyz_to_quat,
    load_mhr_asset,
)
from sam3d_body_ros.core.synthetic import synthetic_keypoint_mapping, synthetic_rig

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mhr"


@pytest.fixture(scope="module")
def rig() -> MHRRig:
    return synthetic_rig(TINY.mhr, seed=0)


@pytest.fixture(scope="module")
def full_rig() -> tuple[MHRRig, float]:
    start = time.perf_counter()
    rig = synthetic_rig(FULL.mhr, seed=0)
    return rig, time.perf_counter() - start


def random_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity, model params (translations cm, Euler rad, log2 scales) and expression of a plausible size."""
    g = torch.Generator().manual_seed(seed)
    params = 0.4 * torch.randn(batch, 204, generator=g)
    params[:, :3] = 5.0 * torch.randn(batch, 3, generator=g)
    params[:, 136:] = 0.1 * torch.randn(batch, 68, generator=g)
    return torch.randn(batch, 45, generator=g), params, torch.randn(batch, 72, generator=g)


# ---------------------------------------------------------------------------------------------
# Independent reference: float64 numpy, explicit 4x4 matrices, per-joint and per-skin-entry loops.
# ---------------------------------------------------------------------------------------------

def _euler_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _affine(linear: np.ndarray, translation: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = linear, translation
    return m


def reference_forward(rig: MHRRig, identity, params, expr, correctives: bool = True):
    """One body: rest shape, joint params, local 4x4 per joint, FK, correctives MLP, LBS, all float64."""
    r = {k: v.double().numpy() for k, v in vars(rig).items() if isinstance(v, torch.Tensor)}
    identity, params, expr = (np.asarray(x, dtype=np.float64) for x in (identity, params, expr))
    rest = r["base_shape"] + np.einsum("kvc,k->vc", r["identity_vectors"], identity)
    rest = rest + np.einsum("kvc,k->vc", r["expression_vectors"], expr)
    joint_params = (r["parameter_transform"] @ np.concatenate([params, np.zeros(rig.num_identity)])).reshape(-1, 7)
    world = []
    for j, parent in enumerate(rig.joint_parents.tolist()):
        p = joint_params[j]
        linear = 2.0 ** p[6] * _quat_matrix(r["joint_prerotations"][j]) @ _euler_matrix(*p[3:6])
        local = _affine(linear, r["joint_offsets"][j] + p[:3])
        world.append(local if parent < 0 else world[parent] @ local)
    if correctives:
        features = []
        for j in range(2, rig.num_joints):
            rot = _euler_matrix(*joint_params[j, 3:6]) - np.eye(3)
            features += [*rot[:, 0], *rot[:, 1]]
        hidden_in = np.zeros((rig.corrective_hidden, len(features)))
        for (row, col), w in zip(r["corrective_sparse_indices"].T.astype(int), r["corrective_sparse_weights"]):
            hidden_in[row, col] += w
        hidden = np.maximum(hidden_in @ np.array(features), 0.0)
        rest = rest + (r["corrective_out_weight"] @ hidden).reshape(-1, 3)
    skinning = []
    for j in range(rig.num_joints):
        t, q, s = r["inverse_bind_pose"][j, :3], r["inverse_bind_pose"][j, 3:7], r["inverse_bind_pose"][j, 7]
        skinning.append(world[j] @ _affine(s * _quat_matrix(q), t))
    verts = np.zeros_like(rest)
    for v, j, w in zip(r["skin_vert_indices"].astype(int), r["skin_joint_indices"].astype(int), r["skin_weights"]):
        verts[v] += w * (skinning[j] @ np.append(rest[v], 1.0))[:3]
    return verts, np.stack(world)


def _state_to_matrices(skel_state: torch.Tensor) -> np.ndarray:
    """(J, 8) [t, q xyzw, s] -> (J, 4, 4) similarity transforms."""
    t, q, s = skel_state.double().split((3, 4, 1), dim=-1)
    m = np.tile(np.eye(4), (skel_state.shape[0], 1, 1))
    m[:, :3, :3] = (roma.unitquat_to_rotmat(q) * s[..., None]).numpy()
    m[:, :3, 3] = t.numpy()
    return m


# ---------------------------------------------------------------------------------------------

def test_forward_matches_float64_reference(rig: MHRRig) -> None:
    body = MHRBody(rig)
    identity, params, expr = random_inputs(2, seed=1)
    verts, skel = body(identity, params, expr)
    assert verts.shape == (2, TINY.mhr.num_vertices, 3) and skel.shape == (2, 127, 8)
    assert verts.dtype == torch.float32 and skel.dtype == torch.float32
    for b in range(2):
        ref_verts, ref_world = reference_forward(rig, identity[b], params[b], expr[b])
        assert np.abs(verts[b].double().numpy() - ref_verts).max() < 1e-4
        assert np.abs(_state_to_matrices(skel[b]) - ref_world).max() < 1e-4
    # The correctives really move the mesh, and switching them off matches the reference without them.
    no_corr, _ = body(identity, params, expr, apply_correctives=False)
    ref_no_corr, _ = reference_forward(rig, identity[0], params[0], expr[0], correctives=False)
    assert np.abs(no_corr[0].double().numpy() - ref_no_corr).max() < 1e-4
    assert (no_corr - verts).abs().max() > 0.05


def test_float64_module_matches_reference_tightly(rig: MHRRig) -> None:
    body = MHRBody(rig, fk_dtype=torch.float64).double()
    identity, params, expr = random_inputs(1, seed=2)
    verts, skel = body(identity, params, expr)
    ref_verts, ref_world = reference_forward(rig, identity[0], params[0], expr[0])
    assert verts.dtype == torch.float64
    assert np.abs(verts[0].numpy() - ref_verts).max() < 1e-9
    assert np.abs(_state_to_matrices(skel[0]) - ref_world).max() < 1e-9


def test_fk_dtype_float64_agrees(full_rig: tuple[MHRRig, float]) -> None:
    rig, _ = full_rig
    identity, params, expr = random_inputs(2, seed=3)
    v32, s32 = MHRBody(rig)(identity, params, expr)
    v64, s64 = MHRBody(rig, fk_dtype=torch.float64)(identity, params, expr)
    assert v32.dtype == v64.dtype == torch.float32
    difference = (v32 - v64).abs().max().item()
    assert 0 < difference < 1e-3, difference


def test_batch_equals_singles(rig: MHRRig) -> None:
    body = MHRBody(rig)
    identity, params, expr = random_inputs(3, seed=4)
    verts, skel = body(identity, params, expr)
    for b in range(3):
        v, s = body(identity[b : b + 1], params[b : b + 1], expr[b : b + 1])
        torch.testing.assert_close(v[0], verts[b], atol=1e-4, rtol=0)
        torch.testing.assert_close(s[0], skel[b], atol=1e-5, rtol=0)


def test_identity_broadcasts_and_expression_defaults_to_zero(rig: MHRRig) -> None:
    body = MHRBody(rig)
    identity, params, _ = random_inputs(2, seed=5)
    shared, _ = body(identity[:1], params, torch.zeros(1, 72))
    explicit, _ = body(identity[:1].expand(2, -1), params, None)
    torch.testing.assert_close(shared, explicit)


def test_zero_params_give_rest_pose(rig: MHRRig) -> None:
    body = MHRBody(rig)
    verts, skel = body(torch.zeros(1, 45), torch.zeros(1, 204), torch.zeros(1, 72))
    torch.testing.assert_close(verts[0], rig.base_shape, atol=1e-4, rtol=0)
    # Rest joints are where the inverse bind pose undoes them: world = inverse(inverse_bind).
    rest_world = np.linalg.inv(_state_to_matrices(rig.inverse_bind_pose))
    world = _state_to_matrices(skel[0])
    np.testing.assert_allclose(world[:, :3, 3], rest_world[:, :3, 3], atol=1e-4)  # joint positions, cm
    np.testing.assert_allclose(world[:, :3, :3], rest_world[:, :3, :3], atol=1e-5)  # orientations
    torch.testing.assert_close(skel[0, :, 7], torch.ones(127))
    # A standing person: feet on the ground, ~1.7 m tall, pelvis near hip height.
    height = verts[0, :, 1].max() - verts[0, :, 1].min()
    assert 160 < height < 180 and abs(verts[0, :, 1].min()) < 3
    assert 85 < skel[0, MHR_JOINT_NAMES.index("root"), 1] < 100


def test_quaternion_conventions_match_pymomentum(rig: MHRRig) -> None:
    angles = torch.randn(16, 3, dtype=torch.float64)
    # XYZ Euler is R = Rz Ry Rx; the quaternion keeps upstream's sign (q = qz qy qx, as roma composes it).
    torch.testing.assert_close(euler_xyz_to_quat(angles), roma.euler_to_unitquat("xyz", angles))
    torch.testing.assert_close(
        roma.unitquat_to_rotmat(euler_xyz_to_quat(angles)),
        torch.from_numpy(np.stack([_euler_matrix(*a) for a in angles.numpy()])),
    )
    # A single root rotation: the skeleton state quaternion is prerotation * euler.
    body = MHRBody(rig, fk_dtype=torch.float64)
    params = torch.zeros(1, 204)
    params[0, 3:6] = torch.tensor([0.3, -0.2, 0.5])
    skel = body.skeleton_state(body.joint_parameters(params))
    expected = roma.quat_product(rig.joint_prerotations[1].double(), euler_xyz_to_quat(params[0, 3:6].double()))
    torch.testing.assert_close(skel[0, 1, 3:7], expected)


def test_rig_tensors_are_non_persistent_buffers(rig: MHRRig) -> None:
    body = MHRBody(rig)
    assert body.state_dict() == {}
    assert len(list(body.parameters())) == 0
    assert body.faces.dtype == torch.int64 and body.joint_names == MHR_JOINT_NAMES


def test_forward_exports_without_host_syncs(rig: MHRRig) -> None:
    """torch.export traces the whole forward into one graph: no .item()/numpy/data-dependent control flow."""
    body = MHRBody(rig)
    identity, params, expr = random_inputs(2, seed=6)
    program = torch.export.export(body, (identity, params, expr))
    for got, want in zip(program.module()(identity, params, expr), body(identity, params, expr)):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------

def test_load_mhr_asset_reproduces_rig(rig: MHRRig, tmp_path: Path) -> None:
    loaded = load_mhr_asset(write_mhr_asset(tmp_path / "mhr_model.pt", rig))
    for name, value in vars(rig).items():
        got = getattr(loaded, name)
        if isinstance(value, torch.Tensor):
            assert got.dtype == value.dtype and torch.equal(got, value), name
        else:
            assert got == value, name
    identity, params, expr = random_inputs(2, seed=7)
    for got, want in zip(MHRBody(loaded)(identity, params, expr), MHRBody(rig)(identity, params, expr)):
        assert torch.equal(got, want)


def test_load_mhr_asset_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MHRAssetError, match=r"nope\.pt: file not found"):
        load_mhr_asset(tmp_path / "nope.pt")


@pytest.mark.parametrize("content", ["pickle", "garbage"])
def test_load_mhr_asset_rejects_non_torchscript(tmp_path: Path, content: str) -> None:
    path = tmp_path / "mhr_model.pt"
    if content == "pickle":
        torch.save({"character_torch.blend_shape.base_shape": torch.zeros(3, 3)}, path)
    else:
        path.write_bytes(b"not a zip archive at all")
    with pytest.raises(MHRAssetError, match="mhr_model.pt: not a TorchScript archive"):
        load_mhr_asset(path)


@pytest.mark.parametrize(
    "omit, message",
    [
        ("character_torch.blend_shape.base_shape", "missing buffer character_torch.blend_shape.base_shape"),
        ("pose_correctives_model.pose_dirs_predictor.2.weight",
         "missing buffer pose_correctives_model.pose_dirs_predictor.2.weight"),
        ("character_torch.skeleton.joint_names", "missing attribute character_torch.skeleton.joint_names"),
    ],
)
def test_load_mhr_asset_names_missing_entry(rig: MHRRig, tmp_path: Path, omit: str, message: str) -> None:
    path = write_mhr_asset(tmp_path / "mhr_model.pt", rig, omit=omit)
    with pytest.raises(MHRAssetError, match=message):
        load_mhr_asset(path)


def test_load_mhr_asset_rejects_inconsistent_shapes(rig: MHRRig, tmp_path: Path) -> None:
    broken = MHRRig(**{**vars(rig), "joint_offsets": rig.joint_offsets[:-1]})
    path = write_mhr_asset(tmp_path / "mhr_model.pt", broken)
    with pytest.raises(MHRAssetError, match=r"malformed rig: joint_offsets: expected shape \(127, 3\)"):
        load_mhr_asset(path)


# ---------------------------------------------------------------------------------------------
# Synthetic rig structure and the real LOD1 topology
# ---------------------------------------------------------------------------------------------

def closed_surface_stats(vertices: np.ndarray, faces: np.ndarray) -> dict[str, float]:
    """Euler characteristic, whether every edge has exactly two faces, and the signed volume."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    return {
        "euler": len(vertices) - len(counts) + len(faces),
        "two_faces_per_edge": bool((counts == 2).all()),
        "volume": float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0),
    }


def test_real_lod1_topology_matches_full_config() -> None:
    vertices, faces = read_ply(FIXTURES / "mhr_face_mask.ply")
    assert len(vertices) == FULL.mhr.num_vertices == 18439
    assert len(faces) == FULL.mhr.num_faces == 36874
    assert len(faces) == 2 * len(vertices) - 4
    stats = closed_surface_stats(vertices, faces)
    assert stats["euler"] == 2 and stats["two_faces_per_edge"] and stats["volume"] > 0
    assert 170 < vertices[:, 1].max() - vertices[:, 1].min() < 175  # cm, Y up
    # The real SAM 3D Body outputs use this vertex order: their meshes are smooth and outward with these faces.
    for dump in sorted(FIXTURES.glob("img_subj*.npz")):
        posed = np.load(dump)["pred_vertices"] * 100.0  # m -> cm (y and z flipped: a rotation, volume kept)
        assert posed.shape == vertices.shape
        edges = np.linalg.norm(posed[faces[:, [1, 2, 0]]] - posed[faces], axis=-1)
        assert edges.max() < 10.0 and np.median(edges) < 1.0
        assert closed_surface_stats(posed, faces)["volume"] > 0


def test_synthetic_full_rig_shares_real_topology_and_stature(full_rig: tuple[MHRRig, float]) -> None:
    rig, seconds = full_rig
    assert seconds < 10.0
    real_vertices, real_faces = read_ply(FIXTURES / "mhr_face_mask.ply")
    assert rig.num_vertices == len(real_vertices) and len(rig.faces) == len(real_faces)
    assert rig.corrective_out_weight.shape == (18439 * 3, 3000)
    assert rig.parameter_transform.shape == (127 * 7, 204 + 45)
    stats = closed_surface_stats(rig.base_shape.numpy(), rig.faces.numpy())
    assert stats["euler"] == 2 and stats["two_faces_per_edge"] and stats["volume"] > 0  # same winding as MHR
    synthetic, real = rig.base_shape.numpy(), real_vertices
    for axis in (0, 1):  # width (arm span in A-pose) and height within 10 % of the real rest mesh
        extent = np.ptp(synthetic[:, axis])
        assert abs(extent - np.ptp(real[:, axis])) < 0.1 * np.ptp(real[:, axis])


@pytest.mark.parametrize("cfg", [TINY.mhr, FULL.mhr], ids=["tiny", "full"])
def test_synthetic_rig_structure(cfg, full_rig: tuple[MHRRig, float], rig: MHRRig) -> None:
    r = full_rig[0] if cfg is FULL.mhr else rig
    assert r.joint_names == MHR_JOINT_NAMES and r.joint_parents.tolist() == list(MHR_JOINT_PARENTS)
    assert (r.num_vertices, len(r.faces), r.num_joints) == (cfg.num_vertices, cfg.num_faces, cfg.num_joints)
    assert (r.num_identity, r.num_expr, r.num_model_params) == (cfg.num_identity, cfg.num_expr, cfg.num_model_params)
    assert r.corrective_hidden == cfg.corrective_hidden
    weights = torch.zeros(r.num_vertices).index_add_(0, r.skin_vert_indices, r.skin_weights)
    torch.testing.assert_close(weights, torch.ones(r.num_vertices))
    torch.testing.assert_close(r.joint_prerotations.norm(dim=-1), torch.ones(127))


def test_synthetic_rig_is_deterministic_per_seed(rig: MHRRig) -> None:
    again, other = synthetic_rig(TINY.mhr, seed=0), synthetic_rig(TINY.mhr, seed=1)
    assert torch.equal(again.corrective_out_weight, rig.corrective_out_weight)
    assert torch.equal(again.identity_vectors, rig.identity_vectors)
    assert not torch.equal(other.corrective_out_weight, rig.corrective_out_weight)
    assert torch.equal(other.base_shape, rig.base_shape)  # geometry does not depend on the seed


def test_synthetic_rig_rejects_sizes_it_cannot_build() -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="2 \\* num_vertices - 4"):
        synthetic_rig(replace(TINY.mhr, num_faces=1000))
    with pytest.raises(ValueError, match="rings x segments"):
        synthetic_rig(replace(TINY.mhr, num_vertices=13, num_faces=22))  # 11 is prime


def test_synthetic_keypoint_mapping(rig: MHRRig) -> None:
    cfg = TINY.mhr
    mapping = synthetic_keypoint_mapping(cfg, seed=0)
    assert mapping.shape == (308, cfg.num_vertices + 127)
    assert (mapping >= 0).all()
    torch.testing.assert_close(mapping.sum(1), torch.ones(308))
    assert ((mapping > 0).sum(1) <= 4).all()
    verts, skel = MHRBody(rig)(torch.zeros(1, 45), torch.zeros(1, 204), None)
    points = torch.cat((verts[0], skel[0, :, :3]))
    keypoints = mapping[:70] @ points
    joint = {name: skel[0, i, :3] for i, name in enumerate(MHR_JOINT_NAMES)}
    assert torch.equal(keypoints[41], joint["r_wrist"]) and torch.equal(keypoints[62], joint["l_wrist"])
    assert (keypoints[0] - joint["c_head"]).norm() < 25 and keypoints[0][2] > joint["c_head"][2]  # nose in front
    for k, name in enumerate(MHR70_NAMES):  # MHR's left side is +X (Y up, facing +Z)
        if name.startswith("left"):
            assert keypoints[k, 0] > 0, name
        elif name.startswith("right"):
            assert keypoints[k, 0] < 0, name
    assert keypoints[13, 1] < keypoints[11, 1] < keypoints[9, 1] < keypoints[5, 1] < keypoints[0, 1]
