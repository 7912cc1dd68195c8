"""GPU crop stage, before and after the OpenCV-exact warp (issue: GPU crops identical to OpenCV's), on the device.

Times, for 1 and 5 persons on a 1280x720 frame: the pipeline's crop stage as `BodyPipeline.infer` times it (host time
of `prepare_crops`: pinned upload + warp launch + normalisation, no sync) and the GPU time of the warp (CUDA events),
for the float grid_sample warp the package used before and for `core.cv_warp.warp_affine_linear` now; and checks on
CUDA that the new crops equal, bit for bit, the same code on the CPU (which the CPU tests hold equal to
`cv2.warpAffine` of opencv-python 4.13) on four real photos, and reports the difference to this machine's OpenCV.

    python bench/gpu_crop.py --out $OUT/crop.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sam3d_body_ros.core.crop import (  # noqa: E402
    PinnedUpload,
    _normalisation,
    box_to_center_side,
    prepare_crops,
    warp_matrix,
)
from sam3d_body_ros.core.cv_warp import warp_affine_linear  # noqa: E402


def grid_sample_crops(frame: torch.Tensor, affines: np.ndarray, size: int) -> torch.Tensor:
    """The package's previous CUDA crop (float bilinear grid_sample, align_corners=True), for the 'before' row."""
    h, w = frame.shape[:2]
    n, device = len(affines), frame.device
    img = frame.permute(2, 0, 1).float()[None]
    crop_to_image = np.linalg.inv(np.concatenate([affines, np.broadcast_to([[0.0, 0.0, 1.0]], (n, 1, 3))], 1))
    image_to_grid = np.array([[2.0 / (w - 1), 0.0, -1.0], [0.0, 2.0 / (h - 1), -1.0]])
    theta = torch.from_numpy(image_to_grid @ crop_to_image).float().to(device)
    r = torch.arange(size, device=device, dtype=torch.float32)
    pix = torch.stack([r.expand(size, size), r[:, None].expand(size, size), torch.ones(size, size, device=device)], -1)
    grid = torch.einsum("nij,hwj->nhwi", theta, pix)
    warped = torch.nn.functional.grid_sample(img.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                                             align_corners=True)
    scale, shift = _normalisation(device)
    return torch.addcmul(shift, warped, scale)


def exact_crops(frame: torch.Tensor, affines: np.ndarray, size: int) -> torch.Tensor:
    scale, shift = _normalisation(frame.device)
    return torch.addcmul(shift, warp_affine_linear(frame, affines, size).float(), scale)


def frame_and_boxes(persons: int) -> tuple[np.ndarray, np.ndarray]:
    """1280x720 RGB (the astronaut tiled) and `persons` upright boxes across it, the last partly outside."""
    tile = cv2.resize(skimage.data.astronaut(), (720, 720))
    image = np.ascontiguousarray(np.concatenate([tile, tile], axis=1)[:, :1280])
    step = 1280 / persons
    boxes = np.array([[i * step + 0.1 * step, 60.0, i * step + 0.9 * step, 700.0] for i in range(persons)])
    boxes[-1, 2] += 0.3 * step  # past the right edge
    return image, boxes


def stats(ms: list[float]) -> dict[str, float]:
    a = np.sort(np.asarray(ms))
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95))}


def time_path(warp, image: np.ndarray, affines: np.ndarray, device: torch.device, iters: int) -> dict:
    upload = PinnedUpload()
    host, gpu = [], []
    for i in range(iters + 20):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        frame = upload(image, device)
        start.record()
        warp(frame, affines, 512)
        end.record()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        if i >= 20:
            host.append(1000 * (t1 - t0))
            gpu.append(start.elapsed_time(end))
    return {"host": stats(host), "gpu": stats(gpu)}


