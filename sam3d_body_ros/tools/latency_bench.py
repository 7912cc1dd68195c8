#!/usr/bin/env python3
"""End-to-end latency of the `sam3d_body` node over loopback DDS (issue #5: node 30 Hz, 5 persons, no drops,
p95 <= 40 ms).

Starts the node as its own process (`python -m sam3d_body_ros.ros.node`) on a private ROS domain limited to
localhost, then, for each persons count P, publishes from this process a 1280x720 RGB photo (the scikit-image
astronaut, resized and tiled), its CameraInfo and a Detection2DArray of P person boxes at a fixed rate, and
records when ~/markers and ~/bodies arrive for each image stamp. Per P: readiness (single frames until one is
answered), an uncounted warm-up stream, the measured stream, a short drain. Latency = image publish ->
MarkerArray received (matched by header stamp). Drops = frames sent - frames answered; the node's own
`frames_dropped_busy` (from /diagnostics) says how many of those reached the node but were skipped because it
was still busy (the rest were overwritten in the DDS queues before they were synchronised).

    python -m sam3d_body_ros.tools.latency_bench --config full --device cuda --out node.json

(`sam3d-body bench` runs it after its in-process measurements and merges the rows into its JSON.)

Prints a table and writes JSON whose list `node` holds {persons, rate_hz, drops, median_ms, p95_ms, ...}, the
shape of `node` in bench/results.json. The node process is stopped on every exit (normal, error, Ctrl-C,
SIGTERM, --timeout).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..ros.params import coerce
from .options import add_model_args
from .thread_profile import summarize, table

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding sam3d_body_ros/
WIDTH, HEIGHT = 1280, 720
NODE_NS = "/sam3d_body"
DIAG_PERIOD = 0.5  # s between the node's /diagnostics messages during the bench


def photo() -> np.ndarray:
    """(720, 1280, 3) uint8: the astronaut photo resized to 720x720, tiled twice across and cut to 1280 wide."""
    import cv2
    import skimage.data

    a = cv2.resize(skimage.data.astronaut(), (HEIGHT, HEIGHT), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(np.concatenate([a, a], axis=1)[:, :WIDTH])


def person_boxes(persons: int) -> np.ndarray:
    """(P, 4) xyxy boxes: one person = the astronaut's body; several = upright boxes spread across the image."""
    if persons == 1:
        return np.array([[120.0, 20.0, 440.0, 512.0]]) * (HEIGHT / 512.0)
    width = 0.9 * WIDTH / persons
    x0 = (np.arange(persons) + 0.05) * WIDTH / persons
    y0 = np.linspace(40.0, 120.0, persons)
    return np.stack([x0, y0, x0 + width, y0 + 0.75 * HEIGHT], axis=1)


def intrinsics() -> np.ndarray:
    """K with focal = image diagonal and the principal point at the centre (the node's default convention)."""
    f = float(np.hypot(WIDTH, HEIGHT))
    return np.array([[f, 0.0, WIDTH / 2.0], [0.0, f, HEIGHT / 2.0], [0.0, 0.0, 1.0]])


def cdr_stamp(data: bytes, offset: int) -> int | None:
    """Header stamp (ns) read from a serialised message: int32 sec + uint32 nanosec at `offset` bytes after the
    4-byte CDR encapsulation header (little endian checked); None when the buffer is too short."""
    if len(data) < 4 + offset + 8 or not data[1] & 1:  # odd encapsulation id = little endian
        return None
    sec, nsec = struct.unpack_from("<iI", data, 4 + offset)
    return sec * 1_000_000_000 + nsec


