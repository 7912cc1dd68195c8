"""The `sam3d_body` node: image + camera_info + person detections -> body meshes, joints and boxes in 3D.

A managed (lifecycle) node: `configure` loads the model and warms it up, `activate` starts serving, `deactivate`
stops publishing without unloading, `cleanup` frees the model (and the GPU), `shutdown` ends. With `autostart`
(the default) it configures and activates itself when constructed. Parameters come from ros/params.py: live ones
take effect on the next frame, start-up ones are refused while configured. Persons carry track ids over time and
their bodies are smoothed per track (people.py; parameters tracking*, smoothing*).
"""
from __future__ import annotations

import logging
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from shape_msgs.msg import Mesh
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from ..core.errors import CONFIG_ERRORS, InputError
from ..core.keypoints import MHR70_NAMES, MHR_JOINT_NAMES
from . import conversions, markers, mesh_out
from .cdr import read_image
from .diagnostics import NodeHealth
from .params import PARAMS, PEOPLE_PARAMS, PIPELINE_PARAMS, SCHEMA, usage
from .qos import describe, make_qos
from .sync import Frame, StampSynchronizer

if TYPE_CHECKING:
    from ..people import PeopleSettings

NODE_NAME = "sam3d_body"
FLIP = np.diag([1.0, -1.0, -1.0])  # F applied to pred_global_rots for joint orientations in the camera frame


