"""Everything around TensorRT that needs no TensorRT: engine cache keys and files, profile shapes, the I/O plan
derived from the ONNX graph, precision rules, build progress printing and the install hint."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.config import ModelConfig
from ..core.errors import RuntimeUnavailable, WeightsError
from .artifact_check import TensorSig, check_backbone_signature, onnx_signature

log = logging.getLogger(__name__)

MIN_TRT_MAJOR = 10
TRT_PIP_VERSION = "10.16.1.11"  # the version Embedl measured its INT8 engine with
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 8
CACHE_ENV = "SAM3D_BODY_ENGINE_CACHE"
CUDA_GRAPHS_ENV = "SAM3D_BODY_TRT_CUDA_GRAPHS"  # "1": replay TensorRT engines as CUDA graphs (one per batch size)


class TensorRTUnavailable(RuntimeUnavailable):
    """TensorRT (>= 10, Python bindings) cannot be imported; the message says how to install it."""


def tensorrt_install_hint(reason: str) -> str:
    """One message naming what failed and how to install TensorRT >= 10."""
    return (
        f"TensorRT >= {MIN_TRT_MAJOR} is needed for the tensorrt backend ({reason}): install it with "
        f"`pip install tensorrt-cu12=={TRT_PIP_VERSION}` (CUDA 12 driver) or `pip install tensorrt-cu13=={TRT_PIP_VERSION}` "
        "(CUDA 13 driver), or NVIDIA's apt packages (`python3-libnvinfer`, TensorRT 10.x) or JetPack 6 on Jetson; "
        "meanwhile use --backend torch, onnxruntime or pt2"
    )


def default_cache_dir() -> Path:
    """$SAM3D_BODY_ENGINE_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/sam3d_body_ros/engines."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sam3d_body_ros" / "engines"


def onnx_content_hash(path: str | Path) -> str:
    """SHA-256 over the .onnx file and every external-data file it references (in name order)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = sorted(
        {
            entry.value
            for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for entry in t.external_data
            if entry.key == "location"
        }
    )
    h = hashlib.sha256()
    for file in [path, *(path.parent / loc for loc in locations)]:
        if not file.is_file():
            raise WeightsError(f"external weights {file.name} of {path} are missing ({file}): keep the .onnx.data beside the .onnx")
        h.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any field that changes makes a cached engine unusable."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    onnx_sha256: str
    precision: str
    max_batch: int
    opt_batch: int

    def digest(self) -> str:
        """Stable SHA-256 of all fields."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def engine_precision(requested: str, quantized: bool) -> str:
    """Engine precision for an ONNX: a QDQ graph always builds INT8 (+fp16 elsewhere); a plain one fp32 or fp16."""
    if requested not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {PRECISIONS}, got {requested!r}")
    if quantized:
        return "int8"
    if requested == "int8":
        raise ValueError("INT8 engines are built from a QDQ ONNX: make one with `sam3d-body quantize`, or use fp16")
    return requested


def default_opt_batch(max_batch: int) -> int:
    """Batch the kernels are tuned for: a few persons per frame (4), never above max_batch."""
    return min(4, max_batch)


def profile_shapes(
    max_batch: int, opt_batch: int, img_size: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the optimisation profile for a dynamic batch 1..max_batch."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch})")
    return tuple((b, 3, img_size, img_size) for b in (1, opt_batch, max_batch))  # type: ignore[return-value]


@dataclass(frozen=True)
class IOPlan:
    """How to bind the engine's I/O: tensor names, fixed batch (if any) and per-batch shapes."""

    input_name: str
    output_name: str
    fixed_batch: int | None
    img_size: int
    channels: int
    grid: int

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, self.img_size, self.img_size)

    def output_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.grid, self.grid)


def plan_from_signature(inputs: list[TensorSig], outputs: list[TensorSig], cfg: ModelConfig, source: str | Path) -> IOPlan:
    """The binding plan of a backbone graph (ONNX or engine), after checking its signature against `cfg`."""
    sig = check_backbone_signature(inputs, outputs, cfg, source)
    b = cfg.backbone
    return IOPlan(sig.input_name, sig.output_name, sig.fixed_batch, b.img_size, b.embed_dim, b.grid)


def io_plan(onnx_path: str | Path, cfg: ModelConfig) -> IOPlan:
    """The binding plan derived from a backbone ONNX's graph inputs/outputs."""
    return plan_from_signature(*onnx_signature(onnx_path), cfg, onnx_path)


@dataclass(frozen=True)
class BuildSettings:
    """Builder inputs that the cache key does not derive from the environment."""

    precision: str
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int = default_opt_batch(DEFAULT_MAX_BATCH)
    workspace_gib: float = 4.0
    optimization_level: int = 3


