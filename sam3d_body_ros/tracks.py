"""Person track ids over time: detector ids, IoU association (optimal assignment, 3D tie-breaker), or per-frame indices.

Pure Python/numpy (no ROS). Track ids are integers from 1, stable for a track's life and never reused by one `Tracker`.
Association (mode ``iou``, and the fallback of mode ``detector`` for boxes without a known id) first predicts each
track's box by constant velocity of the box centre (size kept): the centre velocity is estimated from consecutive
observations and their header stamps (averaged with the previous estimate, `VELOCITY_BLEND`), and extrapolated over
the time since the track was last seen, so fast motion and dropped frames still overlap. It then solves the
box-to-track assignment minimising ``1 - IoU(predicted, box)`` (+ ``dist_weight`` x the 3D distance in metres to the
track's last position, when positions are given: near-equal IoUs resolve by 3D distance) with
`scipy.optimize.linear_sum_assignment`; pairs below ``iou_threshold`` are not matched. Unmatched boxes start tracks.
Unmatched tracks survive up to ``max_missed`` updates and ``max_age_s`` seconds of header time since last seen (a
person cut by ``max_persons``, occluded or in a dropped frame just counts a miss), then end (listed in `ended`).
A stamp earlier than the previous update's (bag loop, sim reset) resets all tracks.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

MODES = ("detector", "iou", "off")
# Weight of the newly measured centre velocity against the previous estimate (damps box jitter).
VELOCITY_BLEND = 0.5
_INFEASIBLE = 1e6


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) of xyxy boxes."""
    wh = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0.0)
    inter = wh[..., 0] * wh[..., 1]
    size_a, size_b = np.maximum(a[:, 2:] - a[:, :2], 0.0), np.maximum(b[:, 2:] - b[:, :2], 0.0)
    union = (size_a[:, 0] * size_a[:, 1])[:, None] + size_b[:, 0] * size_b[:, 1] - inter
    return inter / np.maximum(union, 1e-12)


