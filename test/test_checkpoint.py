"""Loading upstream-format weights directories strictly (tiny checkpoints written in upstream's key names)."""
import re

import pytest
import torch
from ckpt_factory import variant, write_tiny_checkpoint

from sam3d_body_ros.core.backbone import build_backbone
from sam3d_body_ros.core.checkpoint import MHR_ASSET, load_checkpoint
from sam3d_body_ros.core.config import TINY
from sam3d_body_ros.core.errors import WeightsError
from sam3d_body_ros.core.model import BODY_MODE_UNUSED_PREFIXES, OUTPUT_FIELDS
from sam3d_body_ros.core.synthetic import random_head


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam-3d-body-tiny", seed=7)


def test_round_trip_gives_identical_outputs_and_backbone(written, decoder_inputs):
    loaded = load_checkpoint(written.path)
    assert loaded.cfg == TINY
    assert str(written.path) in loaded.source
    assert loaded.head.weights_description == loaded.source
    inputs = decoder_inputs(TINY, 3, torch.device("cpu"))
    with torch.no_grad():
        ref = written.head(*inputs)
        got = loaded.head.eval()(*inputs)
    for k in OUTPUT_FIELDS:
        torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-6, msg=k)
    # backbone: upstream DINOv3 names -> timm names, K bias dropped, q/v biases split out
    assert loaded.backbone_state.keys() == written.backbone_timm_state.keys()
    for k, v in written.backbone_timm_state.items():
        assert torch.equal(loaded.backbone_state[k], v), k
    backbone = build_backbone(TINY)
    backbone.load_timm_state(loaded.backbone_state)
    # every checkpoint key was either loaded or is a documented body-mode-unused key
    head_keys = set(loaded.head.state_dict())
    for key in written.state:
        assert key.startswith("backbone.encoder.") or key in head_keys or key.startswith(BODY_MODE_UNUSED_PREFIXES)


def test_state_dict_wrapper_accepted(written, tmp_path):
    ckpt = variant(written, tmp_path / "w", wrap_state_dict=True)
    loaded = load_checkpoint(ckpt.path)
    assert torch.equal(loaded.head.init_pose.weight, ckpt.head.init_pose.weight)


def _rename(old, new):
    def edit(state):
        state[new] = state.pop(old)
        return state
    return edit


@pytest.mark.parametrize("old,new", [
    ("decoder.layers.0.ln1.weight", "decoder.layers.0.ln_1.weight"),
    ("head_pose.keypoint_mapping", "head_pose.keypoint_map"),
    ("backbone.encoder.blocks.1.mlp.w3.weight", "backbone.encoder.blocks.1.mlp.fc3.weight"),
])
def test_renamed_key_fails_naming_both_keys(written, tmp_path, old, new):
    ckpt = variant(written, tmp_path / "w", edit_state=_rename(old, new))
    with pytest.raises(WeightsError) as err:
        load_checkpoint(ckpt.path)
    msg = str(err.value)
    assert "model.ckpt" in msg and str(ckpt.path) in msg
    assert "1 missing" in msg and "1 unexpected" in msg
    timm_names = {"mlp.w3": "mlp.fc2"}  # backbone keys are reported after the rename to timm names
    missing = old.removeprefix("backbone.encoder.")
    for a, b in timm_names.items():
        missing = missing.replace(a, b)
    assert missing in msg and new.removeprefix("backbone.encoder.") in msg


def test_missing_key_fails(written, tmp_path):
    def drop(state):
        del state["head_camera.proj.layers.1.bias"]
        return state
    ckpt = variant(written, tmp_path / "w", edit_state=drop)
    with pytest.raises(WeightsError, match=r"1 missing: head_camera\.proj\.layers\.1\.bias"):
        load_checkpoint(ckpt.path)


def test_unknown_non_hand_key_fails(written, tmp_path):
    def add(state):
        state["decoder.layers.0.extra_gate"] = torch.zeros(3)
        return state
    ckpt = variant(written, tmp_path / "w", edit_state=add)
    with pytest.raises(WeightsError, match=r"1 unexpected: decoder\.layers\.0\.extra_gate"):
        load_checkpoint(ckpt.path)


