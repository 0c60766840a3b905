"""Supervised fine-tuning of an encoder + a new head on a few labelled images (optionally with the
unlabelled pool, FixMatch-style). Uses THE loop (``loop.fit``); the recipe and its step live in
``recipe`` (re-exported here), FixMatch in ``semi``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.encoder import Encoder
from fewlabel.models.heads import Classifier, Ensemble
from fewlabel.settings import select_device
from fewlabel.training.batches import TensorBatches, bounded_batch_size, sequential_batches
from fewlabel.training.compute import autocast, channels_last_on, fast_layout, resolved, usable_precision
from fewlabel.training.loop import FitResult, LoopConfig, fit
from fewlabel.training.probe import frozen_features, probe_head
from fewlabel.training.recipe import (
    AUGMENT_KINDS,
    BN_MODES,
    SCHEDULES,
    ClassifierTask,
    FinetuneConfig,
    SnapshotTask,
    check_config,
    class_weights,
    dihedral_views,
    encoder_blocks,
    lr_factor,
    make_optimizer,
)
from fewlabel.training.semi import FixMatchTask

__all__ = [
    "AUGMENT_KINDS",
    "BN_MODES",
    "SCHEDULES",
    "ClassifierTask",
    "FinetuneConfig",
    "check_config",
    "class_weights",
    "dihedral_views",
    "encoder_blocks",
    "finetune",
    "frozen_features",
    "lr_factor",
    "make_optimizer",
    "predict_proba",
    "probe_head",
]


def finetune(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
    num_classes: int, encoder: Encoder, config: FinetuneConfig | None = None, *, seed: int = 0,
    x_unlabelled: np.ndarray | None = None, checkpoint_path: str | None = None, desc: str = "fine-tune",
) -> tuple[Classifier | Ensemble, FitResult]:
    """Fine-tune ``encoder`` with a fresh linear head on (x_train, y_train).

    With a validation set: best epoch by validation loss, early stopping after ``patience``.
    Without one (a handful of labels): a fixed number of epochs, as in Schouten et al.'s smallest sizes.
    With ``config.semi`` and ``x_unlabelled``: FixMatch on the pool beside the labels.
    With ``config.ensemble`` > 1: that many members, each fine-tuned as above from a copy of
    ``encoder`` with its own seed (the first with ``seed``), returned as one ``Ensemble``.
    With ``config.pseudo_per_label`` > 0 and ``x_unlabelled``: self-training (``_self_train``).
    """
    config = config or FinetuneConfig()
    if config.max_epochs < 1:  # 0 epochs would evaluate (and save) the untrained head as if trained
        raise FewlabelError(f"max_epochs must be at least 1 (got {config.max_epochs})")
    check_config(config)
    config = resolved(config)
    has_val = x_val is not None and y_val is not None and len(x_val) > 0
    if (config.ensemble or 1) > 1 and snapshots_apply(config, has_val):
        return _finetune_snapshots(x_train, y_train, num_classes, encoder, config, seed=seed,
                                   checkpoint_path=checkpoint_path, desc=desc)
    if (config.ensemble or 1) > 1:
        return _finetune_ensemble(x_train, y_train, x_val, y_val, num_classes, encoder, config, seed=seed,
                                  x_unlabelled=x_unlabelled, checkpoint_path=checkpoint_path)
    if config.pseudo_per_label > 0 and x_unlabelled is not None and len(x_unlabelled):
        return _self_train(x_train, y_train, x_val, y_val, num_classes, encoder, config, seed=seed,
                           x_unlabelled=x_unlabelled, checkpoint_path=checkpoint_path)
    classifier, weights = _new_classifier(encoder, y_train, num_classes, config, seed)
    if config.probe_init or config.probe_only_max_per_class > 0:
        probe_head(classifier, x_train, y_train, weights, config, seed=seed)
        counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=num_classes)
        if counts[counts > 0].max(initial=0) <= config.probe_only_max_per_class:
            classifier.eval()
            return classifier, FitResult(stopped_because="linear_probe")
    if config.semi and x_unlabelled is not None and len(x_unlabelled):
        task: ClassifierTask = FixMatchTask(classifier, config, weights, x_unlabelled, seed=seed)
    else:
        task = ClassifierTask(classifier, config, weights)
    if select_device(config.device).type == "cuda":
        # A few-label set fits on any GPU: kept there, a step gathers its batch without a host copy.
        dev = select_device(config.device)
        x_train, y_train = _on(x_train, dev, torch.float32), _on(y_train, dev, torch.long)
        if has_val:
            x_val, y_val = _on(x_val, dev, torch.float32), _on(y_val, dev, torch.long)
    train_batches = TensorBatches(x_train, y_train, config.batch_size, seed=seed,
                                  min_steps=config.min_steps_per_epoch)
    val_batches = (sequential_batches(x_val, y_val, bounded_batch_size(x_val.shape[1:], 64)) if has_val
                   else None)
    epochs = fixed_epochs(config, has_val)
    task.total_steps = len(train_batches) * epochs
    task.warmup_steps = int(round(config.warmup_epochs * len(train_batches)))
    result = fit(task, train_batches, val_batches, _loop_config(config, epochs, has_val, seed, desc,
                                                                checkpoint_path, x_train))
    classifier.eval()
    return classifier, result


def fixed_epochs(config: FinetuneConfig, has_val: bool) -> int:
    """Epochs of a fine-tune: ``max_epochs`` with validation (early stopping may end it sooner), else
    ``epochs_without_validation`` when set."""
    return config.max_epochs if has_val or config.epochs_without_validation is None else (
        config.epochs_without_validation)


def _new_classifier(encoder: Encoder, y_train: np.ndarray, num_classes: int, config: FinetuneConfig,
                    seed: int) -> tuple[Classifier, torch.Tensor]:
    """A fresh head on ``encoder`` (its weights depend on the seed only) and the loss's class weights."""
    torch.manual_seed(seed)
    classifier = Classifier(encoder, num_classes, dropout=config.dropout)
    classifier.tta = bool(config.tta)  # read by predict_proba
    classifier.precision = config.precision  # so are the precision and layout it was trained in
    classifier.channels_last = config.channels_last
    weights = class_weights(y_train, num_classes) if config.balance == "loss_weights" else torch.ones(
        num_classes)
    return classifier, weights