class _Slot:
    """One-item hand-over between threads; `take` blocks until an item is there and returns None once closed."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item: Any = None
        self._closed = False

    def replace(self, item: Any) -> bool:
        """Put `item`, replacing one still waiting; True if one was replaced."""
        with self._cv:
            replaced = self._item is not None
            self._item = item
            self._cv.notify_all()
            return replaced

    def put(self, item: Any) -> None:
        """Put `item` once the slot is empty (or closed)."""
        with self._cv:
            while self._item is not None and not self._closed:
                self._cv.wait()
            self._item = item
            self._cv.notify_all()

    def take(self) -> Any:
        with self._cv:
            while self._item is None and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            item, self._item = self._item, None
            self._cv.notify_all()
            return item

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


@dataclass
class _Result:
    """One inferred frame on its way from the worker to the publisher thread."""

    header: Header
    outputs: dict[str, np.ndarray]
    ids: list[str]  # of ~/bodies: track ids, or the detection ids with tracking off
    track_ids: list[int]  # of the markers
    class_ids: list[str]
    scores: np.ndarray
    stages: dict[str, float]  # ms per stage so far
    t0: float  # perf_counter at the start of the frame


class _RosLogHandler(logging.Handler):
    """Routes the package's `logging` records (backends, engine builds) to the node's ROS logger."""

    def __init__(self, node: LifecycleNode) -> None:
        super().__init__()
        self.logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        level = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}.get(record.levelno, "error")
        getattr(self.logger, level)(self.format(record))


class MeshNode(LifecycleNode):
    """Synchronises the inputs, runs BodyPipeline on a worker thread (newest frame only) and publishes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for p in PARAMS:
            kind = "live: takes effect on the next frame" if p.live else "start-up: read when the node configures"
            self.declare_parameter(p.name, p.default, ParameterDescriptor(
                description=f"{p.description} ({kind})", additional_constraints=", ".join(map(str, p.choices))))
        ro = ParameterDescriptor(read_only=True, description="names in output order")
        self.declare_parameter("joint_names", list(MHR_JOINT_NAMES), ro)
        self.declare_parameter("keypoint_names", list(MHR70_NAMES), ro)
        self.params: dict[str, Any] = {p.name: self.get_parameter(p.name).value for p in PARAMS}
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._log_handler = _RosLogHandler(self)
        logging.getLogger("sam3d_body_ros").addHandler(self._log_handler)
        logging.getLogger("sam3d_body_ros").setLevel(logging.INFO)

        self.health = NodeHealth(f"{self.get_name()}: body mesh")
        self.pipeline = None
        self.people = None  # track ids + smoothing (people.People), with the pipeline
        self._people_lock = threading.Lock()  # the worker updates it, parameters and time jumps reset it
        self.config_error: str | None = None  # why the last configure failed
        self._active = False
        self._diag_timer = None
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._timers: list[Any] = []
        self._intrinsics: dict[str, CameraInfo] = {}  # frame_id -> latest valid camera_info
        self._cached_info_noted: set[str] = set()
        self._matched_since_unmatched = 0
        self._unmatched_seen: dict[str, int] = {}
        self._apply_live(self.params)
        if self.params["autostart"]:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ---------------------------------------------------------------- parameters
    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Accept live parameters with valid values; refuse start-up ones while configured, with the reason."""
        configured = self.pipeline is not None
        for p in params:
            spec = SCHEMA.get(p.name)
            if spec is None:
                continue  # joint_names / keypoint_names: read-only, refused by rclpy itself
            problem = spec.check(p.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            if not spec.live and configured:
                return SetParametersResult(successful=False, reason=(
                    f"{p.name} is read when the node configures: deactivate and clean up the node "
                    f"(ros2 lifecycle set {self.get_fully_qualified_name()} deactivate, then cleanup), set it, "
                    f"then configure and activate again"))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        changed = {p.name: p.value for p in params if p.name in SCHEMA}
        self.params.update(changed)
        self._apply_live(changed)

    def _apply_live(self, changed: dict[str, Any]) -> None:
        """Make live parameter values take effect (filters, sync tolerances, diagnostics)."""
        p = self.params
        if "class_ids" in changed:
            self.class_ids = frozenset(c.strip() for c in p["class_ids"].split(",") if c.strip())
        if {"sync_slop", "sync_queue_size", "camera_info_wait"} & set(changed):
            self.sync = StampSynchronizer(("image", "detections"), ("camera_info",), slop=p["sync_slop"],
                                          queue_size=p["sync_queue_size"], optional_wait=p["camera_info_wait"])
        if {"publish_diagnostics", "diagnostics_period"} & set(changed) and self.pipeline is not None:
            self._restart_diagnostics()
        if set(PEOPLE_PARAMS) & set(changed) and self.people is not None:
            with self._people_lock:
                self.people.configure(people_settings(p))
        if self.pipeline is not None and changed:
            self.get_logger().info("parameters now in effect: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))

    def _restart_diagnostics(self) -> None:
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self.params["publish_diagnostics"]:
            self._diag_timer = self.create_timer(self.params["diagnostics_period"], self._publish_diagnostics)

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and warm up the model, create subscriptions and publishers; a bad configuration fails with one line."""
        try:
            for p in PARAMS:  # values given at start-up (command line, params file) skip the set-parameters check
                problem = p.check(self.params[p.name])
                if problem:
                    raise ValueError(problem)
            self._load_pipeline()
        except CONFIG_ERRORS as e:
            self.config_error = f"cannot configure: {e}"
            if not self.params["autostart"]:  # with autostart the caller reports it (mesh_node: one line, exit 2)
                self.get_logger().error(self.config_error)
            self.health.error = self.config_error
            return TransitionCallbackReturn.FAILURE
        self.config_error = None
        self.health.error = None
        p = self.params
        qos = {k: make_qos(p[f"{k}_qos.reliability"], p[f"{k}_qos.depth"])
               for k in ("image", "camera_info", "detections", "output")}
        from vision_msgs.msg import Detection2DArray, Detection3DArray

        self._subs = [
            # raw: the image arrives as its serialized bytes and its pixels are viewed in place (cdr.read_image)
            self.create_subscription(Image, "image", self._on_image, qos["image"], raw=True),
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos["camera_info"]),
            self.create_subscription(Detection2DArray, "detections", lambda m: self._on_input("detections", m),
                                     qos["detections"]),
        ]
        out = qos["output"]
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pubs = {"markers": self.create_publisher(MarkerArray, "~/markers", out),
                      "joints": self.create_publisher(PoseArray, "~/joints", out),
                      "keypoints": self.create_publisher(PoseArray, "~/keypoints", out),
                      "bodies": self.create_publisher(Detection3DArray, "~/bodies", out),
                      "points": self.create_publisher(PointCloud2, "~/mesh/points", out),
                      "faces": self.create_publisher(Mesh, "~/mesh/faces", latched),
                      "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", 10)}
        template = self.pipeline.template_vertices()
        self._pubs["faces"].publish(mesh_out.template_mesh(self.pipeline.faces, template))
        self._display = mesh_out.reduce_mesh(template, self.pipeline.faces, p["mesh_triangles"])
        self._timers = [self.create_timer(0.02, self._poll_sync)]
        self._restart_diagnostics()
        self.cdr_ok = cdr_matches_rmw()
        if not self.cdr_ok:
            self.get_logger().warning("this ROS middleware encodes MarkerArray/PoseArray differently from the "
                                      "package's fast encoder; publishing message objects (slower for large meshes)")
        self._marker_ids, self._first_markers = [], True
        self._frames, self._results = _Slot(), _Slot()
        self._threads = [threading.Thread(target=self._work, name="sam3d_body_worker", daemon=True),
                         threading.Thread(target=self._publish_loop, name="sam3d_body_publisher", daemon=True)]
        for thread in self._threads:
            thread.start()
        log = self.get_logger()
        for k, prof in qos.items():
            log.info(f"QoS {k}: {describe(prof)}")
        sync = "exact stamps" if p["sync_slop"] == 0 else f"approximate, slop {p['sync_slop']} s"
        log.info(f"sync: {sync}; class_ids: {sorted(self.class_ids) or 'all'}; score >= {p['score_threshold']}; "
                 f"max_persons {p['max_persons']}")
        s = self.people.settings
        log.info(f"tracking: {s.tracking} (an unmatched track ends after {s.max_missed} frames or {s.max_age_s} s); "
                 + (f"smoothing: One-Euro min_cutoff {s.min_cutoff} Hz, beta {s.beta}, d_cutoff {s.d_cutoff} Hz"
                    if s.smoothed else "smoothing: off"))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.get_logger().info("active: serving")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.get_logger().info("inactive: inputs are ignored, nothing is published (the model stays loaded)")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Stop the threads, drop subscriptions/publishers/timers and the model (freeing GPU memory)."""
        self._active = False
        if self.pipeline is None:
            return
        self._frames.close()
        self._results.close()
        for thread in self._threads:
            thread.join(timeout=1.0)
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        for timer in self._timers + [self._diag_timer]:
            if timer is not None:
                self.destroy_timer(timer)
        self._subs, self._pubs, self._timers, self._diag_timer = [], {}, [], None
        device = self.pipeline.device
        self.pipeline, self.people = None, None
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _load_pipeline(self) -> None:
        """Build BodyPipeline (imports torch here) and People; errors propagate to on_configure."""
        from ..people import People
        from ..pipeline import BodyPipeline, PipelineSettings

        p = self.params
        if p["engine_cache_dir"]:
            from ..runtime.engine_cache import CACHE_ENV

            os.environ[CACHE_ENV] = p["engine_cache_dir"]  # where the tensorrt backend caches built engines
        kw = {k: p[k] for k in PIPELINE_PARAMS}
        kw.update(weights_dir=p["weights_dir"] or None, backbone_file=p["backbone_file"] or None)
        pipe = BodyPipeline(PipelineSettings(**kw))
        self.health.info.update(backend=pipe.backend_name, model_config=pipe.cfg.name, weights=pipe.weights_status,
                                device=str(pipe.device))
        self.get_logger().info(f"model {pipe.cfg.name}, backend {pipe.backend_name} on {pipe.device}; "
                               f"{pipe.weights_status}")
        if p["warm_up"] and pipe.device.type == "cuda":
            n = min(p["max_persons"] or 8, 8)
            self.get_logger().info(f"warming up 1..{n} persons (compile + CUDA graphs; first start takes minutes, "
                                   f"later starts reuse the compile cache)")
            t0 = time.monotonic()
            pipe.warm_up(n)
            self.get_logger().info(f"warm-up done in {time.monotonic() - t0:.1f} s")
        self.people = People(pipe, people_settings(p))
        self.pipeline = pipe

    # ---------------------------------------------------------------- inputs
    def _warn(self, kind: str, message: str) -> None:
        """Throttled warning (logged at most every 5 s per kind) that also lands in diagnostics."""
        if self.health.warn(kind, message):
            self.get_logger().warning(message)

    def _on_image(self, serialized: bytes) -> None:
        try:
            image = read_image(serialized)
        except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
            self._warn("image", f"image message cannot be read ({type(e).__name__}: {e}); is it sensor_msgs/Image?")
            return
        self._on_input("image", image)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        K = conversions.camera_info_to_K(msg)
        if self._active and msg.width > 0 and np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0:
            self._intrinsics[msg.header.frame_id] = msg  # the latest valid one per frame, for images without their own
        self._on_input("camera_info", msg)

    def _on_input(self, key: str, msg: Any) -> None:
        if not self._active:
            return
        stamp = conversions.stamp_ns(msg.header)
        jump = self.sync.time_jump(key, stamp)
        if jump:
            self.health.count("time_jumps")
            with self._people_lock:
                self.people.reset()
            self.get_logger().warning(f"time jumped back by {jump / 1e9:.3f} s (bag loop, simulator reset or camera "
                                      f"restart): synchroniser, tracks and smoothing reset, serving from stamp "
                                      f"{stamp / 1e9:.3f} s")
        self._submit(self.sync.add(key, stamp, msg, time.monotonic()))

    def _poll_sync(self) -> None:
        frames = self.sync.poll(time.monotonic())
        self._submit(frames)
        stats = self.sync.stats
        for key, n in stats.unmatched.items():
            self.health.set_counter(f"unmatched_{key}", n)
        new = stats.unmatched["detections"] - self._unmatched_seen.get("detections", 0)
        if new > 0:
            stamp = stats.last_unmatched["detections"]
            if stats.frames > 0:
                # Frames do match, so these detections lost their image on the way in (node or DDS queue full).
                self.health.count("images_dropped", new)
                self._warn("images_dropped",
                           f"{new} image(s) dropped before reaching the node (busy, or the image queue is full: "
                           f"image_qos.depth={self.params['image_qos.depth']}); their detections were skipped "
                           f"(last at {stamp / 1e9:.3f} s)")
            else:
                self._warn("detections_without_image",
                           f"{new} Detection2DArray message(s) had no image with the same stamp "
                           f"(last at {stamp / 1e9:.3f} s); check that the detector copies the image header "
                           f"or set sync_slop")
        self._unmatched_seen = dict(stats.unmatched)

    def _submit(self, frames: list[Frame]) -> None:
        """Hand the newest frame to the worker; a frame still waiting there is replaced and counted as dropped."""
        if not frames:
            return
        self.health.count("frames_synchronized", len(frames))
        dropped = len(frames) - 1 + self._frames.replace(frames[-1])
        if dropped:
            self.health.count("frames_dropped_busy", dropped)

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        while (frame := self._frames.take()) is not None:
            try:
                self._process(frame)
            except InputError as e:
                self._warn("input", f"frame at {frame.stamp_ns / 1e9:.3f} s rejected: {e}")
            except Exception as e:  # keep serving later frames; the error is logged and in diagnostics
                self._warn("inference", f"frame at {frame.stamp_ns / 1e9:.3f} s failed: {type(e).__name__}: {e}")

    def _intrinsics_for(self, frame: Frame, width: int, height: int) -> np.ndarray | None:
        """K of the frame's camera_info, else of the latest camera_info of the image's frame_id, else None."""
        frame_id = frame.msgs["image"].header.frame_id
        info = frame.msgs.get("camera_info")
        if info is None:
            info = self._intrinsics.get(frame_id)
            if info is not None and frame_id not in self._cached_info_noted:
                self._cached_info_noted.add(frame_id)
                self.get_logger().info(f"no camera_info with the image's stamp: using the latest camera_info of "
                                       f"frame '{frame_id}' (camera_info is normally static; said once)")
        if info is None:
            return None
        if (info.width, info.height) != (width, height):
            self._warn("camera_info_size", f"camera_info is for {info.width}x{info.height} images but the image is "
                                           f"{width}x{height}: ignored (default intrinsics used); publish the "
                                           f"camera_info of this image's resolution")
            return None
        return conversions.camera_info_to_K(info)

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        image_msg = frame.msgs["image"]
        try:
            rgb = conversions.image_to_rgb(image_msg)
        except InputError as e:
            self._warn("image", f"image rejected: {e}")
            return
        h, w = rgb.shape[:2]
        K = self._intrinsics_for(frame, w, h)
        p = self.params
        dets = conversions.detections_to_boxes(frame.msgs["detections"], self.class_ids, p["score_threshold"],
                                               p["max_persons"])
        if dets.rejected:
            self.health.count("detections_filtered", dets.rejected)  # by class_ids, score_threshold, max_persons
        t1 = time.perf_counter()
        try:
            result = self.pipeline.infer(rgb, dets.boxes, K, drop_invalid=True)
        except InputError as e:
            self._warn("intrinsics", f"frame at {frame.stamp_ns / 1e9:.3f} s skipped: {e}")
            return
        if result.intrinsics_note:
            self._warn("camera_info", f"{result.intrinsics_note} for frame '{image_msg.header.frame_id}': using "
                                      f"default intrinsics (focal = image diagonal, centre); joints may be off by "
                                      f"tens of cm; publish a calibrated camera_info")
        if result.rejected:
            self.health.count("boxes_dropped", len(result.rejected))
            self._warn("box", f"frame at {frame.stamp_ns / 1e9:.3f} s: {len(result.rejected)} detection(s) dropped: "
                              + "; ".join(result.rejected))
        keep = result.kept
        det_ids = [dets.ids[i] for i in keep]
        with self._people_lock:
            track_ids, outputs = self.people.update(frame.stamp_ns, dets.boxes[keep], det_ids, result)
            ids = det_ids if self.people.settings.tracking == "off" else [str(t) for t in track_ids]
            people_ms = self.people.timings_ms
        stages = {"convert": 1000 * (t1 - t0), **{k: v for k, v in result.timings_ms.items() if k != "total"},
                  **people_ms}
        # waits while the previous frame is still being published
        self._results.put(_Result(image_msg.header, outputs, ids, track_ids,
                                  [dets.class_ids[i] for i in keep], dets.scores[keep], stages, t0))

    def _publish_loop(self) -> None:
        while (r := self._results.take()) is not None:
            if not self._active:
                continue
            t = time.perf_counter()
            try:
                self._publish(r.header, r.outputs, r.ids, r.track_ids, r.class_ids, r.scores)
            except Exception as e:  # keep serving; the error is logged and in diagnostics
                self._warn("publish", f"frame at {conversions.stamp_ns(r.header) / 1e9:.3f} s not published: "
                                      f"{type(e).__name__}: {e}")
                continue
            end = time.perf_counter()
            self.health.frame_done({**r.stages, "publish": 1000 * (end - t), "total": 1000 * (end - r.t0)},
                                   len(r.ids))

    def _publish(self, header: Header, o: dict[str, np.ndarray], ids: list[str],
                 track_ids: list[int], cls: list[str], scores: np.ndarray) -> None:
        p, pubs = self.params, self._pubs
        cam_t = o["pred_cam_t"][:, None, :]
        verts = o["pred_vertices"] + cam_t
        kps = o["pred_keypoints_3d"] + cam_t
        if p["publish_points"] and pubs["points"].get_subscription_count() > 0:  # 0.3 MB a person; faces once
            pubs["points"].publish(mesh_out.point_cloud_cdr(header, verts, np.asarray(track_ids, np.uint32)))
        if p["publish_markers"] and pubs["markers"].get_subscription_count() > 0:
            # display resolution: mesh_triangles triangles a person, each a gather of the full mesh
            mesh = verts[:, self._display.keep] if p["publish_mesh"] else None
            specs = markers.marker_specs(mesh, self._display.faces, kps, track_ids, self._marker_ids,
                                         clear_all=self._first_markers)
            encode = markers.marker_array_cdr if self.cdr_ok else markers.marker_array
            pubs["markers"].publish(encode(header, specs))
            self._marker_ids, self._first_markers = track_ids, False
        poses = markers.pose_array_cdr if self.cdr_ok else markers.pose_array
        if p["publish_joints"]:
            pubs["joints"].publish(poses(header, o["pred_joint_coords"] + cam_t,
                                         joint_quaternions(o["pred_global_rots"])))
        if p["publish_keypoints"]:
            pubs["keypoints"].publish(poses(header, kps))
        if p["publish_bodies"]:
            pubs["bodies"].publish(markers.bodies(header, verts, kps, ids, cls, scores))

    def _publish_diagnostics(self) -> None:
        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        hardware = str(self.pipeline.device) if self.pipeline is not None else ""
        self._pubs["diagnostics"].publish(self.health.array(header, hardware_id=hardware))

    def destroy_node(self) -> None:
        """Stop the threads and free the model, then destroy the node."""
        self._release()
        logging.getLogger("sam3d_body_ros").removeHandler(self._log_handler)
        super().destroy_node()


def cdr_matches_rmw() -> bool:
    """True when the numpy CDR writers (markers.marker_array_cdr, markers.pose_array_cdr) decode, through this rmw,
    to the same messages as the message-object path."""
    from rclpy.serialization import deserialize_message, serialize_message

    rng = np.random.default_rng(0)
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    specs = markers.marker_specs(rng.random((2, 5, 3)), np.array([[0, 1, 2], [2, 3, 4]]), rng.random((2, 70, 3)),
                                 ids=[4, 1], previous_ids=[1, 2, 3], clear_all=True)
    pos, quat = rng.random((2, 4, 3)), rng.random((2, 4, 4))
    pairs = [(markers.marker_array_cdr(header, specs), markers.marker_array(header, specs), MarkerArray),
             (markers.pose_array_cdr(header, pos, quat), markers.pose_array(header, pos, quat), PoseArray),
             (markers.pose_array_cdr(header, pos), markers.pose_array(header, pos), PoseArray)]
    try:
        return all(deserialize_message(fast, kind) == deserialize_message(serialize_message(msg), kind)
                   for fast, msg, kind in pairs)
    except Exception:  # a different wire format fails to decode
        return False


def people_settings(p: dict[str, Any]) -> PeopleSettings:
    """people.PeopleSettings of the node's parameters PEOPLE_PARAMS (imported here: tracks loads scipy)."""
    from ..people import PeopleSettings

    return PeopleSettings(tracking=p["tracking"], max_missed=p["track_max_missed"], max_age_s=p["track_max_age"],
                          smoothing=p["smoothing"], min_cutoff=p["smoothing_min_cutoff"], beta=p["smoothing_beta"],
                          d_cutoff=p["smoothing_d_cutoff"])


