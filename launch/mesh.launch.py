"""Start the sam3d_body node (mesh_node, a lifecycle node) with config/mesh.yaml, topic remaps and optional RViz.

autostart:=true (default) configures and activates it in one step; autostart:=false leaves the transitions to a
lifecycle manager (e.g. nav2_lifecycle_manager with node_names: [sam3d_body])."""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription

PACKAGE = "sam3d_body_ros"
# Launch arguments that, when not empty, override the same-named parameter of the params file.
OVERRIDES = ("backend", "weights_dir", "model_config", "autostart")


def _mesh_node(context):
    """The node, with the non-empty override arguments layered over params_file."""
    overrides = {k: LaunchConfiguration(k).perform(context) for k in OVERRIDES}
    if overrides["autostart"]:
        overrides["autostart"] = overrides["autostart"].lower() == "true"
    return [LifecycleNode(
        package=PACKAGE,
        executable="mesh_node",
        name="sam3d_body",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"), {k: v for k, v in overrides.items() if v != ""}],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
            ("detections", LaunchConfiguration("detections")),
        ],
    )]


def generate_launch_description() -> LaunchDescription:
    """Launch arguments: namespace, image/camera_info/detections topics, params_file, backend,
    weights_dir, model_config, rviz."""
    share = get_package_share_directory(PACKAGE)
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("image", default_value="image", description="sensor_msgs/Image topic"),
        DeclareLaunchArgument("camera_info", default_value="camera_info", description="sensor_msgs/CameraInfo topic"),
        DeclareLaunchArgument("detections", default_value="detections",
                              description="vision_msgs/Detection2DArray topic with person boxes"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "mesh.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="backbone runtime: torch, torch-int8, onnxruntime, tensorrt, pt2 "
                                          "(empty: from params_file)"),
        DeclareLaunchArgument("weights_dir", default_value="",
                              description="upstream checkpoint dir (empty: from params_file)"),
        DeclareLaunchArgument("model_config", default_value="",
                              description="tiny or full, used without weights (empty: from params_file)"),
        DeclareLaunchArgument("autostart", default_value="",
                              description="true: configure + activate at start; false: wait for a lifecycle "
                                          "manager (empty: from params_file, default true)"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz with config/mesh.rviz"),
    ]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(share, "config", "mesh.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*args, OpaqueFunction(function=_mesh_node), rviz])
