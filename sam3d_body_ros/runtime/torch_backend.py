"""`torch` backend: the timm backbone in PyTorch, fp32/bf16/fp16, CPU or CUDA.

On CUDA the default is the fast path: SwiGLU fc1 GEMMs stacked, patchify as a GEMM, torch.compile of each
transformer block and one CUDA graph per batch size 1..8; `compile=False, cuda_graphs=False, fuse=False` gives the
plain eager reference (the CPU default).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.backbone import build_backbone
from ..core.synthetic import random_backbone
from .backend import BackendRequest, BackendSpec
from .cuda_graph import DEFAULT_BUCKETS, BucketedRunner

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODE = "default"  # measured on the H100: max-autotune-no-cudagraphs was slower (6.3 vs 5.5 ms) and compiles minutes


class FusedSwiGLU(nn.Module):
    """timm SwiGLU with fc1_g and fc1_x stacked into one GEMM (same function, one launch, better tiling)."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        g, x = mlp.fc1_g, mlp.fc1_x
        self.hidden = g.out_features
        self.fc1 = nn.Linear(g.in_features, 2 * self.hidden, bias=g.bias is not None, device=g.weight.device, dtype=g.weight.dtype)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.cat([g.weight, x.weight]))
            if g.bias is not None:
                self.fc1.bias.copy_(torch.cat([g.bias, x.bias]))
        self.act, self.norm, self.fc2 = mlp.act, mlp.norm, mlp.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).split(self.hidden, dim=-1)
        return self.fc2(self.norm(self.act(gate) * value))


class PatchLinear(nn.Module):
    """A stride=kernel Conv2d patchifier as reshape + one GEMM (cuDNN ran it as a slow implicit SGEMM); same output."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.patch = conv.kernel_size[0]
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        cols = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)
        y = torch.nn.functional.linear(cols, self.weight, self.bias)  # (n, L, out)
        return y.transpose(1, 2).reshape(n, self.out_channels, h // p, w // p)


def fuse_patch_embed(module: nn.Module) -> int:
    """Replace non-overlapping patchify convolutions (kernel == stride, no padding) by PatchLinear; returns the count."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.Conv2d)
                and child.kernel_size == child.stride
                and child.kernel_size[0] == child.kernel_size[1]
                and child.padding == (0, 0)
                and child.groups == 1
            ):
                setattr(parent, name, PatchLinear(child))
                count += 1
    return count


def fuse_swiglu(module: nn.Module) -> int:
    """Replace every timm SwiGLU (fc1_g + fc1_x) under `module` by a FusedSwiGLU; returns the count."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, "fc1_g") and hasattr(child, "fc1_x"):
                setattr(parent, name, FusedSwiGLU(child))
                count += 1
    return count


def with_tf32(fn: Callable[..., object]) -> Callable[..., object]:
    """`fn` run with TF32 matmuls/convolutions allowed (restored afterwards); CUDA-graph capture bakes them in."""

    def call(*args: object) -> object:
        prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            return fn(*args)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev

    return call


def make_runner(
    module: nn.Module,
    device: torch.device,
    *,
    compile: bool | str | None = None,
    cuda_graphs: bool | None = None,
    compile_mode: str = COMPILE_MODE,
    buckets: tuple[int, ...] = DEFAULT_BUCKETS,
    tf32: bool = False,
) -> Callable[..., object]:
    """Wrap `module` as eager, compiled (True: whole module, "regions": `module.compile_regions`, i.e. its repeated
    parts in place) and/or graph-replayed, optionally with TF32 matmuls.

    None means "regions" / graphs on when `device` is CUDA, plain eager on the CPU. Regional compilation compiles a
    few small graphs (one per distinct block) instead of the unrolled model: on the H100 the whole-model compile took
    ~55 s per batch size for the backbone and ran batch 1 0-0.16 ms faster (bench/NOTES.md #11, #12). Compiles use automatic
    dynamic shapes: batch 1 is compiled static, the first larger batch once with a symbolic batch size that then
    serves every other bucket.
    """
    on_cuda = device.type == "cuda"
    compile = ("regions" if on_cuda else False) if compile is None else compile
    cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
    if cuda_graphs and not on_cuda:
        raise ValueError("CUDA graphs need a CUDA device")
    fn: Callable[..., object] = module
    if compile == "regions":
        module.compile_regions(compile_mode)
    elif compile:
        fn = torch.compile(module, mode=compile_mode)
    if tf32:
        fn = with_tf32(fn)
    if compile or cuda_graphs:
        return BucketedRunner(fn, buckets, graphs=cuda_graphs)
    return fn


def head_runner(head: nn.Module, device: torch.device) -> Callable[..., object]:
    """The decoder + MHR head as the pipeline runs it: on CUDA compiled regions, TF32 matmuls and one CUDA graph per
    batch size (3.3 ms at 1 person on the H100, bench/RESULTS.md); eager on the CPU."""
    return make_runner(head, device, tf32=device.type == "cuda")


class TorchBackend:
    """Runs a backbone module with weights cast to `precision`; returns float32 features on `device`."""

    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        precision: str,
        *,
        compile: bool | str | None = None,
        cuda_graphs: bool | None = None,
        compile_mode: str = COMPILE_MODE,
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
        fuse: bool | None = None,
    ) -> None:
        self.device = device
        self.fuse = (device.type == "cuda") if fuse is None else fuse
        self.precision = precision
        self.dtype = self.compute_dtype(precision)
        self.module = self.prepare(module.eval().requires_grad_(False))
        self.runner = make_runner(
            self.module, device, compile=compile, cuda_graphs=cuda_graphs, compile_mode=compile_mode, buckets=buckets
        )

    def compute_dtype(self, precision: str) -> torch.dtype:
        """Activation dtype for `precision`; ValueError for an unsupported one."""
        if precision not in DTYPES:
            raise ValueError(f"{self.name} backend precision must be one of {sorted(DTYPES)}, got {precision!r}")
        return DTYPES[precision]

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move/cast the module; with `fuse`, stack SwiGLU fc1 GEMMs and patchify by GEMM (subclasses quantize here)."""
        module = module.to(device=self.device, dtype=self.dtype)
        if self.fuse:
            fuse_swiglu(module)
            fuse_patch_embed(module)
        return module

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        # Every runner returns a fresh tensor (graph outputs are cloned), so float() never aliases a buffer.
        return self.runner(crops.to(self.device, self.dtype, non_blocking=True)).float()


def backbone_module(req: BackendRequest) -> nn.Module:
    """The timm backbone with `req.backbone_state` loaded, or seeded random weights (torch-based backends)."""
    cfg, backbone_state, seed = req.cfg, req.backbone_state, req.seed
    if backbone_state is None:
        return random_backbone(cfg, seed)
    module = build_backbone(cfg)
    module.load_timm_state(backbone_state)
    return module


SPEC = BackendSpec(
    name="torch", devices=("cpu", "cuda"), precisions=tuple(DTYPES),
    # fp16 runs at bf16's speed on CUDA with ~8x lower feature error (bench/RESULTS.md)
    auto_precision={"cpu": "fp32", "cuda": "fp16"}, file_hint=None,
    build=lambda req: TorchBackend(backbone_module(req), req.device, req.precision),
)
