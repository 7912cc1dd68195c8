"""Device exploration of the decoder + MHR head (full size, body mode): kernel count and top kernels of one
forward, then CUDA-graph replay with and without torch.compile at 1 and 8 persons. Writes $OUT/head.json.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3d_body_ros.core.config import get_config  # noqa: E402
from sam3d_body_ros.core.synthetic import random_head  # noqa: E402
from sam3d_body_ros.runtime.torch_backend import make_runner  # noqa: E402
from sam3d_body_ros.tools.bench import _stats, head_inputs, time_cuda  # noqa: E402
from sam3d_body_ros.tools.fidelity import rel_l2  # noqa: E402


def main() -> int:
    out_dir = Path(os.environ.get("OUT", "/tmp/out"))
    dev = torch.device("cuda")
    cfg = get_config("full")
    head = random_head(cfg, seed=0).to(dev).eval()
    res: dict = {"profile": {}, "rows": []}
    t0 = time.time()
    with torch.inference_mode():
        for persons in (1, 8):
            inp = head_inputs(cfg, persons, dev)
            head(*inp)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA], record_shapes=True) as prof:
                head(*inp)
                torch.cuda.synchronize()
            ka = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
            ops = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.device_time_total > 0),
                         key=lambda e: -e.device_time_total)
            res["profile"][f"{persons}_ops"] = [{"op": e.key, "shapes": str(e.input_shapes)[:160], "calls": e.count,
                                                 "ms": e.device_time_total / 1000} for e in ops[:25]]
            for e in ops[:25]:
                print(f"   op {e.device_time_total/1000:7.3f} ms {e.count:4d}x {e.key} {str(e.input_shapes)[:120]}")
            total = sum(e.device_time_total for e in ka)
            kernels = sum(e.count for e in ka)
            top = [{"name": e.key[:100], "calls": e.count, "ms": e.device_time_total / 1000} for e in ka[:15]]
            res["profile"][persons] = {"kernels": kernels, "gpu_busy_ms": total / 1000, "top": top}
            print(f"== head eager {persons}p: {kernels} kernels, GPU busy {total/1000:.2f} ms", flush=True)
            for t in top:
                print(f"   {t['ms']:7.3f} ms {t['calls']:5d}x {t['name']}")
        paths = {"graph": make_runner(head, dev, compile=False)}
        if "--no-compile" not in sys.argv:
            paths["compile+graph"] = make_runner(head, dev, compile=True)
        for persons in (1, 8):
            inp = head_inputs(cfg, persons, dev)
            ref = head(*inp)
            for label, fn in paths.items():
                t1 = time.time()
                out = fn(*inp)
                torch.cuda.synchronize()
                first = time.time() - t1
                st = _stats(time_cuda(lambda: fn(*inp), 20, 100), persons)
                err = max(rel_l2(out[k], ref[k]) for k in ("pred_vertices", "pred_keypoints_3d", "pred_cam_t"))
                row = {"path": label, "persons": persons, **st, "first_call_s": first, "rel_l2_vs_eager": err}
                res["rows"].append(row)
                print(json.dumps(row), f"({time.time()-t0:.0f}s)", flush=True)
                (out_dir / "head.json").write_text(json.dumps(res, indent=1))
    print("\npath            persons  median ms  first s  relL2")
    for r in res["rows"]:
        print(f"{r['path']:16s}{r['persons']:>7d}{r['median_ms']:>11.2f}{r['first_call_s']:>9.1f}  {r['rel_l2_vs_eager']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
