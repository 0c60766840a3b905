"""RUN_DIR as a folder: who may write into it, ``run.json``, the lock, and cells' files put in place.

The driver (``curve``) decides what runs; this module keeps the folder consistent whatever happens
to the process: one driver at a time (``run_lock``), a foreign folder never written into
(``check_out_dir``), files renamed into place whole (``write_cell_files``), leftovers of a killed run
swept (``cleanup_partial``), and the preparations a run used pinned in ``run.json``
(``pinned_preparation``); ``dataset_summary`` is what ``run.json`` says of the data. See ``store.py``
for the layout.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.errors import ConfigMismatchError, DiskFullError, FewlabelError, is_disk_full
from fewlabel.experiments.grid import Cell, CurveConfig
from fewlabel.experiments.store import RUN_FILE, ResultStore, atomic_write_json, read_json
from fewlabel.fileio import fsync_dir
from fewlabel.jsonable import jsonable

_OWN_FILES = {".lock"}  # what may be in RUN_DIR before run.json is written


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("fewlabel", "torch", "numpy", "monai", "captum", *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_out_dir(out: Path) -> None:
    """A folder that exists, is not empty and holds no run is somebody else's: never write into it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FewlabelError("exists and is not a folder; use a new --out", path=out)
    if (out / RUN_FILE).exists():
        return
    foreign = [p.name for p in out.iterdir()
               if p.name not in _OWN_FILES and not p.name.startswith(".run.json.tmp")]
    if foreign:
        raise FewlabelError(f"is not empty and holds no fewlabel run ({', '.join(sorted(foreign)[:3])} ...); "
                            "use a new --out", path=out)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """One driver per RUN_DIR. flock is released by the OS even after kill -9, so no stale locks."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, documented
        yield
        return
    fh = open(out / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            raise FewlabelError(f"another fewlabel curve (pid {pid}) is writing to this run; wait for it or "
                                "use a new --out", path=out) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def open_run(out: Path, config: CurveConfig, config_hash: str, command: str, dataset: dict[str, Any],
              data_args: dict[str, Any], executor_info: dict[str, Any]) -> dict[str, Any]:
    """Create run.json, or check the stored one is this configuration (or extends it:
    ``earlier_hashes`` lists the hashes it had before) and record this invocation."""
    run_file = out / RUN_FILE
    now = _now()
    if run_file.exists():
        info = read_json(run_file)
        stored_hash = info.get("config_hash")
        if stored_hash != config_hash and config.extends(info.get("config") or {}):
            # The same configuration (perhaps with more sizes or repeats): it goes on, and grows;
            # its finished cells are kept.
            info.setdefault("earlier_hashes", []).append(stored_hash)
            info["config_hash"], info["config"] = config_hash, config.to_dict()
        elif stored_hash != config_hash:
            diffs = config.differences(info.get("config") or {})
            what = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            what = what or f"config hash {stored_hash} vs {config_hash}"
            raise ConfigMismatchError(f"holds a run of another configuration ({what}); a run may only "
                                      "add sizes or repeats: use a new --out or delete it", path=out)
        info.setdefault("invocations", []).append({"command": command, "at": now, "executor": executor_info})
        info["updated"] = now
    else:
        info = {
            "fewlabel_run": 1,
            "config_hash": config_hash,
            "config": config.to_dict(),
            # ``PipelineBackend().prepare_data(**data_args)`` re-opens the data exactly as the run did.
            "data_args": data_args,
            "command": command,
            "invocations": [{"command": command, "at": now, "executor": executor_info}],
            "dataset": dataset,
            "versions": _versions(["ray"] if executor_info.get("kind") == "ray" else []),
            "created": now,
            "updated": now,
            "preparations": {},
            "status": {},
        }
    atomic_write_json(run_file, info)
    return info


def cleanup_partial(out: Path) -> None:
    """Temporary files and cell folders left by a killed run: never read, safe to remove."""
    for tmp in list(out.glob(".*.tmp-*")) + list((out / "cells").glob("*/.*.tmp-*")):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_cell_files(out: Path, cell: Cell, files: dict[str, bytes]) -> Path:
    """Put a cell's files in place atomically: written under a temporary folder, then renamed.
    A folder left by a killed earlier attempt (files without a row) is replaced."""
    final = out / "cells" / cell.dirname
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel, blob in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):  # the write names no file: the cell folder is named instead
            raise DiskFullError(path=final) from exc
        raise
    tmp.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def weights_relative(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """The spec as run.json records it: an encoder file inside RUN_DIR relative to it (the run can move)."""
    weights = spec.get("encoder_weights")
    if weights and Path(weights).is_absolute():
        with contextlib.suppress(ValueError):
            return {**spec, "encoder_weights": Path(weights).relative_to(out.resolve()).as_posix()}
    return spec


def _weights_abs(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    weights = spec.get("encoder_weights")
    if weights and not Path(weights).is_absolute():
        return {**spec, "encoder_weights": str((out / weights).resolve())}
    return spec


def pinned_preparation(out: Path, info: dict[str, Any], name: str, used: set[str]) -> dict[str, Any] | None:
    """The preparation this run recorded for ``name``, when its encoder file is still there.

    Why pin: one run uses one encoder per strategy. Asking the pipeline again after a code change
    (a new cache key) would pretrain a second encoder and mix two in one curve. A recorded file that
    is gone while cells already used it cannot be replaced without that mixing: refused.
    """
    recorded = (info.get("preparations") or {}).get(name)
    if not recorded:
        return None
    spec = _weights_abs(recorded["spec"], out)
    weights = spec.get("encoder_weights")
    from fewlabel.models.io import checksum_path, verify_encoder_file

    if weights and Path(weights).exists() and checksum_path(weights).exists():  # saved with a checksum
        verify_encoder_file(weights, fix=f"restore it, or delete {out} and run again")
    if not weights or Path(weights).exists():
        return spec
    if name in used:
        gone = recorded["spec"]["encoder_weights"]
        raise ConfigMismatchError(f"the {name} encoder its finished cells used ({gone}) is gone; restore it, "
                                  "or use a new --out", path=out)
    return None


def finish_run_json(out: Path, info: dict[str, Any], store: ResultStore, total: int) -> None:
    counts = store.counts()
    info["status"] = {**counts, "total": total, "pending": total - sum(counts.values())}
    info["updated"] = _now()
    atomic_write_json(out / RUN_FILE, info)


def dataset_summary(data: Any) -> dict[str, Any]:
    """Classes and counts (all / pool / test), groups, image size and channels, for run.json."""
    catalog = data.catalog
    names = list(data.class_names)
    pool_ids, test_ids = list(data.pool_ids), list(data.test_ids)

    def counts(ids: list[str]) -> dict[str, int]:
        labels = np.asarray(catalog.labels(ids)) if ids else np.zeros(0, int)
        return {name: int((labels == k).sum()) for k, name in enumerate(names)}

    pre = getattr(data, "preprocess", None)
    pre_dict = pre.to_dict() if hasattr(pre, "to_dict") else {}
    pool_cat = getattr(data, "unlabelled", None)
    return {
        "root": str(getattr(catalog, "root", "")),
        "classes": names,
        "counts": counts(pool_ids + test_ids),
        "pool_counts": counts(pool_ids),
        "test_counts": counts(test_ids),
        "n_pool": len(pool_ids), "n_test": len(test_ids),
        "groups": len(set(catalog.groups(pool_ids + test_ids))),
        "test_groups": len(set(catalog.groups(test_ids))),
        "image_size": list(pre_dict.get("size") or []), "channels": pre_dict.get("channels"),
        "spatial_dims": pre_dict.get("spatial_dims"),
        "n_unlabelled": len(pool_cat.samples) if pool_cat is not None else 0,
        # What pretraining may use: the unlabelled pool minus every image of a test group.
        "n_unlabelled_usable": (len(data.pool_without_test_groups())
                                if pool_cat is not None and hasattr(data, "pool_without_test_groups") else 0),
        # Unlabelled images left out of pretraining because they meet the test set (group or content).
        "pretrain_pool_dropped": _dropped(data),
        "duplicates_merged": len(getattr(getattr(data, "plan", None), "merged", []) or []),
        "preprocess": jsonable(pre_dict),
    }


def _dropped(data: Any) -> dict[str, int]:
    plan = getattr(data, "plan", None)
    entry = (getattr(plan, "pretrain_pools", None) or {}).get("unlabelled") or {}
    return {"test_group": int(entry.get("dropped_test_group", 0)),
            "test_content": int(entry.get("dropped_test_content", 0))}
