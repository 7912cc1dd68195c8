"""Upstream SAM 3D Body weights: `model.ckpt` + `model_config.yaml` + `assets/mhr_model.pt` -> backbone state + head."""
from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.models.eva import checkpoint_filter_fn

from .backbone import build_backbone
from .config import FULL, TINY, DecoderConfig, MHRConfig, ModelConfig
from .crop import IMAGENET_MEAN, IMAGENET_STD
from .errors import WeightsError
from .mhr import MHRAssetError, MHRBody, MHRRig, load_mhr_asset
from .model import BODY_MODE_UNUSED_PREFIXES, HAND_CAMERA_SCALE, SAM3DBodyHead

WEIGHTS_FILE = "model.ckpt"
CONFIG_FILE = "model_config.yaml"
MHR_ASSET = Path("assets") / "mhr_model.pt"
BACKBONE_PREFIX = "backbone.encoder."
# Copies of the TorchScript rig that a training run may have saved inside the heads; the rig is read from the asset.
RIG_PREFIXES = ("head_pose.mhr.", "head_pose_hand.mhr.")
# Upstream MODEL.BACKBONE.TYPE values this package builds; the second is this package's small test/demo size.
TINY_BACKBONE_TYPE = "sam3d_body_ros_tiny"
BACKBONE_TYPES = {"dinov3_vith16plus": FULL.backbone, TINY_BACKBONE_TYPE: TINY.backbone}
MAX_LISTED = 20

