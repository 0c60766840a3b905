"""Many small fine-tunings at once: K classifiers of one architecture and one recipe trained as ONE
stacked module (``torch.func``: ``stack_module_state`` + ``functional_call`` + ``vmap``).

Why: a few-label fine-tuning step is a handful of tiny kernels, so on a GPU one model leaves the device
idle (launch-bound); K stacked models cost about as much per step as one. On a small CPU the convs are
already compute-bound and stacking gains nothing, so the caller decides (``experiments.stacking``).

Each model keeps everything that makes it itself, so it ends where ``finetune.finetune`` would have
ended for the same seed (a CPU test checks it):

* its own labelled images, batch order (``TensorBatches`` with its seed) and class weights;
* its own random stream: augmentation parameters and dropout masks come from a per-model copy of
  torch's CPU generator, seeded as ``loop.fit`` seeds the global one;
* its own BatchNorm statistics (stacked buffers, updated in place under ``vmap``);
* its own validation, early stopping and best-epoch restore (device-side best snapshots).

On CUDA the dropout masks come from each model's CPU stream while one-at-a-time training draws them
on the GPU: the same statistics, not the same draws, so there the two agree in distribution (and AMP
rounds besides), not number for number.

Only recipes this module implements run stacked: ``unstackable_reason`` lists what it refuses, and a
fine-tuning option it does not know (a new field of ``FinetuneConfig``), set to anything but its
default, makes a recipe unstackable until someone teaches this module its meaning.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.encoder import Encoder
from fewlabel.models.heads import Classifier
from fewlabel.settings import select_device
from fewlabel.training.batches import TensorBatches
from fewlabel.training.compute import resolve_precision
from fewlabel.training.finetune import FinetuneConfig, class_weights, snapshots_apply
from fewlabel.training.loop import FitResult, is_improvement
from fewlabel.training.recipe import finetune_augment
from fewlabel.training.stacked_module import StackedModule

# Every FinetuneConfig field whose meaning this module implements (or that does not touch training).
KNOWN_FIELDS = frozenset({
    "max_epochs", "batch_size", "min_steps_per_epoch", "lr", "encoder_lr", "weight_decay", "patience",
    "dropout", "label_smoothing", "augment", "balance", "freeze_encoder", "time_budget_s", "device",
    "amp", "progress", "semi", "semi_threshold", "semi_mu", "semi_weight", "extra", "explicit",
    # prediction only (classifier.tta), the data's split (the caller's), the fixed schedule without
    # validation, and members (stacked as members by the caller: ``finetune.member_seed``)
    "tta", "hold_out", "epochs_without_validation", "ensemble",
    # autocast as the loop does (fp16 refused below), the layout (CPU inference only), the members' kind
    "precision", "channels_last", "ensemble_mode",
})
VAL_CHUNK = 64  # validation batch, as finetune's sequential_batches


def unstackable_reason(config: FinetuneConfig) -> str | None:
    """Why ``config`` cannot train stacked, or None when it can. An explicit list, so a new recipe
    option never runs stacked with other semantics than the one-at-a-time loop."""
    # A field this path does not know is fine at its default (the recipe it implements); set to
    # anything else, the one-at-a-time loop is the only one that knows what it means.
    defaults = FinetuneConfig().to_dict()
    unknown = sorted(k for k, v in config.to_dict().items() if k not in KNOWN_FIELDS and v != defaults.get(k))
    if unknown:
        return f"fine-tuning options the stacked path does not implement: {', '.join(unknown)}"
    if config.semi:
        return "semi-supervised (FixMatch) fine-tuning"
    if (config.ensemble or 1) > 1 and snapshots_apply(config, has_val=False):
        return "snapshot ensemble members (one run's cyclic schedule, not members side by side)"
    device = select_device(config.device)
    precision = resolve_precision(config.precision, device, config.amp)
    if precision == "fp16":
        # One GradScaler for the stack: one member's overflow would skip every member's step.
        return "fp16 loss scaling (one scale for all members); bf16 or fp32 stack"
    if device.type != "cuda" and precision != "fp32":
        return f"{precision} autocast on a CPU (the stacked path autocasts on CUDA only)"
    if config.freeze_encoder:
        return "a frozen encoder (linear probe)"
    if config.time_budget_s is not None:
        return "a per-cell time budget"
    if config.extra:
        return "extra fine-tuning options"
    if config.augment not in ("none", "weak", "strong", "dihedral"):
        return f"augmentation {config.augment!r}"
    if config.balance not in ("loss_weights", "none"):
        return f"balance {config.balance!r}"
    return None


def unstackable_model_reason(classifier: nn.Module) -> str | None:
    """Why this classifier's structure cannot be stacked (random layers inside the encoder, another
    head), or None."""
    head = getattr(classifier, "head", None)
    if not (isinstance(head, nn.Sequential) and len(head) == 2 and isinstance(head[0], nn.Dropout)
            and isinstance(head[1], nn.Linear)):
        return "a head other than Dropout -> Linear"
    for name, module in classifier.encoder.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"random layer {name} inside the encoder"
    return None


@dataclass
class StackMember:
    """One model of a stack: its encoder (built and seeded as for one-at-a-time) and its data."""

    encoder: Encoder
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    seed: int

    @property
    def has_val(self) -> bool:
        return self.x_val is not None and self.y_val is not None and len(self.x_val) > 0


def stack_geometry(member: StackMember, config: FinetuneConfig) -> tuple[Any, ...]:
    """Members with equal geometry can share a stack: batch size, steps per epoch, validation or not,
    image shape. (Validation sets may differ in size: they are padded and masked.)"""
    n = len(member.x_train)
    batch = TensorBatches(np.zeros((n, 1), np.float32), None, config.batch_size, seed=0,
                          min_steps=config.min_steps_per_epoch)
    return (batch.batch_size, batch.steps_per_epoch, member.has_val, tuple(np.shape(member.x_train)[1:]))


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-model ``F.cross_entropy(logits[k], y[k], weight=weights[k], label_smoothing=...)`` for
    logits (K, B, C), y (K, B), weights (K, C): (K,) losses in one set of kernels."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    w_y = torch.gather(weights, 1, y)  # (K, B)
    nll = -torch.gather(logp, 2, y.unsqueeze(-1)).squeeze(-1)
    denom = w_y.sum(1)
    loss = (w_y * nll).sum(1) / denom
    if label_smoothing > 0:
        smooth = -(logp * weights.unsqueeze(1)).sum(-1).sum(1) / denom
        loss = (1 - label_smoothing) * loss + label_smoothing / logits.shape[-1] * smooth
    return loss


def _combine_spatial(parts: list[Any]) -> Any:
    from fewlabel.data.augment import SpatialTransform

    thetas = [p.theta for p in parts]
    theta = None if any(t is None for t in thetas) else torch.cat(thetas)
    return SpatialTransform(torch.cat([p.flip_h for p in parts]), torch.cat([p.flip_w for p in parts]),
                    torch.cat([p.rot90 for p in parts]), theta)


def _pad_stack(arrays: list[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, max_n, ...) zero-padded tensor and its (K, max_n) validity mask."""
    longest = max(len(a) for a in arrays)
    out = torch.zeros((len(arrays), longest) + tuple(np.shape(arrays[0])[1:]), dtype=dtype)
    mask = torch.zeros((len(arrays), longest), dtype=torch.bool)
    for k, a in enumerate(arrays):
        out[k, :len(a)] = torch.as_tensor(np.asarray(a)).to(dtype)
        mask[k, :len(a)] = True
    return out, mask


