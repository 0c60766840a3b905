"""Stacked cells: the repeats and sizes of one strategy trained as one stacked module on a GPU.

``map_cells(executor, tasks)`` replaces ``executor.map(run_cell, tasks)`` in the curve driver. When
stacking is on it groups the cells that share a strategy, a prepared spec and a fine-tuning recipe into
``StackTask``s (at most ``MAX_STACK`` cells each) and runs each with ``run_stack`` on the executor (a
Ray task carries a whole stack); it still yields one ``(CellTask, CellOutput)`` per cell, so the driver
writes each cell's row and files as before, and a killed stack loses only its cells (they rerun).

Inside ``run_stack`` the cells are split by batch geometry (``training.stacked.stack_geometry``); a
geometry with one cell, a recipe ``training.stacked`` refuses, a stack that does not pay or that
fails trains one at a time through ``run_cell``, the reference path. Stacked results equal it up to
float rounding. (``_prepare_member`` repeats what ``pipeline.fit_cell`` does before fine-tuning:
keep the two in step.)

When: ``mode="auto"`` stacks where the cells train on CUDA (a launch-bound GPU gains many times) and
trains one at a time on a CPU, where small convolutions are often compute-bound already (0.3-1.0x
measured on 2 cores) and where the same seed must give the same numbers: a choice made by timing
would make them depend on the machine's load. ``measure`` lets each CPU stack decide by timing
(``stacking_pays``: one epoch of a few members stacked against one member alone), for a user who
prefers speed to bit-for-bit repeatability; ``on`` / ``off`` force it. A CPU sweep spread over
several processes or Ray workers is not grouped under ``measure`` (its parallelism wins). The
default mode comes from ``$FEWLABEL_STACKING`` (else ``auto``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fewlabel.errors import one_line
from fewlabel.experiments.arms import arm_parts
from fewlabel.experiments.cell import (
    CellOutput,
    CellTask,
    PipelineBackend,
    base_row,
    ok_output,
    open_data,
    run_cell,
    seed_all,
    set_threads,
)

MODES = ("auto", "on", "off", "measure")
MAX_STACK = 64  # cells per stack: enough to fill a GPU with small CNNs, bounded memory


@dataclass(frozen=True)
class StackTask:
    """Cells that may train as one stack; plain values only (picklable, travels to Ray workers)."""

    cells: tuple[CellTask, ...]
    mode: str = "auto"


def stacking_enabled(mode: str, executor: Any = None, device: str = "auto") -> bool:
    """Whether the driver should group cells: ``on``; ``off``; ``auto`` when the cells will train
    on CUDA (this machine's, or a Ray cluster that gives tasks GPUs); ``measure`` also when they run
    one after another in this process (each stack then times both ways before it stacks)."""
    if mode not in MODES:
        from fewlabel.errors import FewlabelError

        raise FewlabelError(f"stacking (FEWLABEL_STACKING) must be one of {', '.join(MODES)}, got {mode!r}")
    if mode in ("on", "off"):
        return mode == "on"
    if getattr(executor, "name", "") == "ray":
        return bool(getattr(executor, "gpus_per_task", 0))
    import torch

    on_gpu = (device == "auto" and torch.cuda.is_available()) or device.startswith("cuda")
    return on_gpu or (mode == "measure" and getattr(executor, "workers", 1) == 1)


def _stack_key(task: CellTask) -> str | None:
    if not isinstance(task.backend, PipelineBackend):  # a test's fake pipeline: nothing to stack
        return None
    # by strategy, not arm: a selection rule changes only the labelled images, which stacks may differ in
    return json.dumps([arm_parts(task.cell.strategy)[0], task.spec, task.finetune], sort_keys=True,
                      default=str)


def plan_stacks(tasks: Sequence[CellTask], mode: str = "auto",
                max_stack: int = MAX_STACK) -> list[CellTask | StackTask]:
    """Cells grouped into stacks (by strategy, spec and recipe, in grid order); lone cells stay cells."""
    groups: dict[str, list[CellTask]] = {}
    items: list[CellTask | StackTask] = []
    for task in tasks:
        key = _stack_key(task)
        if key is None:
            items.append(task)
        else:
            groups.setdefault(key, []).append(task)
    for members in groups.values():
        for i in range(0, len(members), max(1, max_stack)):
            chunk = tuple(members[i:i + max_stack])
            items.append(chunk[0] if len(chunk) == 1 else StackTask(chunk, mode))
    return items


def run_item(item: CellTask | StackTask) -> CellOutput | list[CellOutput]:
    """What an executor runs: one cell, or one stack (a list of outputs in the stack's order)."""
    return run_stack(item) if isinstance(item, StackTask) else run_cell(item)


def default_mode() -> str:
    return os.environ.get("FEWLABEL_STACKING", "auto").strip().lower() or "auto"


def map_cells(executor: Any, tasks: Sequence[CellTask], mode: str | None = None,
              max_stack: int = MAX_STACK, device: str = "auto") -> Iterator[tuple[CellTask, Any]]:
    """``executor.map(run_cell, tasks)``, with stacks where ``stacking_enabled``: yields
    ``(cell task, CellOutput or exception)`` per cell as its cell or stack finishes."""
    mode = mode or default_mode()
    if not tasks:
        return
    if not stacking_enabled(mode, executor, device):
        yield from executor.map(run_cell, tasks)
        return
    items = plan_stacks(tasks, mode, max_stack)
    for item, result in executor.map(run_item, items):
        if not isinstance(item, StackTask):
            yield item, result
        elif isinstance(result, BaseException):
            for cell_task in item.cells:
                yield cell_task, result
        else:
            yield from zip(item.cells, result, strict=True)


def run_stack(stack: StackTask) -> list[CellOutput]:
    """Train a stack's cells together where possible and return each cell's output (as ``run_cell``
    would). Never raises for the cells' own failures."""
    from fewlabel import pipeline
    from fewlabel.settings import select_device
    from fewlabel.training.finetune import FinetuneConfig
    from fewlabel.training.stacked import unstackable_reason

    cells = list(stack.cells)
    first = cells[0]
    set_threads(first.threads)
    try:
        data = open_data(first.backend, first.data_args, first.fingerprint, first.shared_data)
        spec = pipeline.StrategySpec.from_dict(dict(first.spec))
        config = pipeline.finetune_config_for(spec, FinetuneConfig.from_dict(dict(first.finetune)))
        on_gpu = select_device(config.device).type == "cuda"
        if unstackable_reason(config) or stack.mode == "off":
            return [run_cell(c) for c in cells]
        if stack.mode == "auto" and not on_gpu:  # a CPU worker: one at a time, deterministic
            return [run_cell(c) for c in cells]
        return _train_stacked(cells, data, spec, config, measure=stack.mode == "measure" and not on_gpu)
    except Exception:  # the stack itself failed (memory, an op vmap lacks): the reference path
        return [run_cell(c) for c in cells]


@dataclass
class _Prepared:
    task: CellTask
    members: list[Any]  # training.stacked.StackMember: one, or one per ensemble member
    inputs: Any  # pipeline.fit.CellInputs


def _prepare_member(task: CellTask, data: Any, spec: Any, config: Any) -> _Prepared:
    """What ``pipeline.fit_cell`` does before fine-tuning, for one cell (semi is never stacked); an
    ensemble's members as ``finetune`` makes them: copies of one start, seeded by ``member_seed``."""
    import copy

    from fewlabel.pipeline.fit import cell_inputs
    from fewlabel.training.finetune import member_seed
    from fewlabel.training.stacked import StackMember

    seed_all(task.seed)
    inputs = cell_inputs(data, list(task.labelled_ids), spec, task.seed, train_ids=list(task.train_ids),
                         val_ids=list(task.val_ids), hold_out=config.hold_out)
    count = config.ensemble or 1
    members = [StackMember(inputs.encoder if count == 1 else copy.deepcopy(inputs.encoder), inputs.x_train,
                           inputs.y_train, inputs.x_val, inputs.y_val,
                           task.seed if count == 1 else member_seed(task.seed, k)) for k in range(count)]
    return _Prepared(task, members, inputs)


def stacking_pays(members: Sequence[Any], num_classes: int, config: Any, probe: int = 4) -> bool:
    """A quick measurement: one epoch of up to ``probe`` members stacked, per member, against one
    member alone (on copies of their encoders; results are unaffected, every training reseeds).
    The stacked probe runs first and so bears any warm-up: a tie goes to one at a time."""
    import copy
    import dataclasses

    from fewlabel.training.finetune import finetune
    from fewlabel.training.stacked import finetune_stacked

    one_epoch = dataclasses.replace(config, max_epochs=1)
    sample = [dataclasses.replace(m, encoder=copy.deepcopy(m.encoder)) for m in members[:probe]]
    t0 = time.perf_counter()
    finetune_stacked(sample, num_classes, one_epoch)
    stacked = (time.perf_counter() - t0) / len(sample)
    m = members[0]
    t0 = time.perf_counter()
    finetune(m.x_train, m.y_train, m.x_val, m.y_val, num_classes, copy.deepcopy(m.encoder), one_epoch,
             seed=m.seed)
    return stacked < 0.8 * (time.perf_counter() - t0)


def _train_stacked(cells: list[CellTask], data: Any, spec: Any, config: Any,
                   measure: bool = False) -> list[CellOutput]:
    import dataclasses

    import numpy as np

    from fewlabel.models.heads import Ensemble
    from fewlabel.pipeline.fit import score_cell
    from fewlabel.training.finetune import summed_fits
    from fewlabel.training.stacked import stack_geometry

    single = dataclasses.replace(config, ensemble=1)  # members train as single models
    outputs: dict[int, CellOutput] = {}
    by_geometry: dict[Any, list[_Prepared]] = {}
    for i, task in enumerate(cells):
        try:
            prepared = _prepare_member(task, data, spec, config)
        except Exception:
            outputs[i] = run_cell(task)
            continue
        by_geometry.setdefault(stack_geometry(prepared.members[0], single), []).append(prepared)
    index = {id(task): i for i, task in enumerate(cells)}
    for cell_group in by_geometry.values():
        # One strategy per stack: its members see the test images the same way (whole or cropped).
        first = cell_group[0].inputs
        x_test = first.x_test if first.x_test is not None else data.test_arrays[0]
        members = [m for p in cell_group for m in p.members]
        t0 = time.perf_counter()
        try:
            stacked = len(members) > 1 and (
                not measure or stacking_pays(members, data.num_classes, single))
            if stacked:
                fitted, probas, train_seconds = _fit_in_chunks(members, data.num_classes, single, x_test,
                                                               bool(config.tta))
        except Exception:
            stacked = False
        if not stacked:  # the reference path, cell by cell
            for p in cell_group:
                outputs[index[id(p.task)]] = run_cell(p.task)
            continue
        share = (time.perf_counter() - t0) / len(cell_group)
        at = 0
        for p in cell_group:
            i, count = index[id(p.task)], len(p.members)
            own, own_proba = fitted[at:at + count], probas[at:at + count]
            at += count
            try:
                if count == 1:
                    (classifier, fit), proba = own[0], own_proba[0]
                else:  # as finetune's ensemble: probabilities averaged, the first member's history
                    classifier = Ensemble([c for c, _ in own]).eval()
                    fit = summed_fits(own[0][1], [f for _, f in own])
                    proba = np.mean(own_proba, axis=0, dtype=np.float64).astype(np.float32)
                result = score_cell(data, p.inputs, classifier, fit, config, p.task.seed,
                                    train_seconds / len(cell_group), proba=proba)
                output = ok_output(p.task, data, result, base_row(p.task))
                output.row["cell_seconds"] = share
                output.row["extra"] = {**(output.row.get("extra") or {}), "stacked_with": len(cell_group)}
                outputs[i] = output
                classifier.to("cpu")  # its files are written: the device's memory goes to the next
            except Exception as exc:
                outputs[i] = _failed(p.task, exc, t0)
    return [outputs[i] for i in range(len(cells))]


def _fit_in_chunks(members: list[Any], num_classes: int, config: Any, x_test: Any,
                   tta: bool) -> tuple[list[Any], list[Any], float]:
    """``finetune_stacked`` + ``predict_proba_stacked`` over all members, and the seconds spent
    training, each through ``_halving`` (a member starts again from its own encoder and seed, so a
    retried stack gives the same numbers; prediction is split without training again)."""
    from fewlabel.training import stacked as stacked_training
    from fewlabel.training.stacked_module import predict_proba_stacked

    t0 = time.perf_counter()
    fitted = _halving(members, lambda chunk: stacked_training.finetune_stacked(chunk, num_classes, config))
    seconds = time.perf_counter() - t0
    probas = _halving([c for c, _ in fitted],
                      lambda chunk: predict_proba_stacked(chunk, x_test, device=config.device, tta=tta))
    return fitted, probas, seconds


def _halving(items: list[Any], run: Any) -> list[Any]:
    """``run`` over ``items`` in chunks, all at once first: a chunk the device has no memory for is
    split in halves, down to one item (then the error stands). One result per item, in order."""
    import torch

    out: list[Any] = []
    size, at = len(items), 0
    while at < len(items):
        chunk = items[at:at + size]
        got = None
        try:
            got = run(chunk)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
        if got is None:
            _release_memory()  # here, once the error's traceback is gone
            continue
        out.extend(got)
        at += len(chunk)
    return out


def _release_memory() -> None:
    """After an out-of-memory error, once its traceback is gone: give the cached blocks back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _failed(task: CellTask, exc: BaseException, t0: float) -> CellOutput:
    row = base_row(task)
    row.update(status="failed", error=one_line(exc), cell_seconds=time.perf_counter() - t0)
    return CellOutput(row=row)