def pipeline_crop_stage(iters: int) -> list[dict]:
    """The `crop` stage time that BodyPipeline reports (what `sam3d-body bench` tables), 5 persons, with the warp
    before and after, in one process; and the share of it spent inside prepare_crops."""
    import sam3d_body_ros.core.crop as crop
    import sam3d_body_ros.pipeline as pipeline

    image, boxes = frame_and_boxes(5)
    pipe = pipeline.BodyPipeline(pipeline.PipelineSettings(model_config="tiny", device="cuda"))
    inner: list[float] = []
    original = pipeline.prepare_crops

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = original(*a, **k)
        inner.append(1000 * (time.perf_counter() - t0))
        return out

    pipeline.prepare_crops = timed
    rows = []
    for name, warp in (("before: grid_sample (float)", grid_sample_crops), ("after: OpenCV-exact", crop._warp_torch)):
        crop._warp_torch = warp
        stage = []
        for i in range(iters + 20):
            r = pipe.infer(image, boxes)
            if i >= 20:
                stage.append(r.timings_ms["crop"])
        rows.append({"path": f"pipeline crop stage, {name}", "persons": 5, "host": stats(stage),
                     "prepare_crops": stats(inner[-iters:])})
    pipeline.prepare_crops = original
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200, help="timed repetitions per row")
    ap.add_argument("--out", type=Path, help="results JSON")
    args = ap.parse_args()
    device = torch.device("cuda")
    rows = []
    for persons in (1, 5):
        image, boxes = frame_and_boxes(persons)
        center, side = box_to_center_side(boxes)
        affines = np.stack([warp_matrix(c, s, 512) for c, s in zip(center, side)])
        for name, warp in (("before: grid_sample (float)", grid_sample_crops), ("after: OpenCV-exact", exact_crops)):
            rows.append({"path": name, "persons": persons, **time_path(warp, image, affines, device, args.iters)})
        upload = PinnedUpload()  # the stage exactly as the pipeline runs it (prepare_crops on CUDA)
        host = []
        for i in range(args.iters + 20):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            prepare_crops(image, boxes, 512, device, upload)
            t1 = time.perf_counter()
            if i >= 20:
                host.append(1000 * (t1 - t0))
        rows.append({"path": "after: prepare_crops (pipeline crop stage)", "persons": persons, "host": stats(host)})
    rows += pipeline_crop_stage(args.iters)
    exact = {}
    for name in ("astronaut", "camera", "coffee", "chelsea"):
        img = getattr(skimage.data, name)()
        img = np.repeat(img[:, :, None], 3, 2) if img.ndim == 2 else img
        h, w = img.shape[:2]
        boxes = np.array([[0.2 * w, 0.1 * h, 0.7 * w, 0.95 * h], [-0.2 * w, -0.1 * h, 0.3 * w, 0.5 * h],
                          [0.9 * w + 0.37, 0.5 * h, 1.3 * w, 1.2 * h], [10.3, 20.7, 14.1, 25.9], [-w, -h, 2 * w, 2 * h]])
        center, side = box_to_center_side(boxes)
        affines = np.stack([warp_matrix(c, s, 512) for c, s in zip(center, side)])
        ours = warp_affine_linear(torch.from_numpy(img).to(device), affines, 512).permute(0, 2, 3, 1).cpu().numpy()
        cpu = warp_affine_linear(torch.from_numpy(img), affines, 512).permute(0, 2, 3, 1).numpy()
        ref = np.stack([cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                       borderValue=0) for m in affines])
        exact[name] = {"cuda_vs_cpu": int(np.abs(ours.astype(int) - cpu.astype(int)).max()),
                       f"cuda_vs_opencv_{cv2.__version__}": int(np.abs(ours.astype(int) - ref.astype(int)).max())}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "opencv": cv2.__version__,
              "rows": rows, "max_abs_diff": exact}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(f"{'path':46s}{'persons':>8s}{'host med':>10s}{'host p95':>10s}{'gpu med':>10s}{'gpu p95':>10s}")
    for r in rows:
        g = r.get("gpu", r.get("prepare_crops", {}))  # for the pipeline rows: the time inside prepare_crops
        print(f"{r['path']:46s}{r['persons']:>8d}{r['host']['median_ms']:>10.3f}{r['host']['p95_ms']:>10.3f}"
              f"{g.get('median_ms', float('nan')):>10.3f}{g.get('p95_ms', float('nan')):>10.3f}")
    print(f"max |diff| of the uint8 crops per photo (CUDA vs the same code on the CPU, which CI checks against "
          f"opencv-python 4.13; vs this machine's OpenCV {cv2.__version__}):", exact)
    return 0 if all(v["cuda_vs_cpu"] == 0 for v in exact.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
