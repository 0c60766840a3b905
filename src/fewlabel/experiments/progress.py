"""What a curve prints while it runs: cells done / total, seconds per cell, time left, one line per cell."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

Log = Callable[[str], None]


class Progress:
    """Cells done / total, seconds per cell and time left; a tqdm bar on a terminal, silent otherwise."""

    def __init__(self, total: int, done: int, enabled: bool | None, log: Log | None) -> None:
        self.total, self.done = total, done
        self.log = log
        self.t0 = time.perf_counter()
        self.ran = 0
        self.bar = None
        if enabled or (enabled is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="cell", desc="curve", dynamic_ncols=True,
                            file=sys.stderr)

    def write(self, line: str) -> None:
        if self.log is None:
            return
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
        if self.bar is not None:
            self.bar.close()


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


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
