"""Temporal smoothing of per-person outputs: One-Euro filters on arrays and on rotations (SO(3)), kept per track id.

One-Euro filter (Casiez et al., CHI 2012): an exponential low-pass whose cutoff rises with speed,
``x_hat += alpha * (x - x_hat)``, ``alpha = 1 / (1 + tau / dt)``, ``tau = 1 / (2 pi fc)``,
``fc = min_cutoff + beta * |dx_hat|`` with ``dx_hat`` the derivative ``(x - x_hat_prev) / dt`` low-passed at
``d_cutoff``; ``dt`` comes from the header stamps, so dropped frames and jittery rates are handled.

Arrays are filtered as independent scalars: each element has its own ``|dx_hat|`` and so its own cutoff (a fast joint
is not held back by the still ones, and the still ones stay smooth). Rotations (...,3,3) are filtered on SO(3): the
difference is the rotation vector of the relative rotation ``R_hat_prev^T R`` (log map, shortest arc), the speed is
the norm of the low-passed angular velocity, and the estimate moves by ``alpha`` of the relative rotation along the
geodesic (``R_hat_prev exp(alpha log(R_hat_prev^T R))``, i.e. slerp): no Euler angles, no wrap-around at +-pi.
Angles (scalars in radians, `BodySmoother`'s `angles` fields) are filtered on the circle, SO(2): the difference is
wrapped to [-pi, pi] and the estimate is kept in [-pi, pi], so a value never averages across the +-pi wrap.

Choosing parameters (rate = frame rate): at constant velocity ``v`` the steady-state lag is ``v * tau``, i.e.
``tau * rate`` frames, with ``fc ~= min_cutoff + beta * |v|`` (an upper bound: the derivative is taken against the
lagging estimate, so ``|dx_hat| = |v| (1 + L)`` and the lag ``L`` in frames solves
``L = rate / (2 pi (min_cutoff + beta |v| (1 + L)))``). A lag of at most one frame at 30 Hz needs
``fc >= 30 / (2 pi) = 4.8 Hz``. On a still signal ``fc = min_cutoff`` and white noise is reduced by at most
``sqrt((2 - a) / a)``, ``a = 1 / (1 + rate / (2 pi min_cutoff))``: 4.5x for 0.5 Hz, 3.2x for 1 Hz at 30 Hz; the
noise itself raises ``|dx_hat|`` and so ``fc``, costing more of that gain the larger ``beta * noise``.
The defaults (``min_cutoff`` 0.5 Hz, ``beta`` 3, ``d_cutoff`` 1 Hz) are for radians and metres at 30 Hz: noise of
0.01 on a still value is reduced ~3.3x, and the lag is ~1.2 frames at 0.5 unit/s, ~0.8 at 1 unit/s, ~0.5 at 2 unit/s.
Other units (pixels, PCA coefficients) scale ``beta`` inversely; `BodySmoother` takes per-field parameters.

The SO(3) maps are numpy implementations (xyzw quaternions, roma's convention and formulas, tested against roma):
roma's torch calls cost ~1 ms per frame for 8 rotations on a CPU, the whole budget of this module.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_MIN_CUTOFF = 0.5  # Hz
DEFAULT_BETA = 3.0  # cutoff Hz per unit/s of speed
DEFAULT_D_CUTOFF = 1.0  # Hz, cutoff of the derivative filter (the paper's value)
_IDENTITY_QUAT = np.array([0.0, 0.0, 0.0, 1.0])
_CONJUGATE = np.array([-1.0, -1.0, -1.0, 1.0])
_TINY = 1e-300  # guards 0/0 at the identity rotation (the vector part is 0 there anyway)
_Param = float | np.ndarray  # a filter parameter: one value, or one per element (broadcast)


def _quat_mul_terms(p: Sequence[float], q: Sequence[float]) -> list[float]:
    """Hamilton product p q of xyzw quaternions, written out (builds the bilinear table `_QUAT_MUL`)."""
    px, py, pz, pw = p
    qx, qy, qz, qw = q
    return [pw * qx + px * qw + py * qz - pz * qy, pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw, pw * qw - px * qx - py * qy - pz * qz]


def _rotmat_terms(p: Sequence[float], q: Sequence[float]) -> list[float]:
    """Bilinear form whose value at p = q is the flat rotation matrix of the unit xyzw quaternion q."""
    px, py, pz, pw = p
    qx, qy, qz, qw = q
    return [px * qx - py * qy - pz * qz + pw * qw, 2 * (px * qy - pz * qw), 2 * (px * qz + py * qw),
            2 * (px * qy + pz * qw), -px * qx + py * qy - pz * qz + pw * qw, 2 * (py * qz - px * qw),
            2 * (px * qz - py * qw), 2 * (py * qz + px * qw), -px * qx - py * qy + pz * qz + pw * qw]


def _markley_rows(m: Sequence[float]) -> list[float]:
    """Rows 4 q_i q (xyzw) of Markley's method, affine in the flat rotation matrix m (row i is good when q_i is big)."""
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = m
    return [1 + r00 - r11 - r22, r01 + r10, r02 + r20, r21 - r12,
            r01 + r10, 1 + r11 - r00 - r22, r12 + r21, r02 - r20,
            r02 + r20, r12 + r21, 1 + r22 - r00 - r11, r10 - r01,
            r21 - r12, r02 - r20, r10 - r01, 1 + r00 + r11 + r22]