def test_config_size_mismatch_fails_with_shapes(written, tmp_path):
    def bigger(tree):
        tree["MODEL"]["DECODER"]["DIM"] = 96
    ckpt = variant(written, tmp_path / "w", edit_yaml=bigger)
    with pytest.raises(WeightsError, match=r"wrong shape: .*init_pose\.weight|wrong shape") as err:
        load_checkpoint(ckpt.path)
    assert re.search(r"\d+ wrong shape", str(err.value)) and "model.ckpt" in str(err.value)


@pytest.mark.parametrize("section,key,value", [
    ("DECODER", "ENABLE_TWOWAY", True),
    ("DECODER", "KEYPOINT_TOKEN_UPDATE", "v1"),
    ("BACKBONE", "TYPE", "dinov3_vit7b"),
    ("PROMPT_ENCODER", "MASK_EMBED_TYPE", "v1"),
])
def test_unsupported_config_value_fails_naming_key_and_file(written, tmp_path, section, key, value):
    def edit(tree):
        tree["MODEL"][section][key] = value
    ckpt = variant(written, tmp_path / "w", edit_yaml=edit)
    with pytest.raises(WeightsError) as err:
        load_checkpoint(ckpt.path)
    msg = str(err.value)
    assert f"MODEL.{section}.{key}" in msg and "model_config.yaml" in msg


def test_missing_config_key_fails(written, tmp_path):
    ckpt = variant(written, tmp_path / "w", edit_yaml=lambda tree: tree["MODEL"]["DECODER"].pop("HEADS"))
    with pytest.raises(WeightsError, match=r"MODEL\.DECODER\.HEADS is missing"):
        load_checkpoint(ckpt.path)


def test_missing_mhr_asset_fails_naming_the_file(written, tmp_path):
    ckpt = variant(written, tmp_path / "w", with_asset=False)
    with pytest.raises(WeightsError, match=re.escape(str(ckpt.path / MHR_ASSET))):
        load_checkpoint(ckpt.path)


def test_missing_config_file_fails(written, tmp_path):
    ckpt = variant(written, tmp_path / "w")
    (ckpt.path / "model_config.yaml").unlink()
    with pytest.raises(WeightsError, match="model_config.yaml not found"):
        load_checkpoint(ckpt.path)


class _Opaque:
    """A pickled object that a weights-only load refuses."""


def test_pickled_objects_need_explicit_trust(written, tmp_path):
    ckpt = variant(written, tmp_path / "w")
    torch.save({"state_dict": ckpt.state, "meta": _Opaque()}, ckpt.path / "model.ckpt")
    with pytest.raises(WeightsError, match="trust_pickle=True"):
        load_checkpoint(ckpt.path)
    assert load_checkpoint(ckpt.path, trust_pickle=True).cfg == TINY


def test_random_head_is_seeded_and_covers_upstream_keys():
    a, b, c = random_head(TINY, seed=0), random_head(TINY, seed=0), random_head(TINY, seed=1)
    assert "RANDOM" in a.weights_description and "SYNTHETIC" in a.weights_description
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["decoder.layers.0.ln1.weight"] + sa["init_to_token_mhr.weight"].sum(),
                           sc["decoder.layers.0.ln1.weight"] + sc["init_to_token_mhr.weight"].sum())
    # the synthetic keypoint mapping and faces fit the rig
    hp = a.head_pose
    assert hp.keypoint_mapping.shape == (308, TINY.mhr.num_vertices + 127)
    torch.testing.assert_close(hp.keypoint_mapping[:70].sum(1), torch.ones(70))
    assert hp.faces.max() < TINY.mhr.num_vertices and hp.faces.shape == (TINY.mhr.num_faces, 3)
    assert not any(k.startswith(BODY_MODE_UNUSED_PREFIXES) for k in sa)


@pytest.mark.parametrize("content, match", [(b"", "model.ckpt is empty"),
                                            (bytes(range(7, 256)) * 40, "is not a PyTorch checkpoint"),
                                            (b"PK\x03\x04" + bytes(500), "cannot read model.ckpt")])
def test_unreadable_weights_file_is_named(written, tmp_path, content, match):
    ckpt = variant(written, tmp_path / "w")
    (ckpt.path / "model.ckpt").write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        load_checkpoint(ckpt.path)