def _loop_config(config: FinetuneConfig, epochs: int, has_val: bool, seed: int, desc: str,
                 checkpoint_path: str | None, x_train: Any) -> LoopConfig:
    spatial_2d = len(np.shape(x_train)) == 4
    return LoopConfig(
        max_epochs=epochs, patience=config.patience if has_val else None, seed=seed,
        device=config.device, amp=config.amp, precision=config.precision,
        channels_last=bool(config.channels_last) and spatial_2d, progress=config.progress, desc=desc,
        time_budget_s=config.time_budget_s, checkpoint_path=checkpoint_path)


def snapshots_apply(config: FinetuneConfig, has_val: bool) -> bool:
    """Whether an ensemble is taken as snapshots of one run: asked for (``ensemble_mode``), on a fixed
    schedule (no validation split to stop early on) and plain supervised fine-tuning (FixMatch,
    pseudo-labels and the linear probe train their members independently)."""
    return (config.ensemble_mode == "snapshot" and not has_val and not config.semi
            and config.pseudo_per_label <= 0 and not config.probe_init
            and config.probe_only_max_per_class <= 0 and not config.freeze_encoder)


def _finetune_snapshots(
    x_train: np.ndarray, y_train: np.ndarray, num_classes: int, encoder: Encoder, config: FinetuneConfig,
    *, seed: int, checkpoint_path: str | None, desc: str,
) -> tuple[Ensemble, FitResult]:
    """``config.ensemble`` members as the snapshots of one run (``recipe.SnapshotTask``): the
    fine-tune's own schedule, then a short restarted cycle per further member."""
    members, epochs = int(config.ensemble or 1), fixed_epochs(config, False)
    classifier, weights = _new_classifier(encoder, y_train, num_classes, config, seed)
    if select_device(config.device).type == "cuda":
        dev = select_device(config.device)
        x_train, y_train = _on(x_train, dev, torch.float32), _on(y_train, dev, torch.long)
    train_batches = TensorBatches(x_train, y_train, config.batch_size, seed=seed,
                                  min_steps=config.min_steps_per_epoch)
    task = SnapshotTask(classifier, config, weights, members, epochs, len(train_batches))
    epochs = task.epochs_at[-1]  # the fine-tune's schedule, then a short cycle per further member
    task.total_steps = len(train_batches) * epochs
    task.warmup_steps = int(round(config.warmup_epochs * len(train_batches)))
    desc = desc if desc != "fine-tune" else f"fine-tune ({members} snapshots)"
    result = fit(task, train_batches, None, _loop_config(config, epochs, False, seed, desc, checkpoint_path,
                                                         x_train))
    snapshots = task.members()
    for member in snapshots:
        member.tta, member.precision = classifier.tta, classifier.precision
        member.channels_last = classifier.channels_last
    return Ensemble(snapshots).eval(), result


