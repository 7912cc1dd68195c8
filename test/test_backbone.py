"""timm DINOv3 backbone wrapper: sizes, output layout, strict weight loading."""
import pytest
import torch

from sam3d_body_ros.core.backbone import build_backbone, count_params
from sam3d_body_ros.core.config import FULL, TINY


def test_full_backbone_parameter_count_on_meta_device():
    m = build_backbone(FULL, "meta")
    assert count_params(m) == 840_591_360
    assert next(m.parameters()).device.type == "meta"


def test_tiny_output_is_final_norm_patch_grid():
    torch.manual_seed(0)
    m = build_backbone(TINY).eval()
    x = torch.randn(2, 3, 512, 512)
    with torch.no_grad():
        f = m(x)
        tokens = m.encoder.forward_features(x)
    assert f.shape == (2, TINY.backbone.embed_dim, 32, 32)
    # patch token (row 3, col 7) sits at index 5 + 3*32 + 7 of the final-norm token sequence
    assert torch.equal(f[:, :, 3, 7], tokens[:, 5 + 3 * 32 + 7])


def test_cached_rope_matches_dynamic_rope():
    import timm

    torch.manual_seed(0)
    m = build_backbone(TINY).eval()
    b = TINY.backbone
    dyn = timm.create_model(b.timm_name, pretrained=False, img_size=512, num_classes=0, embed_dim=b.embed_dim,
                            depth=b.depth, num_heads=b.num_heads, dynamic_img_size=True).eval()
    dyn.load_state_dict(m.encoder.state_dict())
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        torch.testing.assert_close(m.encoder.forward_features(x), dyn.forward_features(x), rtol=1e-5, atol=1e-5)


def test_load_state_strict_and_named_errors():
    a, b = build_backbone(TINY), build_backbone(TINY)
    b.load_timm_state(a.encoder.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    bad = dict(a.encoder.state_dict())
    bad["blocks.0.attn.extra"] = bad.pop("blocks.0.attn.q_bias")
    with pytest.raises(KeyError, match=r"1 missing \['blocks.0.attn.q_bias'\].*1 unexpected \['blocks.0.attn.extra'\]"):
        b.load_timm_state(bad)
