"""The node as its own process (venv python, --ros-args --params-file) over loopback DDS: answers, filters and
switches from the params file; --help; a configuration error ends it with one line and exit 2 (never random weights
instead of the given ones); SIGINT/SIGTERM during start-up or while serving end it within 3 s, exit 0, no traceback."""
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from ros_fixtures import (
    FRAME_ID,
    PHOTO,
    Probe,
    Spinner,
    camera_info,
    header,
    init_context,
    resend_until,
    ros_env,
    wait_for,
)

from sam3d_body_ros.ros.conversions import array_to_image, boxes_to_detections, stamp_ns

REPO = Path(__file__).resolve().parents[1]
IDS, SCORES = ["p7", "p9"], np.array([0.8, 0.6])


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node")
    params = yaml.safe_load((REPO / "config" / "mesh.yaml").read_text())
    p = params["/**"]["ros__parameters"]
    p.update(model_config="tiny", diagnostics_period=0.3, publish_keypoints=False, class_ids="person",
             score_threshold=0.5)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    log = open(tmp / "node.log", "w")
    env = {**os.environ, **ros_env(__name__)}
    proc = subprocess.Popen([sys.executable, "-m", "sam3d_body_ros.ros.node", "--ros-args",
                             "--params-file", str(tmp / "params.yaml")],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    ctx = init_context(__name__)
    probe = Probe(ctx)
    spinner = Spinner(ctx, probe)
    yield proc, probe, itertools.count(1), tmp / "node.log"
    spinner.stop()
    probe.destroy_node()
    rclpy.shutdown(context=ctx)
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def test_separate_process_answers(remote):
    proc, probe, stamps, log = remote
    names = ("markers", "joints", "bodies")
    got = resend_until(probe, lambda: probe.send_frame(next(stamps), ids=IDS, scores=SCORES), 60.0, names)
    assert got is not None, "no answer; node log:\n" + log.read_text()[-3000:]
    h, out = got
    mesh = [m for m in out["markers"].markers if m.ns == "mesh" and m.action == m.ADD]
    assert [len(m.points) for m in mesh] == [3840, 3840]
    assert all(m.header.frame_id == FRAME_ID and stamp_ns(m.header) == stamp_ns(h) for m in out["markers"].markers)
    assert len(out["joints"].poses) == 2 * 127 and out["joints"].header.frame_id == FRAME_ID
    assert len({b.id for b in out["bodies"].detections}) == 2  # track ids (tracking iou)
    np.testing.assert_allclose([b.results[0].hypothesis.score for b in out["bodies"].detections], SCORES)

    d = wait_for(lambda: probe.diagnostics() or None, 5.0)
    assert "RANDOM" in d["weights"]
    text = log.read_text()
    assert "QoS image: reliable, keep_last(1), volatile" in text and "active: serving" in text

    # A bad frame, then a valid one: still answered.
    bad = header(next(stamps))
    img = array_to_image(PHOTO, "rgb8")
    img.encoding = "32FC1"
    probe.send(bad, img, np.array([[120.0, 20.0, 440.0, 512.0]]), camera_info(bad, 512, 512))
    assert wait_for(lambda: "warning.image" in probe.diagnostics(), 5.0)
    assert resend_until(probe, lambda: probe.send_frame(next(stamps)), 20.0, names) is not None
    assert proc.poll() is None


def test_switches_and_filters_from_the_params_file(remote):
    proc, probe, stamps, log = remote
    # (discovery may still be running when this test is the first to use the node)
    assert wait_for(lambda: probe.count_publishers("/sam3d_body/joints") == 1, 30.0)
    # score_threshold 0.5 drops the 0.3 box; class_ids "person" drops the "dog" box.
    boxes = np.array([[120.0, 20.0, 440.0, 512.0], [170.0, 20.0, 330.0, 210.0], [10.0, 10.0, 100.0, 200.0]])
    got = resend_until(probe, lambda: _mixed(probe, next(stamps), boxes), 20.0, ("bodies",))
    assert got is not None
    [body] = got[1]["bodies"].detections  # detection "a"
    assert body.results[0].hypothesis.score == pytest.approx(0.9)
    assert not probe.received["keypoints"]  # publish_keypoints: false
    assert wait_for(lambda: int(probe.diagnostics().get("detections_filtered", 0)) >= 2, 5.0)


def _mixed(probe, sec, boxes):
    """Frame whose detections are: person 0.9, person 0.3, dog 0.8."""
    h = header(sec)
    dets = boxes_to_detections(boxes, h, ids=["a", "b", "c"], scores=np.array([0.9, 0.3, 0.8]))
    dets.detections[2].results[0].hypothesis.class_id = "dog"
    probe.send(h, array_to_image(PHOTO, "rgb8"), None, camera_info(h, 512, 512))
    probe.pub_dets.publish(dets)
    return h


def test_bad_parameter_ends_the_node_with_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sam3d_body_ros.ros.node", "--ros-args", "-p",
                          "image_qos.reliability:=sometimes"], cwd=REPO, text=True, capture_output=True, timeout=60,
                         env={**os.environ, **ros_env(__name__ + "_bad")})
    assert res.returncode == 2
    expected = ("mesh_node: error: cannot configure: image_qos.reliability takes one of reliable, best_effort, "
                "got 'sometimes'")
    assert res.stderr.strip() == expected


def mesh_node(*args: str, env_module: str = __name__) -> subprocess.Popen:
    env = {**os.environ, **ros_env(env_module + "_signals")}
    return subprocess.Popen([sys.executable, "-m", "sam3d_body_ros.ros.node", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_help_prints_the_parameters_without_starting():
    proc = mesh_node("--help")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "usage: mesh_node" in out and "score_threshold" in out and "live" in out and "start-up" in out


@pytest.mark.parametrize("param, match", [("weights_dir:=/no/such/weights", "not found"),
                                          ("device:=cuda", "no usable CUDA GPU"),
                                          ("backend:=tensorrt", "TensorRT >= 10 is needed")])
def test_configuration_error_exits_2_with_one_line(param, match):
    proc = mesh_node("--ros-args", "-p", "model_config:=tiny", "-p", param)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mesh_node: error: cannot configure:") and match in lines[0], err


def stop_within(proc: subprocess.Popen, sig: int, limit: float = 3.0) -> tuple[float, str]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return time.monotonic() - t0, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_ends_it_cleanly(sig):
    proc = mesh_node("--ros-args", "-p", "model_config:=tiny")
    time.sleep(1.5)  # importing torch / loading the model
    assert proc.poll() is None
    took, err = stop_within(proc, sig)
    assert proc.returncode == 0 and took < 3.0 and "Traceback" not in err, (took, err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_serving_ends_it_cleanly(sig, tmp_path):
    log = tmp_path / "node.log"
    with open(log, "w") as f:
        env = {**os.environ, **ros_env(__name__ + "_serving")}
        proc = subprocess.Popen([sys.executable, "-m", "sam3d_body_ros.ros.node", "--ros-args", "-p",
                                 "model_config:=tiny"], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        assert wait_for(lambda: "active: serving" in log.read_text(), 120.0), log.read_text()
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        took = time.monotonic() - t0
    assert proc.returncode == 0 and took < 3.0 and "Traceback" not in log.read_text(), (took, log.read_text())