class Recorder:
    """Arrival times (perf_counter s) of ~/markers and ~/bodies by image stamp, and the node's diagnostics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: dict[str, dict[int, float]] = {"markers": {}, "bodies": {}}
        self.diagnostics: deque[tuple[float, dict[str, str]]] = deque(maxlen=50)
        self.checked = False
        self.error: str | None = None

    def on_markers(self, data: bytes) -> None:
        # MarkerArray: uint32 count, then markers[0].header.stamp; an empty array has no stamp.
        t = time.perf_counter()
        if len(data) >= 8 and struct.unpack_from("<I", data, 4)[0] > 0:
            self._arrived("markers", cdr_stamp(data, 4), t, data)

    def on_bodies(self, data: bytes) -> None:
        self._arrived("bodies", cdr_stamp(data, 0), time.perf_counter(), None)  # Detection3DArray: header first

    def _arrived(self, topic: str, stamp: int | None, t: float, data: bytes | None) -> None:
        if stamp is None:
            return
        with self.lock:
            self.arrivals[topic].setdefault(stamp, t)
            if data is not None and not self.checked:
                self.checked = True
                self._check_offsets(data, stamp)

    def _check_offsets(self, data: bytes, stamp: int) -> None:
        """Once: the stamp read from the raw MarkerArray bytes must equal the one rclpy deserialises."""
        from rclpy.serialization import deserialize_message
        from visualization_msgs.msg import MarkerArray

        h = deserialize_message(data, MarkerArray).markers[0].header
        if h.stamp.sec * 1_000_000_000 + h.stamp.nanosec != stamp:
            self.error = "MarkerArray stamp read from the raw bytes differs from rclpy's: unknown wire format"

    def on_diagnostics(self, msg: Any) -> None:
        for s in msg.status:
            if s.name.startswith("sam3d_body"):
                with self.lock:
                    self.diagnostics.append((time.perf_counter(), {kv.key: kv.value for kv in s.values}))

    def answered(self, topic: str, stamp: int) -> float | None:
        with self.lock:
            return self.arrivals[topic].get(stamp)

    def diagnostics_after(self, t: float) -> dict[str, str] | None:
        """Latest diagnostics received after perf_counter time t, or None."""
        with self.lock:
            return next((d for rt, d in reversed(self.diagnostics) if rt > t), None)


class NodeProcess:
    """The node in its own process group; `stop()` ends it (SIGINT, then SIGKILL after a grace period)."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], log_path: Path) -> None:
        params = {"model_config": args.config, "device": args.device, "backend": args.backend,
                  "precision": args.precision, "diagnostics_period": DIAG_PERIOD, "publish_mesh": not args.no_mesh,
                  **dict(p.split(":=", 1) for p in args.param)}
        params = {k: coerce(k, v) for k, v in params.items()}  # checked against the node's schema
        cmd = [sys.executable, "-m", "sam3d_body_ros.ros.node", "--ros-args"]
        for k, v in params.items():
            cmd += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
        self.log_path = log_path
        self.log = open(log_path, "w")
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def check_alive(self) -> None:
        """Raise with the end of the node's log when it has exited."""
        if self.proc.poll() is not None:
            self.log.flush()
            raise RuntimeError(f"node exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, grace: float = 10.0) -> int | None:
        """Stop the node's process group; return its exit code."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGINT)
                self.proc.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10.0)
        self.log.close()
        return self.proc.returncode


class Bench:
    """Publisher of the node's inputs and subscriber of its outputs, spun on a background executor."""

    def __init__(self, context: Any, recorder: Recorder) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import CameraInfo, Image
        from vision_msgs.msg import Detection2DArray, Detection3DArray
        from visualization_msgs.msg import MarkerArray

        from sam3d_body_ros.ros.conversions import array_to_image
        from sam3d_body_ros.ros.qos import make_qos

        self.node = Node("sam3d_body_node_bench", context=context)
        qos = make_qos("reliable", 10)
        self.pub_image = self.node.create_publisher(Image, "/image", qos)
        self.pub_info = self.node.create_publisher(CameraInfo, "/camera_info", qos)
        self.pub_dets = self.node.create_publisher(Detection2DArray, "/detections", qos)
        self.node.create_subscription(MarkerArray, f"{NODE_NS}/markers", recorder.on_markers, qos, raw=True)
        self.node.create_subscription(Detection3DArray, f"{NODE_NS}/bodies", recorder.on_bodies, qos, raw=True)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", recorder.on_diagnostics, qos)
        self.image = array_to_image(photo(), "rgb8")
        self.info = CameraInfo(width=WIDTH, height=HEIGHT, k=[float(v) for v in intrinsics().reshape(-1)])
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def send(self, stamp_ns: int, boxes: np.ndarray) -> float:
        """Publish camera_info, image and detections stamped stamp_ns; return the image's publish time."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        from sam3d_body_ros.ros.conversions import boxes_to_detections

        h = Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                   frame_id="camera_optical_frame")
        self.info.header = h
        self.pub_info.publish(self.info)
        self.image.header = h
        t = time.perf_counter()
        self.pub_image.publish(self.image)
        self.pub_dets.publish(boxes_to_detections(boxes, h))
        return t

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


class Stamps:
    """Unique increasing stamps (ns) from the wall clock."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last = max(time.time_ns(), self.last + 1000)
        return self.last


def wait_until(predicate, timeout: float, node: NodeProcess, interval: float = 0.01):
    """Poll predicate() until truthy (return it) or timeout (return None); raise if the node died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        node.check_alive()
        time.sleep(interval)
    return None


def make_ready(bench: Bench, rec: Recorder, node: NodeProcess, stamps: Stamps, boxes: np.ndarray,
               timeout: float) -> float:
    """Send single frames (every 2 s) until one is answered on ~/markers (discovery, model load, compilation);
    return the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = stamps()
        bench.send(s, boxes)
        if wait_until(lambda: rec.answered("markers", s), min(2.0, timeout), node):
            return time.monotonic() - t0
    raise TimeoutError(f"no ~/markers answer within {timeout:.0f} s; node log tail:\n{node.log_tail()}")


def stream(bench: Bench, node: NodeProcess, stamps: Stamps, boxes: np.ndarray, rate: float,
           seconds: float) -> tuple[list[tuple[int, float]], float]:
    """Publish frames at `rate` Hz for `seconds` on a fixed schedule; return [(stamp, publish time)] and the
    send window in s."""
    n = max(1, int(round(rate * seconds)))
    sent = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        s = stamps()
        sent.append((s, bench.send(s, boxes)))
        if i % 30 == 0:
            node.check_alive()
    time.sleep(max(0.0, t0 + n / rate - time.perf_counter()))  # the last frame's period belongs to the window
    return sent, time.perf_counter() - t0


def counters(d: dict[str, str]) -> dict[str, int]:
    """The node's frame counters from one diagnostics status."""
    keys = ("frames_synchronized", "frames_processed", "frames_dropped_busy", "unmatched_image",
            "unmatched_detections")
    return {k: int(d.get(k, 0)) for k in keys}


def fresh_diagnostics(rec: Recorder, node: NodeProcess, after: float) -> dict[str, str]:
    """Diagnostics published after perf_counter time `after` (waits at most a few periods)."""
    d = wait_until(lambda: rec.diagnostics_after(after + DIAG_PERIOD + 0.05), 6 * DIAG_PERIOD + 2.0, node)
    if d is None:
        raise TimeoutError("no /diagnostics from the node")
    return d


def measure(bench: Bench, rec: Recorder, node: NodeProcess, stamps: Stamps, persons: int,
            args: argparse.Namespace) -> dict[str, Any]:
    """Readiness, warm-up stream, measured stream and drain for one persons count; the result row."""
    boxes = person_boxes(persons)
    ready_s = make_ready(bench, rec, node, stamps, boxes, args.ready_timeout)
    if rec.error:
        raise RuntimeError(rec.error)
    warm, _ = stream(bench, node, stamps, boxes, args.rate, args.warmup)
    # Baseline once the warm-up is over: its last frame answered (or 10 s passed), nothing left in flight.
    wait_until(lambda: rec.answered("markers", warm[-1][0]), 10.0, node)
    time.sleep(0.3)
    base = counters(fresh_diagnostics(rec, node, time.perf_counter()))

    profilers = start_profilers(node.pid, persons, args) if args.profile else []
    sent, window = stream(bench, node, stamps, boxes, args.rate, args.duration)
    profiles = finish_profilers(profilers)
    # Drain: until the last frame is answered, or nothing new arrived for 2 s (max 15 s).
    end, last_count, last_change = time.monotonic() + 15.0, -1, time.monotonic()
    while time.monotonic() < end and rec.answered("markers", sent[-1][0]) is None:
        with rec.lock:
            count = len(rec.arrivals["markers"])
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 2.0:
            break
        node.check_alive()
        time.sleep(0.02)
    diag = fresh_diagnostics(rec, node, time.perf_counter())
    after = counters(diag)
    delta = {k: after[k] - base[k] for k in after}

    lat = np.array([1000.0 * (t - t_pub) for s, t_pub in sent if (t := rec.answered("markers", s)) is not None])
    lat_bodies = np.array([1000.0 * (t - t_pub) for s, t_pub in sent
                           if (t := rec.answered("bodies", s)) is not None])
    answered = len(lat)
    row: dict[str, Any] = {
        "persons": persons, "rate_hz": answered / window, "drops": len(sent) - answered,
        "median_ms": float(np.median(lat)) if answered else None,
        "p95_ms": float(np.percentile(lat, 95)) if answered else None,
        "max_ms": float(lat.max()) if answered else None,
        "sent": len(sent), "answered": answered, "send_rate_hz": len(sent) / window,
        "dropped_busy": delta["frames_dropped_busy"],
        "lost_before_sync": len(sent) - answered - delta["frames_dropped_busy"],
        "node_counters": delta,
        "bodies_median_ms": float(np.median(lat_bodies)) if len(lat_bodies) else None,
        "bodies_p95_ms": float(np.percentile(lat_bodies, 95)) if len(lat_bodies) else None,
        "node_stage_ms": {k[:-3]: float(v) for k, v in diag.items() if k.endswith("_ms")},
        "ready_s": ready_s,
    }
    if profiles:
        row["thread_profile"] = profiles
    return row


def start_profilers(pid: int, persons: int, args: argparse.Namespace) -> list[tuple[str, Path, subprocess.Popen]]:
    """py-spy samplers on the node for the measured stream: all running threads, and the GIL holder only."""
    procs = []
    for kind, extra in (("active", []), ("gil", ["--gil"])):
        out = args.profile / f"node-{persons}p-{kind}.txt"
        cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", "200",
               "--threads", "--nonblocking", "--format", "raw", "-o", str(out), *extra]
        procs.append((kind, out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    return procs


def finish_profilers(procs: list[tuple[str, Path, subprocess.Popen]]) -> dict[str, Any]:
    """Wait for the samplers; per kind the per-thread summary (thread_profile.summarize) or the error."""
    result: dict[str, Any] = {}
    for kind, out, proc in procs:
        _, err = proc.communicate(timeout=60)
        result[kind] = summarize(out.read_text()) if proc.returncode == 0 and out.exists() else \
            {"error": err.decode(errors="replace")[-500:]}
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, ("--config", "--device", "--backend", "--precision"))
    ap.set_defaults(config="full", device="cuda")  # the device benchmark: the real model on the GPU
    ap.add_argument("--rate", type=float, default=30.0, help="publish rate (Hz)")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per persons count")
    ap.add_argument("--warmup", type=float, default=5.0, help="uncounted streaming seconds before each measurement")
    ap.add_argument("--persons", type=int, nargs="+", default=[1, 5], help="persons per frame, one row each")
    ap.add_argument("--ready-timeout", type=float, default=300.0,
                    help="s to wait for the first answer per persons count (model load, compilation)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="hard limit for the whole run (s)")
    ap.add_argument("--no-mesh", action="store_true", help="node publishes skeleton markers only")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="another node parameter (repeatable), e.g. mode:=full")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="sample the node's threads with py-spy during each measured stream; raw stacks to DIR")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: from this pid, 1..101)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or min(args.persons) < 1:
        ap.error("--rate and --duration must be > 0, --warmup >= 0, --persons >= 1")
    if args.profile:
        if shutil.which("py-spy") is None:
            ap.error("--profile needs py-spy on PATH: pip install py-spy")
        args.profile.mkdir(parents=True, exist_ok=True)
    return args


