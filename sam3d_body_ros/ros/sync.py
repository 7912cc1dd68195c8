"""Match messages of several topics by header stamp (exact, or nearest within a slop); no rclpy here.

message_filters is not on PyPI, so the node uses this. Each frame is anchored on a message of the
first required key (the image). A frame is ready when every required key has a message with the
same stamp (or, with slop > 0, the nearest one within slop). Optional keys (camera_info) join when
they match; a ready frame missing an optional key is held for `optional_wait` seconds so a late
camera_info can still join, then released without it. Releasing a frame discards, per key, the
messages older than the one it used; those, and messages pushed out of a full queue, are counted as
unmatched per key.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Frame:
    """Messages that belong to one anchor stamp; optional keys may be missing."""

    stamp_ns: int
    msgs: dict[str, Any]


@dataclass
class _Pending:
    frame: Frame
    used: dict[str, int]
    since: float


@dataclass
class SyncStats:
    """Counters since start."""

    frames: int = 0
    unmatched: dict[str, int] = field(default_factory=dict)
    last_unmatched: dict[str, int] = field(default_factory=dict)  # key -> stamp_ns of the last one


class StampSynchronizer:
    """Thread-safe stamp matcher over `required` + `optional` keys (see module doc)."""

    def __init__(self, required: tuple[str, ...], optional: tuple[str, ...] = (), slop: float = 0.0,
                 queue_size: int = 10, optional_wait: float = 0.1) -> None:
        if not required:
            raise ValueError("at least one required key")
        if slop < 0 or queue_size < 1 or optional_wait < 0:
            raise ValueError("slop and optional_wait must be >= 0 and queue_size >= 1")
        self.required = tuple(required)
        self.optional = tuple(optional)
        self.slop_ns = int(round(slop * 1e9))
        self.optional_wait = optional_wait
        self.stats = SyncStats(unmatched={k: 0 for k in self.required + self.optional})
        self._queues: dict[str, deque[tuple[int, Any]]] = {k: deque() for k in self.required + self.optional}
        self._queue_size = queue_size
        self._pending: _Pending | None = None
        self._last_stamp = -1  # stamp of the last released frame: released stamps only increase
        self._lock = threading.Lock()

    def add(self, key: str, stamp_ns: int, msg: Any, now: float) -> list[Frame]:
        """Queue one message (monotonic time `now`, seconds); return frames that became ready, oldest first."""
        with self._lock:
            q = self._queues[key]
            q.append((stamp_ns, msg))
            while len(q) > self._queue_size:
                self._count_unmatched(key, q.popleft()[0])
            return self._collect(now)

    def time_jump(self, key: str, stamp_ns: int) -> int:
        """When an anchor (image) stamp goes back behind the last released frame (a bag loop, a simulator reset, a
        camera restarting its clock), reset and return how far back it jumped in ns; else 0. Messages already
        queued from the new timeline (older than the last released frame) are kept; the old timeline's are
        discarded without being counted as unmatched."""
        with self._lock:
            if key != self.required[0] or self._last_stamp < 0 or stamp_ns >= self._last_stamp:
                return 0
            jump, limit = self._last_stamp - stamp_ns, self._last_stamp
            for k, q in self._queues.items():
                self._queues[k] = deque(item for item in q if item[0] < limit)
            self._pending = None
            self._last_stamp = -1
            return jump

    def poll(self, now: float) -> list[Frame]:
        """Release a held frame whose optional wait has expired."""
        with self._lock:
            return self._collect(now)

    def _count_unmatched(self, key: str, stamp: int) -> None:
        self.stats.unmatched[key] += 1
        self.stats.last_unmatched[key] = stamp

    def _match(self, key: str, stamp: int) -> tuple[int, Any] | None:
        best = None
        for item in self._queues[key]:
            d = abs(item[0] - stamp)
            if d <= self.slop_ns and (best is None or d < abs(best[0] - stamp)):
                best = item
        return best

    def _build(self, stamp: int, msg: Any) -> tuple[Frame, dict[str, int], bool] | None:
        """Frame anchored at `stamp` with the stamps it uses and whether all optionals joined; None if incomplete."""
        used = {self.required[0]: stamp}
        msgs = {self.required[0]: msg}
        for key in self.required[1:]:
            item = self._match(key, stamp)
            if item is None:
                return None
            used[key], msgs[key] = item
        complete = True
        for key in self.optional:
            item = self._match(key, stamp)
            if item is None:
                complete = False
            else:
                used[key], msgs[key] = item
        return Frame(stamp, msgs), used, complete

    def _collect(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        newest = None
        for stamp, msg in reversed(self._queues[self.required[0]]):
            if stamp <= self._last_stamp or (self._pending and stamp < self._pending.frame.stamp_ns):
                break
            newest = self._build(stamp, msg)
            if newest is not None:
                break
        held = self._pending
        if held is not None and (newest is None or newest[0].stamp_ns != held.frame.stamp_ns):
            if newest is not None or now - held.since >= self.optional_wait:
                # A newer frame is complete, or the wait is over: the held frame goes out without its optionals.
                self._release(held.frame, held.used)
                out.append(held.frame)
                self._pending = held = None
        if newest is not None:
            frame, used, complete = newest
            if complete or self.optional_wait == 0 or (held is not None and now - held.since >= self.optional_wait):
                self._release(frame, used)
                out.append(frame)
                self._pending = None
            elif held is None:
                self._pending = _Pending(frame, used, now)
        self.stats.frames += len(out)
        return out

    def _release(self, frame: Frame, used: dict[str, int]) -> None:
        """Drop the used messages and everything older than them (or than the frame, for unused keys)."""
        self._last_stamp = frame.stamp_ns
        for key, q in self._queues.items():
            limit = used.get(key, frame.stamp_ns - self.slop_ns)
            keep: deque[tuple[int, Any]] = deque()
            for stamp, msg in q:
                if key in used and stamp == limit:
                    continue
                if stamp < limit:
                    self._count_unmatched(key, stamp)
                    continue
                keep.append((stamp, msg))
            self._queues[key] = keep