def finetune_stacked(members: Sequence[StackMember], num_classes: int,
                     config: FinetuneConfig | None = None) -> list[tuple[Classifier, FitResult]]:
    """Fine-tune every member at once; returns what ``finetune`` returns, per member, in order.

    All members must share one ``stack_geometry`` and the encoders one architecture. ``seconds`` of
    each FitResult is the stack's wall time divided by the number of members (its share).
    """
    config = config or FinetuneConfig()
    reason = unstackable_reason(config)
    if reason:
        raise ValueError(f"cannot train stacked: {reason}")
    if config.max_epochs < 1:
        raise FewlabelError(f"max_epochs must be at least 1 (got {config.max_epochs})")
    if (config.ensemble or 1) > 1:
        raise ValueError("an ensemble is stacked as its members: one StackMember per member, seeded "
                         "by finetune.member_seed, and a config with ensemble=1")
    if not members:
        return []
    geometries = {stack_geometry(m, config) for m in members}
    if len(geometries) != 1:
        raise ValueError(f"members of one stack must share batch geometry; got {sorted(geometries)}")
    batch_size, steps_per_epoch, has_val, _ = geometries.pop()
    torch.set_flush_denormal(True)  # as loop.fit: denormals slow x86 CPUs, change no result
    device = select_device(config.device)
    K = len(members)

    classifiers, weights, streams, rng = [], [], [], []
    for m in members:
        torch.manual_seed(m.seed)  # the head's initial weights depend on the seed only (as finetune)
        # a copy: the member's encoder stays its starting point (a stack retried after running out of
        # memory starts from it again)
        clf = Classifier(copy.deepcopy(m.encoder), num_classes, dropout=config.dropout)
        why = unstackable_model_reason(clf)
        if why:
            raise ValueError(f"cannot train stacked: {why}")
        classifiers.append(clf)
        weights.append(class_weights(m.y_train, num_classes) if config.balance == "loss_weights"
                       else torch.ones(num_classes))
        streams.append(TensorBatches(m.x_train, m.y_train, config.batch_size, seed=m.seed,
                                     min_steps=config.min_steps_per_epoch))
        torch.manual_seed(m.seed)  # what loop.fit's seed_everything gives the one-at-a-time steps
        rng.append(torch.get_rng_state())
    spatial_dims = classifiers[0].encoder.spatial_dims
    stack = StackedModule(classifiers, device)
    enc_lr = config.encoder_lr if config.encoder_lr is not None else config.lr
    optimizer = torch.optim.AdamW(
        [{"params": [stack.params[n] for n in stack.head_params], "lr": config.lr},
         {"params": [stack.params[n] for n in stack.enc_params], "lr": enc_lr}],
        weight_decay=config.weight_decay)
    precision = resolve_precision(config.precision, device, config.amp) if device.type == "cuda" else "fp32"
    use_amp = precision != "fp32"
    amp_dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    # One scaler for the stack, updated once per step (fp16 only; bf16 needs none).
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    pin = device.type == "cuda"

    # All training images on the device once; a step gathers its (K, B) batch with one index.
    offsets = np.cumsum([0] + [len(m.x_train) for m in members])[:-1]
    x_all = torch.cat([s.x for s in streams])
    y_all = torch.cat([s.y for s in streams])  # type: ignore[misc]
    x_all, y_all = x_all.to(device), y_all.to(device)
    w_stack = torch.stack(weights).to(device)
    if has_val:
        xv, vmask = _pad_stack([m.x_val for m in members], torch.float32)  # type: ignore[misc]
        yv, _ = _pad_stack([np.asarray(m.y_val, dtype=np.int64) for m in members], torch.long)  # type: ignore[misc]
        xv, yv, vmask = xv.to(device), yv.to(device), vmask.to(device)
        n_val = vmask.sum(1).double()

    augment = finetune_augment(config.augment, spatial_dims)
    augment = augment if augment is not None and augment.active else None
    # as finetune: without validation a fixed number of epochs (epochs_without_validation, if set)
    epochs = config.max_epochs if has_val or config.epochs_without_validation is None else (
        config.epochs_without_validation)
    p_drop = float(config.dropout)
    n_features = classifiers[0].encoder.out_features

    results = [FitResult() for _ in members]
    active = np.ones(K, dtype=bool)
    since_best = np.zeros(K, dtype=np.int64)
    final: list[dict[str, torch.Tensor] | None] = [None] * K
    best = {n: t.detach().clone() for n, t in {**stack.params, **stack.buffers}.items()} if has_val else None
    has_best = np.zeros(K, dtype=bool)
    steps = 0
    t0 = time.perf_counter()
    sample_shape = (batch_size,) + tuple(x_all.shape[1:])

    for epoch in range(epochs):
        loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
        epoch_orders = [s.index_batches() for s in streams]
        for _ in range(steps_per_epoch):
            idx = torch.stack([next(o) for o in epoch_orders]) + torch.as_tensor(offsets).view(K, 1)
            if pin:
                idx = idx.pin_memory()
            idx = idx.to(device, non_blocking=True).view(-1)
            xb, yb = x_all[idx], y_all[idx].view(K, batch_size)
            spatial, noises, strong_parts = [], [], []
            for k in range(K):  # each model's own random stream, in the order the single loop draws
                torch.set_rng_state(rng[k])
                if augment is not None:
                    if config.augment == "strong":
                        strong_parts.append(augment(xb[k * batch_size:(k + 1) * batch_size]))
                    else:
                        spatial.append(augment.sample_spatial(torch.Size(sample_shape)))
                if p_drop > 0:
                    noise = torch.empty(batch_size, n_features).bernoulli_(1 - p_drop)
                    noises.append(noise.div_(1 - p_drop))
                rng[k] = torch.get_rng_state()
            with torch.no_grad():
                if strong_parts:
                    xb = torch.cat(strong_parts)
                elif spatial:
                    xb = augment.apply_spatial(xb, _combine_spatial(spatial))  # type: ignore[union-attr]
            xb = xb.view((K,) + sample_shape)
            noise_t = None
            if noises:
                noise_t = torch.stack(noises)
                noise_t = (noise_t.pin_memory() if pin else noise_t).to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=amp_dtype) if use_amp else _null():
                logits = stack.forward(xb, noise_t, train=True)
            losses = weighted_cross_entropy(logits, yb, w_stack, config.label_smoothing)
            scaler.scale(losses.sum()).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += losses.detach().double()  # no per-step host sync: read once per epoch
            steps += 1
        epoch_loss = (loss_sum / steps_per_epoch).cpu().numpy()
        val_loss = val_acc = None
        if has_val:
            with torch.no_grad(), (torch.autocast(device_type="cuda", dtype=amp_dtype) if use_amp
                                   else _null()):
                total = torch.zeros(K, dtype=torch.float64, device=device)
                correct = torch.zeros(K, dtype=torch.float64, device=device)
                for i in range(0, xv.shape[1], VAL_CHUNK):
                    lg = stack.forward(xv[:, i:i + VAL_CHUNK], None, train=False).float()
                    yc, mc = yv[:, i:i + VAL_CHUNK], vmask[:, i:i + VAL_CHUNK]
                    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), yc.reshape(-1),
                                         reduction="none").view(yc.shape)
                    total += (ce * mc).sum(1).double()
                    correct += ((lg.argmax(-1) == yc) & mc).sum(1).double()
                val_loss = (total / n_val.clamp(min=1)).cpu().numpy()
                val_acc = (correct / n_val.clamp(min=1)).cpu().numpy()
        improved = []
        for k in np.flatnonzero(active):
            res = results[k]
            row = {"epoch": float(epoch), "step": float(steps), "loss": float(epoch_loss[k])}
            reason = None
            if has_val:
                row.update(val_loss=float(val_loss[k]), val_accuracy=float(val_acc[k]))  # type: ignore[index]
                score = float(val_loss[k])  # type: ignore[index]
                if is_improvement(score, res.best_score, "min"):
                    res.best_score, res.best_epoch = score, epoch
                    improved.append(k)
                    since_best[k] = 0
                else:
                    since_best[k] += 1
                    if config.patience is not None and since_best[k] >= config.patience:
                        reason = "early_stopping"
            res.history.append(row)
            if epoch + 1 >= epochs:
                reason = reason or "max_epochs"
            if reason:
                res.stopped_because, res.epochs, res.steps = reason, epoch + 1, steps
                res.samples_seen = steps * batch_size
                active[k] = False
        if improved and best is not None:
            sel = torch.as_tensor(improved, device=device)
            for n, t in {**stack.params, **stack.buffers}.items():
                best[n].index_copy_(0, sel, t.detach().index_select(0, sel))
            has_best[improved] = True
        for k in range(K):  # just stopped: keep its final weights (best epoch when validated)
            if not active[k] and final[k] is None:
                final[k] = stack.member_state(int(k), best if has_best[k] else None)
        if not active.any():
            break

    seconds = time.perf_counter() - t0
    out = []
    for k, clf in enumerate(classifiers):
        state = final[k]
        assert state is not None
        clf.load_state_dict(state)
        clf.to(device).eval()
        clf.tta = bool(config.tta)  # read by predict_proba, as finetune sets it
        results[k].seconds = seconds / K
        out.append((clf, results[k]))
    return out


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()