# The maps as one matmul each: tables from the written-out formulas evaluated on basis vectors.
_E4 = np.eye(4)
_QUAT_MUL = np.array([[_quat_mul_terms(a, b) for b in _E4] for a in _E4]).reshape(16, 4)
_QUAT_TO_ROTMAT = np.array([[_rotmat_terms(a, b) for b in _E4] for a in _E4]).reshape(16, 9)
_MARKLEY_OFFSET = np.array(_markley_rows(np.zeros(9)))
_MARKLEY = np.array([_markley_rows(e) for e in np.eye(9)]) - _MARKLEY_OFFSET


def quat_mul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product of xyzw quaternions of the same shape (...,4)."""
    return (p[..., :, None] * q[..., None, :]).reshape(*p.shape[:-1], 16) @ _QUAT_MUL


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Unit xyzw quaternions (...,4) -> rotation matrices (...,3,3)."""
    outer = (q[..., :, None] * q[..., None, :]).reshape(*q.shape[:-1], 16)
    return (outer @ _QUAT_TO_ROTMAT).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (...,3,3) -> unit xyzw quaternions (...,4), robust everywhere (Markley 2008, as roma)."""
    rows = (R.reshape(-1, 9) @ _MARKLEY + _MARKLEY_OFFSET).reshape(-1, 4, 4)
    q = rows[np.arange(len(rows)), rows.reshape(-1, 16)[:, ::5].argmax(axis=1)]  # the row of the largest diagonal
    return (q / np.sqrt((q * q).sum(axis=1, keepdims=True))).reshape(*R.shape[:-2], 4)


def quat_log(q: np.ndarray) -> np.ndarray:
    """Unit xyzw quaternions (...,4) -> rotation vectors (...,3) of the shortest arc (norm <= pi)."""
    v, w = q[..., :3], q[..., 3:]
    norm = np.sqrt((v * v).sum(axis=-1, keepdims=True))
    half = np.arctan2(norm, np.abs(w))  # |w|: q and -q are the same rotation; this picks the shorter arc
    return np.copysign(2.0, w) * half / np.maximum(norm, _TINY) * v


def quat_exp(r: np.ndarray) -> np.ndarray:
    """Rotation vectors (...,3) -> unit xyzw quaternions (...,4)."""
    angle = np.sqrt((r * r).sum(axis=-1, keepdims=True))
    return np.concatenate([np.sin(angle / 2.0) / np.maximum(angle, _TINY) * r, np.cos(angle / 2.0)], axis=-1)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi] (the turn nearest to 0)."""
    return a - (2.0 * np.pi) * np.round(a / (2.0 * np.pi))


