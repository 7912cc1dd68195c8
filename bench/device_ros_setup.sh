#!/usr/bin/env bash
# On the GPU machine (CPython 3.12, no registry): install the carried cp312 ROS 2 wheel set (.wheels-ros312/,
# see bench/NODE_BENCH.md) and build vision_msgs there.
set -eo pipefail
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/.wheels-ros312
python3 -m pip install -q --no-compile "ros-rclpy[fastrtps]==9.1.2" ros-std-msgs==5.5.1 ros-geometry-msgs==5.5.1 \
  ros-sensor-msgs==5.5.1 ros-visualization-msgs==5.5.1 ros-diagnostic-msgs==5.5.1 ros-shape-msgs==5.5.1 \
  roma==1.8.0 timm==1.0.31 fast-simplification==0.2.0 py-spy==0.4.3
python3 scripts/build_vision_msgs.py 2>&1 | tail -5
