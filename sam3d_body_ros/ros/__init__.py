"""ROS 2 side: the sam3d_body node, message conversions, markers, QoS, diagnostics and the demo."""
