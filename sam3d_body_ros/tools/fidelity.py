"""Fidelity of a backbone runtime against fp32: feature rel. L2, per-token cosine, and mesh vertex deviation."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rel_l2(test: torch.Tensor, ref: torch.Tensor) -> float:
    """||test - ref|| / ||ref|| over the whole tensor (float64)."""
    t, r = test.double().cpu(), ref.double().cpu()
    return float(torch.linalg.vector_norm(t - r) / torch.linalg.vector_norm(r))


def token_cosine(test: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch token: (N,C,H,W) features -> (N, H*W)."""
    t = test.double().cpu().flatten(2)
    r = ref.double().cpu().flatten(2)
    return torch.nn.functional.cosine_similarity(t, r, dim=1)


def feature_fidelity(test: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Per-image and overall feature metrics of `test` vs `ref` (both (N,C,H,W))."""
    if test.shape != ref.shape:
        raise ValueError(f"feature shapes differ: {tuple(test.shape)} vs {tuple(ref.shape)}")
    per_image = [rel_l2(t, r) for t, r in zip(test, ref)]
    cos = token_cosine(test, ref)
    err = rel_l2(test, ref)
    return {
        "rel_l2": err,
        "rel_l2_per_image": per_image,
        "sqnr_db": -20.0 * math.log10(err) if err > 0 else math.inf,
        "token_cos_mean": float(cos.mean()),
        "token_cos_min": float(cos.min()),
        "max_abs": float((test.double().cpu() - ref.double().cpu()).abs().max()),
        "finite": bool(torch.isfinite(test).all()),
    }


def vertex_deviation_mm(test_vertices: np.ndarray, ref_vertices: np.ndarray) -> dict[str, float]:
    """Mean and max per-vertex Euclidean distance in mm between two (N,V,3) vertex sets in metres."""
    d = np.linalg.norm(np.asarray(test_vertices, np.float64) - np.asarray(ref_vertices, np.float64), axis=-1)
    return {"vertex_mean_mm": float(d.mean() * 1000.0), "vertex_max_mm": float(d.max() * 1000.0)}


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """A short fixed-width table: one row per compared runtime, the key metrics as columns."""
    cols = [
        ("rel_l2", "rel L2 %", lambda v: f"{100 * v:.3f}"),
        ("sqnr_db", "SQNR dB", lambda v: f"{v:.1f}"),
        ("token_cos_mean", "cos mean", lambda v: f"{v:.6f}"),
        ("token_cos_min", "cos min", lambda v: f"{v:.6f}"),
        ("vertex_mean_mm", "vtx mean mm", lambda v: f"{v:.3g}"),
        ("vertex_max_mm", "vtx max mm", lambda v: f"{v:.3g}"),
    ]
    width = max([len("compare")] + [len(k) for k in rows]) + 2
    lines = ["compare".ljust(width) + "".join(h.rjust(12) for _, h, _ in cols)]
    for name, m in rows.items():
        cells = "".join((fmt(m[k]) if k in m and m[k] is not None else "-").rjust(12) for k, _, fmt in cols)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def mesh_deviation(
    samples: list,
    ref_file: str | Path,
    test_file: str | Path,
    *,
    model_config: str,
    weights_dir: str | Path | None = None,
    seed: int = 0,
    backend: str = "onnxruntime",
) -> dict[str, Any]:
    """Vertex deviation (mm) of the whole pipeline run with `test_file` vs `ref_file` as backbone on each sample's
    image and boxes; {"mesh": reason} when the pipeline (decoder + MHR) is not available in this build."""
    try:
        from ..pipeline import BodyPipeline, PipelineSettings
    except ImportError as e:
        return {"mesh": f"not computed: decoder/MHR pipeline unavailable ({e})"}
    verts = []
    for file in (ref_file, test_file):
        pipe = BodyPipeline(
            PipelineSettings(model_config=model_config, backend=backend, weights_dir=weights_dir, backbone_file=file, seed=seed)
        )
        verts.append(np.concatenate([pipe.infer(s.image, s.boxes).outputs["pred_vertices"] for s in samples]))
    return {**vertex_deviation_mm(verts[1], verts[0]), "mesh": pipe.weights_status}
