"""FixMatch (Sohn et al. 2020): fine-tune on the few labels AND the unlabelled pool.

Each step: B labelled images (weak view, weighted cross-entropy) and ``mu * B`` unlabelled images.
The model's prediction on an unlabelled image's weak view becomes its pseudo-label when its
confidence reaches ``threshold`` (0.95); the strong view of the same image is then trained towards
that label. One forward pass over labelled + weak + strong so BatchNorm sees the whole mix, as in
the reference implementation. The loss is ``loss_x + semi_weight * loss_u``, with ``loss_u``
averaged over ALL unlabelled images (masked ones count as zero), as in the paper: early on, when
few predictions are confident, the unlabelled term is small by itself.

Views come from ``fewlabel.data.augment``: ``weak`` (flips, 90-degree turns, small shifts) and
``strong`` (weak + small affine, intensity jitter, noise, cutout). Plugged in by
``fewlabel.training.finetune.finetune`` when ``config.semi`` and an unlabelled pool are given; the
labelled batches come from the loop, the unlabelled ones from this task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fewlabel.errors import DataError
from fewlabel.models.heads import Classifier
from fewlabel.training.loop import Loop
from fewlabel.training.recipe import ClassifierTask, FinetuneConfig

Transform = Callable[[torch.Tensor], torch.Tensor]


class UnlabelledStream:
    """Endless shuffled batches of unlabelled images, order from ``seed`` only."""

    def __init__(self, x: np.ndarray | torch.Tensor, seed: int) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32)
        if len(self.x) == 0:
            raise DataError("the unlabelled pool is empty")
        self.generator = torch.Generator().manual_seed(int(seed) + 104729)
        self._order: Iterator[int] = iter(())

    def _next_index(self) -> int:
        try:
            return next(self._order)
        except StopIteration:
            self._order = iter(torch.randperm(len(self.x), generator=self.generator).tolist())
            return next(self._order)

    def take(self, n: int) -> torch.Tensor:
        return self.x[torch.tensor([self._next_index() for _ in range(n)])]


class FixMatchTask(ClassifierTask):
    """``ClassifierTask`` (optimiser, weighted loss, validation) + the FixMatch unlabelled term.

    ``config`` fields used: ``semi_threshold``, ``semi_mu``, ``semi_weight`` and everything
    ``ClassifierTask`` uses. ``weak``/``strong`` override the data layer's views (tests, notebooks).
    """

    def __init__(self, classifier: Classifier, config: FinetuneConfig, weights: torch.Tensor,
                 x_unlabelled: np.ndarray | torch.Tensor, seed: int = 0, *,
                 weak: Transform | None = None, strong: Transform | None = None) -> None:
        super().__init__(classifier, config, weights)
        dims = classifier.encoder.spatial_dims
        if weak is None or strong is None:
            from fewlabel.data.augment import make_augment

            weak = weak or make_augment(dims, "weak")
            strong = strong or make_augment(dims, "strong")
        self.weak, self.strong = weak, strong
        self.unlabelled = UnlabelledStream(x_unlabelled, seed)
        shape = tuple(self.unlabelled.x.shape[1:])
        expected = (classifier.encoder.in_channels,)
        if shape[:1] != expected or len(shape) != dims + 1:
            raise DataError(f"unlabelled images have shape {shape}; the encoder takes "
                            f"{classifier.encoder.in_channels} channel(s) in {dims}D")
        self.threshold = float(config.semi_threshold)
        self.mu = max(1, int(config.semi_mu))
        self.weight_u = float(config.semi_weight)

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float]:
        x_l, y_l = batch
        b = x_l.shape[0]
        x_u = self.unlabelled.take(self.mu * b).to(x_l.device, non_blocking=True)
        self.prepare_step(ctx)
        with torch.no_grad():
            inputs = torch.cat([self.weak(x_l), self.weak(x_u), self.strong(x_u)])
        with ctx.autocast():
            logits = self.classifier(inputs).float()
        logits_l, logits_w, logits_s = logits[:b], logits[b:b + len(x_u)], logits[b + len(x_u):]
        loss_x = self.loss(logits_l, y_l)
        with torch.no_grad():
            confidence, pseudo = torch.softmax(logits_w.detach(), dim=1).max(dim=1)
            mask = (confidence >= self.threshold).float()
        loss_u = (F.cross_entropy(logits_s, pseudo, reduction="none") * mask).mean()
        loss = loss_x + self.weight_u * loss_u
        assert self._opt is not None
        ctx.backward_step(loss, self._opt)
        return {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                "mask_rate": mask.mean()}