class Tracker:
    """Assigns a stable integer track id to each detected person box; see the module docstring for the rules."""

    def __init__(self, mode: str = "iou", iou_threshold: float = 0.3, max_missed: int = 10, max_age_s: float = 1.0,
                 dist_weight: float = 0.1) -> None:
        self.iou_threshold = float(iou_threshold)
        self.dist_weight = float(dist_weight)
        self._next_id = 1
        self._clear()
        self.ended: list[int] = []  # ids of the tracks ended by the last update(), reset() or configure()
        self.mode = mode
        self.configure(mode, max_missed, max_age_s)

    def configure(self, mode: str, max_missed: int, max_age_s: float) -> None:
        """Set the mode and the limits of unmatched tracks; a change of mode ends every track (`ended`)."""
        if mode not in MODES:
            raise ValueError(f"tracking mode must be one of {MODES}, got {mode!r}")
        if mode != self.mode:
            self.reset()
        self.mode = mode
        self.max_missed = int(max_missed)
        self.max_age_ns = int(round(max_age_s * 1e9))

    @property
    def active_ids(self) -> list[int]:
        """Ids of the live tracks (matched, or unmatched within their miss allowance)."""
        return self._ids.tolist()

    def reset(self) -> None:
        """End every track (their ids go to `ended`); ids keep increasing, never reused."""
        self.ended = sorted(self._ids.tolist())
        self._clear()

    def _clear(self) -> None:
        """No tracks: one row per live track in the arrays below."""
        self._ids = np.empty(0, dtype=np.int64)
        self._boxes = np.empty((0, 4))  # last observed xyxy px
        self._vel = np.empty((0, 2))  # box-centre velocity px/s (0 until observed twice)
        self._has_vel = np.empty(0, dtype=bool)
        self._seen = np.empty(0, dtype=np.int64)  # stamp of the last observation
        self._pos = np.empty((0, 3))  # last 3D position, NaN when none was given
        self._missed = np.empty(0, dtype=np.int64)
        self._det: list[str] = []  # detector id bound to the track ("" when none)
        self._last_ns: int | None = None

    def update(self, stamp_ns: int, boxes: np.ndarray, det_ids: Sequence[str],
               positions: np.ndarray | None = None) -> list[int]:
        """Track ids (one per box, in order) for the boxes (N,4 xyxy px) of the frame stamped `stamp_ns`.

        `det_ids` (one per box, "" when none) are used in mode ``detector`` only; `positions` (N,3 m) are optional.
        """
        boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        n = len(boxes)
        if self.mode == "off":
            self.ended = []
            return list(range(n))
        if self.mode == "detector" and len(det_ids) != n:
            raise ValueError(f"{len(det_ids)} detection ids for {n} boxes")
        pos = np.full((n, 3), np.nan) if positions is None else np.array(positions, dtype=np.float64).reshape(n, 3)
        if self._last_ns is not None and stamp_ns < self._last_ns:
            self.reset()
        else:
            self.ended = []
        self._last_ns = stamp_ns
        self._keep(stamp_ns - self._seen <= self.max_age_ns)  # unseen too long: ended before association

        row_of = np.full(n, -1)  # track row of each box
        if self.mode == "detector":
            det_ids = _first_occurrences(det_ids)
            det_row = {d: i for i, d in enumerate(self._det) if d}
            row_of[:] = [det_row.get(d, -1) if d else -1 for d in det_ids]
        taken = np.zeros(len(self._ids), dtype=bool)
        taken[row_of[row_of >= 0]] = True
        free_rows = np.flatnonzero(~taken)
        free_boxes = np.flatnonzero(row_of < 0)
        if len(free_rows) and len(free_boxes):
            r, c = self._associate(free_rows, free_boxes, boxes, det_ids, pos, stamp_ns)
            row_of[free_boxes[c]] = free_rows[r]

        matched = row_of >= 0
        rows = row_of[matched]
        self._observe(rows, boxes[matched], pos[matched], stamp_ns)
        if self.mode == "detector":
            for j in np.flatnonzero(matched):
                if det_ids[j]:
                    self._det[row_of[j]] = det_ids[j]
        born = np.flatnonzero(~matched)
        row_of[born] = len(self._ids) + np.arange(len(born))
        self._birth(boxes[born], pos[born], stamp_ns, [det_ids[j] for j in born] if self.mode == "detector" else None)
        ids = self._ids[row_of].tolist()
        self._keep(self._missed <= self.max_missed)
        return ids

    def _associate(self, rows: np.ndarray, cols: np.ndarray, boxes: np.ndarray, det_ids: Sequence[str],
                   pos: np.ndarray, stamp_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Optimal IoU-gated pairs (indices into rows, indices into cols) of tracks `rows` and boxes `cols`."""
        gap = (stamp_ns - self._seen[rows]) * 1e-9
        shift = self._vel[rows] * gap[:, None]
        iou = box_iou(self._boxes[rows] + np.concatenate([shift, shift], axis=1), boxes[cols])
        cost = 1.0 - iou
        if self.dist_weight:
            d = self._pos[rows][:, None, :] - pos[cols][None, :, :]
            dist = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
            cost += np.fmax(self.dist_weight * dist, 0.0)  # fmax drops NaN: no 3D term without both positions
        feasible = iou >= self.iou_threshold
        if self.mode == "detector":
            # a box with an id not bound to any track may only adopt a track without a detector id
            has_id = np.array([bool(det_ids[j]) for j in cols])
            anonymous = np.array([not self._det[i] for i in rows])
            feasible &= anonymous[:, None] | ~has_id[None, :]
        r, c = linear_sum_assignment(np.where(feasible, cost, _INFEASIBLE))
        ok = feasible[r, c]
        return r[ok], c[ok]

    def _observe(self, rows: np.ndarray, boxes: np.ndarray, pos: np.ndarray, stamp_ns: int) -> None:
        """Update the matched tracks `rows` with their boxes (velocity, box, stamp, position); the others miss one."""
        dt = (stamp_ns - self._seen[rows]) * 1e-9
        centre_shift = (boxes[:, :2] + boxes[:, 2:] - self._boxes[rows, :2] - self._boxes[rows, 2:]) / 2.0
        measured = centre_shift / np.where(dt > 0, dt, 1.0)[:, None]
        old, moved = self._vel[rows], dt > 0
        vel = np.where(self._has_vel[rows, None], VELOCITY_BLEND * measured + (1.0 - VELOCITY_BLEND) * old, measured)
        self._vel[rows] = np.where(moved[:, None], vel, old)
        self._has_vel[rows] |= moved
        self._boxes[rows] = boxes
        self._seen[rows] = stamp_ns
        self._pos[rows] = np.where(np.isnan(pos), self._pos[rows], pos)
        self._missed += 1
        self._missed[rows] = 0

    def _birth(self, boxes: np.ndarray, pos: np.ndarray, stamp_ns: int, det_ids: list[str] | None) -> None:
        """Start one track per box, with fresh ids."""
        k = len(boxes)
        if not k:
            return
        self._ids = np.concatenate([self._ids, self._next_id + np.arange(k)])
        self._next_id += k
        self._boxes = np.concatenate([self._boxes, boxes])
        self._vel = np.concatenate([self._vel, np.zeros((k, 2))])
        self._has_vel = np.concatenate([self._has_vel, np.zeros(k, dtype=bool)])
        self._seen = np.concatenate([self._seen, np.full(k, stamp_ns, dtype=np.int64)])
        self._pos = np.concatenate([self._pos, pos])
        self._missed = np.concatenate([self._missed, np.zeros(k, dtype=np.int64)])
        self._det += det_ids if det_ids is not None else [""] * k

    def _keep(self, alive: np.ndarray) -> None:
        """Keep the tracks where `alive`; the others end (ids appended to `ended`)."""
        if alive.all():
            return
        self.ended = sorted(self.ended + self._ids[~alive].tolist())
        self._ids, self._boxes = self._ids[alive], self._boxes[alive]
        self._vel, self._has_vel = self._vel[alive], self._has_vel[alive]
        self._seen, self._pos, self._missed = self._seen[alive], self._pos[alive], self._missed[alive]
        self._det = [d for d, a in zip(self._det, alive) if a]


def _first_occurrences(det_ids: Sequence[str]) -> list[str]:
    """`det_ids` with repeats of an id within the frame blanked (those boxes fall back to IoU association)."""
    seen: set[str] = set()
    out = []
    for d in det_ids:
        out.append("" if d in seen else d)
        seen.add(d)
    return out
