"""ament_python package that is also pip-installable."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sam3d_body_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm==1.0.31",
        "numpy>=1.26,<3",
        "opencv-python-headless==4.13.0.92",
        "pyyaml==6.0.3",
        "roma==1.8.0",
        "tqdm==4.70.1",
        "matplotlib==3.11.2",
        "scikit-image==0.26.0",
        "scipy==1.17.1",
        "pillow==13.0.0",
        "fast-simplification==0.2.0",
    ],
    extras_require={
        "export": ["onnx==1.23.2", "onnxruntime==1.32.0", "onnxscript==0.7.2"],
        "ros": [
            "ros-rclpy[fastrtps]==9.1.2",
            "ros-std-msgs==5.5.1",
            "ros-geometry-msgs==5.5.1",
            "ros-sensor-msgs==5.5.1",
            "ros-visualization-msgs==5.5.1",
            "ros-diagnostic-msgs==5.5.1",
            "ros-shape-msgs==5.5.1",
        ],
        # triton: the fused-fp8 kernels' CPU tests run in Triton's interpreter (torch 2.14.1 pulls this version on Linux)
        "test": ["pytest==9.2.0", "ruff==0.14.10", "triton==3.8.0"],
    },
    zip_safe=True,
    maintainer="sam3d_body_ros developers",
    maintainer_email="sam3d-body-ros@users.noreply.github.com",
    description="ROS 2 node recovering 3D human body meshes (SAM 3D Body) for every detected person",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sam3d-body = sam3d_body_ros.tools.cli:main",
            "mesh_node = sam3d_body_ros.ros.node:main",
        ],
    },
)
