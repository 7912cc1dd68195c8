"""launch/mesh.launch.py and config/: checked without `launch` (not installable here) by parsing the source."""
import ast
import re
from pathlib import Path

import yaml

from sam3d_body_ros.ros.node import NODE_NAME
from sam3d_body_ros.ros.params import SCHEMA

REPO = Path(__file__).resolve().parents[1]
LAUNCH = ast.parse((REPO / "launch" / "mesh.launch.py").read_text())


def calls(tree, name):
    """Calls of `name(...)` or `<x>.name(...)` in tree."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def kwarg(call, key):
    return next(k.value for k in call.keywords if k.arg == key)


def constants():
    """Module-level NAME = <literal> assignments."""
    out = {}
    for node in LAUNCH.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def value(expr):
    return constants()[expr.id] if isinstance(expr, ast.Name) else ast.literal_eval(expr)


def subscribed_topics():
    """Topic names of the node's create_subscription calls."""
    tree = ast.parse((REPO / "sam3d_body_ros" / "ros" / "node.py").read_text())
    return {s.args[1].value for s in calls(tree, "create_subscription")}


def mesh_node():
    (node,) = [c for c in calls(LAUNCH, "LifecycleNode") if value(kwarg(c, "executable")) == "mesh_node"]
    return node


def test_node_package_executable_and_name():
    node = mesh_node()
    assert value(kwarg(node, "package")) == "sam3d_body_ros"
    assert value(kwarg(node, "name")) == NODE_NAME
    setup = (REPO / "setup.py").read_text()
    assert "mesh_node = sam3d_body_ros.ros.node:main" in setup


def test_remaps_match_the_node_subscriptions():
    remaps = kwarg(mesh_node(), "remappings")
    pairs = [(ast.literal_eval(t.elts[0]), calls(t.elts[1], "LaunchConfiguration")[0].args[0].value)
             for t in remaps.elts]
    assert {src for src, _ in pairs} == subscribed_topics() == {"image", "camera_info", "detections"}
    assert all(src == arg for src, arg in pairs)  # each remap is driven by the launch argument of that name


def test_every_launch_argument_is_declared_and_used():
    declared = {c.args[0].value for c in calls(LAUNCH, "DeclareLaunchArgument")}
    used = {c.args[0].value for c in calls(LAUNCH, "LaunchConfiguration") if isinstance(c.args[0], ast.Constant)}
    overrides = set(constants()["OVERRIDES"])
    assert used | overrides == declared
    assert overrides <= set(SCHEMA)  # overrides name real node parameters
    assert declared == {"namespace", "image", "camera_info", "detections", "params_file", "backend", "weights_dir",
                        "model_config", "autostart", "rviz"}


def test_params_file_and_rviz_config_exist_and_are_installed():
    (params,) = [c for c in calls(LAUNCH, "DeclareLaunchArgument") if c.args[0].value == "params_file"]
    join = kwarg(params, "default_value")
    assert [a.value for a in join.args[1:]] == ["config", "mesh.yaml"]
    rviz_paths = [c for c in calls(LAUNCH, "join") if any(getattr(a, "value", None) == "mesh.rviz" for a in c.args)]
    assert rviz_paths and (REPO / "config" / "mesh.rviz").is_file()
    rviz = yaml.safe_load((REPO / "config" / "mesh.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"] if "Topic" in d}
    assert f"/{NODE_NAME}/markers" in topics
    assert 'glob("config/*.yaml") + glob("config/*.rviz")' in (REPO / "setup.py").read_text()


def test_mesh_yaml_sets_and_documents_every_parameter():
    text = (REPO / "config" / "mesh.yaml").read_text()
    params = yaml.safe_load(text)["/**"]["ros__parameters"]
    flat = {f"{k}.{kk}" if isinstance(v, dict) else k for k, v in params.items() for kk in (v if isinstance(v, dict)
                                                                                              else [None])}
    assert flat == set(SCHEMA)
    lines = text.splitlines()
    for key in params:
        i = next(i for i, line in enumerate(lines) if re.match(rf"\s+{key}:", line))
        assert "#" in lines[i] or lines[i - 1].strip().startswith("#") or lines[i - 2].strip().startswith("#"), key
    for name, param in SCHEMA.items():
        section, _, leaf = name.rpartition(".")
        value = params[section][leaf] if section else params[name]
        assert value == param.default and type(value) is param.type, name
        # the comment of every live parameter says so, and start-up ones do not claim it
        i = next(i for i, line in enumerate(lines) if re.match(rf"\s+{leaf}:", line))
        said = " ".join(lines[max(0, i - 3): i + 1])
        assert ("[live]" in said) == param.live, name


def test_params_file_read_by_rclpy_equals_schema_defaults():
    from sam3d_body_ros.ros.params import _read_with_yaml, defaults, read_params_file

    path = REPO / "config" / "mesh.yaml"
    assert read_params_file(path) == defaults()  # through rclpy's own parser (rclpy is installed here)
    assert _read_with_yaml(path) == defaults()  # and the fallback used where rclpy is absent