def _alpha(dt: np.ndarray, cutoff: np.ndarray | float) -> np.ndarray:
    """Exponential smoothing factor 1 / (1 + tau / dt), tau = 1 / (2 pi cutoff)."""
    t = (2.0 * np.pi * dt) * cutoff
    return t / (1.0 + t)


def one_euro_step(x: np.ndarray, x_prev: np.ndarray, dx_prev: np.ndarray, dt: np.ndarray | float,
                  min_cutoff: _Param, beta: _Param, d_cutoff: _Param) -> tuple[np.ndarray, np.ndarray]:
    """One One-Euro step on independent scalars (dt > 0 in s, broadcast): -> (estimate, filtered derivative)."""
    diff = x - x_prev
    dx_hat = dx_prev + _alpha(dt, d_cutoff) * (diff / dt - dx_prev)
    return x_prev + _alpha(dt, min_cutoff + beta * np.abs(dx_hat)) * diff, dx_hat


def rotation_one_euro_step(q: np.ndarray, q_prev: np.ndarray, w_prev: np.ndarray, dt: np.ndarray | float,
                           min_cutoff: _Param, beta: _Param, d_cutoff: _Param) -> tuple[np.ndarray, np.ndarray]:
    """One One-Euro step on SO(3) with xyzw quaternions (...,4): -> (estimate, filtered angular velocity (...,3))."""
    r = quat_log(quat_mul(q_prev * _CONJUGATE, q))  # relative rotation, in the frame of the previous estimate
    w_hat = w_prev + _alpha(dt, d_cutoff) * (r / dt - w_prev)
    a = _alpha(dt, min_cutoff + beta * np.sqrt((w_hat * w_hat).sum(axis=-1, keepdims=True)))
    q_hat = quat_mul(q_prev, quat_exp(a * r))
    return q_hat / np.sqrt((q_hat * q_hat).sum(axis=-1, keepdims=True)), w_hat


