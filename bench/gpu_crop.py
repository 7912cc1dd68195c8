"""GPU crop stage on the device (issue 15: GPU crops identical to OpenCV's): three ways, times and exactness.

Times, for 1 and 5 persons on a 1280x720 frame, the crop stage as `BodyPipeline.infer` times it (host time of
`prepare_crops`: pinned upload, warp, normalisation, no sync) and its GPU time (CUDA events), for
- before: the float grid_sample warp the package used before issue 15, launched per frame,
- OpenCV-exact launched per frame (`core.cv_warp.warp_affine_linear`: host tables before this session, now float64
  torch ops), and
- now: the pipeline's `CropStage` (one uploaded frame buffer, warp + normalisation replayed from a CUDA graph per
  persons count);
then the same three in a tiny `BodyPipeline` (its reported `crop` stage). Checks on CUDA that the uint8 crops equal,
bit for bit, the same code on the CPU (which the CPU tests hold equal to `cv2.warpAffine` of opencv-python 4.13) on
four real photos, that the graph-replayed crops equal the eager ones, and reports the difference to this machine's
OpenCV.

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
    CropStage,
    _normalisation,
    _warp_torch,
    box_to_center_side,
    prepare_crops,
    warp_matrix,
)
from sam3d_body_ros.core.cv_warp import warp_affine_linear  # noqa: E402


class LaunchedCrops:
    """A crop stage that uploads the frame as CropStage does and launches `warp` eagerly, for the comparison rows."""

    def __init__(self, warp) -> None:
        self.warp, self.upload = warp, CropStage("cuda")

    def __call__(self, image: np.ndarray, affines: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, frame = self.upload(image, affines[:0], size)  # no boxes: the upload alone
        return self.warp(frame, affines, size), frame


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


def variants(pipe) -> dict[str, object]:
    """The three crop stages, the last one the pipeline's own."""
    return {"before: grid_sample (float), launched": LaunchedCrops(grid_sample_crops),
            "OpenCV-exact, launched": LaunchedCrops(_warp_torch),
            "now: CropStage (OpenCV-exact, CUDA graph)": pipe._crops}


def time_stage(stage, image: np.ndarray, boxes: np.ndarray, iters: int) -> dict:
    """Host time of prepare_crops through `stage` (what the pipeline's crop stage holds) and its GPU time."""
    host, gpu = [], []
    for i in range(iters + 20):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        prepare_crops(image, boxes, 512, "cuda", stage)
        t1 = time.perf_counter()
        end.record()
        torch.cuda.synchronize()
        if i >= 20:
            host.append(1000 * (t1 - t0))
            gpu.append(start.elapsed_time(end))
    return {"host": stats(host), "gpu": stats(gpu)}


def pipeline_crop_stage(pipe, iters: int) -> list[dict]:
    """The `crop` stage time that BodyPipeline reports (what `sam3d-body bench` tables), 5 persons, with each
    stage in one process."""
    image, boxes = frame_and_boxes(5)
    rows = []
    for name, stage in variants(pipe).items():
        pipe._crops = stage
        times = [pipe.infer(image, boxes).timings_ms["crop"] for _ in range(iters + 20)][20:]
        rows.append({"path": f"pipeline crop stage, {name}", "persons": 5, "host": stats(times)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200, help="timed repetitions per row")
    ap.add_argument("--out", type=Path, help="results JSON")
    args = ap.parse_args()
    device = torch.device("cuda")
    import sam3d_body_ros.pipeline as pipeline

    pipe = pipeline.BodyPipeline(pipeline.PipelineSettings(model_config="tiny", device="cuda"))
    graph_stage = pipe._crops
    rows = []
    for persons in (1, 5):
        image, boxes = frame_and_boxes(persons)
        for name, stage in variants(pipe).items():
            rows.append({"path": name, "persons": persons, **time_stage(stage, image, boxes, args.iters)})
    rows += pipeline_crop_stage(pipe, args.iters)
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
        replayed = graph_stage(img, affines, 512)[0]
        eager = _warp_torch(torch.from_numpy(img).to(device), affines, 512)
        ref = np.stack([cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                       borderValue=0) for m in affines])
        exact[name] = {"cuda_vs_cpu": int(np.abs(ours.astype(int) - cpu.astype(int)).max()),
                       "graph_equals_eager": bool(torch.equal(replayed, eager)),
                       f"cuda_vs_opencv_{cv2.__version__}": int(np.abs(ours.astype(int) - ref.astype(int)).max())}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "opencv": cv2.__version__,
              "rows": rows, "max_abs_diff": exact}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(f"{'path':46s}{'persons':>8s}{'host med':>10s}{'host p95':>10s}{'gpu med':>10s}{'gpu p95':>10s}")
    for r in rows:
        g = r.get("gpu", {})
        print(f"{r['path']:46s}{r['persons']:>8d}{r['host']['median_ms']:>10.3f}{r['host']['p95_ms']:>10.3f}"
              f"{g.get('median_ms', float('nan')):>10.3f}{g.get('p95_ms', float('nan')):>10.3f}")
    print(f"max |diff| of the uint8 crops per photo (CUDA vs the same code on the CPU, which CI checks against "
          f"opencv-python 4.13; vs this machine's OpenCV {cv2.__version__}):", exact)
    return 0 if all(v["cuda_vs_cpu"] == 0 and v["graph_equals_eager"] for v in exact.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
