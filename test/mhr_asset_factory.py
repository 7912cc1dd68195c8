"""Writes small TorchScript archives laid out like upstream's `assets/mhr_model.pt`, for loader tests."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from sam3d_body_ros.core.mhr import ASSET_JOINT_NAMES, ASSET_TENSORS, MHRRig

# Integer dtypes the real archive uses (the loader normalises them to int64).
_ASSET_DTYPES = {"joint_parents": torch.int32, "skin_joint_indices": torch.int32, "faces": torch.int32}


class _Node(nn.Module):
    """A container of buffers, attributes and child nodes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _node(root: nn.Module, path: list[str]) -> nn.Module:
    """The node at `path` below root, created on the way."""
    node = root
    for name in path:
        if not hasattr(node, name):
            node.add_module(name, _Node())
        node = getattr(node, name)
    return node


def write_mhr_asset(path: Path, rig: MHRRig, omit: str | None = None) -> Path:
    """Script a module holding the rig under upstream's names (minus the dotted name `omit`) and save it."""
    root = _Node()
    for field, dotted in ASSET_TENSORS.items():
        if dotted == omit:
            continue
        *parents, leaf = dotted.split(".")
        tensor = getattr(rig, field)
        _node(root, parents).register_buffer(leaf, tensor.to(_ASSET_DTYPES.get(field, tensor.dtype)))
    if ASSET_JOINT_NAMES != omit:
        *parents, leaf = ASSET_JOINT_NAMES.split(".")
        setattr(_node(root, parents), leaf, list(rig.joint_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet it is the asset's format
        torch.jit.script(root).save(str(path))
    return path