def joint_quaternions(global_rots: np.ndarray) -> np.ndarray:
    """(N,J,3,3) pred_global_rots -> (N,J,4) xyzw quaternions of F·R, F = diag(1,-1,-1)."""
    import roma
    import torch

    R = torch.from_numpy(np.ascontiguousarray(FLIP @ np.asarray(global_rots, dtype=np.float64)))
    return roma.rotmat_to_unitquat(R).numpy()


def main(args: list[str] | None = None) -> None:
    """Entry point of `mesh_node`. `--help` prints the parameters. The node starts on a helper thread so that
    SIGINT/SIGTERM end the process within a fraction of a second at any moment (exit 0, no traceback); with
    autostart a configuration error ends it with one line on stderr and exit code 2."""
    argv = sys.argv[1:] if args is None else args
    user_args = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    if "-h" in user_args or "--help" in user_args:
        print(usage())
        sys.exit(0)
    rclpy.init(args=args)
    box: dict[str, Any] = {}

    def start() -> None:
        try:
            box["node"] = MeshNode()
        except Exception as e:  # reported below as one line
            box["error"] = e

    starter = threading.Thread(target=start, name="sam3d_body_start", daemon=True)
    starter.start()
    try:
        while starter.is_alive():
            starter.join(0.1)
            if not rclpy.ok():  # rclpy's SIGINT/SIGTERM handler shut the context down during start-up
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("mesh_node: interrupted during start-up", file=sys.stderr, flush=True)
        os._exit(0)  # the model load cannot be interrupted; nothing has been published yet
    node = box.get("node")
    if node is None:  # not a configuration error: say what broke, in one line
        error = box["error"]
        print(f"mesh_node: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(2)
    if node.params["autostart"] and node.config_error:
        print(f"mesh_node: error: {node.config_error}", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
        sys.exit(2)
    # Callbacks only queue frames (inference runs on the worker thread), so one executor thread is enough; rclpy's
    # MultiThreadedExecutor busy-polls while a callback of the node's exclusive group runs and, competing for the GIL
    # with the worker, let the node take only ~10% of 30 Hz input on the H100 machine (bench/NOTES.md).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    # The node and rclpy are shut down: leave without the interpreter's teardown of torch and friends, which took up
    # to 2.5 s after a SIGTERM on a loaded 2-core machine (the stop itself took 8 ms), against 3 s for a clean stop.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
