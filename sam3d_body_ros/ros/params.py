"""The node's parameter schema: one table that the node declares from, the CLI and demo build their options from, and
the tests hold config/mesh.yaml and the launch file against. Pure Python (no rclpy), so the CLI can read it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..smoothing import DEFAULT_BETA, DEFAULT_D_CUTOFF, DEFAULT_MIN_CUTOFF

Value = bool | int | float | str


@dataclass(frozen=True)
class Param:
    """One node parameter. `live`: set at run time, it takes effect on the next frame; otherwise it is read when the
    node configures (refused while configured: deactivate, clean up, set it, configure again)."""

    name: str
    default: Value
    description: str
    choices: tuple[Value, ...] = ()
    live: bool = False
    positive: bool = False  # a number that must be > 0

    @property
    def type(self) -> type:
        return type(self.default)

    def check(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None when it is."""
        if type(value) is not self.type and not (self.type is float and type(value) is int):
            return f"{self.name} takes a {self.type.__name__}, got {type(value).__name__} {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name} takes one of {', '.join(map(str, self.choices))}, got {value!r}"
        if self.type in (int, float) and value < 0:
            return f"{self.name} must not be negative, got {value!r}"
        if self.positive and value <= 0:
            return f"{self.name} must be positive, got {value!r}"
        return None


_RELIABILITY = ("reliable", "best_effort")
TRACKING_CHOICES = ("detector", "iou", "off")  # tracks.MODES (not imported: it loads scipy)
BACKEND_CHOICES = ("auto", "torch", "torch-int8", "fused-fp8", "onnxruntime", "tensorrt", "pt2")  # runtime.backend.BACKENDS
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "fp8", "int8")
MODEL_CONFIG_HELP = ("model size when no weights are given: tiny (small dimensions, seconds on a CPU: for tests and the "
                     "weight-less demo) or full (the real 840M-parameter DINOv3 backbone); with weights their own "
                     "config is used")

PARAMS: tuple[Param, ...] = (
    # model (read when the node configures)
    Param("model_config", "tiny", MODEL_CONFIG_HELP, ("tiny", "full")),
    Param("weights_dir", "", "upstream checkpoint dir (model.ckpt, model_config.yaml, assets/mhr_model.pt); "
                             "empty: seeded random weights"),
    Param("backend", "auto", "backbone runtime: auto (torch-int8 on CUDA, torch on CPU), torch, torch-int8, "
                             "fused-fp8, onnxruntime, tensorrt, pt2", BACKEND_CHOICES),
    Param("precision", "auto", "backbone precision: auto (the backend's default for the device), fp32, bf16, fp16, "
                               "fp8, int8", PRECISION_CHOICES),
    Param("device", "auto", "torch device: auto (cuda when a GPU is usable, else cpu), cpu, cuda or cuda:N"),
    Param("backbone_file", "", "backbone artifact for onnxruntime/tensorrt/pt2 (.onnx, .engine, .pt2)"),
    Param("engine_cache_dir", "", "TensorRT engine cache dir (empty: $SAM3D_BODY_ENGINE_CACHE or "
                                  "~/.cache/sam3d_body_ros/engines)"),
    Param("seed", 0, "seed of the random weights used without weights_dir"),
    Param("mode", "body", "body: one decoder pass per person; full: upstream's default, + both hands refined by the "
                          "hand decoder and merged (about 3x the GPU time; needs weights with the hand branch)",
          ("body", "full")),
    Param("warm_up", True, "on CUDA, compile and capture every person count up to max_persons (<= 8) at configure"),
    Param("autostart", True, "configure and activate at start-up (false: wait for a lifecycle manager)"),
    # detections (live)
    Param("max_persons", 10, "at most this many persons per frame, highest scores first (0: no limit)", live=True),
    Param("score_threshold", 0.0, "ignore detections whose score is below this", live=True),
    Param("class_ids", "", "comma-separated detection class ids to keep (e.g. 'person,0'); empty keeps every class",
          live=True),
    # people over time (live)
    Param("tracking", "iou", "track ids of the persons over time: iou (boxes matched frame to frame by IoU with "
                             "their constant-velocity predictions; the default, as many detectors send per-frame "
                             "indices as ids), detector (the detection ids are track ids; boxes without one by IoU) "
                             "or off (ids are per-frame indices, bodies keep the detection ids, no smoothing)",
          TRACKING_CHOICES, live=True),
    Param("track_max_missed", 10, "frames an unmatched track survives (missed or cut by max_persons)", live=True),
    Param("track_max_age", 1.0, "s of header time an unmatched track survives (dropped frames count)", live=True),
    Param("smoothing", True, "per-track One-Euro smoothing of the body parameters before the body model (mesh, "
                             "joints and keypoints stay consistent); only with tracking != off", live=True),
    Param("smoothing_min_cutoff", DEFAULT_MIN_CUTOFF, "One-Euro cutoff in Hz at rest: lower is smoother when still",
          live=True, positive=True),
    Param("smoothing_beta", DEFAULT_BETA, "One-Euro cutoff increase in Hz per m/s or rad/s of speed: higher lags "
                                          "less when moving", live=True),
    Param("smoothing_d_cutoff", DEFAULT_D_CUTOFF, "One-Euro cutoff in Hz of the speed estimate", live=True,
          positive=True),
    # synchronisation (live)
    Param("sync_slop", 0.0, "stamp tolerance in s for matching image/detections/camera_info; 0 = exact stamps",
          live=True),
    Param("sync_queue_size", 10, "messages kept per input while waiting for their partners", live=True),
    Param("camera_info_wait", 0.1, "s to wait for camera_info with the image's stamp before using the latest one "
                                   "of that frame_id (or default intrinsics)", live=True),
    # QoS (read when the node configures)
    Param("image_qos.reliability", "reliable", "image subscription: reliable or best_effort", _RELIABILITY),
    Param("image_qos.depth", 1, "image subscription queue depth"),
    Param("camera_info_qos.reliability", "reliable", "camera_info subscription: reliable or best_effort", _RELIABILITY),
    Param("camera_info_qos.depth", 5, "camera_info subscription queue depth"),
    Param("detections_qos.reliability", "reliable", "detections subscription: reliable or best_effort", _RELIABILITY),
    Param("detections_qos.depth", 5, "detections subscription queue depth"),
    Param("output_qos.reliability", "reliable", "publishers: reliable or best_effort", _RELIABILITY),
    Param("output_qos.depth", 5, "publisher queue depth"),
    # outputs (live)
    Param("publish_markers", True, "publish ~/markers", live=True),
    Param("mesh_triangles", 3000, "triangles per person of the RViz mesh in ~/markers (reduced once at configure, "
                                  "each vertex one of the full mesh); 0: full resolution (36,874)"),
    Param("publish_points", True, "publish ~/mesh/points: all persons' vertices as one PointCloud2 (x y z + person "
                                  "= track id), with the triangles once on ~/mesh/faces (shape_msgs/Mesh)", live=True),
    Param("publish_mesh", True, "include the TRIANGLE_LIST mesh in ~/markers (skeleton only when false)", live=True),
    Param("publish_joints", True, "publish ~/joints", live=True),
    Param("publish_keypoints", True, "publish ~/keypoints", live=True),
    Param("publish_bodies", True, "publish ~/bodies", live=True),
    Param("publish_diagnostics", True, "publish /diagnostics", live=True),
    Param("diagnostics_period", 1.0, "s between /diagnostics messages", live=True),
)
SCHEMA: dict[str, Param] = {p.name: p for p in PARAMS}
PIPELINE_PARAMS = ("model_config", "backend", "weights_dir", "backbone_file", "device", "precision", "seed", "mode")
PEOPLE_PARAMS = ("tracking", "track_max_missed", "track_max_age", "smoothing", "smoothing_min_cutoff",
                 "smoothing_beta", "smoothing_d_cutoff")


