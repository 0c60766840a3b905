"""The fine-tuning recipe: its settings (``FinetuneConfig``), optimiser, schedule, augmentation and
the training step (``ClassifierTask``). ``finetune`` runs it; ``semi.FixMatchTask`` extends the step.

Recipe levers (all in ``FinetuneConfig``, all off by default so older configs train as before):
``augment="dihedral"`` (the 8 flips / quarter turns, nothing else), ``schedule="cosine"`` with
``warmup_epochs`` (per-step learning rate), ``layer_decay`` (discriminative rates: deeper encoder
blocks learn faster than the first ones), ``bn_mode="eval"`` (BatchNorm statistics frozen: batches of
a few images give noisy ones), ``probe_init`` (linear probe on frozen features, then fine-tune:
Kumar et al. 2022), ``probe_only_max_per_class`` (stop after the probe when labels are that few),
``tta`` (predictions averaged over the 8 flips / quarter turns), ``epochs_without_validation`` and
``hold_out=False`` (every drawn label trains; no validation split, so a fixed schedule) and
``ensemble`` (members with their own seeds, probabilities averaged; ``ensemble_mode="snapshot"``: the
snapshots of one run with a cyclic schedule, ``SnapshotTask``) and ``pseudo_per_label``
(self-training on the unlabelled pool with class-balanced pseudo-labels).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.heads import Classifier
from fewlabel.training.compute import ENSEMBLE_MODES, PRECISIONS
from fewlabel.training.loop import Loop, Task


@dataclass
class FinetuneConfig:
    """How the classifier is fine-tuned. Defaults suit tens of labels on a CPU or one GPU."""

    max_epochs: int = 60
    batch_size: int = 16
    min_steps_per_epoch: int = 8  # tiny labelled sets: an epoch is at least this many steps
    lr: float = 1e-3  # head (and encoder, unless encoder_lr is set)
    encoder_lr: float | None = None  # pretrained encoders: a smaller step keeps what they learnt
    weight_decay: float = 1e-4
    patience: int = 15
    dropout: float = 0.2
    label_smoothing: float = 0.0
    augment: str = "weak"  # "none" | "weak" | "strong" | "dihedral" (8 flips / quarter turns only)
    balance: str = "loss_weights"  # "loss_weights" | "none"
    freeze_encoder: bool = False  # linear probe
    time_budget_s: float | None = None
    device: str = "auto"
    amp: bool = True
    # How the hardware is used (``training.compute``): "auto" is made concrete before a run is hashed.
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" (autocast)
    channels_last: bool | None = None  # 2D batches channels-last; None: on a CPU (layout only, not hashed)
    # How ensemble members are made: "independent" fine-tunes (stacked on a GPU), or "snapshot"s of one
    # run with a cyclic schedule (one run's cost, less diverse members); "auto": independent.
    ensemble_mode: str = "auto"
    progress: bool | None = None
    # FixMatch (semi-supervised) settings; used when semi=True and unlabelled images are given.
    semi: bool = False
    semi_threshold: float = 0.95
    semi_mu: int = 3  # unlabelled images per labelled image in a step
    semi_weight: float = 1.0
    # Recipe levers (see the module docstring); the defaults keep the historical recipe.
    epochs_without_validation: int | None = None  # no validation split: this many epochs (None: max_epochs)
    # False: the validation part of the draw trains too (no early stopping, a fixed schedule). With
    # a few labels per class, one validation image per class picks epochs by noise while costing a
    # fifth of the training labels.
    hold_out: bool = True
    # Members trained on the same labels from the same starting weights with their own seeds (head,
    # augmentation, batch order); their probabilities are averaged. Few labels make one fine-tune's
    # result depend on its seed; the average removes much of that variance at members x the cost.
    ensemble: int | None = None  # None: as the strategy's recipe says (else 1)
    # Self-training: a first fine-tune (the teacher) labels the unlabelled pool; for each class the
    # pool images it most confidently puts there, this many per labelled image of the class, join
    # the labels, and the model is fine-tuned again from the same start. 0: off.
    pseudo_per_label: float = 0.0
    # ... and only images the teacher gives at least this probability (more than all other classes
    # together at 0.5): a class the pool barely holds is not filled with guesses.
    pseudo_min_probability: float = 0.5
    schedule: str = "constant"  # "constant" | "cosine" (per step, over max_epochs)
    warmup_epochs: float = 0.0  # linear warm-up of every learning rate from 0
    layer_decay: float | None = None  # encoder block i of B learns at encoder_lr * decay**(B-1-i)
    bn_mode: str = "train"  # "train" | "eval" (encoder BatchNorm statistics frozen while training)
    probe_init: bool = False  # fit the head on frozen features before fine-tuning (LP-FT)
    probe_only_max_per_class: int = 0  # at most this many labels per class: the probe is the model
    # None: as the strategy's recipe says (else off), so a user's explicit false still wins over it.
    tta: bool | None = None  # average test predictions over the 8 flips / quarter turns
    extra: dict[str, Any] = field(default_factory=dict)
    # Settings the user named (``--set``): a strategy's recipe never replaces them, not even one
    # equal to its default. A value moved off its default is the user's too (``recipe_over``).
    explicit: tuple[str, ...] = ()

    # What a setting left at None means (the strategy's recipe decides; without one, this).
    UNSET_MEANS: ClassVar[dict[str, Any]] = {"ensemble": 1, "tta": False}

    def __post_init__(self) -> None:
        named = self.explicit.split(",") if isinstance(self.explicit, str) else self.explicit
        self.explicit = tuple(sorted({str(k).strip() for k in named or () if str(k).strip()} - {"explicit"}))
        unknown = [k for k in self.explicit if k not in self.__dataclass_fields__]
        if unknown:
            raise FewlabelError(f"explicit names unknown fine-tuning setting(s) {', '.join(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def recipe_over(settings: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (a ``FinetuneConfig``'s dict, perhaps partial) with a strategy's recipe applied:
    the recipe sets each of its keys that the user neither named (``explicit``) nor moved off its
    default, so a user's value is never silently replaced."""
    defaults = FinetuneConfig().to_dict()
    named = set(FinetuneConfig(explicit=settings.get("explicit") or ()).explicit)
    out = dict(settings)
    for key, value in recipe.items():
        if key not in named and out.get(key, defaults.get(key)) == defaults.get(key):
            out[key] = value
    return out


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (scikit-learn's "balanced": mean 1 over the samples), so a rare class
    counts as much as a common one.
    A class absent from ``y`` gets weight 0 (there is nothing to weigh)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(w, dtype=torch.float32)


AUGMENT_KINDS = ("none", "weak", "strong", "dihedral")
SCHEDULES = ("constant", "cosine")
BN_MODES = ("train", "eval")
MAX_ENSEMBLE = 32
MAX_PSEUDO_PER_LABEL = 100.0


def check_config(config: FinetuneConfig) -> None:
    """One-line errors for recipe values that would otherwise fail deep inside training."""
    if config.augment not in AUGMENT_KINDS:
        raise FewlabelError(f"augment must be one of {', '.join(AUGMENT_KINDS)}, not {config.augment!r}")
    if config.schedule not in SCHEDULES:
        raise FewlabelError(f"schedule must be one of {', '.join(SCHEDULES)}, not {config.schedule!r}")
    if config.bn_mode not in BN_MODES:
        raise FewlabelError(f"bn_mode must be one of {', '.join(BN_MODES)}, not {config.bn_mode!r}")
    if config.layer_decay is not None and not 0 < config.layer_decay <= 1:
        raise FewlabelError(f"layer_decay must be in (0, 1], not {config.layer_decay}")
    if config.warmup_epochs < 0:
        raise FewlabelError(f"warmup_epochs must be >= 0, not {config.warmup_epochs}")
    if config.ensemble is not None and not 1 <= config.ensemble <= MAX_ENSEMBLE:
        raise FewlabelError(f"ensemble must be from 1 to {MAX_ENSEMBLE} members, not {config.ensemble}")
    if not 0 <= config.pseudo_per_label <= MAX_PSEUDO_PER_LABEL:
        raise FewlabelError(f"pseudo_per_label must be from 0 to {MAX_PSEUDO_PER_LABEL}, "
                            f"not {config.pseudo_per_label}")
    if not 0 <= config.pseudo_min_probability <= 1:
        raise FewlabelError(f"pseudo_min_probability must be in [0, 1], not {config.pseudo_min_probability}")
    if config.pseudo_per_label > 0 and config.semi:
        raise FewlabelError("pseudo_per_label and semi (FixMatch) are two uses of the pool: choose one")
    if config.precision not in PRECISIONS:
        raise FewlabelError(f"precision must be one of {', '.join(PRECISIONS)}, not {config.precision!r}")
    if config.ensemble_mode not in ENSEMBLE_MODES:
        raise FewlabelError(f"ensemble_mode must be one of {', '.join(ENSEMBLE_MODES)}, "
                            f"not {config.ensemble_mode!r}")
    if config.epochs_without_validation is not None and config.epochs_without_validation < 1:
        raise FewlabelError(
            f"epochs_without_validation must be at least 1, not {config.epochs_without_validation}")


def encoder_blocks(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """The encoder's parameters grouped by block, input side first: ``features.3.*`` or ``stages.1.*``
    form one block, so discriminative rates follow depth."""
    blocks: dict[str, list[nn.Parameter]] = {}
    for name, param in encoder.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        blocks.setdefault(key, []).append(param)
    return list(blocks.values())


def make_optimizer(classifier: Classifier, config: FinetuneConfig) -> torch.optim.Optimizer:
    enc_lr = config.encoder_lr if config.encoder_lr is not None else config.lr
    groups = [{"params": list(classifier.head.parameters()), "lr": config.lr}]
    if not config.freeze_encoder:
        if config.layer_decay is None or config.layer_decay == 1:
            groups.append({"params": list(classifier.encoder.parameters()), "lr": enc_lr})
        else:
            blocks = encoder_blocks(classifier.encoder)
            for i, params in enumerate(blocks):
                groups.append({"params": params, "lr": enc_lr * config.layer_decay ** (len(blocks) - 1 - i)})
    for group in groups:
        group["base_lr"] = group["lr"]  # what the schedule scales
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of every base rate at ``step``: linear warm-up, then constant or cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine" and total_steps > warmup_steps:
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def finetune_augment(kind: str, spatial_dims: int) -> Any:
    """Fine-tuning's augmentation for ``kind``: an ``Augment`` drawing from torch's global generator
    (so the seed fixes it), or None for ``none``."""
    if kind == "none":
        return None
    from fewlabel.data.augment import make_augment

    if kind == "dihedral":
        return make_augment(spatial_dims, kind="none", flips=True, rot90=True)
    return make_augment(spatial_dims, kind=kind)


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips / quarter turns of a 2D batch (B, C, H, W): identity first. Non-square images get
    the 4 that keep their shape; 3D volumes turn in-plane only (slice order carries anatomy)."""
    h, w = -2, -1
    views = [x, torch.flip(x, (w,)), torch.flip(x, (h,)), torch.flip(x, (h, w))]
    if x.shape[h] == x.shape[w]:
        t = x.transpose(h, w)
        views += [t, torch.flip(t, (w,)), torch.flip(t, (h,)), torch.flip(t, (h, w))]
    return views


def _set_bn_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class ClassifierTask(Task):
    """Cross-entropy on augmented labelled batches; validation loss picks the best epoch."""

    monitor = "val_loss"
    mode = "min"

    def __init__(self, classifier: Classifier, config: FinetuneConfig, weights: torch.Tensor) -> None:
        self.classifier = classifier
        self.config = config
        self.weights = weights
        augment = finetune_augment(config.augment, classifier.encoder.spatial_dims)
        self.augment: Callable[[torch.Tensor], torch.Tensor] = augment or (lambda x: x)
        self._opt: torch.optim.Optimizer | None = None
        self.total_steps = 0  # set by ``finetune`` for the schedule
        self.warmup_steps = 0
        if config.freeze_encoder:
            for p in classifier.encoder.parameters():
                p.requires_grad_(False)

    def modules(self) -> nn.Module:
        return self.classifier

    def optimizers(self) -> list[torch.optim.Optimizer]:
        self._opt = make_optimizer(self.classifier, self.config)
        return [self._opt]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            logits.float(), y, weight=self.weights.to(logits.device),
            label_smoothing=self.config.label_smoothing)

    def prepare_step(self, ctx: Loop) -> None:
        """Per-step state the loop does not know about: BN mode and the learning-rate schedule."""
        if self.config.freeze_encoder:
            self.classifier.encoder.eval()  # frozen BN statistics too: a true linear probe
        elif self.config.bn_mode == "eval":
            _set_bn_eval(self.classifier.encoder)  # the loop switches to train() after validation
        if self._opt is not None and (self.config.schedule != "constant" or self.warmup_steps):
            factor = lr_factor(ctx.step, self.total_steps, self.warmup_steps, self.config.schedule)
            for group in self._opt.param_groups:
                group["lr"] = group["base_lr"] * factor

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float]:
        x, y = batch
        self.prepare_step(ctx)
        with torch.no_grad():
            x = ctx.layout(self.augment(x))
        with ctx.autocast():
            logits = self.classifier(x)
        loss = self.loss(logits, y)
        assert self._opt is not None
        ctx.backward_step(loss, self._opt)
        return {"loss": loss.detach()}

    def validate(self, batches: Any, ctx: Loop) -> dict[str, float]:
        # Sums stay on the device (float64, as the host sums were) and are read once per epoch:
        # a GPU never waits for the host between validation batches.
        total = correct = None
        n = 0
        for x, y in batches:
            x, y = ctx.to_device((x, y))
            logits = self.classifier(ctx.layout(x)).float()
            # Unweighted mean loss: the validation set is small and its class mix is the data's.
            loss = nn.functional.cross_entropy(logits, y, reduction="sum").double()
            hits = (logits.argmax(1) == y).sum()
            total = loss if total is None else total + loss
            correct = hits if correct is None else correct + hits
            n += len(y)
        if total is None or correct is None:
            return {"val_loss": 0.0, "val_accuracy": 0.0}
        loss_sum, hit_sum = torch.stack([total, correct.double()]).tolist()
        return {"val_loss": loss_sum / max(n, 1), "val_accuracy": int(hit_sum) / max(n, 1)}


def snapshot_cycle(epochs: int) -> int:
    """Epochs of each cycle after the first: a sixth of the schedule, at least one. Short on purpose:
    the later members start from a trained model and only need to leave its minimum and settle again."""
    return max(1, int(round(epochs / 6)))


def snapshot_epochs(epochs: int, members: int) -> list[int]:
    """The epochs (1-based, from the start) at which each of ``members`` snapshots is taken: the first
    at the end of the fine-tune's own schedule (``epochs``), each later one a short cycle after."""
    if members < 1 or epochs < 1:
        raise FewlabelError(f"snapshots need at least 1 member and 1 epoch, not {members} and {epochs}")
    return [epochs + k * snapshot_cycle(epochs) for k in range(members)]


def cyclic_lr_factor(step: int, bounds: list[int], warmup_steps: int, schedule: str = "constant") -> float:
    """The snapshot schedule (steps): until ``bounds[0]`` the fine-tune's own schedule (warm-up, then
    constant or cosine); in each later cycle (``bounds[k-1]`` to ``bounds[k]``) the rates restart at
    the base rate and anneal to 0 by a cosine (Huang et al. 2017; short cycles as Garipov et al. 2018)."""
    if step < bounds[0]:
        return lr_factor(step, bounds[0], warmup_steps, schedule)
    for start, end in zip(bounds, bounds[1:], strict=False):
        if step < end:
            progress = (step - start) / max(1, end - start)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.0


class SnapshotTask(ClassifierTask):
    """An ensemble from ONE run: the fine-tune's own schedule gives the first member (as one model
    would be trained), then each short cycle that restarts the rates and anneals them to 0 gives
    another (``snapshot_epochs``). ``members`` members for 1 + (members - 1) / 6 of one fine-tune's
    cost, where independent members cost one fine-tune each. The members are kept in the task's
    modules, so a checkpoint holds them and a resumed run keeps them.

    Needs a fixed schedule (no validation split): ``finetune`` trains independent members otherwise."""

    def __init__(self, classifier: Classifier, config: FinetuneConfig, weights: torch.Tensor, members: int,
                 epochs: int, steps_per_epoch: int) -> None:
        super().__init__(classifier, config, weights)
        self.epochs_at = snapshot_epochs(epochs, members)
        self.step_bounds = [e * steps_per_epoch for e in self.epochs_at]
        # Copies made now (same structure), filled at cycle ends: the last member is the classifier.
        self.snapshots = nn.ModuleList(copy.deepcopy(classifier) for _ in range(members - 1))
        for snap in self.snapshots:
            snap.requires_grad_(False)
        self._all = nn.ModuleDict({"classifier": classifier, "snapshots": self.snapshots})

    def modules(self) -> nn.Module:
        return self._all

    def prepare_step(self, ctx: Loop) -> None:
        if self.config.bn_mode == "eval":
            _set_bn_eval(self.classifier.encoder)
        if self._opt is not None:
            factor = cyclic_lr_factor(ctx.step, self.step_bounds, self.warmup_steps, self.config.schedule)
            for group in self._opt.param_groups:
                group["lr"] = group["base_lr"] * factor

    def on_epoch_end(self, epoch: int, ctx: Loop) -> None:
        done = epoch + 1
        if done in self.epochs_at[:-1]:
            self.snapshots[self.epochs_at.index(done)].load_state_dict(self.classifier.state_dict())

    def members(self) -> list[Classifier]:
        """The snapshots in the order they were taken, the final weights last."""
        return [*self.snapshots, self.classifier]
