"""``run_demo(out_dir)``: the README's main job on an embedded SYNTHETIC data set, in minutes on a laptop.

generate the synthetic QPI cells → learning curve (scratch, gan, ssl × sizes 2, 5, 10 × 2 repeats, a
tiny encoder, short pretraining on the unlabelled sperm-like pool) → explanations → report.html.
Budgeted for ≤ 5 minutes on 2 CPU cores; every step is seeded.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewlabel.demo.synthetic import SyntheticDataset, generate_dataset
from fewlabel.experiments.cell import PipelineBackend

# Small enough for CPUs: 64 px images, a 4-stage convnet of width 8 (16k parameters).
DEMO_ENCODER = {"width": 8, "depth": 4}
# Step and epoch counts set the work, so the same seed gives the same numbers. The time caps are only
# a safety net for a slow or busy machine (the loop stops cleanly there, and the results then depend
# on the machine's speed); on 2 free cores they are not reached.
_PRETRAIN_COMMON = {"batch_size": 32, "log_every": 50, "sample_every": 10_000}
DEMO_PRETRAIN = {
    "gan": {**_PRETRAIN_COMMON, "steps": 300, "time_budget_s": 90.0},  # ~10 s per 100 steps on 2 cores
    "ssl": {**_PRETRAIN_COMMON, "steps": 300, "time_budget_s": 60.0},  # ~7 s per 100 steps on 2 cores
}
DEMO_FINETUNE = {"max_epochs": 25, "patience": 8, "batch_size": 16, "time_budget_s": 30.0}


class DemoBackend(PipelineBackend):
    """The real pipeline, with the demo's tiny encoder and short pretraining in every strategy spec.

    ``pretrain``: PretrainConfig overrides, either one dict for every strategy or ``{strategy: dict}``.
    Module-level and plain attributes: it travels (pickled) to the curve's worker processes.
    """

    def __init__(self, encoder_kwargs: dict[str, Any] | None = None,
                 pretrain: dict[str, Any] | None = None) -> None:
        self.encoder_kwargs = dict(DEMO_ENCODER if encoder_kwargs is None else encoder_kwargs)
        self.pretrain = dict(DEMO_PRETRAIN if pretrain is None else pretrain)

    def _pretrain_for(self, name: str) -> dict[str, Any]:
        if all(isinstance(v, dict) for v in self.pretrain.values()) and self.pretrain:
            return dict(self.pretrain.get(name, {}))
        return dict(self.pretrain)

    def strategy_spec(self, name: str) -> dict[str, Any]:
        spec = super().strategy_spec(name)
        spec["encoder_kwargs"] = {**spec.get("encoder_kwargs", {}), **self.encoder_kwargs}
        spec["pretrain"] = {**spec.get("pretrain", {}), **self._pretrain_for(name)}
        return spec


@dataclass
class DemoResult:
    """Where the demo put things, and how long each step took (seconds)."""

    out_dir: Path
    dataset: SyntheticDataset
    run_dir: Path
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(out_dir: str | Path = "fewlabel-demo", *, seed: int = 0,
             strategies: Sequence[str] = ("scratch", "gan", "ssl"), sizes: Sequence[int] = (2, 5, 10),
             repeats: int = 2, n_per_class: int = 60, n_unlabelled: int = 300, test_per_class: int = 30,
             finetune: dict[str, Any] | None = None, backend: PipelineBackend | None = None,
             workers: int | None = None, command: str | None = None,
             log: Callable[[str], None] | None = None) -> DemoResult:
    """Generate the SYNTHETIC set under ``out_dir``, run the curve into ``out_dir/run`` and write
    ``out_dir/run/report.html``. Re-running with the same arguments resumes (and reuses) what exists.

    Cells run in ``workers`` processes of one torch thread each (default: one per core, at most 2):
    on 2 cores that is faster than one process with 2 threads, and degrades gently on a busy machine.
    """
    from fewlabel.experiments import run_curve
    from fewlabel.report.html import build_report

    out_dir = Path(out_dir)
    say = log or (lambda line: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"generating the SYNTHETIC quantitative-phase cell set under {out_dir} (seed {seed}) ...")
    dataset = generate_dataset(out_dir, n_per_class=n_per_class, n_unlabelled=n_unlabelled, seed=seed)
    seconds["generate"] = time.perf_counter() - t0
    run_dir = out_dir / "run"
    workers = workers if workers is not None else max(1, min(2, os.cpu_count() or 1))
    cmd = command or shlex.join(["fewlabel", "demo", "--out", str(out_dir), "--seed", str(seed)])
    t1 = time.perf_counter()
    # (denormal floats, which crawl on x86, are flushed by the training loop itself)
    run_curve(dataset.labelled, run_dir, strategies=list(strategies), sizes=list(sizes),
              repeats=repeats, unlabelled=dataset.unlabelled, test_size=int(test_per_class), seed=seed,
              finetune={**DEMO_FINETUNE, **(finetune or {})}, workers=workers, cpus_per_cell=1,
              keep_models="first", progress=False, log=say, command=cmd,
              backend=backend or DemoBackend())
    seconds["curve"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    report = build_report(run_dir, log=say)
    seconds["report"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(out_dir=out_dir, dataset=dataset, run_dir=run_dir, report=report, seconds=seconds)
