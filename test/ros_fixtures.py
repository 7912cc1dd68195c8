"""Helpers for node tests over loopback DDS: per-module domain, a probe node that feeds and records topics."""
from __future__ import annotations

import os
import threading
import time
import zlib
from collections import defaultdict

import numpy as np
import rclpy
import skimage.data
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from sam3d_body_ros.ros.conversions import array_to_image, boxes_to_detections, stamp_ns
from sam3d_body_ros.ros.qos import make_qos

FRAME_ID = "camera_optical_frame"
NODE_NS = "/sam3d_body"
# The astronaut photo (512x512 RGB): whole person, and head + shoulders, as two person boxes.
PHOTO = skimage.data.astronaut()
BOXES = np.array([[120.0, 20.0, 440.0, 512.0], [170.0, 20.0, 330.0, 210.0]])
K = np.array([[600.0, 0.0, 256.0], [0.0, 600.0, 256.0], [0.0, 0.0, 1.0]])


def ros_env(module: str) -> dict[str, str]:
    """Environment for a test module: loopback-only discovery and a domain id unique to the module."""
    domain = 20 + (zlib.crc32(f"{module}:{os.getpid()}".encode()) % 80)
    return {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def init_context(module: str) -> Context:
    """rclpy context on the module's own domain (env is set first: rcl reads it at init)."""
    os.environ.update(ros_env(module))
    ctx = Context()
    rclpy.init(context=ctx)
    return ctx


def header(sec: int, nanosec: int = 0) -> Header:
    """Header with the test frame id."""
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=FRAME_ID)


def camera_info(h: Header, width: int, height: int, k: np.ndarray = K) -> CameraInfo:
    """CameraInfo with intrinsics k."""
    return CameraInfo(header=h, width=width, height=height, k=[float(v) for v in np.asarray(k).reshape(-1)])


class Probe(Node):
    """Publishes the node's inputs (reliable) and records every output by stamp."""

    OUTPUTS = {"markers": MarkerArray, "joints": PoseArray, "keypoints": PoseArray, "mesh/points": PointCloud2}

    def __init__(self, context: Context, ns: str = NODE_NS) -> None:
        super().__init__("sam3d_body_probe", context=context)
        from vision_msgs.msg import Detection2DArray, Detection3DArray

        qos = make_qos("reliable", 10)
        self.pub_image = self.create_publisher(Image, "/image", qos)
        self.pub_info = self.create_publisher(CameraInfo, "/camera_info", qos)
        self.pub_dets = self.create_publisher(Detection2DArray, "/detections", qos)
        self.received: dict[str, list] = defaultdict(list)
        self.lock = threading.Lock()
        for name, typ in {**self.OUTPUTS, "bodies": Detection3DArray}.items():
            self.create_subscription(typ, f"{ns}/{name}", lambda m, n=name: self._store(n, m), qos)
        self.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._store("diagnostics", m), qos)

    def _store(self, name: str, msg) -> None:
        with self.lock:
            self.received[name].append(msg)

    def send(self, h: Header, image: Image | None = None, boxes: np.ndarray | None = None,
             info: CameraInfo | None = None, ids: list[str] | None = None, scores: np.ndarray | None = None) -> None:
        """Publish whichever inputs are given, all with header h (detections after the image)."""
        if info is not None:
            self.pub_info.publish(info)
        if image is not None:
            image.header = h
            self.pub_image.publish(image)
        if boxes is not None:
            self.pub_dets.publish(boxes_to_detections(boxes, h, ids=ids, scores=scores))

    def send_frame(self, sec: int, image: np.ndarray = PHOTO, boxes: np.ndarray = BOXES, **kw) -> Header:
        """A valid frame: rgb8 photo, camera_info with K, person boxes; returns its header."""
        h = header(sec)
        self.send(h, array_to_image(image, "rgb8"), boxes, camera_info(h, image.shape[1], image.shape[0]), **kw)
        return h

    @staticmethod
    def stamp_of(msg) -> int | None:
        """Stamp of an output; a MarkerArray has the stamp of its markers (None when it has none)."""
        if isinstance(msg, MarkerArray):
            return stamp_ns(msg.markers[0].header) if msg.markers else None
        return stamp_ns(msg.header)

    def outputs_at(self, h: Header, names=("markers", "joints", "keypoints", "bodies")) -> dict | None:
        """The output of each topic stamped like h, or None while one is missing."""
        want = stamp_ns(h)
        with self.lock:
            found = {n: next((m for m in self.received[n] if self.stamp_of(m) == want), None) for n in names}
        return None if any(v is None for v in found.values()) else found

    def diagnostics(self) -> dict[str, str]:
        """Key values (plus `level` and `message`) of the latest diagnostics from the node."""
        with self.lock:
            msgs = [s for m in self.received["diagnostics"] for s in m.status if "sam3d_body" in s.name]
        if not msgs:
            return {}
        s = msgs[-1]
        return {"level": int.from_bytes(s.level, "little") if isinstance(s.level, bytes) else int(s.level),
                "message": s.message, **{kv.key: kv.value for kv in s.values}}


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """Poll predicate() until it returns something truthy; return it, or None after timeout s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def resend_until(probe: Probe, send, timeout: float, names=("markers", "joints", "keypoints", "bodies")):
    """Call send() -> Header every 0.5 s until all outputs with that stamp arrived; (header, outputs) or None.
    Re-sending covers messages published before discovery finished."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        h = send()
        got = wait_for(lambda: probe.outputs_at(h, names), min(1.0, max(end - time.monotonic(), 0.01)))
        if got:
            return h, got
    return None


class Spinner:
    """Spins nodes on a SingleThreadedExecutor in a background thread (as the node's own main does)."""

    def __init__(self, context: Context, *nodes: Node) -> None:
        self.executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Shut the executor down and join its thread."""
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
