#!/usr/bin/env bash
# Fresh-machine setup (idempotent): .venv with the package, PyTorch, ONNX tools, ROS 2 Kilted from PyPI,
# and a vision_msgs interface package built into the venv (cached). Re-running costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] first run: creating .venv with $($PYTHON --version); installing PyTorch (CUDA build, ~6 GB), ROS 2"
  echo "[setup] wheels and the rest takes a few minutes; pip's progress follows"
  "$PYTHON" -m venv .venv
  quiet=()
else
  echo "[setup] .venv exists: checking the installed packages"
  quiet=(-q)
fi
.venv/bin/python -m pip install "${quiet[@]}" --disable-pip-version-check --progress-bar on -e ".[export,ros,test]" 2>&1 \
  | grep --line-buffered -v -e "is ignored: it is neither" -e "^Requirement already satisfied" || true
.venv/bin/python -c "import sam3d_body_ros, torch, timm, rclpy" || { echo "[setup] install failed (see pip's output above)" >&2; exit 1; }

if .venv/bin/python -c "import vision_msgs.msg" 2>/dev/null; then
  echo "[setup] vision_msgs present"
else
  .venv/bin/python scripts/build_vision_msgs.py
fi
echo "[setup] done"
