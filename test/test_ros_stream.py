"""100 frames at 30 Hz into the tiny model on CPU: newest-frame-only processing, drops reported, bounded memory."""
import itertools
import time

import rclpy
from rclpy.parameter import Parameter
from ros_fixtures import (
    BOXES,
    PHOTO,
    Probe,
    Spinner,
    camera_info,
    header,
    init_context,
    resend_until,
    wait_for,
)

from sam3d_body_ros.ros.conversions import array_to_image, stamp_ns
from sam3d_body_ros.ros.node import MeshNode


def rss_mb() -> float:
    """Resident set size of this process in MB (from /proc/self/status)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def test_stream_of_100_frames_at_30hz():
    ctx = init_context(__name__)
    node = MeshNode(context=ctx, parameter_overrides=[Parameter("diagnostics_period", value=0.2)])
    probe = Probe(ctx)
    spinner = Spinner(ctx, node, probe)
    try:
        stamps = itertools.count(1)
        assert resend_until(probe, lambda: probe.send_frame(next(stamps)), timeout=20.0) is not None
        image = array_to_image(PHOTO, "rgb8")

        def stream(first: int, n: int) -> list[int]:
            sent, t0 = [], time.monotonic()
            for i in range(n):
                h = header(first + i)
                probe.send(h, image, BOXES, camera_info(h, 512, 512))
                sent.append(stamp_ns(h))
                time.sleep(max(0.0, t0 + (i + 1) / 30.0 - time.monotonic()))
            t_last = time.monotonic()
            assert wait_for(lambda: probe.outputs_at(h), 20.0, interval=0.01), "last frame not answered"
            return sent, time.monotonic() - t_last

        # Warm-up stream: discovery, allocator arenas and first-call caches under load; then measure.
        stream(100, 30)
        with probe.lock:
            probe.received.clear()
        time.sleep(0.5)
        before_rss = rss_mb()
        time.sleep(0.5)  # let a fresh diagnostics message arrive
        counters = ("frames_synchronized", "frames_processed", "frames_dropped_busy", "unmatched_detections")
        base = {k: int(wait_for(probe.diagnostics, 3.0)[k]) for k in counters}
        sent, latency = stream(1000, 100)
        time.sleep(0.5)
        after_rss = rss_mb()
        delta = lambda d: {k: int(d[k]) - base[k] for k in counters}  # noqa: E731
        # Frames whose image (depth-1 QoS keeps only the newest) or detections were overwritten in the DDS
        # reader never reach the node; every frame that did is either processed or counted as dropped.
        # Wait until the counters have settled (two diagnostics messages in a row agree).
        settled: list[dict] = []

        def counters_settled():
            d = probe.diagnostics()
            settled.append(d)
            return d if len(settled) > 1 and delta(settled[-2]) == delta(d) else None

        d = wait_for(counters_settled, 5.0, interval=0.3)
        assert d is not None, str(probe.diagnostics())
        n = delta(d)
        synced, processed, dropped = n["frames_synchronized"], n["frames_processed"], n["frames_dropped_busy"]
        print(f"stream counters: {n}")
        # Nearly every image must reach the node although inference keeps it busy (95 of 100 seen after the other
        # node tests; 18-44 while the node spun a MultiThreadedExecutor that starved its callbacks), none twice.
        assert 50 <= synced and synced + n["unmatched_detections"] <= len(sent)
        assert processed + dropped == synced
        assert dropped > 0 and processed >= 2  # the tiny model on 2 CPU cores is slower than 30 Hz
        # Newest frame only: the last frame is answered after a few frame times, not after the backlog of all
        # the frames dropped here (dropped x total_ms, e.g. 29 x 0.27 s = 8 s). Delivery of the last messages
        # under a loaded 2-core run has been seen to take ~2 s, hence the margin.
        assert latency < 8 * float(d["total_ms"]) / 1000 + 1.0, latency
        answered = {Probe.stamp_of(m) for m in probe.received["bodies"]} & set(sent)
        assert len(answered) == processed and sent[-1] in answered
        assert after_rss - before_rss < 50.0, (before_rss, after_rss)
        print(f"stream: {processed} processed, {dropped} dropped, RSS {before_rss:.0f} -> {after_rss:.0f} MB, "
              f"last frame answered after {latency:.2f} s, "
              f"stages {[(k, v) for k, v in d.items() if k.endswith('_ms')]}")
    finally:
        spinner.stop()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=ctx)
