"""FixMatch: the unlabelled pool joins the few labels through confident pseudo-labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewlabel.errors import DataError
from fewlabel.models.encoder import create_encoder
from fewlabel.models.heads import Classifier
from fewlabel.training.finetune import FinetuneConfig, finetune
from fewlabel.training.semi import FixMatchTask


def two_class_images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 has a bright centre square, class 0 a dark one."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0, 0.5, (n, 1, size, size)).astype(np.float32)
    c = slice(size // 4, 3 * size // 4)
    x[:, :, c, c] += np.where(y == 1, 1.5, -1.5)[:, None, None, None].astype(np.float32)
    return x, y


def small_encoder():
    torch.manual_seed(0)  # torch's start-up seed is random: fix the initial weights
    return create_encoder("convnet", in_channels=1, spatial_dims=2, width=4, depth=3)


def config(**kw) -> FinetuneConfig:
    # Threshold 0.8 (default 0.95) and lr 3e-3: confident predictions within a few CPU seconds.
    base = dict(semi=True, max_epochs=8, batch_size=4, min_steps_per_epoch=4, semi_mu=3, dropout=0.0,
                device="cpu", progress=False, semi_threshold=0.8, lr=3e-3)
    base.update(kw)
    return FinetuneConfig(**base)


def test_fixmatch_uses_confident_pseudo_labels_and_loss_falls():
    x_l, y_l = two_class_images(4, seed=0)  # two labels per class
    x_u, _ = two_class_images(48, seed=1)
    _, result = finetune(x_l, y_l, None, None, 2, small_encoder(), config(), seed=0, x_unlabelled=x_u)
    rows = result.history
    assert {"loss_x", "loss_u", "mask_rate"} <= set(rows[0])
    assert rows[-1]["loss_x"] < rows[0]["loss_x"]
    # Predictions on the pool grow confident, so the pool takes part in training.
    assert rows[-1]["mask_rate"] > 0.2 and rows[-1]["mask_rate"] > rows[0]["mask_rate"]


def test_pseudo_labels_are_right_on_an_easy_pool():
    x_l, y_l = two_class_images(4, seed=0)
    x_u, y_u = two_class_images(48, seed=1)
    clf, _ = finetune(x_l, y_l, None, None, 2, small_encoder(), config(), seed=0, x_unlabelled=x_u)
    with torch.no_grad():
        pred = clf.eval()(torch.from_numpy(x_u)).argmax(1).numpy()
    assert (pred == y_u).mean() > 0.9


def test_threshold_above_one_means_labelled_loss_only():
    x_l, y_l = two_class_images(4, seed=0)
    x_u, _ = two_class_images(16, seed=1)
    cfg = config(semi_threshold=1.01, max_epochs=2)
    _, result = finetune(x_l, y_l, None, None, 2, small_encoder(), cfg, seed=0, x_unlabelled=x_u)
    for row in result.history:
        assert row["loss_u"] == 0.0 and row["mask_rate"] == 0.0
        assert row["loss"] == pytest.approx(row["loss_x"])


def test_pool_of_the_wrong_shape_is_refused():
    clf = Classifier(small_encoder(), 2)
    with pytest.raises(DataError, match="channel"):
        FixMatchTask(clf, config(), torch.ones(2), np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(DataError, match="empty"):
        FixMatchTask(clf, config(), torch.ones(2), np.zeros((0, 1, 16, 16), np.float32))
