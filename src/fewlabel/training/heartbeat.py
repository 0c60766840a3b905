"""Progress a log can show: a plain line at a steady pace when stderr is not a terminal.

A progress bar redraws one line with carriage returns; written to a file (``nohup``, a batch
scheduler, CI) that is either nothing or thousands of fragments. So a run has three modes: a bar on a
terminal, plain lines every ``every_s`` seconds elsewhere, or silence when asked.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

#: Seconds between two plain progress lines: often enough that a log shows the run is alive, rarely
#: enough that an hour of training writes about a hundred lines.
LINE_EVERY_S = 30.0

Say = Callable[[str], None]


def progress_mode(progress: bool | None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"``: ``progress=None`` means a bar on a terminal, lines elsewhere."""
    if progress is False:
        return "off"
    if progress is True or sys.stderr.isatty():
        return "bar"
    return "lines"


def say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Heartbeat:
    """Says a line when ``every_s`` seconds have passed since the last one (or since it was made)."""

    def __init__(self, every_s: float | None = None, say: Say = say_on_stderr) -> None:
        self.every_s = LINE_EVERY_S if every_s is None else every_s
        self.say = say
        self.last = time.perf_counter()

    def due(self, now: float | None = None) -> bool:
        now = time.perf_counter() if now is None else now
        return now - self.last >= self.every_s

    def beat(self, line: str, now: float | None = None) -> None:
        self.last = time.perf_counter() if now is None else now
        self.say(line)


def time_left(done: float, total: float | None, elapsed: float) -> str:
    """``~3 min 10 s left`` from the pace so far; empty when the total is unknown or nothing is done."""
    if not total or done <= 0:
        return ""
    return f", ~{duration(elapsed / done * max(0.0, total - done))} left"
