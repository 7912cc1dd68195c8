"""`tensorrt` backend: the only module that imports TensorRT. Builds engines from the (QDQ) ONNX through the engine
cache and runs them with torch CUDA tensors as I/O on torch's current stream (optionally replayed as CUDA graphs).
Keys, profiles, I/O plan and messages live in engine_cache.py (testable without TensorRT)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..core.config import ModelConfig
from ..core.errors import WeightsError
from .artifact_check import TensorSig, run_batched
from .backend import BackendRequest, BackendSpec
from .engine_cache import (
    CUDA_GRAPHS_ENV,
    MIN_TRT_MAJOR,
    PRECISIONS,
    BuildSettings,
    EngineCache,
    IOPlan,
    ProgressPrinter,
    TensorRTUnavailable,
    check_engine_record,
    default_cache_dir,
    engine_precision,
    engine_record,
    io_plan,
    make_key,
    plan_from_signature,
    profile_shapes,
    tensorrt_install_hint,
)
from .ort_backend import is_quantized

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    """The `tensorrt` module (>= 10), or TensorRTUnavailable with install instructions."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(tensorrt_install_hint(f"import tensorrt failed: {e}")) from e
    if int(trt.__version__.split(".")[0]) < MIN_TRT_MAJOR:
        raise TensorRTUnavailable(tensorrt_install_hint(f"found TensorRT {trt.__version__}"))
    return trt


def gpu_identity(device: torch.device) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of a CUDA device, as used in engine cache keys."""
    return torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)


def build_plan(onnx_path: Path, plan: IOPlan, settings: BuildSettings, timing_cache: Path) -> bytes:
    """Parse the ONNX (path-based, so external weights are found) and build a serialized engine."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise WeightsError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * (1 << 30)))
    config.builder_optimization_level = settings.optimization_level
    if hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 10 (weak typing); 11 removed the flags, types come from the ONNX
        if settings.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if settings.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    elif settings.precision != "fp32":
        log.warning(f"TensorRT {trt.__version__} is strongly typed: layers outside Q/DQ run in the ONNX's float "
                    "type; convert the ONNX to fp16 first (ModelOpt AutoCast) for an fp16 engine")
    if plan.fixed_batch is None:  # a static-shape graph (e.g. batch 1 only) takes no optimisation profile
        lo, opt, hi = profile_shapes(settings.max_batch, settings.opt_batch, plan.img_size)
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _progress_monitor(trt: Any) -> Any:
    """An IProgressMonitor forwarding to ProgressPrinter."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.printer = ProgressPrinter()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.printer.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return self.printer.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            self.printer.phase_finish(phase_name)

    return Monitor()


def engine_for_onnx(
    onnx_path: Path, cfg: ModelConfig, settings: BuildSettings, cache_dir: Path, device: torch.device
) -> tuple[Path, bool]:
    """(engine path, built now?) for an ONNX: loaded from the cache, or built and cached."""
    trt = import_tensorrt()
    plan = io_plan(onnx_path, cfg)
    gpu, cc = gpu_identity(device)
    key = make_key(onnx_path, settings, trt.__version__, gpu, cc)
    cache = EngineCache(cache_dir)
    path, built = cache.get_or_build(key, lambda: build_plan(onnx_path, plan, settings, cache.timing_cache_path(key)))
    return path, built


def engine_signature(engine: Any, trt: Any) -> tuple[list[TensorSig], list[TensorSig]]:
    """Inputs and outputs of a deserialized engine as TensorSig (-1 dims become unknown)."""
    dtypes = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}
    ins, outs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(d if d >= 0 else None for d in engine.get_tensor_shape(name))
        sig = TensorSig(name, shape, dtypes.get(engine.get_tensor_dtype(name), str(engine.get_tensor_dtype(name))))
        (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(sig)
    return ins, outs


class TensorRTBackend:
    """Runs a TensorRT engine on torch CUDA tensors: set_tensor_address + execute_async_v3 on the current stream."""

    name = "tensorrt"

    def __init__(
        self, engine_path: Path, cfg: ModelConfig, device: torch.device, precision: str, cuda_graphs: bool = False
    ) -> None:
        trt = import_tensorrt()
        self.device = device
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise WeightsError(
                f"TensorRT cannot load engine {engine_path} (built by another TensorRT version or GPU?): rebuild it "
                "with `sam3d-body build-engine`"
            )
        self.plan = plan_from_signature(*engine_signature(self.engine, trt), cfg, engine_path)
        self.max_batch = self.plan.fixed_batch or int(self.engine.get_tensor_profile_shape(self.plan.input_name, 0)[2][0])
        self.context = self.engine.create_execution_context()
        self.graphs: dict[int, tuple[Any, Any, torch.Tensor, torch.Tensor]] = {}  # batch -> (graph, context, in, out)

    def _bind(self, context: Any, x: torch.Tensor, out: torch.Tensor) -> None:
        context.set_input_shape(self.plan.input_name, tuple(x.shape))
        context.set_tensor_address(self.plan.input_name, x.data_ptr())
        context.set_tensor_address(self.plan.output_name, out.data_ptr())

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda_graphs:
            return self._replay(x)
        out = torch.empty(self.plan.output_shape(x.shape[0]), device=self.device, dtype=torch.float32)
        self._bind(self.context, x, out)
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for batch {x.shape[0]}")
        return out

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """One captured graph (with its own context and static buffers) per batch size; shapes/addresses are frozen."""
        n = x.shape[0]
        if n not in self.graphs:
            context = self.engine.create_execution_context()
            static_in = torch.empty_like(x)
            static_out = torch.empty(self.plan.output_shape(n), device=self.device, dtype=torch.float32)
            self._bind(context, static_in, static_out)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            context.execute_async_v3(stream.cuda_stream)  # flushes deferred setup before capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                context.execute_async_v3(stream.cuda_stream)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.graphs[n] = (graph, context, static_in, static_out)
        graph, _, static_in, static_out = self.graphs[n]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.device, torch.float32, non_blocking=True).contiguous()
        return run_batched(self._run, x, self.plan.fixed_batch, self.max_batch)


def build(req: BackendRequest) -> TensorRTBackend:
    """`backbone_file` .onnx (engine built once, cached in default_cache_dir()) or a prebuilt .engine.

    CUDA-graph replay is switched on with the environment variable SAM3D_BODY_TRT_CUDA_GRAPHS=1.
    """
    trt = import_tensorrt()
    path, device = req.backbone_file, req.device
    if path.suffix == ".engine":
        check_engine_record(path, trt.__version__, *gpu_identity(device))
        record = engine_record(path)
        engine, prec = path, record["precision"] if record else req.precision
    else:
        prec = engine_precision(req.precision, is_quantized(path))
        engine, _ = engine_for_onnx(path, req.cfg, BuildSettings(precision=prec), default_cache_dir(), device)
    return TensorRTBackend(engine, req.cfg, device, prec, cuda_graphs=os.environ.get(CUDA_GRAPHS_ENV) == "1")


SPEC = BackendSpec(
    name="tensorrt", devices=("cuda",), precisions=PRECISIONS, auto_precision={"cuda": "fp16"},
    file_hint="X.onnx (QDQ for int8: `sam3d-body quantize`, or Embedl's embedl_sam3dbody_int8.onnx) or a prebuilt "
              "X.engine (`sam3d-body build-engine`)",
    build=build,
    requires=import_tensorrt,
)
