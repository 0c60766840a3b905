"""Learning curves: the pipeline over strategy × labelled-set size × repeat, resumable, local or on Ray.

    from fewlabel.experiments import run_curve
    result = run_curve("data/pbc", out="runs/pbc", strategies="scratch,ssl", sizes=[2, 5, 20], repeats=3)
    print(result.table())

Modules: ``grid`` (configuration, hash, cells, seeds), ``store`` (SQLite results store and RUN_DIR
layout), ``cell`` (one cell as a picklable task), ``executors`` (local loop / process pool / Ray),
``run_folder`` (RUN_DIR's lock, guards and ``run.json``), ``progress`` (the bar and per-cell lines),
``curve`` (the orchestration), ``run_view`` (``RunView``: the one read-only way into a run folder).
"""

from fewlabel.experiments.curve import STRATEGIES, Curve, RunResult, format_table, run_curve
from fewlabel.experiments.grid import Cell, CurveConfig
from fewlabel.experiments.run_view import RunView
from fewlabel.experiments.store import CSV_COLUMNS, ResultStore, summarise

__all__ = [
    "CSV_COLUMNS",
    "STRATEGIES",
    "Cell",
    "Curve",
    "CurveConfig",
    "ResultStore",
    "RunResult",
    "RunView",
    "format_table",
    "run_curve",
    "summarise",
]
