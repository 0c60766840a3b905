"""What a curve prints while it runs: cells done / total, seconds per cell, time left, one line per cell.

Off a terminal (a log file) a cell can run for many minutes between two cell lines, so a heartbeat
thread says the run is alive whenever ``quiet_s`` seconds pass without a line.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fewlabel.training.heartbeat import LINE_EVERY_S, duration, progress_mode, time_left

Log = Callable[[str], None]

__all__ = ["Log", "Progress", "cell_line", "duration", "said_if_slow"]


@contextlib.contextmanager
def said_if_slow(log: Log, line: str, after_s: float = 3.0) -> Iterator[None]:
    """``line`` is logged only when the block is still running after ``after_s`` seconds.

    Why: a refusal found at once (unreadable data, a bad option) stays the one line it is, while a
    slow step (decoding a large data set) still says what the program is doing.
    """
    timer = threading.Timer(after_s, log, args=(line,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class Progress:
    """Cells done / total, seconds per cell and time left: a tqdm bar on a terminal; elsewhere a line per
    cell and, between cells, a heartbeat line every ``quiet_s`` seconds."""

    def __init__(self, total: int, done: int, enabled: bool | None, log: Log | None,
                 quiet_s: float | None = None) -> None:
        self.total, self.done = total, done
        self.log = log
        self.t0 = time.perf_counter()
        self.ran = 0
        self.bar = None
        self.last_line = self.t0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        mode = progress_mode(enabled)
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="cell", desc="curve", dynamic_ncols=True,
                            file=sys.stderr)
        elif mode == "lines" and log is not None:
            quiet_s = 2 * LINE_EVERY_S if quiet_s is None else quiet_s
            threading.Thread(target=self._heartbeat, args=(quiet_s,), daemon=True,
                             name="curve-heartbeat").start()

    def _heartbeat(self, quiet_s: float) -> None:
        while not self._stop.wait(min(quiet_s, 5.0)):
            now = time.perf_counter()
            if now - self.last_line < quiet_s:
                continue
            left = time_left(self.ran, self.total - self.done + self.ran, now - self.t0) if self.ran else ""
            self.write(f"[{self.done}/{self.total}] working: {duration(now - self.last_line)} since the "
                       f"last line, {duration(now - self.t0)} in all{left}")

    def write(self, line: str) -> None:
        if self.log is None:
            return
        with self._lock:
            self.last_line = time.perf_counter()
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                self.log(line)

    def restart_clock(self) -> None:
        """Time per cell counts from here: preparations before the first cell are not cells."""
        self.t0 = time.perf_counter()

    def update(self, line: str) -> None:
        self.done += 1
        self.ran += 1
        per_cell = (time.perf_counter() - self.t0) / self.ran
        left = (self.total - self.done) * per_cell
        if self.bar is not None:
            self.bar.set_postfix_str(f"{per_cell:.1f} s/cell", refresh=False)
            self.bar.update(1)
        self.write(f"[{self.done}/{self.total}] {line} ({per_cell:.1f} s/cell, ~{duration(left)} left)")

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()


def cell_line(row: dict[str, Any]) -> str:
    cell = f"{row['strategy']} n={row['n_per_class']} r={row['repeat']}"
    if row["status"] != "ok":
        return f"{cell}: {row['status'].upper()} {row.get('error') or ''}".rstrip()
    auc = row.get("roc_auc")
    ci = ""
    if row.get("roc_auc_ci_low") is not None:
        ci = f" [{row['roc_auc_ci_low']:.3f}, {row['roc_auc_ci_high']:.3f}]"
    acc = row.get("accuracy")
    return (f"{cell}: roc_auc {auc:.3f}{ci}" if auc is not None else f"{cell}: roc_auc -") + (
        f", accuracy {acc:.3f}" if acc is not None else "") + f", {row.get('train_seconds') or 0:.1f} s train"