def make_key(onnx_path: str | Path, settings: BuildSettings, trt_version: str, gpu_name: str, capability: tuple[int, int]) -> EngineKey:
    """The cache key of building `onnx_path` with `settings` on this TensorRT/GPU."""
    return EngineKey(
        trt_version=trt_version,
        gpu_name=gpu_name,
        compute_capability=f"{capability[0]}.{capability[1]}",
        onnx_sha256=onnx_content_hash(onnx_path),
        precision=settings.precision,
        max_batch=settings.max_batch,
        opt_batch=settings.opt_batch,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


class EngineCache:
    """A folder of `<name>.engine` + `<name>.json` (the key and the engine's SHA-256) plus per-GPU timing caches."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)

    def engine_path(self, key: EngineKey) -> Path:
        return self.dir / f"backbone-{key.precision}-b{key.max_batch}-{key.digest()[:16]}.engine"

    def timing_cache_path(self, key: EngineKey) -> Path:
        return self.dir / f"timing-trt{_slug(key.trt_version)}-{_slug(key.gpu_name)}-sm{key.compute_capability}.cache"

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for `key`, or None when absent, built for another key, or altered since it was stored."""
        engine = self.engine_path(key)
        meta = engine.with_suffix(".json")
        if not (engine.is_file() and meta.is_file()):
            return None
        try:
            record = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("key") != asdict(key) or record.get("engine_sha256") != file_sha256(engine):
            return None
        return engine

    def store(self, key: EngineKey, plan: bytes) -> Path:
        """Write the engine and its record atomically (temp file + rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        engine = self.engine_path(key)
        tmp = engine.with_suffix(".engine.tmp")
        tmp.write_bytes(plan)
        os.replace(tmp, engine)
        record = {"key": asdict(key), "engine_sha256": hashlib.sha256(plan).hexdigest()}
        tmp = engine.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, engine.with_suffix(".json"))
        return engine

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes]) -> tuple[Path, bool]:
        """Return (engine path, whether it was built now); builds and stores when no valid engine is cached."""
        cached = self.lookup(key)
        if cached is not None:
            log.info(f"engine cache hit: {cached}")
            return cached, False
        log.info(f"building TensorRT {key.precision} engine (TensorRT {key.trt_version}, {key.gpu_name} "
                 f"sm{key.compute_capability}, batch 1..{key.max_batch}, opt {key.opt_batch}); this takes minutes "
                 f"for the full model")
        return self.store(key, build()), True


def engine_record(engine_path: str | Path) -> dict | None:
    """The cache key stored beside an engine (`<name>.json`), or None for an engine without one (e.g. trtexec's)."""
    meta = Path(engine_path).with_suffix(".json")
    return json.loads(meta.read_text())["key"] if meta.is_file() else None


def check_engine_record(engine_path: str | Path, trt_version: str, gpu_name: str, capability: tuple[int, int]) -> None:
    """For an .engine given directly: if its .json record exists, refuse one built for another TensorRT or GPU."""
    key = engine_record(engine_path)
    if key is None:
        return  # e.g. an engine from trtexec: TensorRT itself rejects an incompatible plan
    want = {"trt_version": trt_version, "gpu_name": gpu_name, "compute_capability": f"{capability[0]}.{capability[1]}"}
    diff = [f"{k} {key.get(k)!r} != {v!r}" for k, v in want.items() if key.get(k) != v]
    if diff:
        raise WeightsError(
            f"engine {engine_path} was built for another setup ({'; '.join(diff)}): rebuild it with "
            "`sam3d-body build-engine --onnx FILE.onnx`, or pass the .onnx and let the cache rebuild it"
        )


class ProgressPrinter:
    """Logs TensorRT build phases as indented lines (`phase: step/total`), throttled to changes of 10 %."""

    def __init__(self) -> None:
        self.phases: dict[str, tuple[int, int, int]] = {}  # name -> (depth, steps, last printed percent)

    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        depth = self.phases[parent][0] + 1 if parent in self.phases else 0
        self.phases[name] = (depth, steps, -10)
        log.info(f"{'  ' * depth}{name} ({steps} steps)")

    def step_complete(self, name: str, step: int) -> bool:
        depth, steps, last = self.phases.get(name, (0, 0, -10))
        pct = 100 * (step + 1) // max(steps, 1)
        if pct - last >= 10:
            self.phases[name] = (depth, steps, pct)
            log.info(f"{'  ' * depth}{name}: {step + 1}/{steps}")
        return True  # False would cancel the build

    def phase_finish(self, name: str) -> None:
        self.phases.pop(name, None)

