"""The results store of a learning-curve run: one SQLite file, one row per grid cell.

RUN_DIR layout (the report and explanations read it; keep it stable)::

    RUN_DIR/
      run.json          the run (written atomically); keys: fewlabel_run (format 1), config_hash,
                        config (CurveConfig.to_dict()), data_args (``PipelineBackend().prepare_data(
                        **data_args)`` re-opens the data as the run did), command, invocations (one per
                        call: command, time, executor), dataset (root, classes, counts, pool_counts,
                        test_counts, n_pool, n_test, groups, test_groups, image_size, channels,
                        spatial_dims, n_unlabelled, n_unlabelled_usable, preprocess), versions (python,
                        platform, fewlabel, torch, numpy, monai, captum[, ray]), created, updated,
                        preparations ({strategy: {spec, seconds}}; encoder_weights relative to RUN_DIR),
                        status (ok, failed, skipped, total, pending)
      store.sqlite      WAL-mode SQLite; table ``cells``, primary key (strategy, n_per_class, repeat);
                        table ``meta`` (schema_version, config_hash)
      results.csv       export of ``cells``: CSV_COLUMNS first, then EXTRA_COLUMNS (rewritten atomically)
      plan.json         the split plan (``fewlabel.data.plan``): params, test {ids, labels, groups}, pool,
                        merged copies, pretraining pools, draws {n<size>_r<repeat>: {labelled, train,
                        val, draw_seed[, skipped]}}; every worker, explain and the report follow it
      pretrained/       encoder files of the preparations (GAN, segmentation, SSL), cached by hash
      cells/<strategy>/n<size>_r<repeat>/
                        proba_test.npy (float32 (n_test, n_classes), rows in plan.json's test order),
                        cell.json (labelled/train/val ids, seeds, spec, finetune, history) and, when the
                        model is kept (default: repeat 0 only), ``model.safetensors`` + ``config.json``
                        of ``fewlabel.models.io.save_model_dir`` (the cell folder IS the model dir)
      explanations/     written later by ``fewlabel.explain.run.explain_run`` (not by the curve)
      .lock             held (flock) while a curve writes; the OS drops it even after kill -9

Readers (explanations, the report, benchmarks) go through ``experiments.run_view.RunView``.
API (stable; used by the curve driver and ``RunView``)::

    store = ResultStore(run_dir)           # opens or creates RUN_DIR/store.sqlite
    store.add(row) -> bool                 # one transaction; never duplicates a cell
    store.rows(status=None) -> list[dict]  # flat dicts; confusion_matrix decoded to list[list[int]]
    store.done_keys() -> set[Cell]         # cells that need no re-run (status ok or skipped)
    store.export_csv(path=None) -> Path    # RUN_DIR/results.csv, atomically

A row: ``strategy, n_per_class, repeat, seed, status ("ok" | "failed" | "skipped"), error`` (one line,
failed/skipped only), the metrics ``roc_auc, accuracy, balanced_accuracy, macro_f1`` each with
``<metric>_ci_low`` / ``<metric>_ci_high``, ``train_seconds, cell_seconds, n_train, n_val, n_test,
epochs, best_epoch, stopped_because, draw_seed, model_path`` and ``proba_path`` (relative to RUN_DIR;
model_path empty when the model was not kept), ``config_hash, worker, finished_at`` (ISO time),
``confusion_matrix`` (rows = true class, in the run's class order) and ``extra`` (a dict). When a test
patient (group) has several images: ``patient_roc_auc, patient_accuracy`` with their ``_ci_low`` /
``_ci_high`` (mean of a patient's image probabilities; bootstrap over patients) and ``n_test_patients``.

Safety: a row is inserted in one transaction after the cell's files are in place, so ``kill -9`` at
any moment loses at most the cells in flight. The file itself is made under a temporary name and
renamed into place with its tables, so a kill while it is created leaves no store or a whole one.
A failed row is replaced when the cell is re-run; an ``ok`` or ``skipped`` row is never overwritten.

Why this file is long: its first fifty lines are the run folder's documented layout, which the report,
explanations and users' scripts rely on; the store's creation, damage checks and queries stay together.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fewlabel import fileio
from fewlabel.data.plan import PLAN_FILE
from fewlabel.errors import DiskFullError, FewlabelError, is_disk_full
from fewlabel.evaluate.metrics import HEADLINE_METRICS, PATIENT_METRICS, quartiles
from fewlabel.experiments.grid import Cell

__all__ = ["PLAN_FILE"]  # the run folder's plan file name, re-exported with the other names
STORE_FILE = "store.sqlite"
RUN_FILE = "run.json"
CSV_FILE = "results.csv"
SCHEMA_VERSION = 1

METRICS = HEADLINE_METRICS
# results.csv starts with exactly these columns, in this order: scripts read them by position.
CSV_COLUMNS = ("strategy", "n_per_class", "repeat", "seed", *METRICS, "train_seconds")
EXTRA_COLUMNS = (
    *(f"{m}_{b}" for m in METRICS for b in ("ci_low", "ci_high")),
    "status", "error", "n_train", "n_val", "n_test", "epochs", "best_epoch", "stopped_because",
    "cell_seconds", "draw_seed", "model_path", "proba_path", "config_hash", "worker", "finished_at",
    # Per patient (group), when a test patient has several images: empty otherwise (``group_metrics``).
    *(f"patient_{m}{b}" for m in PATIENT_METRICS for b in ("", "_ci_low", "_ci_high")), "n_test_patients",
)
_JSON_COLUMNS = ("confusion_matrix", "extra")
STATUSES = ("ok", "failed", "skipped")

_TYPES: dict[str, str] = {
    "strategy": "TEXT NOT NULL", "n_per_class": "INTEGER NOT NULL", "repeat": "INTEGER NOT NULL",
    "seed": "INTEGER", "status": "TEXT NOT NULL", "error": "TEXT", "n_train": "INTEGER",
    "n_val": "INTEGER", "n_test": "INTEGER", "epochs": "INTEGER", "best_epoch": "INTEGER",
    "stopped_because": "TEXT", "draw_seed": "INTEGER", "model_path": "TEXT", "proba_path": "TEXT",
    "config_hash": "TEXT", "worker": "TEXT", "finished_at": "TEXT", "n_test_patients": "INTEGER",
    "confusion_matrix": "TEXT", "extra": "TEXT",
}
COLUMNS = (*CSV_COLUMNS, *EXTRA_COLUMNS, *_JSON_COLUMNS)
_KEY = ("strategy", "n_per_class", "repeat")


def _column_type(name: str) -> str:
    return _TYPES.get(name, "REAL")


def atomic_write_json(path: Path, obj: Any) -> None:
    """A RUN_DIR JSON file (run.json, splits): fsync'd before the rename, anything else as ``str``."""
    fileio.atomic_write_json(path, obj, indent=2, default=str, fsync=True)