_REQUIRED = object()
# (yaml key, value this implementation reproduces, upstream default when the key is absent or _REQUIRED)
SUPPORTED_SETTINGS: tuple[tuple[str, Any, Any], ...] = (
    ("MODEL.DECODER.TYPE", "sam", _REQUIRED),
    ("MODEL.DECODER.FFN_TYPE", "origin", _REQUIRED),
    ("MODEL.DECODER.LAYER_SCALE_INIT", 0.0, _REQUIRED),
    ("MODEL.DECODER.ENABLE_TWOWAY", False, _REQUIRED),
    ("MODEL.DECODER.REPEAT_PE", True, _REQUIRED),
    ("MODEL.DECODER.CONDITION_TYPE", "cliff", _REQUIRED),
    ("MODEL.DECODER.USE_INTRIN_CENTER", True, False),
    ("MODEL.DECODER.DO_INTERM_PREDS", True, False),
    ("MODEL.DECODER.DO_KEYPOINT_TOKENS", True, False),
    ("MODEL.DECODER.DO_HAND_DETECT_TOKENS", True, False),
    ("MODEL.DECODER.KEYPOINT_TOKEN_UPDATE", "v2", None),
    ("MODEL.DECODER.DO_KEYPOINT3D_TOKENS", True, False),
    ("MODEL.PROMPT_ENCODER.ENABLE", True, _REQUIRED),
    ("MODEL.PROMPT_ENCODER.PROMPT_KEYPOINTS", "mhr70", _REQUIRED),
    ("MODEL.PROMPT_ENCODER.MASK_EMBED_TYPE", "v2", None),
    ("MODEL.PROMPT_ENCODER.MASK_PROMPT", "v1", "v1"),
    ("MODEL.PERSON_HEAD.POSE_TYPE", "mhr", _REQUIRED),
    ("MODEL.PERSON_HEAD.CAMERA_TYPE", "perspective", _REQUIRED),
    ("MODEL.MHR_HEAD.MLP_DEPTH", 2, 1),
    ("MODEL.MHR_HEAD.MLP_CHANNEL_DIV_FACTOR", 1, 1),
    ("MODEL.CAMERA_HEAD.MLP_DEPTH", 2, 1),
    ("MODEL.CAMERA_HEAD.MLP_CHANNEL_DIV_FACTOR", 1, 1),
)
# Settings only the hand decoder (`full` mode) depends on: checked when it is built.
HAND_SETTINGS: tuple[tuple[str, Any, Any], ...] = (
    ("MODEL.CAMERA_HEAD.DEFAULT_SCALE_FACTOR_HAND", HAND_CAMERA_SCALE, 1.0),
)
DECODER_KEYS = {"dim": "DIM", "depth": "DEPTH", "heads": "HEADS", "dim_head": "DIM_HEAD", "mlp_dim": "MLP_DIM"}


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` returns: the config, the head with weights, the backbone state in timm naming."""

    cfg: ModelConfig
    head: SAM3DBodyHead
    backbone_state: dict[str, torch.Tensor]
    source: str


def _get(tree: Mapping[str, Any], dotted: str, default: Any, path: Path) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _REQUIRED:
                raise WeightsError(f"{dotted} is missing ({path}): use the model_config.yaml shipped with the weights")
            return default
        node = node[part]
    return node


def config_from_yaml(path: Path, mhr: MHRConfig, hands: bool = False) -> ModelConfig:
    """Map upstream `model_config.yaml` to a ModelConfig (MHR sizes come from the rig); unsupported values raise
    (with `hands`, also those of the hand decoder)."""
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise WeightsError(f"cannot read {CONFIG_FILE} ({path}): {exc}") from exc
    if not isinstance(tree, Mapping):
        raise WeightsError(f"{CONFIG_FILE} is not a mapping ({path}): use the file shipped with the weights")
    for key, supported, default in SUPPORTED_SETTINGS + (HAND_SETTINGS if hands else ()):
        value = _get(tree, key, default, path)
        if value != supported:
            raise WeightsError(f"{key} = {value!r} is not supported ({path}): this implementation needs {supported!r}")
    for key, expected in (("MODEL.IMAGE_MEAN", IMAGENET_MEAN), ("MODEL.IMAGE_STD", IMAGENET_STD)):
        value = _get(tree, key, _REQUIRED, path)
        if len(value) != 3 or any(not math.isclose(float(a), float(b), abs_tol=1e-6) for a, b in zip(value, expected)):
            raise WeightsError(f"{key} = {value!r} is not supported ({path}): crops are normalised with {list(expected)}")
    backbone_type = _get(tree, "MODEL.BACKBONE.TYPE", _REQUIRED, path)
    if backbone_type not in BACKBONE_TYPES:
        raise WeightsError(f"MODEL.BACKBONE.TYPE = {backbone_type!r} is not supported ({path}): "
                           f"choose one of {sorted(BACKBONE_TYPES)}")
    backbone = BACKBONE_TYPES[backbone_type]
    size = _get(tree, "MODEL.IMAGE_SIZE", _REQUIRED, path)
    if list(size) != [backbone.img_size, backbone.img_size]:
        raise WeightsError(f"MODEL.IMAGE_SIZE = {size!r} is not supported ({path}): {backbone_type} needs "
                           f"{[backbone.img_size, backbone.img_size]}")
    dims = {}
    for field_name, key in DECODER_KEYS.items():
        value = _get(tree, f"MODEL.DECODER.{key}", _REQUIRED, path)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise WeightsError(f"MODEL.DECODER.{key} = {value!r} is not a positive integer ({path})")
        dims[field_name] = value
    cfg = ModelConfig(name="custom", backbone=backbone, decoder=DecoderConfig(**dims), mhr=mhr)
    for known in (FULL, TINY):
        if dataclasses.replace(cfg, name=known.name) == known:
            return known
    return cfg


def _mismatch_report(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            listed = ", ".join(keys[:MAX_LISTED]) + (", ..." if len(keys) > MAX_LISTED else "")
            parts.append(f"{len(keys)} {what}: {listed}")
    return "; ".join(parts)


def _check_keys(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], what: str,
                path: Path) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}"
                    for k in set(expected) & set(given) if given[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise WeightsError(f"{what} weights do not match the model ({path}): "
                           f"{_mismatch_report(missing, unexpected, shapes)}")


def _read_state_dict(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise WeightsError(f"{WEIGHTS_FILE} is empty ({path}): the download was interrupted; fetch it again")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save writes a zip archive (legacy: a pickle)
        raise WeightsError(f"{WEIGHTS_FILE} is not a PyTorch checkpoint ({path}): expected upstream's model.ckpt; "
                           f"fetch it again")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise WeightsError(f"{WEIGHTS_FILE} is damaged ({path}): {str(exc).splitlines()[0]}; fetch it again") from exc
        raise WeightsError(f"{WEIGHTS_FILE} holds more than tensors ({path}): load it with trust_pickle=True "
                           f"(torch weights_only=False) only if you trust its source") from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise WeightsError(f"cannot read {WEIGHTS_FILE} ({path}): {str(exc).splitlines()[0]}; fetch it again") from exc
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise WeightsError(f"{WEIGHTS_FILE} is not a state dict of tensors ({path}): expected upstream model.ckpt")
    return dict(ckpt)


def _find_config(ckpt_dir: Path) -> Path:
    """model_config.yaml next to model.ckpt, else one directory up (as upstream looks for it)."""
    for candidate in (ckpt_dir / CONFIG_FILE, ckpt_dir.parent / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    raise WeightsError(f"{CONFIG_FILE} not found ({ckpt_dir / CONFIG_FILE}): copy it from the weights release")


def load_checkpoint(ckpt_dir: Path, device: str | torch.device = "cpu", trust_pickle: bool = False,
                    hands: bool = False) -> LoadedCheckpoint:
    """Read an upstream weights directory strictly; every checkpoint key must load or be a known unused prefix.

    `hands` (`full` mode): the hand decoder branch is built and loaded strictly too; otherwise its keys are skipped.
    """
    ckpt_dir = Path(ckpt_dir)
    weights_path = ckpt_dir / WEIGHTS_FILE
    asset_path = ckpt_dir / MHR_ASSET
    for path, what in ((weights_path, "weights"), (asset_path, "MHR body model asset")):
        if not path.is_file():
            raise WeightsError(f"{what} {path.name} not found ({path}): download the full SAM 3D Body release "
                               f"(model.ckpt, model_config.yaml, assets/mhr_model.pt)")
    try:
        rig = load_mhr_asset(asset_path)
    except MHRAssetError as exc:
        raise WeightsError(f"{exc}: use the assets/mhr_model.pt of the same release") from exc
    fixed = MHRConfig()
    layout = {"identity": (rig.num_identity, fixed.num_identity), "expression": (rig.num_expr, fixed.num_expr),
              "model parameter": (rig.num_model_params, fixed.num_model_params)}
    for what, (got, want) in layout.items():
        if got != want:
            raise WeightsError(f"MHR asset has {got} {what} values, SAM 3D Body needs {want} ({asset_path}): "
                               f"use the assets/mhr_model.pt of the SAM 3D Body release")
    cfg = config_from_yaml(_find_config(ckpt_dir), rig_config(rig), hands)
    state = _read_state_dict(weights_path, trust_pickle)

    encoder = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    skipped = (BACKBONE_PREFIX,) + RIG_PREFIXES + (() if hands else BODY_MODE_UNUSED_PREFIXES)
    head_state = {k: v for k, v in state.items() if not k.startswith(skipped)}
    if not encoder:
        raise WeightsError(f"no {BACKBONE_PREFIX}* keys ({weights_path}): not a SAM 3D Body checkpoint")
    skeleton = build_backbone(cfg, device="meta").encoder
    backbone_state = checkpoint_filter_fn(encoder, skeleton)
    _check_keys(skeleton.state_dict(), backbone_state, "backbone", weights_path)

    head = SAM3DBodyHead(cfg, MHRBody(rig), hands=hands)
    _check_keys(head.state_dict(), head_state, "decoder/head", weights_path)
    head.load_state_dict(head_state, strict=True)
    for pose_head in ("head_pose", "head_pose_hand") if hands else ("head_pose",):
        faces = head.get_submodule(pose_head).faces
        if not torch.equal(faces, rig.faces.to(faces)):
            raise WeightsError(f"{pose_head}.faces differ from the mesh of {MHR_ASSET} ({weights_path}): "
                               f"the asset and the checkpoint come from different releases")
    unused = len(state) - len(encoder) - len(head_state)
    source = (f"{ckpt_dir} ({cfg.name} config, {len(backbone_state)} backbone + {len(head_state)} head tensors, "
              + (f"hand branch included, {unused} rig tensors unused)" if hands else
                 f"{unused} hand-branch/rig tensors not used in body mode)"))
    head.weights_description = source
    return LoadedCheckpoint(cfg=cfg, head=head.to(device), backbone_state=backbone_state, source=source)


def rig_config(rig: MHRRig) -> MHRConfig:
    """MHR sizes of a rig (vertex, face, joint counts and corrective width); other sizes are MHR's fixed ones."""
    return dataclasses.replace(MHRConfig(), num_vertices=rig.num_vertices, num_faces=int(rig.faces.shape[0]),
                               num_joints=rig.num_joints, corrective_hidden=rig.corrective_hidden)
