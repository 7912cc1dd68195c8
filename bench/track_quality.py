"""Track ids and temporal smoothing, measured (CPU, tiny model): `People` (BodyPipeline + Tracker + BodySmoother, as
the node composes them) on a synthetic 30 Hz stream of the astronaut photo moving over a 1280x720 canvas.

(a) one person, box moving at constant velocity (10 px/frame, ~1.1 m/s at the ~3.3 m the model puts it) plus
    Gaussian pixel noise (2 px) on the box corners:
    jitter = RMS of the second difference of the camera-frame joint positions, raw vs smoothed (noisy run);
    lag = how many frames the smoothed joints trail the raw ones at constant velocity (noise-free run, after the
    filters settle);
(b) two persons crossing (the second, mirrored, drawn over the first; their boxes coincide between the two middle
    frames), noisy boxes: id switches per person with detector ids (mode detector, ids "a"/"b" following the
    persons) and with IoU association (mode iou); and the same crossing's iou switches over 100 box-noise seeds
    at 2 and 3 px, Tracker alone (no model: IoU only).
Then the per-frame cost of tracking + smoothing for 8 persons, timed apart from the model (the MHR re-evaluation of
the smoothed bodies is reported separately).

    python bench/track_quality.py --out bench/track_quality.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sam3d_body_ros.people import People, PeopleSettings  # noqa: E402
from sam3d_body_ros.pipeline import BodyPipeline, BodyResult  # noqa: E402
from sam3d_body_ros.tracks import Tracker  # noqa: E402

RATE = 30.0
DT_NS = round(1e9 / RATE)
CANVAS_HW = (720, 1280)
K = np.array([[900.0, 0.0, 640.0], [0.0, 900.0, 360.0], [0.0, 0.0, 1.0]])
PHOTO = skimage.data.astronaut()
PERSON_BOX = np.array([120.0, 20.0, 440.0, 512.0])  # the astronaut in the photo, xyxy
TOP = 104  # photo row on the canvas
TARGETS = {"jitter_reduction_min": 3.0, "lag_frames_max": 1.0, "switches_detector_max": 0, "switches_iou_max": 1,
           "cost_ms_max": 1.0}


def render(lefts: list[int], mirrored: list[bool]) -> np.ndarray:
    """The canvas with one astronaut per left edge (later ones drawn over earlier ones)."""
    image = np.full((*CANVAS_HW, 3), 90, np.uint8)
    for left, flip in zip(lefts, mirrored):
        photo = PHOTO[:, ::-1] if flip else PHOTO
        x0, x1 = max(left, 0), min(left + photo.shape[1], CANVAS_HW[1])
        image[TOP:TOP + photo.shape[0], x0:x1] = photo[:, x0 - left:x1 - left]
    return image


def person_box(left: int, mirrored: bool) -> np.ndarray:
    """The person box of an astronaut drawn at `left`."""
    x0, y0, x1, y1 = PERSON_BOX
    if mirrored:
        x0, x1 = PHOTO.shape[1] - x1, PHOTO.shape[1] - x0
    return np.array([left + x0, TOP + y0, left + x1, TOP + y1])


def crossing_starts(speed_px: int, frames: int, left: int = 150) -> list[int]:
    """Left edges of two astronauts (the second mirrored) moving at +-speed whose person boxes coincide at time
    (frames - 1) / 2: between two frames for an even count, as a generic crossing (no frame sees equal boxes)."""
    shift = person_box(0, False)[0] - person_box(0, True)[0]
    return [left, left + round(shift) + speed_px * (frames - 1)]


def moving_boxes(starts: list[int], speeds: list[int], frames: int, noise_px: float,
                 seed: int) -> list[tuple[list[int], np.ndarray]]:
    """(left edges, noisy person boxes) per frame of astronauts moving from `starts` at `speeds` px/frame (every
    second one mirrored), persons in a fixed order."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(frames):
        lefts = [s + v * k for s, v in zip(starts, speeds)]
        exact = np.array([person_box(x, i % 2 == 1) for i, x in enumerate(lefts)])
        out.append((lefts, exact + rng.normal(0, noise_px, exact.shape)))
    return out


def stream(pipe: BodyPipeline, starts: list[int], speeds: list[int], frames: int, noise_px: float,
           seed: int = 0) -> tuple[list[np.ndarray], list[BodyResult]]:
    """Inference on every frame of `moving_boxes`: (boxes, result) per frame."""
    boxes, results = [], []
    for lefts, b in moving_boxes(starts, speeds, frames, noise_px, seed):
        result = pipe.infer(render(lefts, [i % 2 == 1 for i in range(len(lefts))]), b, K)
        assert len(result.kept) == len(b), result.rejected
        boxes.append(b)
        results.append(result)
    return boxes, results


