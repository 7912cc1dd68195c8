"""The `sam3d_body` node: image + camera_info + person detections -> body meshes, joints and boxes in 3D."""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from ..core.errors import InputError, WeightsError
from ..core.keypoints import MHR70_NAMES, MHR_JOINT_NAMES
from . import conversions, markers
from .diagnostics import NodeHealth
from .qos import describe, make_qos
from .sync import Frame, StampSynchronizer

NODE_NAME = "sam3d_body"
# name -> (default, description); dotted names are nested keys in config/mesh.yaml.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "model_config": ("tiny", "model size without weights_dir: tiny (fast, for tests/demo) or full (840M backbone)"),
    "backend": ("auto", "backbone runtime: auto (torch-int8 on CUDA, torch on CPU), torch, torch-int8, onnxruntime, "
                        "tensorrt, pt2"),
    "precision": ("auto", "backbone precision: auto (backend default for the device), fp32, bf16, fp16, fp8, int8"),
    "device": ("auto", "torch device: auto (cuda if usable, else cpu), cpu or cuda[:N]"),
    "warm_up": (True, "on CUDA, compile and capture every person count up to max_persons (<= 8) before serving"),
    "weights_dir": ("", "upstream checkpoint dir (model.ckpt, model_config.yaml, assets/mhr_model.pt); empty: random"),
    "backbone_file": ("", "backbone artifact for onnxruntime/tensorrt/pt2 (.onnx, .engine, .pt2)"),
    "engine_cache_dir": ("", "TensorRT engine cache dir (empty: $SAM3D_BODY_ENGINE_CACHE or ~/.cache/...)"),
    "seed": (0, "seed of the random weights used without weights_dir"),
    "max_persons": (10, "at most this many persons per frame, highest scores first (0: no limit)"),
    "score_threshold": (0.0, "ignore detections whose score is below this"),
    "class_ids": ("", "comma-separated detection class ids to keep (e.g. 'person,0'); empty keeps every class"),
    "sync_slop": (0.0, "stamp tolerance in s for matching image/detections/camera_info; 0 = exact stamps"),
    "sync_queue_size": (10, "messages kept per input while waiting for their partners"),
    "camera_info_wait": (0.1, "s to wait for a late camera_info before using default intrinsics"),
    "image_qos.reliability": ("reliable", "image subscription: reliable or best_effort"),
    "image_qos.depth": (1, "image subscription queue depth"),
    "camera_info_qos.reliability": ("reliable", "camera_info subscription: reliable or best_effort"),
    "camera_info_qos.depth": (5, "camera_info subscription queue depth"),
    "detections_qos.reliability": ("reliable", "detections subscription: reliable or best_effort"),
    "detections_qos.depth": (5, "detections subscription queue depth"),
    "output_qos.reliability": ("reliable", "publishers: reliable or best_effort"),
    "output_qos.depth": (5, "publisher queue depth"),
    "publish_mesh": (True, "include the TRIANGLE_LIST mesh in ~/markers (skeleton only when false)"),
    "publish_markers": (True, "publish ~/markers"),
    "publish_joints": (True, "publish ~/joints"),
    "publish_keypoints": (True, "publish ~/keypoints"),
    "publish_bodies": (True, "publish ~/bodies"),
    "publish_diagnostics": (True, "publish /diagnostics"),
    "diagnostics_period": (1.0, "s between /diagnostics messages"),
}
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
    faces: np.ndarray
    ids: list[str]
    class_ids: list[str]
    scores: np.ndarray
    stages: dict[str, float]  # ms per stage so far
    t0: float  # perf_counter at the start of the frame