def defaults() -> dict[str, Value]:
    """Every parameter at its default."""
    return {p.name: p.default for p in PARAMS}


def coerce(name: str, value: Any) -> Value:
    """`value` (e.g. a CLI string) converted to the type of parameter `name` and checked; ValueError otherwise."""
    param = SCHEMA.get(name)
    if param is None:
        raise ValueError(f"unknown parameter {name!r}")
    if isinstance(value, str) and param.type is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{name} takes true or false, got {value!r}")
        value = value.lower() == "true"
    elif isinstance(value, str) and param.type in (int, float):
        try:
            value = param.type(value)
        except ValueError:
            raise ValueError(f"{name} takes a {param.type.__name__}, got {value!r}") from None
    elif param.type is float and type(value) is int:
        value = float(value)
    problem = param.check(value)
    if problem:
        raise ValueError(problem)
    return value


def read_params_file(path: Path) -> dict[str, Value]:
    """The parameters a ros__parameters YAML sets for this node (nested keys joined with '.'), checked against the
    schema; read with rclpy's own parser where rclpy is present. ValueError names the file and the problem."""
    try:
        raw = _read_with_rclpy(path)
    except ImportError:
        raw = _read_with_yaml(path)
    out: dict[str, Value] = {}
    for name, value in raw.items():
        try:
            out[name] = coerce(name, value)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return out


def _read_with_rclpy(path: Path) -> dict[str, Any]:
    import yaml
    from rclpy.parameter import Parameter, parameter_dict_from_yaml_file

    try:
        msgs = parameter_dict_from_yaml_file(str(path), use_wildcard=True, target_nodes=["/sam3d_body"])
    except (OSError, RuntimeError, yaml.YAMLError, AttributeError) as e:
        raise ValueError(f"{path}: {e}") from None
    return {name: Parameter.from_parameter_msg(msg).value for name, msg in msgs.items()}


def _read_with_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: {e}") from None
    section = next((v["ros__parameters"] for v in doc.values() if isinstance(v, dict) and "ros__parameters" in v), {})

    def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    return flatten(section)


def usage() -> str:
    """`mesh_node --help`: every parameter with its default, whether it is live, and what it does."""
    lines = ["usage: mesh_node [--ros-args -p NAME:=VALUE ... | --params-file config/mesh.yaml]", "",
             "The sam3d_body node: image + camera_info + vision_msgs/Detection2DArray in; body meshes, joints and",
             "boxes in 3D out. Parameters (live: takes effect on the next frame when set at run time; start-up: read",
             "when the node configures):", ""]
    width = max(len(p.name) for p in PARAMS)
    for p in PARAMS:
        default = repr(p.default) if isinstance(p.default, str) else str(p.default).lower()
        lines.append(f"  {p.name:<{width}}  {default:<10} {'live' if p.live else 'start-up':<8}  {p.description}")
    return "\n".join(lines)
