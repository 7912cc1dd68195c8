"""bench/node_latency.py end to end at tiny size on CPU: the node answers over loopback DDS, the JSON holds
finite positive latencies and consistent counts, and the node process is gone afterwards."""
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_node_latency_bench_tiny_cpu(tmp_path):
    out = tmp_path / "node.json"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "node_latency.py"), "--config", "tiny", "--device",
                          "cpu", "--precision", "fp32", "--rate", "5", "--duration", "3", "--warmup", "2",
                          "--persons", "1", "--ready-timeout", "60", "--timeout", "120", "--out", str(out)],
                         cwd=REPO, text=True, capture_output=True, timeout=150)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["config"] == "tiny" and doc["precision"] == "fp32"
    [row] = doc["node"]
    assert row["persons"] == 1 and row["sent"] == 15
    assert 0 < row["answered"] <= row["sent"] and row["drops"] == row["sent"] - row["answered"]
    assert 0 <= row["dropped_busy"] <= row["drops"]
    assert row["node_counters"]["frames_processed"] == row["answered"]
    assert 0 < row["rate_hz"] <= 5.5
    for key in ("median_ms", "p95_ms", "max_ms", "bodies_median_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["median_ms"] <= row["p95_ms"] <= row["max_ms"]
    assert row["node_stage_ms"]["total"] > 0
    assert "persons" in res.stdout and "median ms" in res.stdout
    # The node process was stopped (cleanly, by SIGINT) before the script returned.
    assert doc["node_exit_code"] == 0
    assert not node_running(doc["node_pid"])


def node_running(pid: int) -> bool:
    """True while a process with this pid runs the node module (a reused pid runs something else)."""
    try:
        return b"sam3d_body_ros.ros.node" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