def member_seed(seed: int, member: int) -> int:
    """Member ``member``'s seed: the cell's own for the first, so a one-member ensemble is the cell."""
    return (int(seed) + 1_000_003 * int(member)) % 2**31


def _finetune_ensemble(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
    num_classes: int, encoder: Encoder, config: FinetuneConfig, *, seed: int,
    x_unlabelled: np.ndarray | None, checkpoint_path: str | None,
) -> tuple[Ensemble, FitResult]:
    """``config.ensemble`` members one after another; the first member's history and stopping, the
    members' summed steps, samples and seconds."""
    single = dataclasses.replace(config, ensemble=1)
    start = copy.deepcopy(encoder)  # every member starts from these weights, untouched by the others
    members: list[Classifier] = []
    results: list[FitResult] = []
    for k in range(config.ensemble):
        last = k == config.ensemble - 1
        member, result = finetune(
            x_train, y_train, x_val, y_val, num_classes, start if last else copy.deepcopy(start), single,
            seed=member_seed(seed, k), x_unlabelled=x_unlabelled,
            desc=f"fine-tune member {k + 1}/{config.ensemble}",
            checkpoint_path=None if checkpoint_path is None else f"{checkpoint_path}.member{k}")
        members.append(member)
        results.append(result)
    return Ensemble(members).eval(), summed_fits(results[0], results)


