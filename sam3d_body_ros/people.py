"""People over time: track ids and temporally smoothed bodies, the one composition of BodyPipeline + Tracker +
BodySmoother that the node and bench/track_quality.py use.

Smoothing acts on the body's parameters before the body model, so mesh, joints and keypoints stay consistent: per
track, One-Euro filters (smoothing.py) on the MHR model parameters, the identity shape and the camera translation,
then one batched MHR evaluation (`BodyPipeline.evaluate_bodies`) for all persons. Rotations are filtered on SO(3):
the global rotation (model_params[3:6], MHR XYZ Euler, R = Rz Ry Rx) and every joint whose three rotation channels
are each driven by exactly one model parameter with weight 1 (`ParamLayout`) as rotation matrices; the other
parameters that drive rotation channels only are angles, filtered on the circle (wrapped difference: never averaged
across +-pi); translations, scales, shape and pred_cam_t as plain scalars. Fields re-derived from the smoothed
parameters: pred_vertices, pred_keypoints_3d/2d, pred_joint_coords, pred_global_rots, mhr_model_params, global_rot,
shape_params, pred_cam_t; the network's coefficient fields (body_pose_params, hand_pose_params, scale_params,
pred_pose_raw) stay those of the frame.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .smoothing import DEFAULT_BETA, DEFAULT_D_CUTOFF, DEFAULT_MIN_CUTOFF, BodySmoother
from .tracks import Tracker

if TYPE_CHECKING:
    from .pipeline import BodyPipeline, BodyResult

GLOBAL_ROTATION = (3, 4, 5)  # model parameters of the global rotation (MHR XYZ Euler), as MHRHead sets them
ROTATION_CHANNELS = (3, 4, 5)  # rx, ry, rz among a joint's 7 parameter-transform rows [t(3), r(3), log2 scale]


def euler_xyz_to_rotmat(angles: np.ndarray) -> np.ndarray:
    """MHR XYZ Euler angles (...,3) -> rotation matrices (...,3,3) of R = Rz Ry Rx (roma's extrinsic 'xyz')."""
    c, s = np.cos(angles), np.sin(angles)
    ca, cb, cc = c[..., 0], c[..., 1], c[..., 2]
    sa, sb, sc = s[..., 0], s[..., 1], s[..., 2]
    rows = (cb * cc, sa * sb * cc - ca * sc, ca * sb * cc + sa * sc,
            cb * sc, sa * sb * sc + ca * cc, ca * sb * sc - sa * cc,
            -sb, sa * cb, ca * cb)
    return np.stack(rows, axis=-1).reshape(*angles.shape[:-1], 3, 3)


def rotmat_to_euler_xyz(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (...,3,3) -> XYZ Euler angles (...,3), pitch in [-pi/2, pi/2] (the decoder's branch, with
    its gimbal-lock fallback: `core.heads.xyz_euler_from_6d`)."""
    sy = np.hypot(R[..., 0, 0], R[..., 1, 0])
    singular = sy < 1e-6
    ex = np.where(singular, np.arctan2(-R[..., 1, 2], R[..., 1, 1]), np.arctan2(R[..., 2, 1], R[..., 2, 2]))
    ez = np.where(singular, 0.0, np.arctan2(R[..., 1, 0], R[..., 0, 0]))
    return np.stack([ex, np.arctan2(-R[..., 2, 0], sy), ez], axis=-1)


@dataclass(frozen=True)
class ParamLayout:
    """How the MHR model parameters are filtered: `triples` (T,3) as rotations (global rotation first), `angles` (A,)
    on the circle, `scalars` (S,) as numbers; indices into model_params."""

    triples: np.ndarray
    angles: np.ndarray
    scalars: np.ndarray

    @classmethod
    def from_transform(cls, transform: np.ndarray) -> ParamLayout:
        """The layout of MHR's parameter transform (J*7, P) (`MHRBody.parameter_transform`)."""
        rows, num_params = transform.shape
        rot = transform.reshape(rows // 7, 7, num_params)[:, list(ROTATION_CHANNELS)]  # (J,3,P)
        triples, used = [GLOBAL_ROTATION], set(GLOBAL_ROTATION)
        for channels in rot:
            drivers = [np.flatnonzero(row) for row in channels]
            if any(len(d) != 1 for d in drivers):
                continue
            triple = tuple(int(d[0]) for d in drivers)
            if len(set(triple)) == 3 and not used & set(triple) and (channels[[0, 1, 2], triple] == 1.0).all():
                triples.append(triple)
                used.update(triple)
        drives = transform != 0
        other_channels = ~np.isin(np.arange(rows) % 7, ROTATION_CHANNELS)
        rotation_only = drives.any(axis=0) & ~drives[other_channels].any(axis=0)
        angles = [p for p in np.flatnonzero(rotation_only) if p not in used]
        scalars = [p for p in range(num_params) if p not in used and p not in angles]
        return cls(np.array(triples, dtype=np.intp), np.array(angles, dtype=np.intp), np.array(scalars, dtype=np.intp))

    def split(self, model_params: np.ndarray, shape: np.ndarray, cam_t: np.ndarray) -> dict[str, np.ndarray]:
        """Filter blocks of N persons: 'rotations' (N,T,3,3), 'angles' (N,A) and 'values' (N, S + shape + 3)."""
        return {"rotations": euler_xyz_to_rotmat(model_params[:, self.triples].astype(np.float64)),
                "angles": model_params[:, self.angles],
                "values": np.concatenate([model_params[:, self.scalars], shape, cam_t], axis=1)}

    def join(self, blocks: dict[str, np.ndarray], like: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse of `split`: (model_params of the dtype of `like`, shape, cam_t)."""
        params = np.empty_like(like)
        params[:, self.triples] = rotmat_to_euler_xyz(blocks["rotations"])
        params[:, self.angles] = blocks["angles"]
        values = blocks["values"]
        params[:, self.scalars] = values[:, : len(self.scalars)]
        return params, values[:, len(self.scalars):-3], values[:, -3:]


@dataclass(frozen=True)
class PeopleSettings:
    """Tracking and smoothing settings (the node's tracking* and smoothing* parameters); tracking off: no smoothing."""

    tracking: str = "iou"  # detector | iou | off (tracks.MODES)
    max_missed: int = 10  # frames an unmatched track survives
    max_age_s: float = 1.0  # header time an unmatched track survives
    smoothing: bool = True
    min_cutoff: float = DEFAULT_MIN_CUTOFF  # Hz
    beta: float = DEFAULT_BETA  # Hz per unit/s (rad/s, m/s)
    d_cutoff: float = DEFAULT_D_CUTOFF  # Hz

    @property
    def smoothed(self) -> bool:
        return self.smoothing and self.tracking != "off"

    @property
    def filters(self) -> tuple:
        """What the smoother's state depends on."""
        return self.tracking, self.smoothing, self.min_cutoff, self.beta, self.d_cutoff


class People:
    """Track ids and smoothed bodies of one image stream; `timings_ms` holds the last update's ms of tracking (track),
    smoothing (smooth) and the MHR re-evaluation of the smoothed bodies (smooth_body)."""

    def __init__(self, pipeline: BodyPipeline, settings: PeopleSettings = PeopleSettings()) -> None:
        self.pipeline = pipeline
        self.layout = ParamLayout.from_transform(pipeline.head.head_pose.mhr.parameter_transform.cpu().numpy())
        self.settings = settings
        self.tracker = Tracker(settings.tracking, max_missed=settings.max_missed, max_age_s=settings.max_age_s)
        self.smoother = self._smoother()
        self.timings_ms: dict[str, float] = {}

    def _smoother(self) -> BodySmoother:
        s = self.settings
        return BodySmoother(rotations={"rotations"}, angles={"angles"}, min_cutoff=s.min_cutoff, beta=s.beta,
                            d_cutoff=s.d_cutoff)

    def configure(self, settings: PeopleSettings) -> None:
        """Apply new settings: a new tracking mode ends every track; new filter settings restart the filters."""
        old, self.settings = self.settings, settings
        self.tracker.configure(settings.tracking, settings.max_missed, settings.max_age_s)
        if settings.filters != old.filters:
            self.smoother = self._smoother()

    def reset(self) -> None:
        """End every track and forget every filter (time jumped back)."""
        self.tracker.reset()
        self.smoother.reset()

    def track_and_smooth(self, stamp_ns: int, boxes: np.ndarray, det_ids: Sequence[str],
                         outputs: dict[str, np.ndarray]) -> tuple[list[int], dict[str, np.ndarray] | None]:
        """Track ids of the persons of `outputs` (`boxes`, `det_ids`: the input boxes kept, in order) and, when
        `settings.smoothed`, their smoothed mhr_model_params, shape_params and pred_cam_t (else None); no model."""
        t0 = time.perf_counter()
        ids = self.tracker.update(stamp_ns, boxes, det_ids, positions=outputs["pred_cam_t"])
        for gone in self.tracker.ended:
            self.smoother.drop(gone)
        t1 = time.perf_counter()
        self.timings_ms = {"track": 1000.0 * (t1 - t0)}
        if not self.settings.smoothed or not ids:
            return ids, None
        blocks = self.layout.split(outputs["mhr_model_params"], outputs["shape_params"], outputs["pred_cam_t"])
        params, shape, cam_t = self.layout.join(self.smoother.update_many(ids, stamp_ns, blocks),
                                                outputs["mhr_model_params"])
        self.timings_ms["smooth"] = 1000.0 * (time.perf_counter() - t1)
        return ids, {"mhr_model_params": params, "global_rot": params[:, list(GLOBAL_ROTATION)],
                     "shape_params": shape, "pred_cam_t": cam_t}

    def update(self, stamp_ns: int, boxes: np.ndarray, det_ids: Sequence[str],
               result: BodyResult) -> tuple[list[int], dict[str, np.ndarray]]:
        """`track_and_smooth`, then the outputs of `result` with the smoothed parameters and the bodies re-evaluated
        from them (one batched model call); a track's first frame passes through."""
        ids, smoothed = self.track_and_smooth(stamp_ns, boxes, det_ids, result.outputs)
        if smoothed is None:
            return ids, result.outputs
        t0 = time.perf_counter()
        body = self.pipeline.evaluate_bodies(smoothed["shape_params"], smoothed["mhr_model_params"],
                                             result.outputs["expr_params"], smoothed["pred_cam_t"], result.K)
        self.timings_ms["smooth_body"] = 1000.0 * (time.perf_counter() - t0)
        return ids, {**result.outputs, **smoothed, **body}