_JSON_WHAT = {RUN_FILE: "run record", PLAN_FILE: "split plan"}


def read_json(path: Path) -> Any:
    """A RUN_DIR JSON file; a missing or corrupt one is one ``FewlabelError`` line naming it."""
    path = Path(path)
    return fileio.read_json(path, _JSON_WHAT.get(path.name, "run file"),
                            fix=f"delete {path.parent} and run again (the run cannot be resumed without it)")


def _clean(value: Any) -> Any:
    """SQLite-friendly scalars: numpy numbers become Python ones, NaN becomes NULL."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool):
        return int(value)
    return value


class ResultStore:
    """SQLite store of one run. Only the driver writes (one connection); readers may open it any time."""

    def __init__(self, run_dir: str | Path, *, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_FILE
        try:
            existed = self._existing_store(create)
            self._refuse_lost_store(existed)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not existed:
                self._create_in_place()
            # isolation_level=None: we open transactions ourselves, one per row.
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._check_existing()
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed row survives a crash of the machine, not only of the process. One
            # commit per cell, so the cost is nothing next to a fine-tuning.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._create()
        except sqlite3.DatabaseError as exc:
            raise self._database_error(exc) from None

    def _corrupt(self, why: str) -> FewlabelError:
        return FewlabelError(f"results store is corrupt ({why}); delete {self.run_dir} and run again, or "
                             "restore the file from a backup", path=self.path)

    def _database_error(self, exc: sqlite3.DatabaseError) -> FewlabelError:
        """Only a damaged file is called corrupt. A full disk, a lock or an I/O error leaves the store
        as it was: the same command works again once the cause is gone, so nothing is to be deleted."""
        # On a full disk SQLite may only say "disk I/O error" (its shared memory could not grow).
        if is_disk_full(exc) or (isinstance(exc, sqlite3.OperationalError) and _device_full(self.run_dir)):
            return DiskFullError(path=self.path)
        if isinstance(exc, sqlite3.OperationalError):
            return FewlabelError(f"cannot use the results store ({exc}); the file is unchanged: check the "
                                 "folder's permissions, free space and other programs using it, then run "
                                 "the same command again", path=self.path)
        return self._corrupt(str(exc))

    def _existing_store(self, create: bool) -> bool:
        """Whether a store is here. One a killed run left half made (0 bytes, or no table yet: fewlabel
        before atomic creation could leave either) holds no result when no finished cell is on disk:
        it counts as none, and a writer makes it again."""
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no results store here", str(self.path))
            return False
        if self._finished_cells() or not _has_no_tables(self.path):
            return True
        if not create:
            raise FileNotFoundError(errno.ENOENT, "no results store here yet", str(self.path))
        for leftover in _store_files(self.path):
            leftover.unlink(missing_ok=True)
        return False

    def _finished_cells(self) -> bool:
        return has_finished_cells(self.run_dir)

    def _refuse_lost_store(self, existed: bool) -> None:
        """An emptied store, or a missing one beside finished cells, would silently recompute (and
        overwrite) results: refused. A run killed before its first cell has no cells yet: allowed."""
        if existed and self.path.stat().st_size == 0:
            raise self._corrupt("the file is empty, 0 bytes")
        if not existed:
            refuse_lost_store(self.run_dir)

    def _create_in_place(self) -> None:
        """Make the store under a temporary name (tables and WAL mode in it), then rename it into
        place: a run killed at any instant leaves no store or a whole one, never a file that a re-run
        could not tell from a damaged one. Leftover temporary files are swept by the run folder."""
        tmp = fileio.temp_path(self.path)
        try:
            self._conn = sqlite3.connect(tmp, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._create()
            finally:
                self._conn.close()  # the last connection: its WAL is checkpointed into the file
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fileio.fsync_dir(self.run_dir)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(path=self.path) from exc
            raise
        finally:
            for leftover in _store_files(tmp):
                leftover.unlink(missing_ok=True)

    def _check_existing(self) -> None:
        """A file that is not this fewlabel's store (another database, a damaged one) is refused."""
        status = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if status != "ok":
            raise self._corrupt(f"integrity check: {status}")
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"cells", "meta"} <= tables:
            raise self._corrupt("it is not a fewlabel results store: no cells/meta tables")

    def _create(self) -> None:
        cols = ",\n  ".join(f'"{c}" {_column_type(c)}' for c in COLUMNS)
        with self._transaction() as conn:
            key = 'PRIMARY KEY (strategy, n_per_class, "repeat")'
            conn.execute(f"CREATE TABLE IF NOT EXISTS cells (\n  {cols},\n  {key})")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            present = {r["name"] for r in conn.execute("PRAGMA table_info(cells)")}
            for col in COLUMNS:  # a store from an older fewlabel gains the new columns, empty
                if col not in present:
                    kind = _column_type(col).replace(" NOT NULL", "")
                    conn.execute(f'ALTER TABLE cells ADD COLUMN "{col}" {kind}')

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back itself (a full disk)
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                raise DiskFullError(path=self.path) from None
            raise

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- rows ---------------------------------------------------------------------------------
    def add(self, row: Mapping[str, Any]) -> bool:
        """Insert one cell's row in one transaction. Returns False (and changes nothing) when the cell
        already has an ``ok`` or ``skipped`` row; a ``failed`` row is replaced."""
        missing = [k for k in (*_KEY, "status") if row.get(k) is None]
        if missing:
            raise ValueError(f"row lacks {', '.join(missing)}")
        if row["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {row['status']!r}")
        values = {c: _clean(row.get(c)) for c in COLUMNS if c not in _JSON_COLUMNS}
        values["finished_at"] = values.get("finished_at") or time.strftime("%Y-%m-%dT%H:%M:%S")
        values["confusion_matrix"] = (json.dumps(row["confusion_matrix"], default=_clean)
                                      if row.get("confusion_matrix") is not None else None)
        extra = dict(row.get("extra") or {})
        extra.update({k: v for k, v in row.items() if k not in COLUMNS})  # nothing is dropped silently
        values["extra"] = json.dumps(extra, default=str) if extra else None
        names = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in values if c not in _KEY)
        sql = (f"INSERT INTO cells ({names}) VALUES ({marks}) ON CONFLICT(strategy, n_per_class, \"repeat\") "
               f"DO UPDATE SET {updates} WHERE cells.status = 'failed'")
        with self._transaction() as conn:
            cursor = conn.execute(sql, tuple(values.values()))
            return cursor.rowcount > 0

    def rows(self, status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All rows (or those of the given status), ordered by strategy, size, repeat."""
        sql, args = "SELECT * FROM cells", ()
        if status is not None:
            wanted = (status,) if isinstance(status, str) else tuple(status)
            sql += f" WHERE status IN ({', '.join('?' for _ in wanted)})"
            args = wanted
        sql += ' ORDER BY strategy, n_per_class, "repeat"'
        out = []
        for rec in self._conn.execute(sql, args):
            row = dict(rec)
            row["confusion_matrix"] = json.loads(row["confusion_matrix"]) if row["confusion_matrix"] else None
            row["extra"] = json.loads(row["extra"]) if row["extra"] else {}
            out.append(row)
        return out

    def keys(self, status: str | Iterable[str] | None = None) -> set[Cell]:
        sql, args = 'SELECT strategy, n_per_class, "repeat" FROM cells', ()
        if status is not None:
            wanted = (status,) if isinstance(status, str) else tuple(status)
            sql += f" WHERE status IN ({', '.join('?' for _ in wanted)})"
            args = wanted
        return {Cell(r[0], int(r[1]), int(r[2])) for r in self._conn.execute(sql, args)}

    def done_keys(self) -> set[Cell]:
        """Cells a re-run skips: ``ok`` and ``skipped``. Failed cells are tried again."""
        return self.keys(("ok", "skipped"))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for rec in self._conn.execute("SELECT status, COUNT(*) FROM cells GROUP BY status"):
            counts[rec[0]] = int(rec[1])
        return counts

    def export_csv(self, path: str | Path | None = None) -> Path:
        """Write ``results.csv`` (default ``RUN_DIR/results.csv``) atomically: CSV_COLUMNS then
        EXTRA_COLUMNS; metric cells of failed/skipped rows are empty."""
        target = Path(path) if path is not None else self.run_dir / CSV_FILE
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = (*CSV_COLUMNS, *EXTRA_COLUMNS)
        writer.writerow(header)
        for row in self.rows():
            writer.writerow(["" if row.get(c) is None else _csv_value(row[c]) for c in header])
        fileio.atomic_write_bytes(target, buf.getvalue().encode(), fsync=True)
        return target

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def has_finished_cells(run_dir: Path) -> bool:
    """Cell folders on disk (not the temporary ones of a cell being written)."""
    cells = Path(run_dir) / "cells"
    if not cells.is_dir():
        return False
    strategies = [sub for sub in cells.iterdir() if sub.is_dir() and not sub.name.startswith(".")]
    return any(p.is_dir() and not p.name.startswith(".") for sub in strategies for p in sub.iterdir())


def refuse_lost_store(run_dir: Path) -> None:
    """A run whose store is gone while finished cells remain: refused, by writers (a re-run would
    recompute and overwrite) and readers (a report would say nothing finished) alike."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).exists() and has_finished_cells(run_dir):
        raise FewlabelError(f"results store is missing while finished cells are in {run_dir / 'cells'}; "
                            f"restore it, or delete {run_dir} and run again", path=run_dir / STORE_FILE)


def _store_files(path: Path) -> list[Path]:
    """A SQLite file and the journal, WAL and shared-memory files beside it."""
    return [path, *(path.with_name(path.name + side) for side in ("-journal", "-wal", "-shm"))]


def _device_full(folder: Path) -> bool:
    """Less than 1 MiB free where ``folder`` lies."""
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _has_no_tables(path: Path) -> bool:
    """True for an SQLite file without a single table (0 bytes, or killed before its first commit);
    False for any other file, damaged ones included: those are refused, never made again."""
    try:
        conn = sqlite3.connect(path, timeout=30.0)
        try:
            return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def _csv_value(value: Any) -> Any:
    # repr-exact floats: a CSV written twice from the same numbers is byte-identical.
    return repr(value) if isinstance(value, float) else value


def summarise(rows: Iterable[Mapping[str, Any]], metric: str = "roc_auc") -> list[dict[str, Any]]:
    """Median and IQR of ``metric`` per (strategy, n_per_class) over the ``ok`` rows, in row order."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row.get("status", "ok") != "ok" or row.get(metric) is None:
            continue
        groups.setdefault((row["strategy"], int(row["n_per_class"])), []).append(float(row[metric]))
    out = []
    for (strategy, n), values in groups.items():
        q1, median, q3 = quartiles(values)
        out.append({"strategy": strategy, "n_per_class": n, "metric": metric, "n_repeats": len(values),
                    "median": median, "q1": q1, "q3": q3})
    return out
