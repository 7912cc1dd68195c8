"""The node bench's thread profile: py-spy's raw output summarised per thread, and the option's checks."""
from __future__ import annotations

import pytest

from sam3d_body_ros.tools import latency_bench
from sam3d_body_ros.tools.thread_profile import summarize, table

# py-spy 0.4 `record --threads --format raw`: "thread (<tid>): <name>;<frames, root first> <count>"
RAW = """thread (0x7f01): sam3d_body_worker;Thread._bootstrap (threading.py:1002);MeshNode._work (/x/node.py:400);BodyPipeline.infer (/x/pipeline.py:160) 30
thread (0x7f01): sam3d_body_worker;Thread._bootstrap (threading.py:1002);MeshNode._work (/x/node.py:400);_to_numpy (/x/pipeline.py:223) 10
thread (0x7f02): sam3d_body_publisher;Thread._bootstrap (threading.py:1002);Publisher.publish (/r/publisher.py:70) 15
thread (0x7f03): MainThread;<module> (node.py:600);Executor._take_subscription (/r/executors.py:500) 5
not a sample line
"""


def test_summary_shares_per_thread_and_leaf_function():
    s = summarize(RAW)
    assert s["samples"] == 60
    threads = {t["thread"]: t for t in s["threads"]}
    assert [t["thread"] for t in s["threads"]] == ["sam3d_body_worker", "sam3d_body_publisher", "MainThread"]
    assert threads["sam3d_body_worker"]["share"] == pytest.approx(40 / 60)
    assert threads["sam3d_body_worker"]["top"] == [
        {"function": "BodyPipeline.infer (pipeline.py)", "share": pytest.approx(0.5)},
        {"function": "_to_numpy (pipeline.py)", "share": pytest.approx(10 / 60)},
    ]
    assert threads["MainThread"]["top"][0]["function"] == "Executor._take_subscription (executors.py)"
    text = table(s)
    assert text.splitlines()[0] == "60 samples" and " 66.7 %  sam3d_body_worker" in text


def test_profile_option_needs_py_spy(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing executable on it
    with pytest.raises(SystemExit) as e:
        latency_bench.parse_args(["--profile", str(tmp_path / "prof")])
    assert e.value.code == 2 and "--profile needs py-spy on PATH: pip install py-spy" in capsys.readouterr().err
