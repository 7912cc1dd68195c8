"""Model dimensions: the upstream `full` SAM 3D Body and a `tiny` test/demo variant of the same code."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackboneConfig:
    """DINOv3 ViT built by timm; features are final-norm patch tokens as (N, embed_dim, 32, 32)."""

    timm_name: str = "vit_huge_plus_patch16_dinov3_qkvb"
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 20
    img_size: int = 512
    patch_size: int = 16
    num_prefix_tokens: int = 5  # CLS + 4 storage (register) tokens

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class DecoderConfig:
    """Promptable body decoder (upstream MODEL.DECODER)."""

    dim: int = 1024
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 1024


# (MHRConfig and DecoderConfig look alike to a duplicate finder: both are plain lists of integer sizes.)
@dataclass(frozen=True)
class MHRConfig:
    """MHR body model sizes (LOD1 in `full`)."""

    num_vertices: int = 18439
    num_faces: int = 36874
    num_joints: int = 127
    num_keypoints: int = 70
    num_regressed_keypoints: int = 308
    num_identity: int = 45
    num_model_params: int = 204
    num_expr: int = 72
    corrective_hidden: int = 3000


@dataclass(frozen=True)
class ModelConfig:
    """All dimensions of one model variant."""

    name: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mhr: MHRConfig = field(default_factory=MHRConfig)


FULL = ModelConfig(name="full")

# Same code at small widths/depth; output structure (127 joints, 70 keypoints, 32x32 grid) is unchanged.
# 642 vertices = a 20x32 UV sphere (V = r*s + 2, F = 2V - 4, as MHR's closed LOD1 mesh).
TINY = ModelConfig(
    name="tiny",
    backbone=BackboneConfig(embed_dim=128, depth=2, num_heads=2),
    decoder=DecoderConfig(dim=64, depth=6, heads=2, dim_head=16, mlp_dim=64),
    mhr=MHRConfig(num_vertices=642, num_faces=1280, corrective_hidden=64),
)

CONFIGS = {"full": FULL, "tiny": TINY}


def get_config(name: str) -> ModelConfig:
    """Return the named config (`full` or `tiny`), or raise ValueError naming the choices."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}") from None