def follow(pipe: BodyPipeline, boxes: list[np.ndarray], results: list[BodyResult],
           settings: PeopleSettings) -> tuple[list[list[int]], np.ndarray]:
    """`People` over a stream: track ids per frame and camera-frame joints (frames, persons, joints, 3)."""
    people = People(pipe, settings)
    ids, joints = [], []
    for k, (b, result) in enumerate(zip(boxes, results)):
        frame_ids, out = people.update(k * DT_NS, b, ["a", "b"][: len(b)], result)
        ids.append(frame_ids)
        joints.append(out["pred_joint_coords"] + out["pred_cam_t"][:, None])
    return ids, np.array(joints, dtype=np.float64)


def jitter_mm(joints: np.ndarray, start: int) -> float:
    """RMS (mm) of the second difference of joint positions from frame `start` on."""
    j = joints[start:]
    d2 = j[2:] - 2.0 * j[1:-1] + j[:-2]
    return float(1000.0 * np.sqrt(np.mean(np.sum(d2 * d2, axis=-1))))


def lag_frames(raw: np.ndarray, smoothed: np.ndarray, start: int) -> float:
    """Frames by which `smoothed` trails `raw` along the raw motion (constant velocity), from frame `start` on."""
    velocity = (raw[-1] - raw[start]) / (len(raw) - 1 - start)  # per frame, per joint
    behind = raw[start:] - smoothed[start:]
    return float(np.sum(behind * velocity) / (np.sum(velocity * velocity) * len(behind)))


def switches(ids: list[list[int]]) -> int:
    """Id switches: frame-to-frame changes of the id given to each person (persons in a fixed order)."""
    return sum(a != b for prev, cur in zip(ids, ids[1:]) for a, b in zip(prev, cur))


def crossing_switch_rate(speed_px: int, frames: int, noise_px: float, settings: PeopleSettings,
                         seeds: int = 100) -> dict[str, float]:
    """iou-mode id switches of the crossing over `seeds` box-noise draws, Tracker alone (boxes only, no 3D)."""
    counts = []
    for seed in range(seeds):
        tracker = Tracker("iou", max_missed=settings.max_missed, max_age_s=settings.max_age_s)
        steps = moving_boxes(crossing_starts(speed_px, frames), [speed_px, -speed_px], frames, noise_px, seed)
        counts.append(switches([tracker.update(k * DT_NS, b, []) for k, (_, b) in enumerate(steps)]))
    counts = np.array(counts)
    return {"noise_px": noise_px, "seeds": seeds, "mean": float(counts.mean()), "max": int(counts.max()),
            "share_over_1": float(np.mean(counts > 1))}


def cost_8_persons(pipe: BodyPipeline, frames: int, settings: PeopleSettings, seed: int = 1) -> dict[str, float]:
    """Per-frame ms for 8 persons of tracking and smoothing (`People.track_and_smooth`: the node's per-frame work
    besides the model, timed in a loop of its own) and of the MHR re-evaluation of the smoothed bodies (`People.update`
    minus that). One inference, then `frames` frames with the boxes moving and noise on the outputs."""
    rng = np.random.default_rng(seed)
    lefts = [-100 + 150 * i for i in range(8)]
    base = np.array([[x + 40.0, 150.0, x + 170.0, 600.0] for x in lefts])
    result = pipe.infer(render([x - 60 for x in lefts], [False] * 8), base, K)
    steps = []
    for k in range(frames):
        noisy = {name: v + rng.normal(0, 0.01, v.shape).astype(v.dtype) if name in (
            "mhr_model_params", "shape_params", "pred_cam_t") else v for name, v in result.outputs.items()}
        steps.append((base + 2.0 * k + rng.normal(0, 1.0, base.shape), dataclasses.replace(result, outputs=noisy)))
    people, times = People(pipe, settings), {"track": [], "smooth": []}
    for k, (boxes, frame) in enumerate(steps):
        ids, _ = people.track_and_smooth(k * DT_NS, boxes, [], frame.outputs)
        assert ids == list(range(1, 9)), ids
        for name in times:
            times[name].append(people.timings_ms[name])
    people, body = People(pipe, settings), []
    for k, (boxes, frame) in enumerate(steps[:30]):
        people.update(k * DT_NS, boxes, [], frame)
        body.append(people.timings_ms.get("smooth_body", 0.0))
    track_smooth = np.add(times["track"], times["smooth"])[10:]
    return {"track_ms": float(np.median(times["track"][10:])), "smooth_ms": float(np.median(times["smooth"][10:])),
            "track_smooth_ms": float(np.median(track_smooth)),
            "track_smooth_p95_ms": float(np.percentile(track_smooth, 95)),
            "body_reevaluation_ms": float(np.median(body[1:]))}


