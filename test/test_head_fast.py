"""The fast head computes what the plain head computes (CPU, tiny config).

Covers the gather-based keypoint-feature sampling (against F.grid_sample), MHR evaluated on a vertex subset (against
the full mesh's rows), and whole-head equality of the keypoint-only intermediate predictions (MHR on the vertices the
70 keypoints use) with the plain full-mesh path, on a random head and on a head loaded from an upstream-layout
checkpoint.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from ckpt_factory import write_tiny_checkpoint

from sam3d_body_ros.core.checkpoint import load_checkpoint
from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.mhr import MHRBody
from sam3d_body_ros.core.model import OUTPUT_FIELDS, SAM3DBodyHead, sample_points
from sam3d_body_ros.core.synthetic import random_head, synthetic_rig

CPU = torch.device("cpu")
V = TINY.mhr.num_vertices


def grid_sample_points(features: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The reference: F.grid_sample at (N,P,2) points as upstream calls it, -> (N,P,C)."""
    return F.grid_sample(features, grid[:, :, None, :], mode="bilinear", padding_mode="zeros",
                         align_corners=False)[..., 0].transpose(1, 2)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sample_points_equals_grid_sample(channels_last: bool, dtype: torch.dtype, atol: float) -> None:
    """Same neighbours, weights and zero padding as grid_sample. In float32 the pixel coordinates round differently:
    CPU grid_sample unnormalises as x * W/2 + (W-1)/2, sample_points (like the CUDA kernel) as ((x + 1) W - 1) / 2,
    which moves samples by up to ~3e-6 here; in float64 the two agree to ~1e-15."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 3, 40, 32, 24
    features = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    inside = torch.rand(n, 50, 2, generator=g) * 2 - 1
    outside = torch.rand(n, 30, 2, generator=g) * 4 - 2  # about 3/4 of these fall outside [-1, 1]
    # borders: the grid edges, the outermost pixel centres, half a pixel beyond them, corners, far away
    px, py = 1.0 / w, 1.0 / h
    special = torch.tensor([
        [-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [0.0, -1.0], [1.0, 0.0],
        [-1 + px, -1 + py], [1 - px, 1 - py], [-1 - px, 0.0], [1 + px, 0.0], [0.0, -1 - py], [0.0, 1 + py],
        [-1 - 2 * px, 0.3], [1 + 2 * px, -0.3], [0.0, 0.0], [5.0, 5.0], [-7.0, 0.2], [1e6, -1e6],
    ]).expand(n, -1, -1)
    grid = torch.cat([inside, outside, special], dim=1).to(dtype)
    got = sample_points(features, grid)
    want = grid_sample_points(features, grid)
    assert got.shape == (n, grid.shape[1], c)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert (want[:, 50:80].abs().sum(-1) == 0).any() and (want[:, 80:].abs().sum(-1) == 0).any()  # zeros padding hit
    assert want[:, :50].abs().sum(-1).gt(0).all()


def test_sample_points_ignores_nan_points() -> None:
    features = torch.randn(1, 8, 4, 4)
    grid = torch.tensor([[[float("nan"), 0.0], [0.1, 0.2]]])
    got = sample_points(features, grid)
    assert got[0, 0].eq(0).all()
    torch.testing.assert_close(got[:, 1:], grid_sample_points(features, grid[:, 1:]), atol=1e-6, rtol=0)


def test_mhr_on_a_vertex_subset_equals_the_full_mesh_rows() -> None:
    body = MHRBody(synthetic_rig(TINY.mhr, seed=2))
    g = torch.Generator().manual_seed(4)
    b = 3
    identity = torch.randn(b, body.num_identity, generator=g)
    params = 0.3 * torch.randn(b, body.num_model_params, generator=g)
    expr = torch.randn(b, body.num_expr, generator=g)
    index = torch.randperm(V, generator=g)[:57]
    subset = body.vertex_subset(index)
    assert subset.num_vertices == 57
    for correctives in (True, False):
        full_verts, full_skel = body(identity, params, expr, apply_correctives=correctives)
        verts, skel = body(identity, params, expr, apply_correctives=correctives, vertices=subset)
        assert verts.shape == (b, 57, 3)
        torch.testing.assert_close(verts, full_verts[:, index], atol=1e-5, rtol=0)
        torch.testing.assert_close(skel, full_skel)


def test_fk_takes_log2_depth_steps_and_matches_float64() -> None:
    """FK by pointer doubling: 4 steps for MHR's depth-15 tree; float32 agrees with float64 FK (whose agreement with
    the per-joint numpy reference test_mhr.py checks to 1e-9)."""
    rig = synthetic_rig(TINY.mhr, seed=1)
    body = MHRBody(rig)
    assert sum(name.startswith("fk_ancestor_") for name, _ in body.named_buffers()) == 4
    params = 0.5 * torch.randn(3, body.num_model_params, generator=torch.Generator().manual_seed(8))
    joint_params = body.joint_parameters(params)
    world, skel = body.forward_kinematics(joint_params)
    world64, skel64 = MHRBody(rig, fk_dtype=torch.float64).forward_kinematics(joint_params)
    torch.testing.assert_close(world.double(), world64, atol=1e-4, rtol=0)  # cm
    torch.testing.assert_close(skel[..., 3:7].double(), skel64[..., 3:7], atol=2e-6, rtol=0)  # quaternion
    torch.testing.assert_close(skel[..., 7].double(), skel64[..., 7], atol=0, rtol=2e-6)  # scale


def test_keypoint_vertex_subset_is_what_the_mapping_uses() -> None:
    hp = random_head(TINY, seed=0).head_pose
    rows = hp.keypoint_mapping[:70]
    used = rows[:, :V].ne(0).any(0)
    index = hp.keypoint_rig.index
    assert 0 < index.numel() < V / 4  # the intermediate MHR passes really are cheaper
    assert torch.equal(index, used.nonzero().squeeze(1))
    torch.testing.assert_close(hp.keypoint_weights, torch.cat([rows[:, index], rows[:, V:]], dim=1), atol=0, rtol=0)
    assert hp.keypoint_weights.sum() == rows.sum()  # no weight left out


def test_load_state_dict_refreshes_the_keypoint_subset() -> None:
    head = random_head(TINY, seed=0)
    state = head.state_dict()
    mapping = state["head_pose.keypoint_mapping"].clone()
    unused = int((~mapping[:70, :V].ne(0).any(0)).nonzero()[0])
    mapping[0, unused] = 0.25  # keypoint 0 now also uses a vertex no keypoint used before
    state["head_pose.keypoint_mapping"] = mapping
    other = SAM3DBodyHead(TINY, MHRBody(synthetic_rig(TINY.mhr, seed=0)))
    assert other.head_pose.keypoint_rig is None  # not prepared before weights are set
    other.load_state_dict(state)
    assert unused in other.head_pose.keypoint_rig.index.tolist()
    assert unused not in head.head_pose.keypoint_rig.index.tolist()


def plain_copy(head: SAM3DBodyHead) -> SAM3DBodyHead:
    """The same head without `prepare_fast_keypoints`: every MHR pass evaluates the full mesh."""
    plain = copy.deepcopy(head)
    plain.head_pose.keypoint_rig = None
    plain.head_pose.keypoint_weights = None
    return plain


def assert_fast_equals_plain(head: SAM3DBodyHead, inputs: tuple[torch.Tensor, ...]) -> None:
    plain = plain_copy(head)
    mhr_vertices: list[int] = []
    head.head_pose.mhr.register_forward_hook(lambda _m, _i, out: mhr_vertices.append(out[0].shape[1]))
    with torch.inference_mode():
        fast_preds = head.forward_all(*inputs)
        plain_preds = plain.forward_all(*inputs, interm_meshes=True)
        fast_out = head(*inputs)
    depth = TINY.decoder.depth
    subset = head.head_pose.keypoint_rig.num_vertices
    assert mhr_vertices == [subset] * (depth - 1) + [V] + [subset] * (depth - 1) + [V]
    assert len(fast_preds) == len(plain_preds) == depth
    for layer, (fast, ref) in enumerate(zip(fast_preds, plain_preds)):
        expected = set(ref) - ({"pred_vertices"} if layer < depth - 1 else set())
        assert set(fast) == expected
        for name in expected:
            torch.testing.assert_close(fast[name], ref[name], atol=1e-5, rtol=0, msg=f"layer {layer} {name}")
    for name in OUTPUT_FIELDS:
        torch.testing.assert_close(fast_out[name], plain_preds[-1][name], atol=1e-5, rtol=0, msg=name)
    # the keypoint tokens did move the result: the intermediate keypoints differ from layer to layer
    assert not torch.allclose(fast_preds[0]["pred_keypoints_2d"], fast_preds[-1]["pred_keypoints_2d"], atol=1e-3)


@pytest.mark.parametrize("persons", [1, 3])
def test_fast_head_equals_plain_head_random_weights(persons: int, decoder_inputs) -> None:
    assert_fast_equals_plain(random_head(TINY, seed=persons).eval(), decoder_inputs(TINY, persons, CPU))


def test_fast_head_equals_plain_head_loaded_checkpoint(tmp_path, decoder_inputs) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "sam-3d-body-tiny", seed=5)
    head = load_checkpoint(ckpt.path).head.eval()
    assert head.head_pose.keypoint_rig is not None  # prepared by loading
    assert_fast_equals_plain(head, decoder_inputs(TINY, 3, CPU))


def test_fast_head_exports_as_one_graph(decoder_inputs) -> None:
    """torch.export traces the whole fast head: no host syncs or data-dependent shapes (CUDA-graph capturable)."""
    head = random_head(TINY, seed=1).eval()
    inputs = decoder_inputs(TINY, 2, CPU)
    program = torch.export.export(head, inputs)
    with torch.inference_mode():
        got, want = program.module()(*inputs), head(*inputs)
    for name in OUTPUT_FIELDS:
        torch.testing.assert_close(got[name], want[name], msg=name)
