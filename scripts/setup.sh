#!/usr/bin/env bash
# Fresh-machine setup (idempotent): .venv with the package, PyTorch, ONNX tools, ROS 2 Kilted from PyPI,
# and a vision_msgs interface package built into the venv (cached). Re-running costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "[setup] installing sam3d_body_ros and its pinned dependencies (first run: a few minutes)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[export,ros,test]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import sam3d_body_ros, torch, timm, rclpy" || { echo "[setup] install failed" >&2; exit 1; }

if .venv/bin/python -c "import vision_msgs.msg" 2>/dev/null; then
  echo "[setup] vision_msgs present"
else
  .venv/bin/python scripts/build_vision_msgs.py
fi
echo "[setup] done"