class MeshNode(Node):
    """Synchronises the inputs, runs BodyPipeline on a worker thread (newest frame only) and publishes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._frames = _Slot()  # newest synchronised frame waiting for the worker
        self._worker = threading.Thread(target=self._work, name="sam3d_body_worker", daemon=True)
        # Results wait here for the publisher thread, so the worker infers frame k+1 while frame k is published
        # (5 persons on the H100: 24 ms inference + 14 ms building/publishing 13 MB of markers).
        self._results = _Slot()
        self._publisher = threading.Thread(target=self._publish_loop, name="sam3d_body_publisher", daemon=True)
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text))
        ro = ParameterDescriptor(read_only=True, description="names in output order")
        self.declare_parameter("joint_names", list(MHR_JOINT_NAMES), ro)
        self.declare_parameter("keypoint_names", list(MHR70_NAMES), ro)
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.params = p
        qos = {k: make_qos(p[f"{k}_qos.reliability"], p[f"{k}_qos.depth"])
               for k in ("image", "camera_info", "detections", "output")}
        self.class_ids = frozenset(c.strip() for c in p["class_ids"].split(",") if c.strip())
        log = self.get_logger()

        self.health = NodeHealth(f"{self.get_name()}: body mesh")
        self._slots = 0
        self._first_markers = True
        self._unmatched_seen: dict[str, int] = {}
        self._load_pipeline(p)

        self.sync = StampSynchronizer(("image", "detections"), ("camera_info",), slop=p["sync_slop"],
                                      queue_size=p["sync_queue_size"], optional_wait=p["camera_info_wait"])
        self.create_subscription(Image, "image", lambda m: self._on_input("image", m), qos["image"])
        self.create_subscription(CameraInfo, "camera_info", lambda m: self._on_input("camera_info", m),
                                 qos["camera_info"])
        from vision_msgs.msg import Detection2DArray, Detection3DArray

        self.create_subscription(Detection2DArray, "detections", lambda m: self._on_input("detections", m),
                                 qos["detections"])
        out = qos["output"]
        self.pub_markers = self.create_publisher(MarkerArray, "~/markers", out) if p["publish_markers"] else None
        self.pub_joints = self.create_publisher(PoseArray, "~/joints", out) if p["publish_joints"] else None
        self.pub_keypoints = self.create_publisher(PoseArray, "~/keypoints", out) if p["publish_keypoints"] else None
        self.pub_bodies = self.create_publisher(Detection3DArray, "~/bodies", out) if p["publish_bodies"] else None
        self.pub_diag = None
        if p["publish_diagnostics"]:
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.create_timer(0.02, self._poll_sync)
        self.cdr_ok = cdr_matches_rmw()
        if self.cdr_ok:
            log.info("markers and pose arrays: serialised with the numpy CDR writer (checked against this rmw)")
        else:
            log.warning("this rmw serialises MarkerArray/PoseArray differently from the built-in CDR writer; "
                        "publishing message objects (slower for large meshes)")

        for k, prof in qos.items():
            log.info(f"QoS {k}: {describe(prof)}")
        sync = "exact stamps" if p["sync_slop"] == 0 else f"approximate, slop {p['sync_slop']} s"
        log.info(f"sync: {sync}; class_ids: {sorted(self.class_ids) or 'all'}; score >= {p['score_threshold']}; "
                 f"max_persons {p['max_persons']}")

        self._worker.start()
        self._publisher.start()

    # ---------------------------------------------------------------- set-up
    def _load_pipeline(self, p: dict[str, Any]) -> None:
        """Build BodyPipeline (imports torch here); missing/bad weights fall back to random weights, loudly."""
        from ..core.pipeline import BodyPipeline, PipelineSettings

        if p["engine_cache_dir"]:
            from ..runtime.engine_cache import CACHE_ENV

            os.environ[CACHE_ENV] = p["engine_cache_dir"]  # where the tensorrt backend caches built engines
        kw = dict(model_config=p["model_config"], backend=p["backend"], weights_dir=p["weights_dir"] or None,
                  backbone_file=p["backbone_file"] or None, device=p["device"], precision=p["precision"],
                  seed=p["seed"])
        try:
            self.pipeline = BodyPipeline(PipelineSettings(**kw))
            self.weights_problem = None
        except (WeightsError, FileNotFoundError) as e:
            if not p["weights_dir"]:
                raise  # not a weights problem (e.g. the backend's runtime is missing): nothing to fall back to
            self.weights_problem = f"weights could not be loaded ({e}); running with RANDOM weights"
            self.get_logger().error(self.weights_problem)
            self.health.warn("weights", self.weights_problem)
            self.pipeline = BodyPipeline(PipelineSettings(**{**kw, "weights_dir": None}))
        pipe = self.pipeline
        self.health.info.update(backend=pipe.backend_name, model_config=pipe.cfg.name, weights=pipe.weights_status,
                                device=str(pipe.device))
        if self.weights_problem:
            self.health.error = self.weights_problem
        self.get_logger().info(f"model {pipe.cfg.name}, backend {pipe.backend_name} on {pipe.device}; "
                               f"{pipe.weights_status}")
        if p["warm_up"] and pipe.device.type == "cuda":
            n = min(p["max_persons"] or 8, 8)
            self.get_logger().info(f"warming up 1..{n} persons (compile + CUDA graphs; first start takes minutes, "
                                   f"later starts reuse the compile cache)")
            t0 = time.monotonic()
            pipe.warm_up(n)
            self.get_logger().info(f"warm-up done in {time.monotonic() - t0:.1f} s")

    # ---------------------------------------------------------------- inputs
    def _warn(self, kind: str, message: str) -> None:
        """Throttled warning (logged at most every 5 s per kind) that also lands in diagnostics."""
        if self.health.warn(kind, message):
            self.get_logger().warning(message)

    def _on_input(self, key: str, msg: Any) -> None:
        frames = self.sync.add(key, conversions.stamp_ns(msg.header), msg, time.monotonic())
        self._submit(frames)

    def _poll_sync(self) -> None:
        self._submit(self.sync.poll(time.monotonic()))
        stats = self.sync.stats
        for key, n in stats.unmatched.items():
            self.health.set_counter(f"unmatched_{key}", n)
        new = stats.unmatched["detections"] - self._unmatched_seen.get("detections", 0)
        if new > 0:
            stamp = stats.last_unmatched["detections"]
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

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        image_msg = frame.msgs["image"]
        header = image_msg.header
        try:
            rgb = conversions.image_to_rgb(image_msg)
        except InputError as e:
            self._warn("image", f"image rejected: {e}")
            return
        h, w = rgb.shape[:2]
        info = frame.msgs.get("camera_info")
        if info is None:
            self._warn("camera_info", "no camera_info with the image's stamp; using default intrinsics "
                                      "(focal = image diagonal, centre)")
            K = None
        else:
            try:
                K = conversions.camera_info_to_K(info)
            except InputError as e:
                self._warn("intrinsics", f"frame skipped: {e}")
                return
        dets = conversions.detections_to_boxes(frame.msgs["detections"], self.class_ids,
                                               self.params["score_threshold"], self.params["max_persons"])
        if dets.rejected:
            self.health.count("detections_filtered", dets.rejected)  # by class_ids, score_threshold, max_persons
        from ..core.crop import validate_boxes

        valid, reasons = validate_boxes(dets.boxes, w, h)
        for reason in reasons:
            self._warn("box", f"detection dropped: {reason}")
        keep = np.flatnonzero(valid)
        boxes = dets.boxes[keep]
        ids = [dets.ids[i] for i in keep]
        cls = [dets.class_ids[i] for i in keep]
        scores = dets.scores[keep]
        t1 = time.perf_counter()
        result = self.pipeline.infer(rgb, boxes, K)
        stages = {"convert": 1000 * (t1 - t0), **{k: v for k, v in result.timings_ms.items() if k != "total"}}
        # waits while the previous frame is still being published
        self._results.put(_Result(header, result.outputs, result.faces, ids, cls, scores, stages, t0))

    def _publish_loop(self) -> None:
        while (r := self._results.take()) is not None:
            t = time.perf_counter()
            try:
                self._publish(r.header, r.outputs, r.faces, r.ids, r.class_ids, r.scores)
            except Exception as e:  # keep serving; the error is logged and in diagnostics
                self._warn("publish", f"frame at {conversions.stamp_ns(r.header) / 1e9:.3f} s not published: "
                                      f"{type(e).__name__}: {e}")
                continue
            end = time.perf_counter()
            self.health.frame_done({**r.stages, "publish": 1000 * (end - t), "total": 1000 * (end - r.t0)},
                                   len(r.ids))

    def _publish(self, header: Header, o: dict[str, np.ndarray], faces: np.ndarray, ids: list[str],
                 cls: list[str], scores: np.ndarray) -> None:
        cam_t = o["pred_cam_t"][:, None, :]
        verts = o["pred_vertices"] + cam_t
        kps = o["pred_keypoints_3d"] + cam_t
        n = len(verts)
        if self.pub_markers is not None and self.pub_markers.get_subscription_count() > 0:  # 2.7 MB per person
            mesh = verts if self.params["publish_mesh"] else None
            specs = markers.marker_specs(mesh, faces, kps, self._slots, clear_all=self._first_markers)
            encode = markers.marker_array_cdr if self.cdr_ok else markers.marker_array
            self.pub_markers.publish(encode(header, specs))
            self._slots, self._first_markers = n, False
        poses = markers.pose_array_cdr if self.cdr_ok else markers.pose_array
        if self.pub_joints is not None:
            self.pub_joints.publish(poses(header, o["pred_joint_coords"] + cam_t, joint_quaternions(o["pred_global_rots"])))
        if self.pub_keypoints is not None:
            self.pub_keypoints.publish(poses(header, kps))
        if self.pub_bodies is not None:
            self.pub_bodies.publish(markers.bodies(header, verts, kps, ids, cls, scores))

    def _publish_diagnostics(self) -> None:
        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(self.health.array(header, hardware_id=str(self.pipeline.device)))

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._frames.close()
        self._results.close()
        for thread in (self._worker, self._publisher):
            if thread.is_alive():
                thread.join(timeout=10.0)
        super().destroy_node()


def cdr_matches_rmw() -> bool:
    """True when the numpy CDR writers (markers.marker_array_cdr, markers.pose_array_cdr) decode, through this rmw,
    to the same messages as the message-object path."""
    from rclpy.serialization import deserialize_message, serialize_message

    rng = np.random.default_rng(0)
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    specs = markers.marker_specs(rng.random((2, 5, 3)), np.array([[0, 1, 2], [2, 3, 4]]), rng.random((2, 70, 3)),
                                 previous_slots=3, clear_all=True)
    pos, quat = rng.random((2, 4, 3)), rng.random((2, 4, 4))
    pairs = [(markers.marker_array_cdr(header, specs), markers.marker_array(header, specs), MarkerArray),
             (markers.pose_array_cdr(header, pos, quat), markers.pose_array(header, pos, quat), PoseArray),
             (markers.pose_array_cdr(header, pos), markers.pose_array(header, pos), PoseArray)]
    try:
        return all(deserialize_message(fast, kind) == deserialize_message(serialize_message(msg), kind)
                   for fast, msg, kind in pairs)
    except Exception:  # a different wire format fails to decode
        return False


def joint_quaternions(global_rots: np.ndarray) -> np.ndarray:
    """(N,J,3,3) pred_global_rots -> (N,J,4) xyzw quaternions of F·R, F = diag(1,-1,-1)."""
    import roma
    import torch

    R = torch.from_numpy(np.ascontiguousarray(FLIP @ np.asarray(global_rots, dtype=np.float64)))
    return roma.rotmat_to_unitquat(R).numpy()


def main(args: list[str] | None = None) -> None:
    """Entry point of `mesh_node`: spin the node on a SingleThreadedExecutor until shut down; a configuration
    error (bad parameter, missing backend runtime) ends it with one line on stderr and exit code 2."""
    rclpy.init(args=args)
    try:
        node = MeshNode()
    except (WeightsError, InputError, ValueError, FileNotFoundError) as e:
        print(f"mesh_node: error: {e}", file=sys.stderr)
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


if __name__ == "__main__":
    main()
