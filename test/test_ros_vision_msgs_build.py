"""scripts/build_vision_msgs.py: clean build into an empty cache, cached reinstall in seconds, no-op rerun,
and the include-dir rewrite of the msg wheels' CMake exports."""
import importlib.util
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_vision_msgs.py"
HASH = "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968"


def load_script():
    spec = importlib.util.spec_from_file_location("build_vision_msgs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(cache: Path, *flags: str) -> tuple[str, float]:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(SCRIPT), *flags], text=True, capture_output=True, timeout=300,
                         env={**os.environ, "SAM3D_BODY_ROS_CACHE": str(cache)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout, time.monotonic() - t0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out, seconds = run(cache, "--force")
    return cache, out, seconds


def test_clean_build_packs_a_wheel_and_checks_the_type_hash(built):
    cache, out, seconds = built
    assert "building from msgs/vision_msgs" in out and f"Detection2DArray type hash {HASH}" in out
    (wheel,) = (cache / "vision_msgs").glob("*/sam3d_body_ros_vision_msgs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vision_msgs/msg/_detection2_d_array.py" in names
    assert any(n.endswith("/data/lib/libvision_msgs__rosidl_generator_c.so") for n in names)
    assert any(n.endswith("/data/share/ament_index/resource_index/packages/vision_msgs") for n in names)
    assert any(n.endswith("/data/share/vision_msgs/msg/Detection3DArray.msg") for n in names)
    key = load_script().definitions_key()
    assert wheel.parent.name == f"{key}-cp{sys.version_info.major}{sys.version_info.minor}"


def test_cached_reinstall_and_noop_rerun_take_seconds(built):
    cache, _, build_seconds = built
    out, seconds = run(cache, "--reinstall")
    assert "using cached wheel" in out and "building" not in out and HASH in out
    assert seconds < 10.0, seconds
    out, seconds = run(cache)
    assert "already installed" in out and seconds < 5.0, seconds
    print(f"clean build {build_seconds:.1f} s, cached reinstall/no-op {seconds:.1f} s")


def test_export_include_dirs_rewrite_is_idempotent(tmp_path):
    mod = load_script()
    cmake = tmp_path / "share" / "foo_msgs" / "cmake" / "export_foo_msgs__rosidl_generator_pyExport.cmake"
    cmake.parent.mkdir(parents=True)
    cmake.write_text('set_target_properties(foo PROPERTIES\n'
                     '  INTERFACE_INCLUDE_DIRECTORIES "/opt/python/cp311-cp311/include/python3.11;/opt/x/numpy"\n)\n')
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(Path(sys.prefix) / "bin" / "python")
    assert mod.fix_export_include_dirs(tmp_path) == 1
    text = cmake.read_text()
    assert "/opt/python" not in text and "Python.h" not in text
    inc = text.split('"')[1].split(";")
    assert all(Path(p).is_dir() for p in inc) and (Path(inc[0]) / "Python.h").is_file()
    assert mod.fix_export_include_dirs(tmp_path) == 0
