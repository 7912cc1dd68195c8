"""`sam3d-body demo`: the node in-process, a camera publishing a real photo with person boxes from OpenCV's
HOG people detector, and a viewer that renders the received ~/markers into a PNG (as RViz would show them)."""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..ros.params import coerce, read_params_file
from .options import add_model_args

# Used when HOG finds nobody: the central 90 % of the image (x1, y1, x2, y2 as fractions of width/height).
DEFAULT_BOX_FRACTION = (0.05, 0.05, 0.95, 0.95)
HOG_MIN_WEIGHT = 0.6  # detector confidence (SVM margin) below which HOG detections are ignored
HOG_SCALES = (1.0, 0.5, 0.35, 0.25)  # image downscales tried, so that large/cut-off persons fit the 64x128 window
HOG_PAD = 64  # replicate-padding in px around each downscaled image
FRAME_ID = "camera_optical_frame"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` sub-command."""
    p = subparsers.add_parser("demo", help="run the ROS 2 node on a sample photo and render what it publishes")
    p.add_argument("--image", type=Path, help="photo to publish (default: scikit-image's `camera`, mono8)")
    p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X1", "Y1", "X2", "Y2"),
                   help="person box in px (repeatable); default: OpenCV HOG people detector")
    p.add_argument("--params-file", type=Path, help="node parameters (default: the package's config/mesh.yaml); "
                                                    "the options below override it")
    add_model_args(p, ("--config", "--weights", "--backend", "--device", "--precision", "--mode"), defaults=False)
    p.add_argument("--out", type=Path, default=Path("demo.png"), help="PNG to write (default demo.png)")
    p.add_argument("--spin", type=Path, metavar="FILE.gif", help="also write a turntable GIF of the received meshes")
    p.add_argument("--timeout", type=float, default=120.0, help="s to wait for the node's markers")
    p.set_defaults(func=run_demo)


def default_params_file() -> Path:
    """config/mesh.yaml of the source tree (pip/editable install), else of the installed ROS package."""
    source = Path(__file__).resolve().parents[2] / "config" / "mesh.yaml"
    if source.is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("sam3d_body_ros")) / "config" / "mesh.yaml"


def load_params(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Node parameters from a params file, then the non-None `overrides`, each checked against the schema."""
    params = read_params_file(path)
    params.update({k: coerce(k, v) for k, v in overrides.items() if v is not None})
    return params


def hog_people(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (N,4) xyxy px and confidences from OpenCV's default HOG people detector, over a few
    downscales with padding, merged by NMS and clipped to the image."""
    import cv2

    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    h, w = gray.shape
    rects, weights = [], []
    for s in HOG_SCALES:
        small = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s != 1.0 else gray
        padded = cv2.copyMakeBorder(small, HOG_PAD, HOG_PAD, HOG_PAD, HOG_PAD, cv2.BORDER_REPLICATE)
        found, wts = hog.detectMultiScale(padded, winStride=(4, 4), scale=1.05)
        for (x, y, bw, bh), wt in zip(np.reshape(found, (-1, 4)), np.ravel(wts)):
            rects.append([(x - HOG_PAD) / s, (y - HOG_PAD) / s, bw / s, bh / s])
            weights.append(float(wt))
    keep = cv2.dnn.NMSBoxes(rects, weights, HOG_MIN_WEIGHT, 0.3) if rects else []
    boxes = np.array([[r[0], r[1], r[0] + r[2], r[1] + r[3]] for r in (rects[i] for i in np.ravel(keep))], float)
    boxes = np.clip(boxes.reshape(-1, 4), 0, [w, h, w, h])
    return boxes, np.array([weights[i] for i in np.ravel(keep)], float)


def read_photo(path: Path | None) -> tuple[np.ndarray, str, str]:
    """(array, encoding, name): the given file as rgb8, or scikit-image's `camera` photo as mono8."""
    import cv2

    if path is None:
        import skimage.data

        return skimage.data.camera(), "mono8", "scikit-image camera"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        from .options import fail

        raise fail("cannot read image", path, "give a path to a PNG/JPEG file that exists")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "rgb8", path.name


def meshes_from_markers(msg) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(vertices (N,3F,3), faces (F,3), skeleton segments [(S,2,3)]) from a received MarkerArray."""
    def pts(m):
        return np.array([[p.x, p.y, p.z] for p in m.points], dtype=np.float64)

    mesh = sorted((m for m in msg.markers if m.ns == "mesh" and m.action == m.ADD), key=lambda m: m.id)
    skel = sorted((m for m in msg.markers if m.ns == "skeleton" and m.action == m.ADD), key=lambda m: m.id)
    verts = np.stack([pts(m) for m in mesh]) if mesh else np.zeros((0, 0, 3))
    faces = np.arange(verts.shape[1]).reshape(-1, 3)
    return verts, faces, [pts(m).reshape(-1, 2, 3) for m in skel]


def projected_bounds(verts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """xyxy image bounds of each person's projected mesh."""
    from .render import project

    uv = project(verts, K)
    return np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return float(iw * ih / union) if union > 0 else 0.0


def picture(photo_rgb: np.ndarray, verts: np.ndarray, faces: np.ndarray, segments: list[np.ndarray],
            K: np.ndarray, boxes: np.ndarray, banner: list[str]) -> np.ndarray:
    """The photo, the received meshes + skeletons + boxes over it, a three-quarter and a side view; banner on top."""
    import cv2

    from . import render

    left = render.overlay(photo_rgb, verts, faces, K, None, boxes if len(verts) else None)
    for seg in segments:
        uv = render.project(seg, K)
        for a, b in np.round(uv).astype(int):
            cv2.line(left, tuple(a), tuple(b), (255, 255, 255), 2, cv2.LINE_AA)
    if not len(verts):
        for x1, y1, x2, y2 in np.round(boxes).astype(int):
            cv2.rectangle(left, (x1, y1), (x2, y2), (255, 80, 80), 2)
    h = photo_rgb.shape[0]
    return render.compose([photo_rgb, left, render.three_quarter_view(verts, faces, h), render.side_view(verts, faces, h)],
                          banner)


def run_demo(args: argparse.Namespace) -> int:
    """Execute `sam3d-body demo`; returns 0 when the node's markers were received and rendered."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header
    from visualization_msgs.msg import MarkerArray

    from ..core.camera import default_intrinsics
    from ..ros.conversions import array_to_image, boxes_to_detections
    from ..ros.node import MeshNode
    from ..ros.qos import make_qos
    from . import render
    from .options import fail

    params_file = args.params_file or default_params_file()
    overrides = {"model_config": args.config, "backend": args.backend, "device": args.device,
                 "precision": args.precision, "weights_dir": str(args.weights) if args.weights else None,
                 "mode": args.mode,
                 "autostart": True}
    try:
        params = load_params(params_file, overrides)
    except (OSError, ValueError) as e:
        raise fail(f"bad params file: {e}", params_file, "use config/mesh.yaml as a template") from None
    photo, encoding, name = read_photo(args.image)
    h, w = photo.shape[:2]
    rgb = photo if photo.ndim == 3 else np.repeat(photo[:, :, None], 3, axis=2)
    if args.box:
        from ..core.crop import validate_boxes

        boxes, how = np.array(args.box, dtype=np.float64), "--box"
        valid, reasons = validate_boxes(boxes, w, h)
        if not valid.all():
            raise fail(f"bad --box: {'; '.join(reasons)}", args.image, "give X1 Y1 X2 Y2 in px inside the image")
    else:
        gray = photo if photo.ndim == 2 else rgb[:, :, 0] // 4 + rgb[:, :, 1] // 2 + rgb[:, :, 2] // 4
        boxes, weights = hog_people(gray)
        how = f"OpenCV HOG people detector (confidence {np.round(weights, 2).tolist()})"
        if not len(boxes):
            f = DEFAULT_BOX_FRACTION
            boxes = np.array([[f[0] * w, f[1] * h, f[2] * w, f[3] * h]])
            how = "default box (HOG found nobody): the central 90 % of the image"
    K = default_intrinsics(w, h)
    print(f"[demo] photo: {name} ({w}x{h} {encoding}); params: {params_file}")
    print(f"[demo] person boxes from {how}: {np.round(boxes, 1).tolist()}")

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ctx = Context()
    rclpy.init(context=ctx)
    received: dict[str, Any] = {}
    done = threading.Event()
    try:
        node = MeshNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        if node.config_error:
            error = node.config_error
            node.destroy_node()
            raise fail(f"the node {error}", params_file, "fix the parameter or the weights it names")
        source = rclpy.create_node("demo_camera", context=ctx)
        qos = make_qos("reliable", 5)
        pub_img = source.create_publisher(Image, "image", qos)
        pub_info = source.create_publisher(CameraInfo, "camera_info", qos)
        from vision_msgs.msg import Detection2DArray

        pub_det = source.create_publisher(Detection2DArray, "detections", qos)
        image_msg = array_to_image(photo, encoding)

        def publish_frame() -> None:
            header = Header(stamp=source.get_clock().now().to_msg(), frame_id=FRAME_ID)
            image_msg.header = header
            pub_info.publish(CameraInfo(header=header, width=w, height=h, k=K.reshape(-1).tolist()))
            pub_img.publish(image_msg)
            pub_det.publish(boxes_to_detections(boxes, header, ids=[f"person{i}" for i in range(len(boxes))]))

        timer = source.create_timer(0.5, publish_frame)
        viewer = rclpy.create_node("demo_viewer", context=ctx)

        def on_markers(msg: MarkerArray) -> None:
            if any(m.ns == "mesh" and m.action == m.ADD for m in msg.markers) and not done.is_set():
                received["markers"] = msg
                done.set()
        viewer.create_subscription(MarkerArray, "/sam3d_body/markers", on_markers, qos)

        executor = SingleThreadedExecutor(context=ctx)
        for n in (node, source, viewer):
            executor.add_node(n)
        spin = threading.Thread(target=executor.spin, daemon=True)
        t0 = time.monotonic()
        spin.start()
        ok = done.wait(args.timeout)
        timer.cancel()
        executor.shutdown(timeout_sec=5.0)
        spin.join(timeout=5.0)
        pipe, topic = node.pipeline, f"/{node.get_name()}/markers"
        for n in (viewer, source, node):
            n.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
    if not ok:
        raise fail(f"no markers from the node within {args.timeout:.0f} s", None,
                   "check the log above; raise --timeout for the full model on CPU")
    verts, faces, segments = meshes_from_markers(received["markers"])
    print(f"[demo] received {len(verts)} mesh(es) ({faces.shape[0]} triangles each) on {topic} after "
          f"{time.monotonic() - t0:.1f} s")
    for i, (box, bounds) in enumerate(zip(boxes, projected_bounds(verts, K))):
        print(f"[demo] person {i}: box {np.round(box).astype(int).tolist()}, projected mesh "
              f"{np.round(bounds).astype(int).tolist()}, IoU {box_iou(box, bounds):.2f}")
    banner = [f"sam3d-body demo: {name}, boxes from {how.split(' (')[0]}",
              f"{len(verts)} person mesh(es) as received on {topic} (what RViz shows)",
              f"model {pipe.cfg.name} | backend {pipe.backend_name} on {pipe.device}",
              pipe.weights_status]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render.write_png(args.out, picture(rgb, verts, faces, segments, K, boxes, banner))
    if args.spin:
        render.write_gif(args.spin, render.turntable(verts, faces, label=pipe.weights_status))
        print(f"[demo] wrote {args.spin.resolve()}")
    print(f"[demo] wrote {args.out.resolve()}")
    return 0
