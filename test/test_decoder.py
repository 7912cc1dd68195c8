"""SAM3DBodyHead decoder pass on the tiny config (real MHRBody on the synthetic rig), against hand computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3d_body_ros.core.backbone import count_params
from sam3d_body_ros.core.camera import cliff_condition, default_intrinsics, ray_map
from sam3d_body_ros.core.config import FULL, TINY
from sam3d_body_ros.core.crop import box_to_center_side, warp_matrix
from sam3d_body_ros.core.mhr import MHRBody
from sam3d_body_ros.core.model import OUTPUT_FIELDS, SAM3DBodyHead
from sam3d_body_ros.core.synthetic import random_head, synthetic_rig

BOXES = np.array([[100.0, 60.0, 260.0, 420.0], [300.0, 100.0, 420.0, 300.0], [500.0, 20.0, 630.0, 470.0]])


def make_inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    center, side = box_to_center_side(BOXES[:n])
    affine = np.stack([warp_matrix(c, s, TINY.backbone.img_size) for c, s in zip(center, side)])
    K = torch.tensor(default_intrinsics(640, 480), dtype=torch.float32).expand(n, 3, 3)
    feats = torch.randn(n, TINY.backbone.embed_dim, 32, 32, generator=g)
    return (feats, torch.tensor(center, dtype=torch.float32), torch.tensor(side, dtype=torch.float32),
            torch.tensor(affine, dtype=torch.float32), K)


@pytest.fixture(scope="module")
def head():
    return random_head(TINY, seed=0).eval()


# --- independent reference of one decoder layer (research note section 1.6) ------------------------------------
def ref_ln(x, ln):
    x = x.double()
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return ((x - mu) / torch.sqrt(var + 1e-6) * ln.weight.double() + ln.bias.double())


def ref_attn(att, q, k, v, heads):
    def lin(layer, x):
        return x @ layer.weight.double().T + layer.bias.double()

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    Q, Kk, V = split(lin(att.q_proj, q)), split(lin(att.k_proj, k)), split(lin(att.v_proj, v))
    w = torch.softmax(Q @ Kk.transpose(-1, -2) / math.sqrt(Q.shape[-1]), dim=-1)
    out = (w @ V).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
    return lin(att.proj, out)


def ref_layer(layer, x, ctx, x_pe, ctx_pe, pe_in_self_attn, heads):
    x, ctx = x.double(), ctx.double()
    x_pe, ctx_pe = ref_ln(x_pe, layer.ln_pe_1), ref_ln(ctx_pe, layer.ln_pe_2)
    h = ref_ln(x, layer.ln1)
    qk = h + x_pe if pe_in_self_attn else h
    x = x + ref_attn(layer.self_attn, qk, qk, h, heads)
    c = ref_ln(ctx, layer.ln2_2)
    x = x + ref_attn(layer.cross_attn, ref_ln(x, layer.ln2_1) + x_pe, c + ctx_pe, c, heads)
    f1, f2 = layer.ffn.layers[0][0], layer.ffn.layers[1]
    hid = F.gelu(ref_ln(x, layer.ln3) @ f1.weight.double().T + f1.bias.double())
    return x + hid @ f2.weight.double().T + f2.bias.double()


def hand_initial_state(head, feats, center, side, affine, K):
    """Tokens, token PE, context and image PE computed from the weights as the research note describes them."""
    n = feats.shape[0]
    f = K[:, 0, 0]
    cond = torch.stack([(center[:, 0] - K[:, 0, 2]) / f, (center[:, 1] - K[:, 1, 2]) / f, side / f], dim=1)
    init = torch.cat([head.init_pose.weight, head.init_camera.weight], dim=1).expand(n, -1)
    pose = head.init_to_token_mhr(torch.cat([cond, init], dim=1))
    prev = head.prev_to_token_mhr(init)
    prompt = head.prompt_to_token(head.prompt_encoder.invalid_point_embed.weight).expand(n, -1)
    rest = torch.cat([head.hand_box_embedding.weight, head.keypoint_embedding.weight, head.keypoint3d_embedding.weight])
    tokens = torch.cat([pose[:, None], prev[:, None], prompt[:, None], rest.expand(n, -1, -1)], dim=1)
    pe = torch.zeros_like(tokens)
    pe[:, 1], pe[:, 2] = prev, prompt
    G = head.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    centres = (torch.arange(32.0) + 0.5) / 32
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    proj = 2 * math.pi * ((2 * torch.stack([xx, yy], -1) - 1) @ G)
    img_pe = torch.cat([proj.sin(), proj.cos()], -1).reshape(1, 32 * 32, -1)
    x = feats + head.prompt_encoder.no_mask_embed.weight[0][None, :, None, None]
    ctx = head.ray_cond_emb(x, ray_map(affine, K, 512))
    return tokens, pe, ctx, img_pe


@pytest.mark.parametrize("n", [1, 3])
def test_output_shapes_and_finite(head, n):
    with torch.no_grad():
        out = head(*make_inputs(n))
    m = TINY.mhr
    expected = {
        "pred_vertices": (n, m.num_vertices, 3), "pred_keypoints_3d": (n, 70, 3), "pred_keypoints_2d": (n, 70, 2),
        "pred_cam_t": (n, 3), "pred_joint_coords": (n, 127, 3), "pred_global_rots": (n, 127, 3, 3),
        "global_rot": (n, 3), "body_pose_params": (n, 133), "hand_pose_params": (n, 108), "scale_params": (n, 28),
        "shape_params": (n, 45), "expr_params": (n, 72), "mhr_model_params": (n, 204), "pred_pose_raw": (n, 266),
        "focal_length": (n,),
    }
    assert tuple(out) == OUTPUT_FIELDS
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())
    assert (out["pred_cam_t"][:, 2] > 0).all()


def test_batched_persons_equal_each_alone(head):
    inputs = make_inputs(3)
    with torch.no_grad():
        together = head(*inputs)
        for i in range(3):
            alone = head(*(t[i : i + 1] for t in inputs))
            for k in OUTPUT_FIELDS:
                torch.testing.assert_close(alone[k][0], together[k][i], atol=1e-5, rtol=1e-5, msg=k)


def test_every_prediction_is_init_plus_delta(head):
    with torch.no_grad():
        preds = head.forward_all(*make_inputs(2))
        assert len(preds) == TINY.decoder.depth
        for p in preds:
            pose = head.head_pose.proj(p["pose_token"]) + head.init_pose.weight
            torch.testing.assert_close(p["pred_pose_raw"], pose[:, :266])
            torch.testing.assert_close(p["pred_cam"], head.head_camera.proj(p["pose_token"]) + head.init_camera.weight)
    # predictions refine the tokens, not the previous output: consecutive layers differ
    assert not torch.allclose(preds[0]["pred_pose_raw"], preds[1]["pred_pose_raw"])


def test_first_layer_matches_hand_computation_with_pe_skip(head):
    inputs = make_inputs(2)
    with torch.no_grad():
        pred0 = head.forward_all(*inputs)[0]
        tokens, pe, ctx, img_pe = hand_initial_state(head, *inputs)
        assert tokens.shape == (2, 145, TINY.decoder.dim)  # pose, prev, prompt, 2 hand, 70 kp2d, 70 kp3d
        got_tokens, got_pe = head.initial_tokens(cliff_condition(*inputs[1:3], inputs[4]))
        torch.testing.assert_close(got_tokens, tokens)
        torch.testing.assert_close(got_pe, pe)
        ctx = ctx.flatten(2).transpose(1, 2)
        layer, heads = head.decoder.layers[0], TINY.decoder.heads
        skipped = ref_layer(layer, tokens, ctx, pe, img_pe, pe_in_self_attn=False, heads=heads)
        with_pe = ref_layer(layer, tokens, ctx, pe, img_pe, pe_in_self_attn=True, heads=heads)
        token0 = ref_ln(skipped, head.decoder.norm_final)[:, 0].float()
        torch.testing.assert_close(pred0["pose_token"], token0, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(pred0["pose_token"], ref_ln(with_pe, head.decoder.norm_final)[:, 0].float(),
                                  atol=1e-3)
        # later layers do add the token PE in self-attention
        later = head.decoder.layers[1]
        torch.testing.assert_close(later(tokens, ctx, pe, img_pe).double(),
                                   ref_layer(later, tokens, ctx, pe, img_pe, pe_in_self_attn=True, heads=heads),
                                   atol=1e-4, rtol=1e-4)


def test_keypoint_token_update(head):
    n, k, s, d = 2, 70, head.kp2d_start, TINY.decoder.dim
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(n, 145, d, generator=g)
    pe = torch.randn(n, 145, d, generator=g)
    emb = torch.randn(n, TINY.backbone.embed_dim, 32, 32, generator=g)
    # keypoints at feature-cell centres (i, j): crop coord (2j + 1) / 64 - 0.5, so bilinear sampling is exact
    cells = torch.randint(0, 32, (n, k, 2), generator=g)
    kp2d = (2 * cells.float() + 1) / 64 - 0.5
    kp2d[0, 3] = torch.tensor([0.6, 0.0])  # outside the crop
    kp2d[1, 7] = torch.tensor([-0.1, -0.51])  # outside the crop
    depth = torch.rand(n, k, generator=g) + 1
    depth[1, 11] = 0.0  # behind the camera
    kp3d = torch.randn(n, k, 3, generator=g)
    pred = {"pred_keypoints_2d_cropped": kp2d, "pred_keypoints_2d_depth": depth, "pred_keypoints_3d": kp3d}
    with torch.no_grad():
        new_tokens, new_pe = head.update_keypoint_tokens(tokens, pe, pred, emb)
        invalid = torch.zeros(n, k, dtype=torch.bool)
        invalid[0, 3] = invalid[1, 7] = invalid[1, 11] = True
        sampled = emb[torch.arange(n)[:, None], :, cells[..., 1], cells[..., 0]]  # (n, k, C) at (row=y, col=x)
        sampled[invalid] = 0
        torch.testing.assert_close(new_tokens[:, s : s + k], tokens[:, s : s + k] + head.keypoint_feat_linear(sampled),
                                   atol=1e-5, rtol=1e-5)
        pe2d = head.keypoint_posemb_linear(kp2d)
        pe2d[invalid] = 0
        torch.testing.assert_close(new_pe[:, s : s + k], pe2d)
        pelvis = (kp3d[:, 9] + kp3d[:, 10]) / 2
        torch.testing.assert_close(new_pe[:, s + k :], head.keypoint3d_posemb_linear(kp3d - pelvis[:, None]))
    # everything else untouched
    torch.testing.assert_close(new_tokens[:, :s], tokens[:, :s])
    torch.testing.assert_close(new_tokens[:, s + k :], tokens[:, s + k :])
    torch.testing.assert_close(new_pe[:, :s], pe[:, :s])


def test_without_interm_layers_equals_plain_layer_stack(head):
    inputs = make_inputs(2)
    plain = SAM3DBodyHead(TINY, head.head_pose.mhr, interm_layers=())
    plain.load_state_dict(head.state_dict())
    with torch.no_grad():
        preds = plain.forward_all(*inputs)
        assert len(preds) == 1
        tokens, pe, ctx, img_pe = hand_initial_state(head, *inputs)
        ctx = ctx.flatten(2).transpose(1, 2)
        for layer in head.decoder.layers:
            tokens = layer(tokens, ctx, pe, img_pe)
        expected = head.predict(head.decoder.norm_final(tokens), *inputs[1:])
        torch.testing.assert_close(preds[0]["pred_vertices"], expected["pred_vertices"], atol=1e-5, rtol=1e-5)
        # the keypoint-token refresh after every layer (upstream default) changes the result
        full = head(*inputs)
    assert not torch.allclose(full["pred_vertices"], expected["pred_vertices"], atol=1e-4)


def test_interm_layers_validated():
    with pytest.raises(ValueError, match="interm_layers"):
        SAM3DBodyHead(TINY, MHRBody(synthetic_rig(TINY.mhr)), interm_layers=(5,))


def test_full_size_parameter_count_on_meta():
    with torch.device("meta"):
        full = SAM3DBodyHead(FULL, torch.nn.Identity())
    d, c, heads, dh, m = 1024, 1280, 8, 64, 1024
    i = heads * dh
    per_layer = (2 * d + 2 * c + 2 * d + (3 * (d * i + i) + i * d + d) + 2 * d + 2 * c
                 + (d * i + i + 2 * (c * i + i) + i * d + d) + 2 * d + (d * m + m + m * d + d))
    assert count_params(full.decoder.layers[0]) == per_layer
    assert count_params(full.decoder) == 6 * per_layer + 2 * d
    total = count_params(full)
    assert 45e6 < total < 60e6, total  # research note: ~101 M for body + hand branches; body branch about half
