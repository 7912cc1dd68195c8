"""Writes small TorchScript archives laid out like upstream's `assets/mhr_model.pt`, for loader tests; reads the real
MHR LOD1 mesh fixture (a binary PLY)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
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


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of a binary little-endian PLY (float xyz + optional uchar props)."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[1] == "format binary_little_endian 1.0"
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in header:
        words = line.split()
        if words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            elements[-1][2].append((words[-1], " ".join(words[1:-1])))
    sizes = {"float": "<f4", "uchar": "u1", "int": "<i4"}
    vertex_name, num_vertices, vertex_props = elements[0]
    face_name, num_faces, face_props = elements[1]
    assert vertex_name == "vertex" and face_name == "face" and face_props == [("vertex_indices", "list uchar int")]
    vertex_dtype = np.dtype([(name, sizes[kind]) for name, kind in vertex_props])
    vertices = np.frombuffer(data, vertex_dtype, count=num_vertices, offset=end)
    faces = np.frombuffer(data, np.dtype([("n", "u1"), ("i", "<i4", 3)]), count=num_faces,
                          offset=end + num_vertices * vertex_dtype.itemsize)
    assert (faces["n"] == 3).all()
    assert end + num_vertices * vertex_dtype.itemsize + num_faces * 13 == len(data)
    return np.stack([vertices["x"], vertices["y"], vertices["z"]], 1), faces["i"].astype(np.int64)
