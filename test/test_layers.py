"""The package's layers point one way (core <- runtime <- pipeline <- ros <- tools) and its imports have no cycles;
core never imports rclpy. Read from the source with ast, lazy (function-level) imports included."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sam3d_body_ros"
# module prefix -> layer; a module may import its own layer or lower ones only
LAYERS = {"sam3d_body_ros.core": 0, "sam3d_body_ros.runtime": 1, "sam3d_body_ros.pipeline": 2,
          "sam3d_body_ros.tracks": 2, "sam3d_body_ros.smoothing": 2, "sam3d_body_ros.people": 2,
          "sam3d_body_ros.ros": 3,
          "sam3d_body_ros.tools": 4, "sam3d_body_ros.__main__": 5, "sam3d_body_ros": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    return max((n for prefix, n in LAYERS.items() if module == prefix or module.startswith(prefix + ".")),
               key=lambda n: n if n < 5 else -1)  # the most specific prefix (the package root only as a fallback)


def imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved; `from . import x` -> pkg.x)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: {i for i in imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    upward = sorted(i for i in GRAPH[module] if layer(i) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports upward: {upward}"


def test_core_never_imports_rclpy_or_ros_messages() -> None:
    for module, path in MODULES.items():
        if layer(module) <= 2:
            bad = {i for i in imports(path) if i.split(".")[0] in ("rclpy", "sensor_msgs", "vision_msgs", "std_msgs")}
            assert not bad, f"{module} imports {bad}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_the_walk_sees_imports() -> None:
    """The checks above can fail: the walk finds the pipeline's imports of core and runtime."""
    assert {"sam3d_body_ros.core.crop", "sam3d_body_ros.runtime.backend"} <= GRAPH["sam3d_body_ros.pipeline"]
    assert "sam3d_body_ros.ros.node" in GRAPH["sam3d_body_ros.tools.demo"]
