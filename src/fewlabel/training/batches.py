"""In-memory batch streams. Few-label data fits in memory; a DataLoader's workers would only add
start-up time. Shuffling uses a private generator, so the order depends on the seed alone."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from fewlabel.errors import DataError

# Spatial voxels one batch may hold in a forward pass without gradients (prediction, validation,
# features) and with them (attribution maps). 64 images of 224x224 stay one batch; whole 36x128x128
# volumes go 7 (resp. 1) at a time, so the activations stay within a few hundred MB per stage.
INFERENCE_VOXELS = 2**22
GRADIENT_VOXELS = 2**20


def bounded_batch_size(sample_shape: Sequence[int], batch_size: int, max_voxels: int | None = None) -> int:
    """``batch_size`` capped so that one batch of samples ``(C, *spatial)`` holds at most ``max_voxels``
    (default ``INFERENCE_VOXELS``) spatial voxels, at least one sample. Eval-mode outputs are per
    sample, so the cap changes memory, not results."""
    budget = INFERENCE_VOXELS if max_voxels is None else max_voxels
    voxels = math.prod(int(s) for s in tuple(sample_shape)[1:])
    return max(1, min(int(batch_size), budget // max(voxels, 1)))


class TensorBatches:
    """Shuffled (x, y) mini-batches; every epoch has ``steps_per_epoch`` batches.

    With very few labels one pass is a single step, which makes an "epoch" meaningless for early
    stopping; ``min_steps`` repeats the data (fresh shuffles) so an epoch is at least that many steps.
    """

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | None,
                 batch_size: int, seed: int, min_steps: int = 1, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = None if y is None else torch.as_tensor(y, dtype=torch.long)
        if len(self.x) == 0:  # an endless stream of nothing would make the loop spin forever
            raise DataError("no images to train on (empty training set)")
        self.batch_size = max(1, min(int(batch_size), len(self.x)))
        self.shuffle = shuffle
        self.drop_last = drop_last
        per_pass = len(self.x) // self.batch_size if drop_last else math.ceil(len(self.x) / self.batch_size)
        self.steps_per_epoch = max(min_steps, per_pass, 1)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _order(self) -> Iterator[int]:
        while True:
            idx = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else torch.arange(
                len(self.x))
            yield from idx.tolist()

    def index_batches(self) -> Iterator[torch.Tensor]:
        """One epoch of sample indices: what ``__iter__`` gathers (stacked training gathers on the device)."""
        order = self._order()
        for _ in range(self.steps_per_epoch):
            yield torch.tensor([next(order) for _ in range(self.batch_size)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor] | torch.Tensor]:
        for idx in self.index_batches():
            yield self.x[idx] if self.y is None else (self.x[idx], self.y[idx])


def sequential_batches(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | None,
                       batch_size: int) -> list:
    """Fixed-order batches covering every sample once (validation, prediction)."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = None if y is None else torch.as_tensor(y, dtype=torch.long)
    out = []
    for i in range(0, len(xt), batch_size):
        out.append(xt[i:i + batch_size] if yt is None else (xt[i:i + batch_size], yt[i:i + batch_size]))
    return out
