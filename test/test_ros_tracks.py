"""Track ids over loopback DDS: births, continuation, deaths, ids that follow reordered boxes, detector ids, a reset
when the stamps jump back, and tracking off as before (detection ids, marker ids 0..n-1). Frames are 30 Hz header
stamps, each sent once its predecessor was answered (the node then drops none)."""
import itertools

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from ros_fixtures import PHOTO, Probe, Spinner, camera_info, header, init_context, resend_until, wait_for

from sam3d_body_ros.ros.conversions import array_to_image, stamp_ns
from sam3d_body_ros.ros.node import MeshNode

NS = 1_000_000_000
DT = NS // 30
IMAGE = np.concatenate([PHOTO, PHOTO[:, ::-1]], axis=1)  # two astronauts side by side, 1024x512
A = np.array([120.0, 20.0, 440.0, 512.0])  # left person
B = np.array([584.0, 20.0, 904.0, 512.0])  # right person (mirrored)
NAMES = ("markers", "bodies")


@pytest.fixture(scope="module")
def ros():
    ctx = init_context(__name__)
    node = MeshNode(context=ctx, parameter_overrides=[Parameter("camera_info_wait", value=0.05)])
    probe = Probe(ctx)
    spinner = Spinner(ctx, node, probe)
    clock = itertools.count(100 * NS, DT)  # header stamps, 30 Hz
    # the first answer also waits for discovery (re-sent until one arrives)
    assert resend_until(probe, lambda: send(probe, next(clock), [A]), 30.0, NAMES) is not None
    yield node, probe, clock
    spinner.stop()
    node.destroy_node()
    probe.destroy_node()
    rclpy.shutdown(context=ctx)


def send(probe, stamp, boxes, ids=None):
    """Publish one frame of IMAGE with `boxes` (and detection ids) at `stamp` ns; its header."""
    h = header(stamp // NS, stamp % NS)
    probe.send(h, array_to_image(IMAGE, "rgb8"), np.array(boxes).reshape(-1, 4), camera_info(h, 1024, 512), ids=ids)
    return h


def frame(probe, stamp, boxes, ids=None):
    """Send a frame and wait for its outputs: (body ids, markers ADDed as (ns, id), markers DELETEd as (ns, id))."""
    h = send(probe, stamp, boxes, ids)
    out = wait_for(lambda: probe.outputs_at(h, NAMES), 20.0)
    assert out is not None, f"no answer to the frame at {stamp_ns(h) / 1e9:.3f} s"
    markers = out["markers"].markers
    return ([d.id for d in out["bodies"].detections], [(m.ns, m.id) for m in markers if m.action == m.ADD],
            {(m.ns, m.id) for m in markers if m.action == m.DELETE})


def configure(node, clock, **params):
    """Set parameters (as `ros2 param set` would) and skip 5 s of header time, so earlier tracks have aged out."""
    results = node.set_parameters([Parameter(k, value=v) for k, v in params.items()])
    assert all(r.successful for r in results), [r.reason for r in results]
    for _ in range(150):
        next(clock)


def test_birth_continuation_and_death(ros):
    node, probe, clock = ros
    configure(node, clock, tracking="iou", track_max_missed=2, track_max_age=10.0)
    a, b = frame(probe, next(clock), [A, B])[0]  # birth: two new ids
    assert a != b and all(int(x) > 0 for x in (a, b))
    ids, adds, _ = frame(probe, next(clock), [A + 3, B - 3])  # continuation
    assert ids == [a, b]
    assert adds == [("mesh", int(a)), ("skeleton", int(a)), ("mesh", int(b)), ("skeleton", int(b))]
    ids, _, deletes = frame(probe, next(clock), [A + 6])  # b missed once: not shown, still alive
    assert ids == [a] and deletes == {("mesh", int(b)), ("skeleton", int(b))}
    assert frame(probe, next(clock), [A + 9, B - 9])[0] == [a, b]  # back within track_max_missed: same id
    for k in range(3):  # b missed 3 times > track_max_missed 2: ended
        assert frame(probe, next(clock), [A + 12 + 3 * k])[0] == [a]
    ids = frame(probe, next(clock), [A + 21, B - 21])[0]
    assert ids[0] == a and int(ids[1]) > int(b)  # a new person, a new id


def test_death_by_age_counts_header_time(ros):
    node, probe, clock = ros
    configure(node, clock, tracking="iou", track_max_missed=100, track_max_age=0.5)
    a, b = frame(probe, next(clock), [A, B])[0]
    for _ in range(10):  # 0.33 s of header time in 10 frames: still alive
        next(clock)
    assert frame(probe, next(clock), [A, B])[0] == [a, b]
    for _ in range(20):  # two frames 0.7 s apart (frames lost on the way): both tracks end
        next(clock)
    ids = frame(probe, next(clock), [A, B])[0]
    assert int(ids[0]) > int(b) and int(ids[1]) > int(b)


def test_ids_follow_the_boxes_when_reordered(ros):
    node, probe, clock = ros
    configure(node, clock, tracking="iou", track_max_missed=10, track_max_age=1.0)
    a, b = frame(probe, next(clock), [A, B])[0]
    for k in range(1, 7):
        boxes = [A + k, B - k]
        swapped = k % 2 == 1
        ids, adds, _ = frame(probe, next(clock), boxes[::-1] if swapped else boxes)
        assert ids == ([b, a] if swapped else [a, b]), k
        assert [i for ns, i in adds if ns == "mesh"] == [int(i) for i in ids]  # marker ids = track ids


def test_detector_ids_are_honoured(ros):
    node, probe, clock = ros
    configure(node, clock, tracking="detector")
    p, q = frame(probe, next(clock), [A, B], ids=["p", "q"])[0]
    # the detector's ids follow the persons although the boxes trade places abruptly (IoU would follow the boxes)
    assert frame(probe, next(clock), [A, B], ids=["q", "p"])[0] == [q, p]
    assert frame(probe, next(clock), [B, A], ids=["p", "q"])[0] == [p, q]
    ids = frame(probe, next(clock), [A], ids=["r"])[0]  # an unknown detection id is a new track
    assert int(ids[0]) > max(int(p), int(q))


def test_time_jump_back_resets_tracks(ros):
    node, probe, clock = ros
    configure(node, clock, tracking="iou", track_max_missed=10, track_max_age=1.0)
    a, b = frame(probe, next(clock), [A, B])[0]
    assert frame(probe, next(clock), [A + 2, B - 2])[0] == [a, b]
    jumps = node.health.counters.get("time_jumps", 0)
    start = next(clock) - 60 * NS  # a bag played again
    ids = frame(probe, start, [A + 2, B - 2])[0]
    assert node.health.counters["time_jumps"] == jumps + 1
    assert int(ids[0]) > int(b) and int(ids[1]) > int(b)  # same boxes, yet new tracks
    assert frame(probe, start + DT, [A + 4, B - 4])[0] == ids  # (the module's clock goes on ahead of it)


def test_tracking_off_keeps_the_detection_ids(ros):
    node, probe, clock = ros
    configure(node, clock, tracking="off")
    ids, adds, _ = frame(probe, next(clock), [A, B], ids=["alice", "bob"])
    assert ids == ["alice", "bob"] and adds == [("mesh", 0), ("skeleton", 0), ("mesh", 1), ("skeleton", 1)]
    ids, adds, deletes = frame(probe, next(clock), [B], ids=["bob"])
    assert ids == ["bob"] and adds == [("mesh", 0), ("skeleton", 0)] and deletes == {("mesh", 1), ("skeleton", 1)}
    configure(node, clock, tracking="iou")