def pseudo_labels(proba: np.ndarray, labelled_counts: np.ndarray, per_label: float,
                  min_probability: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced pseudo-labels: for each class c, ``per_label * labelled_counts[c]`` (halves up)
    pool images predicted c with the highest probability, at least ``min_probability`` (ties by
    position). ``(indices, labels)``.

    Balanced on purpose: the teacher's confident predictions crowd into its easiest classes, and
    taking them by a global threshold alone would teach the student that imbalance. The floor keeps
    a class the pool barely holds from being filled with the teacher's guesses."""
    proba = np.asarray(proba, dtype=np.float64)
    predicted = np.where(proba.max(1) >= min_probability, proba.argmax(1), -1)
    picked: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for c, count in enumerate(np.asarray(labelled_counts)):
        want = int(math.floor(per_label * int(count) + 0.5))  # halves up (round() goes to even)
        candidates = np.flatnonzero(predicted == c)
        if want <= 0 or not len(candidates):
            continue
        best = candidates[np.argsort(-proba[candidates, c], kind="stable")[:want]]
        picked.append(best)
        labels.append(np.full(len(best), c, dtype=np.int64))
    if not picked:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(picked), np.concatenate(labels)


def _self_train(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
    num_classes: int, encoder: Encoder, config: FinetuneConfig, *, seed: int, x_unlabelled: np.ndarray,
    checkpoint_path: str | None,
) -> tuple[Classifier, FitResult]:
    """Self-training, one round: the teacher (the recipe on the labels) scores the pool; its
    class-balanced most confident predictions (``pseudo_labels``) join the labels, and the student is
    fine-tuned from the same starting weights and seed. Validation, when there is one, stays the
    labelled images only. The student's history and stopping, both fits' summed work."""
    single = dataclasses.replace(config, pseudo_per_label=0.0)
    start = copy.deepcopy(encoder)
    teacher, first = finetune(x_train, y_train, x_val, y_val, num_classes, copy.deepcopy(start), single,
                              seed=seed, checkpoint_path=None if checkpoint_path is None else
                              f"{checkpoint_path}.teacher")
    proba = predict_proba(teacher, x_unlabelled, device=config.device, tta=False)
    del teacher
    y_train = np.asarray(y_train, dtype=np.int64)
    counts = np.bincount(y_train, minlength=num_classes)
    picks, labels = pseudo_labels(proba, counts, config.pseudo_per_label, config.pseudo_min_probability)
    pool = x_unlabelled[picks.tolist()] if isinstance(x_unlabelled, torch.Tensor) else np.asarray(
        x_unlabelled)[picks]
    x_student = np.concatenate([np.asarray(x_train, dtype=np.float32), np.asarray(pool, dtype=np.float32)])
    student, result = finetune(x_student, np.concatenate([y_train, labels]), x_val, y_val, num_classes, start,
                               single, seed=seed, checkpoint_path=checkpoint_path)
    return student, summed_fits(result, [first, result])


def summed_fits(shown: FitResult, fits: list[FitResult]) -> FitResult:
    """``shown``'s history and stopping, with the steps, samples and seconds of all ``fits``."""
    return dataclasses.replace(
        shown, steps=sum(r.steps for r in fits), seconds=sum(r.seconds for r in fits),
        samples_seen=sum(r.samples_seen for r in fits), resumed=any(r.resumed for r in fits))


def _layout(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Inference batches on a CPU go channels-last unless the model was trained without (faster there;
    the same numbers up to rounding)."""
    return fast_layout(x) if channels_last and channels_last_on(device) else x


def _on(array: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(array, dtype=dtype).to(device)


@torch.no_grad()
def predict_proba(classifier: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 64,
                  device: str | torch.device = "auto", tta: bool | None = None,
                  precision: str | None = None) -> np.ndarray:
    """Softmax probabilities (N, K) in eval mode, float32, on CPU.

    ``tta``: average the probabilities over the 8 flips / quarter turns; None = the classifier's own
    setting (``classifier.tta``, set by ``finetune``). ``precision``: what the model was trained at
    (None: ``classifier.precision``), used where this device computes it natively, else fp32
    (``compute.usable_precision``). Batches are capped by ``INFERENCE_VOXELS``, so a test set of whole
    volumes never passes through the network at once."""
    dev = select_device(device) if isinstance(device, str) else device
    classifier.eval().to(dev)
    tta = bool(getattr(classifier, "tta", False)) if tta is None else tta
    precision = usable_precision(getattr(classifier, "precision", None) if precision is None else precision,
                                 dev)
    layout = getattr(classifier, "channels_last", None) is not False
    out = []
    for xb in sequential_batches(x, None, bounded_batch_size(x.shape[1:], batch_size)):
        xb = xb.to(dev)
        views = dihedral_views(xb) if tta else [xb]
        with autocast(dev, precision):
            probs = torch.stack([torch.softmax(classifier(_layout(v, dev, layout)).float(), dim=1)
                                 for v in views]).mean(0)
        out.append(probs.cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)
