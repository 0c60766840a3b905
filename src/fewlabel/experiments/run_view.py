"""``RunView(run_dir)``: the one read-only way into a learning-curve run folder.

Explanations, the report and the benchmarks read a run through it and never open ``run.json``,
``store.sqlite``, ``plan.json`` or ``cells/...`` by path themselves; only the curve driver (``curve``,
``run_folder``, ``store``) writes them. The layout itself is described in ``experiments.store``.

    view = RunView("runs/pbc")
    view.info, view.config, view.dataset      # run.json and two of its parts
    view.rows(status="ok")                    # the results store's rows
    view.plan                                 # the SplitPlan (plan.json), checked
    view.test_truth()                         # test labels and groups in proba row order, or None
    view.proba(row), view.cell_files(cell)    # one cell's test probabilities and files
    view.open_test_set()                      # the test images, re-opened by the plan
    view.explanations()                       # the explanations index, or None
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.plan import PLAN_FILE, SplitPlan
from fewlabel.errors import FewlabelError
from fewlabel.experiments.grid import Cell
from fewlabel.experiments.store import RUN_FILE, STORE_FILE, ResultStore, read_json, refuse_lost_store

CELLS_DIR = "cells"
PROBA_FILE = "proba_test.npy"
EXPLAIN_DIR = "explanations"  # written by ``fewlabel.explain.run.explain_run``, read here
EXPLAIN_INDEX = "index.json"
# Older runs saved their test truth in split.json (test_labels / test_groups, the same row order).
_TRUTH_FILES = (("plan.json", "test", "labels", "groups"), ("split.json", None, "test_labels", "test_groups"))


@dataclass
class TestSet:
    """The run's fixed test set, preprocessed exactly as the models saw it."""

    x: np.ndarray  # (N, C, *spatial) float32
    y: np.ndarray  # (N,) class index
    ids: list[str]
    class_names: list[str]
    masks: np.ndarray | None = None  # (N, 1, *spatial) int64 where every test image has a mask
    paths: list[str] | None = None  # the image files, for models that crop the original pixels


