"""THE training loop: device, mixed precision, seeding, early stopping, best-epoch restore,
checkpoint/resume, a time budget and a progress bar. Every preparation (GAN, U-Net, SSL) and every
fine-tuning goes through ``fit``; what differs between them lives in a ``Task``.

A ``Task`` owns its modules and optimisers and says what one step does with one batch. The loop
owns everything around the step. Steps get the loop as ``ctx`` for ``ctx.autocast()``,
``ctx.backward_step(loss, optimizer)`` and ``ctx.device``; they hold no global state, so a step is a
function of (modules, batch).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.fileio import atomic_path
from fewlabel.settings import select_device
from fewlabel.training.compute import autocast, fast_layout, module_fast_layout, resolve_precision
from fewlabel.training.heap import reuse_freed_memory
from fewlabel.training.heartbeat import Heartbeat, duration, progress_mode, time_left


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): the same seed gives the same weights on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Task:
    """What is trained and how one step works. Subclasses override the methods below.

    ``monitor``/``mode``: the validation metric that picks the best epoch and drives early stopping.
    """

    monitor: str = "val_loss"
    mode: str = "min"

    def modules(self) -> nn.Module:
        """Everything with parameters or buffers; moved to the device, checkpointed, restored."""
        raise NotImplementedError

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Created once (after the modules are on the device) and reused."""
        raise NotImplementedError

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float | torch.Tensor]:
        """Forward, ``ctx.backward_step`` for each optimiser, return the logged values: floats or
        detached 0-d tensors (tensors are read once per epoch, so a GPU step never waits for the host)."""
        raise NotImplementedError

    def validate(self, batches: Iterable[Any], ctx: Loop) -> dict[str, float]:
        """Metrics on the validation batches; must contain ``monitor`` when validation is used."""
        return {}

    def on_epoch_end(self, epoch: int, ctx: Loop) -> None:
        """Hook for side outputs (e.g. a GAN's sample grid)."""

    def reseed(self, seed: int) -> None:
        """Restart the task's own random streams (its augmentation generator) from ``seed``. ``fit``
        calls it on resuming from a checkpoint, when it reseeds torch's global generator too."""


