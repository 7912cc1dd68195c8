"""Where the host and GPU time of one frame goes, step by step, in the full-size pipeline (body and `full` mode).

Wraps the pipeline's steps (box checks, intrinsics, the crop stage, backbone, the three decoder passes of `full` mode,
hand crop geometry and warps, the outputs' copy to the host) with timers: host time (perf_counter from entry to exit)
and GPU time (CUDA events recorded at entry and exit). Also times the crop stage through gpu_crop.py's three crop
stages in the same process: the float grid_sample of before issue 15 and the OpenCV-exact warp, both launched per
frame, and the pipeline's CropStage (OpenCV-exact, replayed from a CUDA graph per persons count).

    python bench/gpu_stages.py --out $OUT/stages.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gpu_crop  # noqa: E402  (bench/gpu_crop.py: the three crop stages compared)

from sam3d_body_ros import pipeline as pipeline_mod  # noqa: E402
from sam3d_body_ros.core import crop as crop_mod  # noqa: E402
from sam3d_body_ros.core import hands  # noqa: E402
from sam3d_body_ros.pipeline import BodyPipeline, PipelineSettings  # noqa: E402
from sam3d_body_ros.tools.bench import synthetic_frame  # noqa: E402


class Steps:
    """Per-frame host and GPU spans of wrapped callables."""

    def __init__(self) -> None:
        self.frame: list[tuple[str, float, float, torch.cuda.Event, torch.cuda.Event]] = []
        self.host: dict[str, list[float]] = defaultdict(list)
        self.gpu: dict[str, list[float]] = defaultdict(list)

    def wrap(self, fn, name: str):
        def timed(*a, **k):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            t1 = time.perf_counter()
            e1.record()
            self.frame.append((name, t0, t1, e0, e1))
            return out

        return timed

    def end_frame(self, keep: bool) -> None:
        torch.cuda.synchronize()
        if keep:
            per_host, per_gpu = defaultdict(float), defaultdict(float)
            for name, t0, t1, e0, e1 in self.frame:
                per_host[name] += 1000 * (t1 - t0)
                per_gpu[name] += e0.elapsed_time(e1)
            for name in per_host:
                self.host[name].append(per_host[name])
                self.gpu[name].append(per_gpu[name])
        self.frame = []

    def table(self) -> dict[str, dict[str, float]]:
        return {n: {"host_ms": float(np.median(self.host[n])), "gpu_ms": float(np.median(self.gpu[n]))}
                for n in self.host}


def instrument(pipe: BodyPipeline, steps: Steps) -> None:
    """Wrap the steps of `pipe` (module-level functions patched once, pipeline objects per pipeline)."""
    w = steps.wrap
    pipe.backend = w(pipe.backend, "backbone")
    pipe.run_head = w(pipe.run_head, "decoder (body pass)")
    if pipe.full_mode is not None:
        fm = pipe.full_mode
        fm.first = w(fm.first, "full: body pass 1")
        fm.hands = w(fm.hands, "full: hand decoder")
        fm.refine = {k: w(r, "full: body pass 2 + merge") for k, r in fm.refine.items()}


def patch_module_steps(steps: Steps) -> None:
    w = steps.wrap
    pipeline_mod.validate_boxes = w(pipeline_mod.validate_boxes, "crop: validate boxes")
    pipeline_mod.resolve_intrinsics = w(pipeline_mod.resolve_intrinsics, "crop: intrinsics")
    pipeline_mod.prepare_crops = w(pipeline_mod.prepare_crops, "crop: prepare_crops (all)")
    pipeline_mod._to_numpy = w(pipeline_mod._to_numpy, "outputs to host")
    crop_mod.CropStage.__call__ = w(crop_mod.CropStage.__call__, "crop: upload + warp (CropStage)")
    hands.hand_crop_geometry = w(hands.hand_crop_geometry, "full: hand crop geometry (host)")
    hands.warp_hand_crops = w(hands.warp_hand_crops, "full: hand crops")


def crop_variants(persons_list: list[int], warmup: int, iters: int, pipe: BodyPipeline) -> list[dict]:
    """Crop stage host time (prepare_crops, as BodyPipeline.infer measures it) through each of gpu_crop's three crop
    stages, in this process (full model loaded), each repetition followed by one full-model backbone call as in a
    frame."""
    rows = []
    for persons in persons_list:
        image, boxes = synthetic_frame(persons)
        ref = None
        for name, stage in gpu_crop.variants(pipe).items():
            host = []
            for i in range(warmup + iters):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                crops = crop_mod.prepare_crops(image, boxes, 512, pipe.device, stage)
                t1 = time.perf_counter()
                pipe.backend(crops.images)
                torch.cuda.synchronize()
                if i >= warmup:
                    host.append(1000 * (t1 - t0))
            same = None
            if "OpenCV" in name:
                ref = crops.images if ref is None else ref
                same = bool(torch.equal(ref, crops.images))
            rows.append({"variant": name, "persons": persons, "host_median_ms": float(np.median(host)),
                         "host_p95_ms": float(np.percentile(host, 95)), "equal_to_launched_exact": same})
            print(f"crop {persons}p {name}: {rows[-1]['host_median_ms']:.3f} ms (p95 {rows[-1]['host_p95_ms']:.3f})",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", default="1,5")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    persons_list = [int(p) for p in args.persons.split(",")]
    t_start = time.perf_counter()
    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "stages": []}
    body = BodyPipeline(PipelineSettings(model_config="full", backend="torch-int8", device="cuda", precision="fp8"))
    full = BodyPipeline(PipelineSettings(model_config="full", device="cuda", mode="full"), body.backend)
    try:
        result["crop_variants"] = crop_variants(persons_list, args.warmup, args.iters, body)
    except Exception as e:  # noqa: BLE001 - keep going: the stage table matters more
        result["crop_variants_error"] = repr(e)[:500]
        print("crop variants FAILED", repr(e)[:300], flush=True)
    steps = Steps()
    patch_module_steps(steps)
    for pipe in (body, full):
        instrument(pipe, steps)
    for pipe in (body, full):
        for persons in persons_list:
            image, boxes = synthetic_frame(persons)
            totals = []
            for i in range(args.warmup + args.iters):
                r = pipe.infer(image, boxes)
                steps.end_frame(i >= args.warmup)
                if i >= args.warmup:
                    totals.append(r.timings_ms)
            row = {"mode": pipe.settings.mode, "persons": persons,
                   "pipeline_stage_median_ms": {k: float(np.median([t[k] for t in totals])) for k in totals[0]},
                   "steps": steps.table()}
            steps.host.clear()
            steps.gpu.clear()
            result["stages"].append(row)
            print(f"\n{row['mode']} {persons}p  stages {row['pipeline_stage_median_ms']}", flush=True)
            for name, v in row["steps"].items():
                print(f"  {name:<42} host {v['host_ms']:7.3f} ms   GPU {v['gpu_ms']:7.3f} ms", flush=True)
            args.out.write_text(json.dumps(result, indent=1))
    result["total_s"] = time.perf_counter() - t_start
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