class RunView:
    """Read-only view of one run folder; a folder without ``run.json`` is refused in one line."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        if not (self.root / RUN_FILE).exists():
            raise FewlabelError("no fewlabel run here (run.json is missing)", path=self.root)

    @classmethod
    def containing(cls, model_dir: str | Path) -> RunView | None:
        """The run a kept model folder (``RUN_DIR/cells/<strategy>/n<size>_r<repeat>``) belongs to."""
        parents = Path(model_dir).resolve().parents
        if len(parents) > 2 and parents[1].name == CELLS_DIR and (parents[2] / RUN_FILE).exists():
            return cls(parents[2])
        return None

    def check(self) -> None:
        """Read ``run.json`` and the store once: a corrupt one is one line now, not midway through."""
        self.info  # noqa: B018 (reading is the check)
        self.rows()

    # -- run.json --------------------------------------------------------------------------------
    @cached_property
    def info(self) -> dict[str, Any]:
        """``run.json`` as a dict; a corrupt file is one ``FewlabelError`` line naming it."""
        return read_json(self.root / RUN_FILE)

    @property
    def config(self) -> dict[str, Any]:
        """The curve's configuration (``CurveConfig.to_dict()``)."""
        return self.info.get("config") or {}

    @property
    def dataset(self) -> dict[str, Any]:
        """Classes, counts, image size and preprocessing the run recorded."""
        return self.info.get("dataset") or {}

    # -- store.sqlite ----------------------------------------------------------------------------
    def rows(self, status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The results store's rows (all, or those of ``status``); none before the first cell."""
        if not (self.root / STORE_FILE).exists():
            refuse_lost_store(self.root)  # finished cells without their store: never "nothing finished"
            return []
        try:
            store = ResultStore(self.root, create=False)
        except FileNotFoundError:  # none yet, or one a run killed while making it left without tables
            return []
        with store:
            return store.rows(status)

    # -- plan.json -------------------------------------------------------------------------------
    @cached_property
    def plan(self) -> SplitPlan:
        """The run's split plan, refused in one line when missing, malformed or edited."""
        return SplitPlan.load(self.root / PLAN_FILE)

    def test_truth(self) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(labels, groups, source file name) of the test set in proba row order, or None.

        Read leniently (not through ``plan``): a report of an old or partial run falls back to
        repeat-only statistics instead of failing."""
        for name, part, labels_key, groups_key in _TRUTH_FILES:
            try:  # read_json: never opens a FIFO, never reads a runaway file
                data = read_json(self.root / name)
            except FewlabelError:
                continue
            holder = (data.get(part) or {}) if part else data
            labels = holder.get(labels_key)
            if not labels:
                continue
            groups = holder.get(groups_key)
            if not groups or len(groups) != len(labels):
                groups = [str(i) for i in range(len(labels))]  # no groups recorded: each image its own
            return np.asarray(labels, dtype=np.int64), np.asarray([str(g) for g in groups]), name
        return None

    # -- cells/ ----------------------------------------------------------------------------------
    def cell_dir(self, cell: Cell) -> Path:
        return self.root / CELLS_DIR / cell.dirname

    def cell_files(self, cell: Cell) -> dict[str, Path]:
        """File name → path of one cell's files (empty when the cell left none)."""
        folder = self.cell_dir(cell)
        if not folder.is_dir():
            return {}
        return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}

    def proba(self, row: Mapping[str, Any]) -> np.ndarray | None:
        """A row's test probabilities (n_test, K), or None when its file is missing or unreadable."""
        cell = Cell(str(row["strategy"]), int(row["n_per_class"]), int(row["repeat"]))
        rel = row.get("proba_path") or f"{CELLS_DIR}/{cell.dirname}/{PROBA_FILE}"
        try:
            return np.load(self.root / str(rel), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def probas(self, rows: Iterable[Mapping[str, Any]], n_test: int
               ) -> dict[tuple[str, int], dict[int, np.ndarray]]:
        """(strategy, size) → {repeat: proba (n_test, K)} for every ok row whose file is readable."""
        out: dict[tuple[str, int], dict[int, np.ndarray]] = {}
        for row in rows:
            if row.get("status", "ok") != "ok":
                continue
            p = self.proba(row)
            if p is not None and p.ndim == 2 and p.shape[0] == n_test and np.all(np.isfinite(p)):
                out.setdefault((str(row["strategy"]), int(row["n_per_class"])), {})[int(row["repeat"])] = p
        return out

    def model_dir(self, row: Mapping[str, Any]) -> Path | None:
        """The kept model folder of an ok row, or None (not kept, or its files are gone)."""
        if row.get("status") != "ok" or not row.get("model_path"):
            return None
        path = self.root / str(row["model_path"])
        return path if (path / "config.json").exists() else None

    # -- explanations/ ---------------------------------------------------------------------------
    @property
    def explanations_dir(self) -> Path:
        return self.root / EXPLAIN_DIR

    def explanations(self) -> dict[str, Any] | None:
        """The explanations index, or None when there is none (yet) or it cannot be read."""
        try:
            return read_json(self.explanations_dir / EXPLAIN_INDEX)
        except FewlabelError:
            return None

    # -- the data --------------------------------------------------------------------------------
    def open_test_set(self) -> TestSet:
        """Re-open the run's test set by its saved plan: the very images the metrics came from, in
        the row order of every ``proba_test.npy``."""
        from fewlabel.pipeline import prepare_data

        data_args = dict(self.info.get("data_args") or {})
        if not data_args:
            raise FewlabelError("run.json has no data_args: cannot re-open the test set",
                                path=self.root / RUN_FILE)
        if isinstance(data_args.get("image_size"), list):
            data_args["image_size"] = tuple(data_args["image_size"])
        data_args.pop("plan", None)
        data = prepare_data(**data_args, plan=self.root / PLAN_FILE)
        x, y = data.test_arrays
        masks = None
        if all(data.catalog.by_id[i].mask is not None for i in data.test_ids):
            from fewlabel.data.tensors import load_masks

            masks = load_masks(data.catalog, list(data.test_ids), data.preprocess)
        return TestSet(x=np.asarray(x, np.float32), y=np.asarray(y), ids=list(data.test_ids),
                       class_names=list(data.class_names), masks=masks,
                       paths=[data.catalog.by_id[i].path for i in data.test_ids])