@dataclass
class LoopConfig:
    max_epochs: int = 100
    max_steps: int | None = None  # step budget (pretraining); None = epochs only
    time_budget_s: float | None = None  # stop cleanly after this many seconds
    patience: int | None = 20  # epochs without improvement before stopping; None = never
    min_epochs: int = 1
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, used on CUDA only (when ``precision`` is None)
    # None: autocast on CUDA only (as ``amp`` says); else ``compute.PRECISIONS``, on any device.
    precision: str | None = None
    channels_last: bool = False  # 2D batches and weights channels-last (``compute.fast_layout``)
    grad_clip: float | None = None
    progress: bool | None = None  # None: a bar on a terminal, a plain line every line_every_s elsewhere
    line_every_s: float | None = None  # None: heartbeat.LINE_EVERY_S
    desc: str = "train"
    checkpoint_path: str | None = None  # where to save/resume; None = no checkpoints
    checkpoint_every_s: float = 60.0


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    samples_seen: int = 0
    stopped_because: str = "max_epochs"
    resumed: bool = False

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.seconds if self.seconds > 0 else float("nan")


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size_of(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_size_of(next(iter(batch.values())))
    return 0


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda" and batch.device.type == "cpu":
            # A copy from pageable memory blocks the host; from pinned memory it overlaps the GPU's work.
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Loop:
    """The run-time context a step sees. Built by ``fit``; not meant to be made by hand."""

    def __init__(self, config: LoopConfig) -> None:
        self.config = config
        self.device = select_device(config.device)
        # precision None is the preparations' rule: mixed precision on CUDA only
        cpu_rule = config.precision is None and self.device.type != "cuda"
        self.precision = precision = resolve_precision("fp32" if cpu_rule else config.precision or "auto",
                                                       self.device, config.amp)
        self.use_amp = precision != "fp32"
        # bf16 needs no loss scaling; fp16 (GPUs without bf16) needs a GradScaler.
        self.amp_dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.step = 0
        self.epoch = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory layout the modules were put in (``LoopConfig.channels_last``)."""
        return fast_layout(x) if self.config.channels_last else x

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      parameters: Iterable[torch.Tensor] | None = None, *,
                      update_scaler: bool = True) -> None:
        """Backward, optional gradient clipping, optimiser step, zero the gradients.

        A step with several optimisers (a GAN) passes ``update_scaler=False`` to all but the last:
        the fp16 loss scale is updated once per step, as torch's AMP recipe for several optimisers."""
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            params = parameters if parameters is not None else (
                p for group in optimizer.param_groups for p in group["params"])
            torch.nn.utils.clip_grad_norm_(list(params), self.config.grad_clip)
        self.scaler.step(optimizer)
        if update_scaler:
            self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def to_device(self, batch: Any) -> Any:
        return to_device(batch, self.device)


def _progress_line(config: LoopConfig, epoch: int, step: int, total: int | None, first_step: int,
                   logs: dict[str, Any], elapsed: float) -> str:
    """``fine-tune: epoch 3/30, step 120/1200, loss 0.412, 1 min 02 s, ~9 min 18 s left``."""
    steps = f", step {step}/{total}" if total else f", step {step}"
    values = "".join(f", {k} {float(v):.4g}" for k, v in list(logs.items())[:3])
    left = time_left(step - first_step, None if total is None else total - first_step, elapsed)
    # a step budget (pretraining) makes "epochs" bookkeeping rows, not passes over the data
    epochs = "" if config.max_steps is not None else f" epoch {epoch + 1}/{config.max_epochs},"
    return f"{config.desc}:{epochs}{steps[1:]}{values}, {duration(elapsed)}{left}"


def is_improvement(score: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(score)
    return score < best if mode == "min" else score > best


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _mean(values: list[float | torch.Tensor]) -> float:
    """Mean of one epoch's logged values; tensors are stacked and read in one transfer."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return float(np.mean(values))
    floats = [float(v) for v in values if not isinstance(v, torch.Tensor)]
    read = torch.stack([t.reshape(()).double() for t in tensors]).cpu().tolist()
    return float(np.mean(read + floats))


def _cycle(loader: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """(epoch, batch) forever; the epoch counter drives validation and early stopping."""
    epoch = 0
    while True:
        for batch in loader:
            yield epoch, batch
        epoch += 1


def fit(task: Task, train_batches: Iterable[Any], val_batches: Iterable[Any] | None = None,
        config: LoopConfig | None = None) -> FitResult:
    """Train ``task`` on ``train_batches`` (re-iterated every epoch, e.g. a DataLoader).

    With ``val_batches``: validate after every epoch, keep the best epoch's weights by
    ``task.monitor`` and restore them at the end; stop after ``patience`` epochs without improvement.
    Stops also at ``max_epochs``, ``max_steps`` or ``time_budget_s``, whichever comes first.
    With ``checkpoint_path``: state is saved when ``checkpoint_every_s`` has passed (checked after each
    step, at the epoch's start or end) and when the run ends, and a later call with the same path
    resumes from it (optimiser state and counters too).
    """
    # With FEWLABEL_REUSE_MEMORY=1 large freed blocks stay in the process between steps (``heap``).
    with reuse_freed_memory():
        return _fit(task, train_batches, val_batches, config)


def _fit(task: Task, train_batches: Iterable[Any], val_batches: Iterable[Any] | None,
         config: LoopConfig | None) -> FitResult:
    config = config or LoopConfig()
    # Denormal floats (tiny activations of a GAN on smooth phase maps) make x86 CPUs 10-20x slower.
    # Flushing them to zero changes no fine-tuning result.
    torch.set_flush_denormal(True)
    seed_everything(config.seed)
    ctx = Loop(config)
    modules = task.modules().to(ctx.device)
    if config.channels_last:
        module_fast_layout(modules)
    optimizers = task.optimizers()
    result = FitResult()
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
    ckpt = Path(config.checkpoint_path) if config.checkpoint_path else None

    start_epoch = 0
    if ckpt is not None and ckpt.exists():
        # Our own file, written by this function: weights_only load keeps it safe all the same.
        state = torch.load(ckpt, map_location=ctx.device, weights_only=True)
        modules.load_state_dict(state["modules"])
        for opt, opt_state in zip(optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        ctx.step, start_epoch = int(state["step"]), int(state["epoch"])
        result.history = list(state["history"])
        result.best_epoch = state["best_epoch"]
        result.best_score = state["best_score"]
        best_state = state["best_state"]
        since_best = int(state["since_best"])
        fresh = config.seed + 7919 * (start_epoch + 1)  # fresh, reproducible streams
        torch.manual_seed(fresh)
        task.reseed(fresh)
        result.resumed = True

    def save_checkpoint(epoch_done: int) -> None:
        if ckpt is None:
            return
        _atomic_torch_save({
            "modules": modules.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "step": ctx.step, "epoch": epoch_done, "history": result.history,
            "best_epoch": result.best_epoch, "best_score": result.best_score,
            "best_state": best_state, "since_best": since_best,
        }, ckpt)

    try:
        n_per_epoch = len(train_batches)  # type: ignore[arg-type]
    except TypeError:
        n_per_epoch = None
    total = config.max_steps if config.max_steps is not None else (
        n_per_epoch * config.max_epochs if n_per_epoch else None)
    bar = heartbeat = None
    mode = progress_mode(config.progress)
    if mode == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=ctx.step, desc=config.desc, unit="step", leave=False)
    elif mode == "lines":
        heartbeat = Heartbeat(config.line_every_s)
    first_step = ctx.step

    t0 = time.perf_counter()
    last_ckpt = last_postfix = t0
    epoch_logs: dict[str, list[float | torch.Tensor]] = {}
    stop = None
    ending = False  # set just before the last end_epoch call (a step or time budget ran out)
    current_epoch = start_epoch
    if start_epoch >= config.max_epochs:
        stop = "max_epochs"

    def end_epoch(epoch: int) -> str | None:
        nonlocal best_state, since_best, epoch_logs
        ctx.epoch = epoch
        row = {"epoch": float(epoch), "step": float(ctx.step)}
        row.update({k: _mean(v) for k, v in epoch_logs.items()})
        epoch_logs = {}
        reason = None
        if val_batches is not None:
            modules.eval()
            with torch.no_grad(), ctx.autocast():
                metrics = task.validate(val_batches, ctx)
            modules.train()
            row.update(metrics)
            score = float(metrics[task.monitor])
            if is_improvement(score, result.best_score, task.mode):
                result.best_score, result.best_epoch = score, epoch
                best_state = _cpu_state(modules)
                since_best = 0
            else:
                since_best += 1
                if (config.patience is not None and since_best >= config.patience
                        and epoch + 1 >= config.min_epochs):
                    reason = "early_stopping"
        result.history.append(row)
        task.on_epoch_end(epoch, ctx)
        if epoch + 1 >= config.max_epochs:
            reason = reason or "max_epochs"
        nonlocal last_ckpt
        now = time.perf_counter()
        # By time, not every epoch (a few-second epoch would write the file every few seconds); and at
        # the end, so a finished run can be extended by a later call with a larger budget.
        if reason or ending or now - last_ckpt > config.checkpoint_every_s:
            save_checkpoint(epoch + 1)
            last_ckpt = now
        return reason

    modules.train()
    try:
        if stop is None:
            for epoch, batch in _cycle(train_batches):
                epoch += start_epoch
                if epoch != current_epoch:  # the previous epoch just finished
                    stop = end_epoch(current_epoch)
                    if stop:
                        break
                    current_epoch = epoch
                batch = ctx.to_device(batch)
                logs = task.training_step(batch, ctx)
                ctx.step += 1
                result.samples_seen += batch_size_of(batch)
                for k, v in logs.items():
                    value = v.detach() if isinstance(v, torch.Tensor) else float(v)
                    epoch_logs.setdefault(k, []).append(value)
                now = time.perf_counter()
                if bar is not None:
                    bar.update(1)
                    if now - last_postfix > 1.0:  # reading a GPU loss waits for the GPU: once a second
                        bar.set_postfix({k: f"{float(v):.4g}" for k, v in logs.items()}, refresh=False)
                        last_postfix = now
                if heartbeat is not None and heartbeat.due(now):
                    heartbeat.beat(_progress_line(config, current_epoch, ctx.step, total, first_step, logs,
                                                  now - t0), now)
                if ckpt is not None and now - last_ckpt > config.checkpoint_every_s:
                    save_checkpoint(current_epoch)  # mid-epoch: resumes at this epoch's start
                    last_ckpt = now
                if config.max_steps is not None and ctx.step >= config.max_steps:
                    ending = True
                    stop = end_epoch(current_epoch) or "max_steps"
                    stop = "max_steps" if stop == "max_epochs" else stop
                    break
                if config.time_budget_s is not None and now - t0 > config.time_budget_s:
                    ending = True
                    stop = end_epoch(current_epoch) or "time_budget"
                    break
    except KeyboardInterrupt:
        # Ctrl-C: keep what this run did (resumes at the current epoch's start), then stop as asked.
        if ckpt is not None:
            save_checkpoint(current_epoch)
        raise
    if bar is not None:
        bar.close()
    if best_state is not None:
        modules.load_state_dict(best_state)
    result.stopped_because = stop or "max_epochs"
    result.epochs = current_epoch + 1
    result.steps = ctx.step
    result.seconds = time.perf_counter() - t0
    return result
