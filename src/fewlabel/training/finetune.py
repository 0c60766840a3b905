"""Supervised fine-tuning of an encoder + a new head on a few labelled images (optionally with the
unlabelled pool, FixMatch-style). Uses THE loop (``loop.fit``); only the step lives here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.encoder import Encoder
from fewlabel.models.heads import Classifier
from fewlabel.training.batches import TensorBatches, sequential_batches
from fewlabel.training.loop import FitResult, Loop, LoopConfig, Task, fit, select_device


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
    augment: str = "weak"  # "none" | "weak" | "strong"
    balance: str = "loss_weights"  # "loss_weights" | "none"
    freeze_encoder: bool = False  # linear probe
    time_budget_s: float | None = None
    device: str = "auto"
    amp: bool = True
    progress: bool | None = None
    # FixMatch (semi-supervised) settings; used when semi=True and unlabelled images are given.
    semi: bool = False
    semi_threshold: float = 0.95
    semi_mu: int = 3  # unlabelled images per labelled image in a step
    semi_weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (scikit-learn's "balanced": mean 1 over the samples), so a rare class
    counts as much as a common one.
    A class absent from ``y`` gets weight 0 (there is nothing to weigh)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def make_optimizer(classifier: Classifier, config: FinetuneConfig) -> torch.optim.Optimizer:
    enc_lr = config.encoder_lr if config.encoder_lr is not None else config.lr
    groups = [{"params": list(classifier.head.parameters()), "lr": config.lr}]
    if not config.freeze_encoder:
        groups.append({"params": list(classifier.encoder.parameters()), "lr": enc_lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _augmenter(kind: str, spatial_dims: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "none":
        return lambda x: x
    from fewlabel.data.augment import make_augment

    return make_augment(spatial_dims, kind=kind)


class ClassifierTask(Task):
    """Cross-entropy on augmented labelled batches; validation loss picks the best epoch."""

    monitor = "val_loss"
    mode = "min"

    def __init__(self, classifier: Classifier, config: FinetuneConfig, weights: torch.Tensor) -> None:
        self.classifier = classifier
        self.config = config
        self.weights = weights
        self.augment = _augmenter(config.augment, classifier.encoder.spatial_dims)
        self._opt: torch.optim.Optimizer | None = None
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

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float]:
        x, y = batch
        if self.config.freeze_encoder:
            self.classifier.encoder.eval()  # frozen BN statistics too: a true linear probe
        with torch.no_grad():
            x = self.augment(x)
        with ctx.autocast():
            logits = self.classifier(x)
        loss = self.loss(logits, y)
        assert self._opt is not None
        ctx.backward_step(loss, self._opt)
        return {"loss": loss.detach()}

    def validate(self, batches: Any, ctx: Loop) -> dict[str, float]:
        total, correct, n = 0.0, 0, 0
        for x, y in batches:
            x, y = ctx.to_device((x, y))
            logits = self.classifier(x).float()
            # Unweighted mean loss: the validation set is small and its class mix is the data's.
            total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
        return {"val_loss": total / max(n, 1), "val_accuracy": correct / max(n, 1)}


def finetune(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
    num_classes: int, encoder: Encoder, config: FinetuneConfig | None = None, *, seed: int = 0,
    x_unlabelled: np.ndarray | None = None, checkpoint_path: str | None = None,
) -> tuple[Classifier, FitResult]:
    """Fine-tune ``encoder`` with a fresh linear head on (x_train, y_train).

    With a validation set: best epoch by validation loss, early stopping after ``patience``.
    Without one (a handful of labels): a fixed number of epochs, as in Schouten et al.'s smallest sizes.
    With ``config.semi`` and ``x_unlabelled``: FixMatch on the pool beside the labels.
    """
    config = config or FinetuneConfig()
    if config.max_epochs < 1:  # 0 epochs would evaluate (and save) the untrained head as if trained
        raise FewlabelError(f"max_epochs must be at least 1 (got {config.max_epochs})")
    torch.manual_seed(seed)  # the head's initial weights depend on the seed only
    classifier = Classifier(encoder, num_classes, dropout=config.dropout)
    weights = class_weights(y_train, num_classes) if config.balance == "loss_weights" else torch.ones(
        num_classes)
    if config.semi and x_unlabelled is not None and len(x_unlabelled):
        from fewlabel.training.semi import FixMatchTask

        task: Task = FixMatchTask(classifier, config, weights, x_unlabelled, seed=seed)
    else:
        task = ClassifierTask(classifier, config, weights)
    has_val = x_val is not None and y_val is not None and len(x_val) > 0
    if select_device(config.device).type == "cuda":
        # A few-label set fits on any GPU: kept there, a step gathers its batch without a host copy.
        dev = select_device(config.device)
        x_train, y_train = _on(x_train, dev, torch.float32), _on(y_train, dev, torch.long)
        if has_val:
            x_val, y_val = _on(x_val, dev, torch.float32), _on(y_val, dev, torch.long)
    train_batches = TensorBatches(x_train, y_train, config.batch_size, seed=seed,
                                  min_steps=config.min_steps_per_epoch)
    val_batches = sequential_batches(x_val, y_val, 64) if has_val else None
    loop_config = LoopConfig(
        max_epochs=config.max_epochs, patience=config.patience if has_val else None, seed=seed,
        device=config.device, amp=config.amp, progress=config.progress, desc="fine-tune",
        time_budget_s=config.time_budget_s, checkpoint_path=checkpoint_path)
    result = fit(task, train_batches, val_batches, loop_config)
    classifier.eval()
    return classifier, result


def _on(array: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(array, dtype=dtype).to(device)


@torch.no_grad()
def predict_proba(classifier: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 64,
                  device: str | torch.device = "auto") -> np.ndarray:
    """Softmax probabilities (N, K) in eval mode, float32, on CPU."""
    dev = select_device(device) if isinstance(device, str) else device
    classifier.eval().to(dev)
    out = []
    for xb in sequential_batches(x, None, batch_size):
        out.append(torch.softmax(classifier(xb.to(dev)).float(), dim=1).cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)