def measure(frames: int = 60, noise_px: float = 2.0, speed_px: int = 10, cost_frames: int = 200, seeds: int = 100,
            settings: PeopleSettings = PeopleSettings()) -> dict:
    """All figures of the report (see the module docstring)."""
    pipe = BodyPipeline()
    raw_settings = dataclasses.replace(settings, smoothing=False)
    settle = min(20, frames // 3)
    report: dict = {"frames": frames, "rate_hz": RATE, "noise_px": noise_px, "speed_px_per_frame": speed_px,
                    "settings": dataclasses.asdict(settings), "model": f"{pipe.cfg.name}, {pipe.backend_name}, "
                                                                       f"{pipe.device}, {pipe.weights_status}"}
    # (a) one person at constant velocity
    noisy = stream(pipe, [100], [speed_px], frames, noise_px)
    clean = stream(pipe, [100], [speed_px], frames, 0.0)
    raw = follow(pipe, *noisy, raw_settings)[1]
    smooth_ids, smooth = follow(pipe, *noisy, settings)
    detector_ids = follow(pipe, *noisy, dataclasses.replace(settings, tracking="detector"))[0]
    speed = np.linalg.norm(raw[-1] - raw[0], axis=-1).mean() / (frames - 1) * RATE
    a = {"speed_m_per_s": float(speed), "jitter_raw_mm": jitter_mm(raw, settle),
         "jitter_smoothed_mm": jitter_mm(smooth, settle),
         "lag_frames": lag_frames(follow(pipe, *clean, raw_settings)[1], follow(pipe, *clean, settings)[1], settle),
         "switches_iou": switches(smooth_ids), "switches_detector": switches(detector_ids)}
    a["jitter_reduction"] = a["jitter_raw_mm"] / a["jitter_smoothed_mm"]
    # (b) two persons crossing
    crossing = stream(pipe, crossing_starts(speed_px, frames), [speed_px, -speed_px], frames, noise_px, seed=1)
    b = {"switches_detector": switches(follow(pipe, *crossing, dataclasses.replace(settings, tracking="detector"))[0]),
         "switches_iou": switches(follow(pipe, *crossing, settings)[0]),
         "iou_over_seeds": [crossing_switch_rate(speed_px, frames, noise, settings, seeds)
                            for noise in (noise_px, 1.5 * noise_px)] if seeds else []}
    report.update(constant_velocity=a, crossing=b, cost_8_persons=cost_8_persons(pipe, cost_frames, settings))
    c = report["cost_8_persons"]
    report["targets"] = TARGETS
    report["met"] = {"jitter_reduction": a["jitter_reduction"] >= TARGETS["jitter_reduction_min"],
                     "lag": a["lag_frames"] <= TARGETS["lag_frames_max"],
                     "switches_detector": max(a["switches_detector"], b["switches_detector"])
                     <= TARGETS["switches_detector_max"],
                     "switches_iou": max(a["switches_iou"], b["switches_iou"]) <= TARGETS["switches_iou_max"],
                     "cost": c["track_smooth_ms"] < TARGETS["cost_ms_max"]}
    return report


def table(r: dict) -> str:
    """The report as a text table."""
    a, b, c = r["constant_velocity"], r["crossing"], r["cost_8_persons"]
    rows = [("jitter, RMS 2nd difference of joints (mm)", f"{a['jitter_raw_mm']:.2f} raw -> "
             f"{a['jitter_smoothed_mm']:.2f} smoothed ({a['jitter_reduction']:.1f}x)", ">= 3x"),
            ("lag at constant velocity (frames)", f"{a['lag_frames']:.2f} at {a['speed_m_per_s']:.2f} m/s", "<= 1"),
            ("id switches, detector ids: one / crossing", f"{a['switches_detector']} / {b['switches_detector']}", "0"),
            ("id switches, iou: one / crossing", f"{a['switches_iou']} / {b['switches_iou']}", "<= 1 on crossing"),
            *((f"  crossing, iou, {s['seeds']} noise seeds at {s['noise_px']:g} px", f"mean {s['mean']:.2f}, max "
               f"{s['max']}, share > 1: {s['share_over_1']:.0%}", "") for s in b["iou_over_seeds"]),
            ("tracking + smoothing, 8 persons (ms/frame)", f"{c['track_smooth_ms']:.3f} median "
             f"({c['track_ms']:.3f} + {c['smooth_ms']:.3f}), p95 {c['track_smooth_p95_ms']:.3f}", "< 1"),
            ("MHR re-evaluation, 8 persons (ms/frame)", f"{c['body_reevaluation_ms']:.2f} (model: {r['model']})", "")]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{r['frames']} frames at {r['rate_hz']:.0f} Hz, box noise {r['noise_px']} px, "
             f"{r['speed_px_per_frame']} px/frame; settings {r['settings']}"]
    lines += [f"{name:<{width}}  {value:<58} target {target}" for name, value, target in rows]
    lines.append("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["met"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--noise-px", type=float, default=2.0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    report = measure(args.frames, args.noise_px)
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(report["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
