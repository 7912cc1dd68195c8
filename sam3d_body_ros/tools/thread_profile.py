"""Summaries of py-spy's raw (collapsed-stack) output: where each thread of a process spends its samples."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """'func (path/file.py:12)' -> 'func (file.py)'; other frames as they are."""
    m = _FRAME.match(frame.strip())
    return f"{m['func']} ({m['file'].rsplit('/', 1)[-1]})" if m else frame.strip()


def summarize(raw: str, top: int = 8) -> dict[str, Any]:
    """Per thread: its share of all samples and its `top` leaf functions (self time) with their shares."""
    samples: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread (") else frames[0]
        samples[thread] += int(count)
        leaves[thread][_name(frames[-1]) if len(frames) > 1 else "(no Python frame)"] += int(count)
    total = sum(samples.values())
    return {
        "samples": total,
        "threads": [
            {"thread": t, "share": n / total,
             "top": [{"function": f, "share": c / total} for f, c in leaves[t].most_common(top)]}
            for t, n in samples.most_common()
        ],
    }


def table(summary: dict[str, Any]) -> str:
    """The summary as indented text: thread share, then its hottest functions."""
    lines = [f"{summary['samples']} samples"]
    for t in summary["threads"]:
        lines.append(f"{100 * t['share']:5.1f} %  {t['thread']}")
        lines += [f"         {100 * f['share']:5.1f} %  {f['function']}" for f in t["top"]]
    return "\n".join(lines)
