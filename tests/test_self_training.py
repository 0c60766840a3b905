"""Self-training (``FinetuneConfig.pseudo_per_label``, strategy ``imagenet+pseudo``): the teacher's
class-balanced most confident pool predictions join the labels; the pool never holds a test image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_finetune import FAST, blobs, tiny_encoder

from fewlabel import strategies
from fewlabel.errors import FewlabelError
from fewlabel.training.finetune import FinetuneConfig, finetune, pseudo_labels


def test_pseudo_labels_take_the_most_confident_per_class_in_proportion():
    proba = np.array([[.9, .1, 0], [.6, .4, 0], [.8, .2, 0], [.2, .7, .1], [.1, .3, .6], [.45, .55, 0]])
    picks, labels = pseudo_labels(proba, np.array([2, 1, 0]), per_label=1.0)
    # class 0: the two most confident of rows 0, 1, 2; class 1: row 3 over row 5; class 2: no labels
    assert picks.tolist() == [0, 2, 3] and labels.tolist() == [0, 0, 1]
    picks, labels = pseudo_labels(proba, np.array([2, 1, 1]), per_label=2.0)
    assert picks.tolist() == [0, 2, 1, 3, 5, 4] and labels.tolist() == [0, 0, 0, 1, 1, 2]
    # more wanted than predicted: all that are, never another class's
    picks, labels = pseudo_labels(proba, np.array([10, 0, 0]), per_label=1.0)
    assert picks.tolist() == [0, 2, 1] and set(labels.tolist()) == {0}
    assert pseudo_labels(proba, np.array([0, 0, 0]), per_label=1.0)[0].size == 0
    # halves round up: half a pick per label with one label is one pick, not none
    assert pseudo_labels(proba, np.array([1, 0, 0]), per_label=0.5)[0].tolist() == [0]
    # a floor: row 1 (.6) and row 5 (.55) fall below .65, so class 0 gets two and class 1 one
    picks, labels = pseudo_labels(proba, np.array([3, 3, 0]), per_label=1.0, min_probability=0.65)
    assert picks.tolist() == [0, 2, 3] and labels.tolist() == [0, 0, 1]


def test_student_trains_on_labels_plus_pseudo_labels_deterministically():
    x, y = blobs(4)
    pool, _ = blobs(20, seed=3)
    config = FinetuneConfig(**{**FAST, "max_epochs": 3, "batch_size": 8, "lr": 3e-3,
                               "min_steps_per_epoch": 1})
    torch.manual_seed(0)
    _, alone = finetune(x, y, None, None, 2, tiny_encoder(), config, seed=1)
    selftrain = FinetuneConfig(**{**config.to_dict(), "pseudo_per_label": 1.0})
    torch.manual_seed(0)
    model, result = finetune(x, y, None, None, 2, tiny_encoder(), selftrain, seed=1, x_unlabelled=pool)
    # teacher: 8 labels = 1 step an epoch; student: 8 labels + 8 pseudo-labels = 2 steps an epoch
    assert alone.steps == 3 and result.steps == 3 + 6
    torch.manual_seed(0)
    again, _ = finetune(x, y, None, None, 2, tiny_encoder(), selftrain, seed=1, x_unlabelled=pool)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # no pool: the recipe alone, not an error
    _, plain = finetune(x, y, None, None, 2, tiny_encoder(), selftrain, seed=1)
    assert plain.steps == 3


def test_pseudo_labels_and_fixmatch_are_refused_together():
    x, y = blobs(2)
    with pytest.raises(FewlabelError, match="choose one"):
        finetune(x, y, None, None, 2, tiny_encoder(), FinetuneConfig(**FAST, pseudo_per_label=1.0, semi=True))
    with pytest.raises(FewlabelError, match="pseudo_per_label"):
        finetune(x, y, None, None, 2, tiny_encoder(), FinetuneConfig(**FAST, pseudo_per_label=-1.0))


def test_the_pool_is_the_rest_of_the_labelled_pool_and_never_a_test_image(tmp_path):
    from fewlabel import pipeline

    from factory import make_class_folder

    root = make_class_folder(tmp_path / "data", {"a": 12, "b": 12}, size=(16, 16), channels=3, seed=0)
    data = pipeline.prepare_data(root, test_size=3, seed=0)
    spec = pipeline.StrategySpec(name="scratch", encoder="convnet", encoder_kwargs={"width": 8, "depth": 2})
    draw = list(data.pool_ids[:6])
    config = FinetuneConfig(**{**FAST, "max_epochs": 2, "pseudo_per_label": 1.0})
    cell = pipeline.fit_cell(data, draw, spec, 0, config)
    rest = [i for i in data.pool_ids if i not in set(draw)]
    assert set(data.keys_of(rest)) <= set(cell.seen_files)
    assert not set(cell.seen_files) & set(data.keys_of(list(data.test_ids)))


def test_imagenet_pseudo_is_a_registered_strategy():
    entry = strategies.get("imagenet+pseudo")
    assert entry.init == "imagenet" and entry.finetune["pseudo_per_label"] > 0 and not entry.semi
