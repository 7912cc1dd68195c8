"""The node as a robot stack drives it, over loopback DDS: parameters set at run time (applied or refused with a
reason), lifecycle transitions through the lifecycle services, stamps that jump back, a camera_info that arrives
after its image, and a configuration error that leaves the node alive and unconfigured."""
import itertools

import numpy as np
import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from ros_fixtures import (
    BOXES,
    PHOTO,
    K,
    Probe,
    Spinner,
    camera_info,
    header,
    init_context,
    resend_until,
    wait_for,
)

from sam3d_body_ros.ros.conversions import array_to_image
from sam3d_body_ros.ros.node import MeshNode

IDS, SCORES = ["alice", "bob"], np.array([0.93, 0.71])


@pytest.fixture(scope="module")
def ros():
    ctx = init_context(__name__)
    node = MeshNode(context=ctx, parameter_overrides=[Parameter("diagnostics_period", value=0.2),
                                                      Parameter("camera_info_wait", value=0.05)])
    probe = Probe(ctx)
    spinner = Spinner(ctx, node, probe)
    yield ctx, node, probe, itertools.count(1)
    spinner.stop()
    node.destroy_node()
    probe.destroy_node()
    rclpy.shutdown(context=ctx)


def call(probe, srv_type, name, request, timeout=10.0):
    """Call a service of the node from the probe; the response."""
    client = probe.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=timeout), name
        future = client.call_async(request)
        assert wait_for(future.done, timeout), f"{name} did not answer"
        return future.result()
    finally:
        probe.destroy_client(client)


def set_params(probe, **values):
    """Set parameters through the node's set_parameters service; one SetParametersResult per parameter."""
    req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    return call(probe, SetParameters, "/sam3d_body/set_parameters", req).results


def answer(probe, stamps, names=("markers", "joints", "keypoints"), **kw):
    got = resend_until(probe, lambda: probe.send_frame(next(stamps), ids=IDS, scores=SCORES, **kw), 20.0, names)
    assert got is not None, "node did not answer a valid frame"
    return got[1]


def silent(probe, stamps, name="joints", wait=1.5):
    """Send a frame; True when nothing stamped like it arrives on `name` within `wait` s."""
    h = probe.send_frame(next(stamps), ids=IDS, scores=SCORES)
    return wait_for(lambda: probe.outputs_at(h, (name,)), wait) is None


def test_live_parameters_change_the_next_frame(ros):
    _, node, probe, stamps = ros
    assert len(answer(probe, stamps, names=("bodies",))["bodies"].detections) == 2
    [r] = set_params(probe, max_persons=1)
    assert r.successful
    [best] = answer(probe, stamps, names=("bodies",))["bodies"].detections
    assert best.results[0].hypothesis.score == pytest.approx(SCORES[0])  # alice, the best score
    [r] = set_params(probe, score_threshold=0.95, max_persons=10)[:1]
    assert r.successful
    assert answer(probe, stamps, names=("bodies",))["bodies"].detections == []  # both below 0.95
    assert all(r.successful for r in set_params(probe, score_threshold=0.0, class_ids="cat"))
    assert answer(probe, stamps, names=("bodies",))["bodies"].detections == []  # boxes are class "person"
    assert all(r.successful for r in set_params(probe, class_ids="", publish_joints=False, sync_slop=0.01))
    assert silent(probe, stamps, "joints")
    assert node.sync.slop_ns == 10_000_000
    assert all(r.successful for r in set_params(probe, publish_joints=True, sync_slop=0.0))
    assert len(answer(probe, stamps)["joints"].poses) == 2 * 127


