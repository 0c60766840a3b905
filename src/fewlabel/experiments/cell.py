"""One grid cell as a plain, picklable task, and the function that runs it anywhere.

``run_cell(task) -> CellOutput`` is what an executor runs (in-process, in a process pool or as a Ray
task). It re-opens the data itself from ``task.data_args`` (kept per worker process, so a worker
loads the images once), seeds itself fully, fine-tunes, evaluates and returns the row plus the
files of the cell (bytes). It writes nothing: the driver puts the files in place and then inserts
the row, so a worker that dies never leaves a half-finished cell behind.

The pipeline is reached through a ``Backend`` (default: ``PipelineBackend`` = ``fewlabel.pipeline``
and ``fewlabel.data``); tests pass a fake one. A backend must be picklable (it travels in the task).
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fewlabel.errors import FewlabelError, one_line
from fewlabel.evaluate.metrics import PATIENT_METRICS
from fewlabel.experiments.grid import Cell
from fewlabel.experiments.store import METRICS
from fewlabel.jsonable import jsonable


class Backend(Protocol):
    """What the curve needs from the pipeline. ``data`` is whatever ``prepare_data`` returns; it must
    have ``catalog`` (``labels(ids)``, ``groups(ids)``), ``pool_ids``, ``test_ids``, ``class_names`` and
    ``fingerprint()``. Specs and fine-tuning configs travel as plain dicts."""

    def prepare_data(self, **data_args: Any) -> Any: ...
    def draw(self, data: Any, n_per_class: int, repeat: int, seed: int, count: str) -> dict[str, Any]: ...
    def save_plan(self, data: Any, path: Path) -> None: ...
    def strategy_spec(self, name: str) -> dict[str, Any]: ...
    def prepare_strategy(self, spec: dict[str, Any], data: Any, cache_dir: Path,
                         seed: int) -> dict[str, Any]: ...
    def fit_cell(self, data: Any, labelled_ids: list[str], spec: dict[str, Any], seed: int,
                 finetune: dict[str, Any], train_ids: list[str], val_ids: list[str]) -> Any: ...
    def save_model(self, directory: Path, result: Any, data: Any, spec: dict[str, Any],
                   seed: int) -> None: ...
    def finetune_config(self, overrides: dict[str, Any]) -> dict[str, Any]: ...
    def summary(self, data: Any) -> dict[str, Any]: ...


def fingerprint_of(obj: Any) -> str | None:
    """``obj.fingerprint()`` or ``obj.fingerprint`` (catalogs and prepared data differ), or None."""
    if obj is None:
        return None
    fp = getattr(obj, "fingerprint", None)
    return str(fp()) if callable(fp) else (None if fp is None else str(fp))


class PipelineBackend:
    """The real thing: ``fewlabel.pipeline`` (prepare_data, default_spec, prepare_strategy, fit_cell,
    model_config) and the data layer's nested ``draw_labelled``. Imported lazily, so importing
    ``fewlabel.experiments`` stays cheap and Ray workers import torch only when they run a cell."""

    def prepare_data(self, **data_args: Any) -> Any:
        from fewlabel import pipeline

        if isinstance(data_args.get("image_size"), list):
            data_args["image_size"] = tuple(data_args["image_size"])
        return pipeline.prepare_data(**data_args)

    def draw(self, data: Any, n_per_class: int, repeat: int, seed: int, count: str,
             selection: str | None = None, embedding: Any = None) -> dict[str, Any]:
        """The plan's draw for (size, repeat) — read when the plan holds it, else drawn into it; with
        ``selection``, the picks of that rule (``embedding()`` gives the pool's embedding)."""
        from fewlabel import pipeline
        from fewlabel.data.plan import draw_key
        from fewlabel.pipeline import selection_draws

        stored = data.plan.draws.get(draw_key(n_per_class, repeat, selection))
        if stored is not None:
            return dict(stored)
        if selection is not None:
            return dict(selection_draws.add_selection_draw(data, selection, n_per_class, repeat, seed,
                                                           embedding))
        return dict(pipeline.add_draw(data, n_per_class, repeat, seed, count=count))

    def selection_embedding(self, data: Any, device: str, source: dict[str, Any] | None = None
                            ) -> tuple[Any, str]:
        """The pool's embedding the selection rules pick from (``pipeline.selection_draws``): the
        ImageNet encoder's, or ``source``'s ({"encoder", "weights"})."""
        from fewlabel.pipeline.selection_draws import pool_embedding
        return pool_embedding(data, device, source)

    def save_plan(self, data: Any, path: Path) -> None:
        data.plan.save(path)

    def strategy_spec(self, name: str) -> dict[str, Any]:
        from fewlabel import pipeline

        return jsonable(pipeline.default_spec(name).to_dict())

    def check_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A strategy spec with its fine-tuning and pretraining overrides checked (keys and values)."""
        from fewlabel import pipeline
        from fewlabel.pipeline.encoders import settled_by_file
        from fewlabel.pretrain.common import PretrainConfig
        from fewlabel.settings import validated
        from fewlabel.training.finetune import FinetuneConfig

        checked = settled_by_file(pipeline.StrategySpec.from_dict(dict(spec))).to_dict()
        checked["finetune"] = validated(FinetuneConfig, dict(checked.get("finetune") or {}), "fine-tuning")
        if "explicit" in checked["finetune"]:  # the user's settings say what they named, never a recipe
            raise FewlabelError("a strategy's fine-tuning recipe cannot set explicit")
        checked["pretrain"] = validated(PretrainConfig, dict(checked.get("pretrain") or {}), "pretraining")
        return jsonable(checked)

    def prepare_strategy(self, spec: dict[str, Any], data: Any, cache_dir: Path, seed: int) -> dict[str, Any]:
        from fewlabel import pipeline

        # progress=False: per-epoch bars from several workers would garble the curve's own bar.
        prepared = pipeline.prepare_strategy(pipeline.StrategySpec.from_dict(spec), data, cache_dir=cache_dir,
                                             seed=seed, progress=False)
        return jsonable(prepared.to_dict())

    def fit_cell(self, data: Any, labelled_ids: list[str], spec: dict[str, Any], seed: int,
                 finetune: dict[str, Any], train_ids: list[str], val_ids: list[str]) -> Any:
        from fewlabel import pipeline
        from fewlabel.training.finetune import FinetuneConfig

        # model_needed=False: a cell keeps a model when its strategy makes one (knn makes none)
        return pipeline.fit_cell(data, labelled_ids, pipeline.StrategySpec.from_dict(spec), seed,
                                 FinetuneConfig.from_dict(finetune), train_ids=train_ids, val_ids=val_ids,
                                 model_needed=False)

    def save_model(self, directory: Path, result: Any, data: Any, spec: dict[str, Any], seed: int) -> None:
        from fewlabel import pipeline
        from fewlabel.models.io import save_model_dir
        from fewlabel.pipeline.region import region_unet_source

        strategy = pipeline.StrategySpec.from_dict(spec)
        config = pipeline.model_config(data, strategy, result, seed)
        save_model_dir(directory, result.classifier, jsonable(config), unet=region_unet_source(strategy))

    def finetune_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        from fewlabel.settings import validated
        from fewlabel.training.compute import resolved
        from fewlabel.training.finetune import FinetuneConfig

        checked = validated(FinetuneConfig, dict(overrides), "fine-tuning")
        # Every setting given is the user's: a strategy's recipe does not replace it.
        named = [*FinetuneConfig(explicit=checked.get("explicit") or ()).explicit,
                 *(k for k in checked if k != "explicit")]
        # No per-epoch bars inside cells (the curve has its own); constant, so the hash is unaffected.
        config = FinetuneConfig.from_dict({**checked, "progress": False, "explicit": named})
        # Every "auto" (device, precision, ensemble members, layout) is made concrete before the
        # configuration is hashed: a run resumed on other hardware (CPU fp32 vs bf16 numbers) is then
        # refused as another configuration, not mixed in.
        return jsonable(resolved(config).to_dict())

    def summary(self, data: Any) -> dict[str, Any]:
        from fewlabel.experiments.run_folder import dataset_summary

        return dataset_summary(data)

    def check_encoder_files(self, data: Any, specs: dict[str, dict[str, Any]]) -> None:
        """Build, once, each encoder a strategy is given a file for (``encoder_weights``): a file that
        cannot load, holds another architecture, does not fit the data or saw a test image is refused
        before anything is written, not cell by cell."""
        from fewlabel import pipeline
        from fewlabel.pipeline.fit import check_given_encoder

        for spec in specs.values():
            check_given_encoder(pipeline.StrategySpec.from_dict(dict(spec)), data)

    def check_selection(self, data: Any, source: dict[str, Any] | None = None) -> None:
        """Refuse, before anything is written, data the selection rules' embedding cannot read."""
        from fewlabel.pipeline.selection_draws import check_embeddable

        check_embeddable(data, source)


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to run one cell; plain values only (picklable, small)."""

    cell: Cell
    seed: int
    draw_seed: int
    labelled_ids: tuple[str, ...]
    train_ids: tuple[str, ...]  # the plan's split of the draw: the worker never draws it again
    val_ids: tuple[str, ...]
    spec: dict[str, Any]  # the prepared strategy spec (encoder_weights filled in)
    finetune: dict[str, Any]
    data_args: dict[str, Any]  # how the worker re-opens the data (paths, split seed, image size)
    fingerprint: str  # the worker checks the data it opened is the data the run was made on
    config_hash: str
    keep_model: bool
    backend: Any
    threads: int | None = None  # torch threads in the worker; None = leave as is
    shared_data: Any = None  # a Ray object-store reference to the driver's prepared data, or None
    row_extra: dict[str, Any] = field(default_factory=dict)  # a selection arm's rule and classes reached


@dataclass
class CellOutput:
    """The row for the store and the cell's files (relative path → bytes) for the driver to write."""

    row: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainTask:
    """One strategy's preparation (GAN, segmentation, SSL pretraining) before its cells."""

    strategy: str
    spec: dict[str, Any]
    cache_dir: str
    seed: int
    data_args: dict[str, Any]
    fingerprint: str
    backend: Any
    threads: int | None = None


# Per-process cache of opened data: a Ray or pool worker loads the images once for all its cells.
_DATA_CACHE: dict[str, Any] = {}


def _data_key(data_args: dict[str, Any]) -> str:
    return json.dumps(data_args, sort_keys=True, default=str)


def prime_data(data_args: dict[str, Any], data: Any) -> None:
    """Give this process's cache the data the driver already opened (in-process executor)."""
    _DATA_CACHE[_data_key(data_args)] = data


def open_data(backend: Any, data_args: dict[str, Any], fingerprint: str, shared: Any = None) -> Any:
    """The run's data in this process: from the per-process cache, from the object store when the
    driver shared it (``shared``: a Ray reference), else opened by the plan from the files."""
    key = _data_key(data_args)
    if key not in _DATA_CACHE:
        if shared is not None:
            import ray

            data = ray.get(shared)
        else:
            data = backend.prepare_data(**dict(data_args))
        found = fingerprint_of(data)
        if found != fingerprint:
            # The files changed under a running sweep (or the worker sees other files): refuse to mix.
            raise RuntimeError(f"data at {data_args.get('data')} changed since the run started "
                               f"(fingerprint {str(found)[:8]} vs {fingerprint[:8]})")
        _DATA_CACHE.clear()  # one data set per worker at a time: bounded memory
        _DATA_CACHE[key] = data
    return _DATA_CACHE[key]


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch before the pipeline runs: weights initialised before the training
    loop seeds itself (the encoder is built first) would otherwise depend on what this process did
    before, and a cell would give other numbers in a Ray worker than in the driver."""
    from fewlabel.training.loop import seed_everything

    seed_everything(seed)


def _metric_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in METRICS:
        m = metrics.get(name)
        if isinstance(m, dict):
            out[name] = m.get("value")
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = m.get("ci_low"), m.get("ci_high")
        else:
            out[name] = m
    patient = metrics.get("patient")
    if isinstance(patient, dict):  # test patients with several images: their pooled metrics too
        for name in PATIENT_METRICS:
            m = patient.get(name) or {}
            out[f"patient_{name}"] = m.get("value")
            out[f"patient_{name}_ci_low"], out[f"patient_{name}_ci_high"] = m.get("ci_low"), m.get("ci_high")
        out["n_test_patients"] = patient.get("n_groups")
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def base_row(task: CellTask) -> dict[str, Any]:
    cell = task.cell
    return {"strategy": cell.strategy, "n_per_class": cell.n_per_class, "repeat": cell.repeat,
            "seed": task.seed, "draw_seed": task.draw_seed, "config_hash": task.config_hash,
            "worker": f"{socket.gethostname()}:{os.getpid()}", **task.row_extra}


def run_cell(task: CellTask) -> CellOutput:
    """Fine-tune and evaluate one cell. Never raises for a failure of the cell itself: that comes back
    as a ``failed`` row with the one-line error, so one bad cell does not stop a sweep."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    row = base_row(task)
    try:
        set_threads(task.threads)
        data = open_data(task.backend, task.data_args, task.fingerprint, task.shared_data)
        seed_all(task.seed)
        result = task.backend.fit_cell(data, list(task.labelled_ids), dict(task.spec), task.seed,
                                       dict(task.finetune), list(task.train_ids), list(task.val_ids))
        output = ok_output(task, data, result, row)
    except Exception as exc:  # a cell's own failure; KeyboardInterrupt still stops the sweep
        row.update(status="failed", error=one_line(exc), cell_seconds=time.perf_counter() - t0,
                   extra={"traceback": traceback.format_exc(limit=8)})
        return CellOutput(row=row)
    output.row["cell_seconds"] = time.perf_counter() - t0
    # CPU seconds of this process (all its threads): a speed figure that other load barely moves
    output.row["cell_cpu_seconds"] = time.process_time() - cpu0
    return output


def ok_output(task: CellTask, data: Any, result: Any, row: dict[str, Any]) -> CellOutput:
    """The row and files of a cell that trained: metrics, counts, probabilities, ids and the model."""
    fit = getattr(result, "fit", None)
    train_ids, val_ids = list(result.train_ids), list(result.val_ids)
    keep_model = task.keep_model and getattr(result, "classifier", None) is not None
    row.update(_metric_fields(result.metrics))
    row.update(
        status="ok",
        train_seconds=float(result.train_seconds),
        n_train=len(train_ids), n_val=len(val_ids), n_test=int(np.asarray(result.proba_test).shape[0]),
        epochs=getattr(fit, "epochs", None), best_epoch=getattr(fit, "best_epoch", None),
        stopped_because=getattr(fit, "stopped_because", None),
        confusion_matrix=result.metrics.get("confusion_matrix"),
        extra={"notes": list(getattr(result, "notes", []) or [])},
        proba_path=f"cells/{task.cell.dirname}/proba_test.npy",
        model_path=f"cells/{task.cell.dirname}" if keep_model else "",
    )
    cell_info = {"cell": task.cell._asdict(), "seed": task.seed, "draw_seed": task.draw_seed,
                 "config_hash": task.config_hash, "spec": task.spec, "finetune": task.finetune,
                 "labelled_ids": list(task.labelled_ids), "train_ids": train_ids, "val_ids": val_ids,
                 "history": list(getattr(fit, "history", []) or [])}
    files = {"proba_test.npy": _npy_bytes(result.proba_test),
             "cell.json": (json.dumps(jsonable(cell_info), indent=1) + "\n").encode()}
    if keep_model:
        # Saved to a private temp folder and shipped as bytes: the driver places it with the rest.
        with tempfile.TemporaryDirectory(prefix="fewlabel-cell-") as tmp:
            task.backend.save_model(Path(tmp) / "model", result, data, dict(task.spec), task.seed)
            for rel, blob in _read_tree(Path(tmp) / "model").items():
                if rel in files:  # our names win; a clash would hide the model's own file
                    raise RuntimeError(f"model dir writes {rel}, which the cell dir uses")
                files[rel] = blob
    return CellOutput(row=row, files=files)


def run_pretraining(task: PretrainTask) -> dict[str, Any]:
    """Prepare one strategy's encoder (cached by the pipeline in ``cache_dir``); returns the prepared
    spec and the seconds it took. Raises on failure: the driver marks that strategy's cells failed."""
    set_threads(task.threads)
    t0 = time.perf_counter()
    data = open_data(task.backend, task.data_args, task.fingerprint)
    seed_all(task.seed)
    spec = task.backend.prepare_strategy(dict(task.spec), data, Path(task.cache_dir), task.seed)
    return {"strategy": task.strategy, "spec": spec, "seconds": time.perf_counter() - t0}
