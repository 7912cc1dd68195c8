"""Node health bookkeeping (rates, stage times, drops, input warnings) and its DiagnosticStatus."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header


@dataclass
class _Warning:
    count: int
    last_message: str
    last_logged: float
    last_seen: float


class NodeHealth:
    """Thread-safe counters the node updates and `status()` reports; warnings are kept per kind."""

    def __init__(self, name: str, rate_window: float = 5.0, warn_window: float = 10.0) -> None:
        self.name = name
        self.rate_window = rate_window
        self.warn_window = warn_window
        self.counters: dict[str, int] = {"frames_synchronized": 0, "frames_processed": 0, "frames_dropped_busy": 0}
        self.stage_ms: dict[str, float] = {}
        self.persons = 0
        self.info: dict[str, str] = {}
        self.error: str | None = None
        self._done: deque[float] = deque()
        self._warnings: dict[str, _Warning] = {}
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        """Add n to a counter."""
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def set_counter(self, key: str, value: int) -> None:
        """Overwrite a counter (for totals kept elsewhere, e.g. by the synchroniser)."""
        with self._lock:
            self.counters[key] = value

    def frame_done(self, stage_ms: dict[str, float], persons: int) -> None:
        """Record one processed frame."""
        now = time.monotonic()
        with self._lock:
            self.counters["frames_processed"] += 1
            self.stage_ms = dict(stage_ms)
            self.persons = persons
            self._done.append(now)
            while self._done and now - self._done[0] > self.rate_window:
                self._done.popleft()

    def warn(self, kind: str, message: str) -> bool:
        """Record a warning of `kind`; True when it should be logged (first one, or 5 s after the last log)."""
        now = time.monotonic()
        with self._lock:
            w = self._warnings.get(kind)
            if w is None:
                self._warnings[kind] = _Warning(1, message, now, now)
                return True
            w.count += 1
            w.last_message = message
            w.last_seen = now
            log = now - w.last_logged >= 5.0
            if log:
                w.last_logged = now
            return log

    def warning_counts(self) -> dict[str, int]:
        """Number of warnings so far per kind."""
        with self._lock:
            return {k: w.count for k, w in self._warnings.items()}

    def rate_hz(self) -> float:
        """Processed frames per second over the last `rate_window` seconds."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._done if now - t <= self.rate_window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def status(self, hardware_id: str = "") -> DiagnosticStatus:
        """One DiagnosticStatus: ERROR with `error`, WARN with recent input warnings, else OK."""
        rate = self.rate_hz()
        now = time.monotonic()
        with self._lock:
            values = [KeyValue(key="rate_hz", value=f"{rate:.2f}"), KeyValue(key="persons", value=str(self.persons))]
            values += [KeyValue(key=k, value=str(v)) for k, v in self.counters.items()]
            values += [KeyValue(key=f"{k}_ms", value=f"{v:.1f}") for k, v in self.stage_ms.items()]
            values += [KeyValue(key=k, value=v) for k, v in self.info.items()]
            recent = []
            for kind, w in sorted(self._warnings.items()):
                values.append(KeyValue(key=f"warning.{kind}", value=f"{w.count}x, last: {w.last_message}"))
                if now - w.last_seen <= self.warn_window:
                    recent.append(kind)
            if self.error:
                level, message = DiagnosticStatus.ERROR, self.error
            elif recent:
                level, message = DiagnosticStatus.WARN, "input problems: " + ", ".join(recent)
            else:
                level, message = DiagnosticStatus.OK, f"{rate:.1f} Hz, {self.persons} person(s)"
        return DiagnosticStatus(level=level, name=self.name, message=message, hardware_id=hardware_id, values=values)

    def array(self, header: Header, hardware_id: str = "") -> DiagnosticArray:
        """DiagnosticArray holding `status()`."""
        return DiagnosticArray(header=header, status=[self.status(hardware_id)])