def print_table(rows: list[dict[str, Any]], rate: float) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"\nnode end to end over loopback DDS (target {rate:g} Hz): image publish -> ~/markers received")
    print(f"{'persons':>7} {'sent':>5} {'answered':>8} {'drops':>5} {'busy':>5} {'rate Hz':>7} "
          f"{'median ms':>9} {'p95 ms':>7} {'max ms':>7}")
    for r in rows:
        print(f"{r['persons']:>7} {r['sent']:>5} {r['answered']:>8} {r['drops']:>5} {r['dropped_busy']:>5} "
              f"{r['rate_hz']:>7.2f} {fmt(r['median_ms']):>9} {fmt(r['p95_ms']):>7} {fmt(r['max_ms']):>7}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the node, measure every persons count, stop the node; the JSON document."""
    domain = args.domain_id if args.domain_id is not None else 1 + os.getpid() % 101
    ros_env = {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    os.environ.update(ros_env)  # rcl reads these at init
    import rclpy
    from rclpy.context import Context

    log_dir = Path(tempfile.mkdtemp(prefix="node_bench_"))
    node = NodeProcess(args, {**os.environ, **ros_env}, log_dir / "node.log")
    ctx = Context()
    bench = None
    t0 = time.monotonic()
    try:
        rclpy.init(args=["latency_bench"], context=ctx)  # not sys.argv: rcl would read --param's NAME:=VALUE as a remap
        rec = Recorder()
        bench = Bench(ctx, rec)
        stamps = Stamps()
        rows = []
        for p in args.persons:
            rows.append(measure(bench, rec, node, stamps, p, args))
            print(f"persons {p}: {rows[-1]['answered']}/{rows[-1]['sent']} answered", flush=True)
    finally:
        if bench is not None:
            bench.close()
        rclpy.try_shutdown(context=ctx)
        code = node.stop()
    import torch

    return {"config": args.config, "device_arg": args.device, "backend": args.backend, "precision": args.precision,
            "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup, "mesh": not args.no_mesh,
            "params": args.param,
            "image": f"{WIDTH}x{HEIGHT} rgb8", "python": platform.python_version(), "torch": torch.__version__,
            "host": platform.node(),
            "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available()
            else (platform.processor() or "cpu"),
            "ros_domain_id": domain, "node_pid": node.pid, "node_exit_code": code, "node_log": str(node.log_path),
            "total_s": time.monotonic() - t0, "node": rows,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 on success, 1 on a failed measurement (the node is stopped either way)."""
    args = parse_args(argv)

    def interrupted(signum, frame):
        raise TimeoutError("--timeout reached") if signum == signal.SIGALRM else SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGALRM, interrupted)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        doc = run(args)
    except (RuntimeError, TimeoutError) as e:
        print(f"latency_bench: error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print_table(doc["node"], args.rate)
    for row in doc["node"]:
        for kind, summary in row.get("thread_profile", {}).items():
            print(f"\nnode threads, {row['persons']} persons, {kind} samples (py-spy):")
            print(table(summary) if "samples" in summary else f"  profile failed: {summary['error']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