@pytest.mark.parametrize("name, value, reason", [
    ("backend", "torch-int8", "read when the node configures"),
    ("image_qos.depth", 3, "read when the node configures"),
    ("weights_dir", "/somewhere", "deactivate and clean up"),
    ("backend", "tensorflow", "backend takes one of auto, torch"),
    ("max_persons", -1, "must not be negative"),
    ("joint_names", ["x"], "read-only"),
])
def test_parameters_that_cannot_change_now_are_refused_with_a_reason(ros, name, value, reason):
    _, node, probe, _ = ros
    [r] = set_params(probe, **{name: value})
    assert not r.successful and reason in r.reason, r.reason
    if name != "joint_names":
        assert node.params[name] != value  # nothing changed


def test_time_jump_back_is_answered_at_once(ros):
    _, node, probe, _ = ros
    for sec in (1000, 1001):
        answer(probe, iter([sec] * 40))
    jumps = node.health.counters.get("time_jumps", 0)
    for sec in (500, 501):  # a bag played again / a simulator reset
        answer(probe, iter([sec] * 40))
    assert node.health.counters["time_jumps"] == jumps + 1


def test_late_camera_info_uses_the_cached_one(ros):
    _, node, probe, stamps = ros
    reference = answer(probe, stamps)  # with its own camera_info (K) at its stamp: now cached for the frame id
    # frames whose camera_info never comes (or comes 1-2 s late, after the frame was released)
    got = resend_until(probe, lambda: probe.send(h := header(next(stamps)), array_to_image(PHOTO, "rgb8"), BOXES,
                                                 ids=IDS, scores=SCORES) or h, 20.0, ("joints",))
    assert got is not None
    np.testing.assert_allclose(
        np.array([[p.position.x, p.position.y, p.position.z] for p in got[1]["joints"].poses]),
        np.array([[p.position.x, p.position.y, p.position.z] for p in reference["joints"].poses]), atol=1e-5)
    probe.pub_info.publish(camera_info(got[0], 512, 512, K))  # the late one: harmless


def change_state(probe, transition):
    req = ChangeState.Request()
    req.transition.id = transition
    return call(probe, ChangeState, "/sam3d_body/change_state", req).success


def state(probe):
    return call(probe, GetState, "/sam3d_body/get_state", GetState.Request()).current_state.label


def test_lifecycle_transitions(ros):
    _, node, probe, stamps = ros
    assert state(probe) == "active"
    assert change_state(probe, Transition.TRANSITION_DEACTIVATE) and state(probe) == "inactive"
    assert silent(probe, stamps, "markers")
    assert node.pipeline is not None  # deactivate keeps the model
    assert change_state(probe, Transition.TRANSITION_CLEANUP) and state(probe) == "unconfigured"
    assert node.pipeline is None
    [r] = set_params(probe, max_persons=1, seed=3)[:1]  # start-up parameters are accepted while unconfigured
    assert r.successful and node.params["seed"] == 3
    assert change_state(probe, Transition.TRANSITION_CONFIGURE) and state(probe) == "inactive"
    assert "seed 3" in node.pipeline.weights_status
    assert change_state(probe, Transition.TRANSITION_ACTIVATE) and state(probe) == "active"
    assert len(answer(probe, stamps, names=("bodies",))["bodies"].detections) == 1


def test_configuration_error_leaves_the_node_alive_and_unconfigured():
    ctx = init_context(__name__ + "_bad")
    node = MeshNode(context=ctx, parameter_overrides=[Parameter("device", value="cuda")])  # CI has no GPU
    probe = Probe(ctx)
    spinner = Spinner(ctx, node, probe)
    try:
        assert node.config_error and "no usable CUDA GPU" in node.config_error
        assert "\n" not in node.config_error
        assert state(probe) == "unconfigured"
        assert all(r.successful for r in set_params(probe, device="cpu"))
        assert change_state(probe, Transition.TRANSITION_CONFIGURE)
        assert change_state(probe, Transition.TRANSITION_ACTIVATE) and state(probe) == "active"
        assert len(answer(probe, itertools.count(1), names=("bodies",))["bodies"].detections) == 2
    finally:
        spinner.stop()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=ctx)