class _Field:
    """One-Euro state of a block of values over rows (one per track): estimate, filtered derivative, last stamp.

    Array blocks are (rows, D) with parameters of shape () or (D,); rotation blocks (rows, M, 3, 3) with () or (M, 1).
    `angles` (D,) bool marks the elements of an array block that are angles in radians (filtered on the circle).
    """

    def __init__(self, shape: tuple[int, ...], rotation: bool, params: tuple[_Param, _Param, _Param],
                 angles: np.ndarray | None = None) -> None:
        if rotation and shape[-2:] != (3, 3):
            raise ValueError(f"rotations must be (...,3,3) matrices, got shape {shape}")
        min_cutoff, beta, d_cutoff = (np.asarray(p) for p in params)
        if np.any(min_cutoff <= 0) or np.any(beta < 0) or np.any(d_cutoff <= 0):
            raise ValueError("One-Euro needs min_cutoff > 0, beta >= 0 and d_cutoff > 0")
        self.shape = shape
        self.rotation = rotation
        self.angles = np.flatnonzero(angles) if angles is not None and angles.any() else None  # their columns
        self.params = params
        # rotations keep a unit quaternion and an angular velocity, arrays the value and its derivative
        self._x_shape = (*shape[:-2], 4) if rotation else shape
        self._dx_shape = (*shape[:-2], 3) if rotation else shape
        self.x = np.empty((0, *self._x_shape))
        self.dx = np.empty((0, *self._dx_shape))
        self.stamp = np.empty(0, dtype=np.int64)
        self.live = np.empty(0, dtype=bool)

    def reserve(self, n: int) -> None:
        """Grow the state to at least n rows (new rows not live)."""
        old = len(self.live)
        if n <= old:
            return
        n = max(n, 2 * old)
        x = np.broadcast_to(_IDENTITY_QUAT if self.rotation else 0.0, (n, *self._x_shape)).copy()
        x[:old] = self.x
        self.x = x
        self.dx = np.concatenate([self.dx, np.zeros((n - old, *self._dx_shape))])
        self.stamp = np.concatenate([self.stamp, np.zeros(n - old, dtype=np.int64)])
        self.live = np.concatenate([self.live, np.zeros(n - old, dtype=bool)])

    def update(self, rows: np.ndarray, stamp_ns: int, values: np.ndarray) -> np.ndarray:
        """Filtered (float64) `values` (len(rows), *shape) of the distinct `rows`; a first sample passes through."""
        dt = (stamp_ns - self.stamp[rows]) * 1e-9
        live = self.live[rows]
        step = live & (dt > 0)
        x_prev, dx_prev = self.x[rows], self.dx[rows]
        dt_b = np.where(step, dt, 1.0).reshape(-1, *[1] * (x_prev.ndim - 1))
        meas = rotmat_to_quat(values) if self.rotation else values
        if self.angles is not None:  # each angle's turn nearest to the estimate: steps take the short way round
            a = self.angles
            meas, near = values.copy(), values.copy()
            meas[:, a] = wrap_angle(values[:, a])
            near[:, a] = x_prev[:, a] + wrap_angle(meas[:, a] - x_prev[:, a])
            x, dx = one_euro_step(near, x_prev, dx_prev, dt_b, *self.params)
            x[:, a] = wrap_angle(x[:, a])
        else:
            step_fn = rotation_one_euro_step if self.rotation else one_euro_step
            x, dx = step_fn(meas, x_prev, dx_prev, dt_b, *self.params)
        out = quat_to_rotmat(x) if self.rotation else x
        if not step.all():
            hold = live & (dt == 0)  # same stamp again: keep the estimate
            restart = ~live | (dt < 0)  # first sample, or the stamp went backwards: start over from the sample
            x[hold], dx[hold] = x_prev[hold], dx_prev[hold]
            x[restart], dx[restart] = meas[restart], 0.0
            out[hold] = quat_to_rotmat(x[hold]) if self.rotation else x[hold]
            out[restart] = values[restart]
            self.stamp[rows[restart]] = stamp_ns
        self.x[rows], self.dx[rows] = x, dx
        self.stamp[rows[step]] = stamp_ns
        self.live[rows] = True
        return out


class OneEuro:
    """One-Euro filter of an array of any shape (elements independent), timed by header stamps in ns."""

    rotation = False

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF) -> None:
        self.params = (float(min_cutoff), float(beta), float(d_cutoff))
        self._field: _Field | None = None

    def __call__(self, stamp_ns: int, x: np.ndarray) -> np.ndarray:
        """Filtered x: the first sample (and one after a backwards stamp) passes through; a repeated stamp holds."""
        x = np.asarray(x)
        if self._field is None or self._field.shape != x.shape:
            self._field = _Field(x.shape, self.rotation, self.params)
            self._field.reserve(1)
        out = self._field.update(np.zeros(1, dtype=np.intp), stamp_ns, x[None])[0]
        return out.astype(x.dtype, copy=False) if x.dtype.kind == "f" else out

    def reset(self) -> None:
        """Forget the state: the next sample passes through."""
        self._field = None


class RotationOneEuro(OneEuro):
    """One-Euro filter on SO(3) of rotation matrices (...,3,3): geodesic steps, speed = angular speed (rad/s)."""

    rotation = True


