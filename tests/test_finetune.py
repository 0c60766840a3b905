"""Fine-tuning: learns a separable task, is deterministic, weighs classes, freezes when asked."""

from __future__ import annotations

import numpy as np
import torch

from fewlabel.models.encoder import create_encoder
from fewlabel.training.finetune import FinetuneConfig, class_weights, finetune, predict_proba


def blobs(n_per_class: int = 12, size: int = 16, seed: int = 0):
    """Class 1 has a bright square in the top-left corner; class 0 does not."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (2 * n_per_class, 1, size, size)).astype(np.float32)
    y = np.repeat([0, 1], n_per_class)
    x[y == 1, :, : size // 2, : size // 2] += 2.0
    return x, y


def tiny_encoder():
    return create_encoder("convnet", in_channels=1, width=4, depth=3)


FAST = dict(max_epochs=8, batch_size=8, augment="none", progress=False, patience=4)


def test_finetune_learns_a_separable_task():
    x, y = blobs()
    xt, yt = blobs(seed=1)
    torch.manual_seed(0)
    config = FinetuneConfig(**{**FAST, "max_epochs": 15, "lr": 3e-3})
    clf, result = finetune(x, y, None, None, 2, tiny_encoder(), config, seed=0)
    acc = (predict_proba(clf, xt).argmax(1) == yt).mean()
    assert acc >= 0.9, acc
    assert result.stopped_because == "max_epochs"  # no validation: fixed epochs


def test_finetune_same_seed_same_probabilities():
    x, y = blobs()
    probs = []
    for _ in range(2):
        torch.manual_seed(0)  # the encoder's init
        clf, _ = finetune(x, y, x[:4], y[:4], 2, tiny_encoder(), FinetuneConfig(**FAST), seed=3)
        probs.append(predict_proba(clf, x))
    np.testing.assert_array_equal(probs[0], probs[1])


def test_validation_drives_best_epoch():
    x, y = blobs()
    torch.manual_seed(0)
    _, result = finetune(x, y, x[::3], y[::3], 2, tiny_encoder(), FinetuneConfig(**FAST), seed=0)
    assert result.best_epoch is not None
    assert all("val_loss" in h for h in result.history)


def test_class_weights_balance_rare_classes():
    w = class_weights(np.array([0, 0, 0, 1]), 3).numpy()
    assert w[1] == 3 * w[0] and w[2] == 0
    assert np.isclose((w[[0, 0, 0, 1]]).mean(), 1.0)  # mean 1 over the samples, as sklearn does


def test_frozen_encoder_is_a_linear_probe():
    x, y = blobs()
    torch.manual_seed(0)
    enc = tiny_encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    clf, _ = finetune(x, y, None, None, 2, enc, FinetuneConfig(**{**FAST, "freeze_encoder": True}), seed=0)
    for k, v in clf.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN statistics too


def test_augmentations_run_in_training():
    x, y = blobs()
    torch.manual_seed(0)
    clf, _ = finetune(x, y, None, None, 2, tiny_encoder(),
                      FinetuneConfig(**{**FAST, "augment": "weak", "max_epochs": 2}), seed=0)
    assert predict_proba(clf, x).shape == (len(x), 2)
