"""Batch-bucketed execution: pad a batch to a fixed bucket size and (on CUDA) replay one captured graph per bucket."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map

# Every batch size up to 8 has its own graph: with a dynamic-batch compile (one compile for batch >= 2) extra buckets
# cost only a capture, and 5 persons no longer run the batch-8 backbone.
DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)


def pick_bucket(n: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= n (n must be 1..max(buckets))."""
    if not 1 <= n <= max(buckets):
        raise ValueError(f"batch {n} outside 1..{max(buckets)}")
    return min(b for b in buckets if b >= n)


def _slice_rows(out: Any, n: int) -> Any:
    return tree_map(lambda t: t[:n].clone() if isinstance(t, torch.Tensor) else t, out)


def _cat_rows(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _cat_rows([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat_rows([p[i] for p in parts]) for i in range(len(first)))
    return first


class BucketedRunner:
    """Calls `fn` on the rows of every tensor argument padded to a bucket size; larger batches run in chunks.

    `fn` must treat batch rows independently (padding rows are stale copies of earlier inputs).
    With `graphs=True` (CUDA only) each bucket is captured once as a `torch.cuda.CUDAGraph`
    after `warmup` eager calls (which also trigger any torch.compile) and replayed afterwards;
    every call returns freshly allocated outputs (no aliasing of the static buffers).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
        *,
        graphs: bool = False,
        warmup: int = 3,
    ) -> None:
        self.fn = fn
        self.buckets = tuple(sorted(buckets))
        self.graphs = graphs
        self.warmup = warmup
        self._static: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = {}
        self._pool = None

    @property
    def captured(self) -> tuple[int, ...]:
        """Bucket sizes with a captured graph."""
        return tuple(sorted(self._static))

    def __call__(self, *args: torch.Tensor) -> Any:
        n = args[0].shape[0]
        cap = self.buckets[-1]
        if n > cap:
            return _cat_rows([self(*(a[i : i + cap] for a in args)) for i in range(0, n, cap)])
        b = pick_bucket(n, self.buckets)
        if not self.graphs:
            padded = [self._pad(a, b) for a in args]
            return _slice_rows(self.fn(*padded), n)
        if b not in self._static:
            self._capture(b, args)
        graph, inputs, outputs = self._static[b]
        for dst, src in zip(inputs, args):
            dst[:n].copy_(src)
        graph.replay()
        return _slice_rows(outputs, n)

    @staticmethod
    def _pad(a: torch.Tensor, b: int) -> torch.Tensor:
        n = a.shape[0]
        if n == b:
            return a
        return torch.cat([a, a[-1:].expand(b - n, *a.shape[1:])])

    def _capture(self, b: int, args: tuple[torch.Tensor, ...]) -> None:
        inputs = [self._pad(a, b).clone() for a in args]
        stream = torch.cuda.Stream(device=inputs[0].device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.fn(*inputs)
        self._static[b] = (graph, inputs, outputs)