class BodySmoother:
    """Per-track One-Euro smoothing of named per-person arrays; fields in `rotations` are (...,3,3) rotation matrices,
    fields in `angles` are angles in radians (filtered on the circle).

    `params` maps a field name to its own (min_cutoff, beta, d_cutoff). The fields passed together in one call are
    filtered as one block (array and angle fields concatenated, rotation fields too), so the state belongs to that set
    of fields: pass the same fields every frame. Drop the tracks a `Tracker` ended (`Tracker.ended`) to free their
    state.
    """

    def __init__(self, rotations: Iterable[str] = (), min_cutoff: float = DEFAULT_MIN_CUTOFF,
                 beta: float = DEFAULT_BETA, d_cutoff: float = DEFAULT_D_CUTOFF,
                 params: Mapping[str, tuple[float, float, float]] | None = None, angles: Iterable[str] = ()) -> None:
        self.rotations = frozenset(rotations)
        self.angles = frozenset(angles) - self.rotations
        self.default_params = (float(min_cutoff), float(beta), float(d_cutoff))
        self.params = {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in (params or {}).items()}
        self.reset()

    def reset(self) -> None:
        """Forget every track."""
        self._rows: dict[int, int] = {}
        self._free: list[int] = []
        self._fields: dict[tuple, _Field] = {}

    def drop(self, track_id: int) -> None:
        """Forget one track (no-op when unknown)."""
        row = self._rows.pop(track_id, None)
        if row is not None:
            for field in self._fields.values():
                if row < len(field.live):
                    field.live[row] = False
            self._free.append(row)

    def update(self, track_id: int, stamp_ns: int, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Smoothed copy of one person's `values` at `stamp_ns`; a track's first sample passes through unchanged."""
        out = self.update_many([track_id], stamp_ns, {k: np.asarray(v)[None] for k, v in values.items()})
        return {k: v[0] for k, v in out.items()}

    def update_many(self, track_ids: Sequence[int], stamp_ns: int,
                    values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched `update`: values[k] stacks the persons along axis 0, in the order of `track_ids`."""
        if len(set(track_ids)) != len(track_ids):
            raise ValueError(f"repeated track ids in one update: {list(track_ids)}")
        rows = np.array([self._row(t) for t in track_ids], dtype=np.intp)
        n = len(rows)
        arrays = {k: np.asarray(v) for k, v in values.items()}
        for k, v in arrays.items():
            if len(v) != n:
                raise ValueError(f"{k!r} has {len(v)} rows for {n} tracks")
        out = {}
        for rotation in (False, True):
            keys = sorted(k for k in arrays if (k in self.rotations) == rotation)
            if not keys:
                continue
            if rotation:
                bad = [k for k in keys if arrays[k].shape[-2:] != (3, 3)]
                if bad:
                    raise ValueError(f"rotation fields {bad} are not (...,3,3) matrices")
            item = (3, 3) if rotation else ()  # a filtered item: a rotation matrix or a scalar
            sizes = [int(np.prod(arrays[k].shape[1:])) // (9 if rotation else 1) for k in keys]
            signature = (rotation, tuple((k, arrays[k].shape[1:]) for k in keys))
            field = self._fields.get(signature)
            if field is None:
                field = self._fields[signature] = self._new_field(keys, sizes, rotation)
            field.reserve(len(self._rows) + len(self._free))
            block = np.concatenate([arrays[k].reshape(n, size, *item) for k, size in zip(keys, sizes)], axis=1)
            smoothed = field.update(rows, stamp_ns, block)
            start = 0
            for k, size in zip(keys, sizes):
                v = arrays[k]
                part = smoothed[:, start:start + size].reshape(v.shape)
                out[k] = part.astype(v.dtype, copy=False) if v.dtype.kind == "f" else part
                start += size
        return out

    def _new_field(self, keys: list[str], sizes: list[int], rotation: bool) -> _Field:
        """State of the block of fields `keys` (`sizes` items each), with per-item parameters where they differ."""
        per_key = [self.params.get(k, self.default_params) for k in keys]
        params = tuple(per_key[0][i] if len({p[i] for p in per_key}) == 1 else
                       np.repeat([p[i] for p in per_key], sizes).reshape((-1, 1) if rotation else -1)
                       for i in range(3))
        if rotation:
            return _Field((sum(sizes), 3, 3), rotation, params)
        return _Field((sum(sizes),), rotation, params, np.repeat([k in self.angles for k in keys], sizes))

    def _row(self, track_id: int) -> int:
        """State row of a track, allocated on first sight."""
        row = self._rows.get(track_id)
        if row is None:
            row = self._rows[track_id] = self._free.pop() if self._free else len(self._rows) + len(self._free)
        return row
