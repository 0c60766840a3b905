"""Stacked fine-tuning (many models in one vmapped module) ends where one-at-a-time fine-tuning ends,
for the same seeds: same early stopping, same best epoch, same probabilities up to float rounding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewlabel.models.encoder import create_encoder
from fewlabel.training.finetune import FinetuneConfig, finetune, predict_proba
from fewlabel.training.stacked import (
    StackMember,
    finetune_stacked,
    unstackable_reason,
    weighted_cross_entropy,
)
from fewlabel.training.stacked_module import predict_proba_stacked

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _data(rng: np.random.Generator, n: int, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % classes
    x = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    x[y == 1, :, 4:12, 4:12] += 0.7  # learnable, not trivially: probabilities stay away from 0/1
    return x, y


def _encoder(seed: int):
    torch.manual_seed(seed)
    return create_encoder("convnet", 1, 2, width=4, depth=2)


def _members(with_val: bool = True):
    rng = np.random.default_rng(0)
    out = []
    for k, seed in enumerate((11, 12, 13)):
        x, y = _data(rng, 8)
        xv, yv = _data(rng, 4 + k) if with_val else (None, None)  # validation sets of other sizes
        out.append((x, y, xv, yv, seed))
    return out, _data(rng, 24)[0]


@pytest.mark.parametrize("augment,with_val", [("weak", True), ("strong", True), ("none", False)])
def test_stacked_equals_one_at_a_time(augment, with_val):
    members, x_test = _members(with_val)
    config = FinetuneConfig(max_epochs=6, patience=2, batch_size=4, min_steps_per_epoch=3, dropout=0.3,
                            augment=augment, label_smoothing=0.1, encoder_lr=3e-4, device="cpu")
    single = [finetune(x, y, xv, yv, 2, _encoder(s), config, seed=s) for x, y, xv, yv, s in members]
    stacked = finetune_stacked([StackMember(_encoder(s), x, y, xv, yv, s) for x, y, xv, yv, s in members],
                               2, config)
    stops = set()
    for (c1, r1), (c2, r2) in zip(single, stacked, strict=True):
        assert (r2.best_epoch, r2.epochs, r2.steps, r2.stopped_because) == (
            r1.best_epoch, r1.epochs, r1.steps, r1.stopped_because)
        stops.add(r1.stopped_because)
        for a, b in zip(r1.history, r2.history, strict=True):
            assert a.keys() == b.keys()
            assert all(abs(a[k] - b[k]) < 1e-5 for k in a)
        p1, p2 = predict_proba(c1, x_test, device="cpu"), predict_proba(c2, x_test, device="cpu")
        assert np.abs(p1 - p2).max() < 1e-5
        assert np.abs(p1 - 0.5).max() > 1e-3  # the models did move: equality is not trivial
    if with_val:  # early stopping and best-epoch restore were both exercised
        assert stops == {"early_stopping", "max_epochs"}
    probs = predict_proba_stacked([c for c, _ in stacked], x_test, device="cpu")
    for (c, _), p in zip(stacked, probs, strict=True):
        assert np.abs(predict_proba(c, x_test, device="cpu") - p).max() < 1e-6


def test_other_seed_gives_other_model():
    members, x_test = _members()
    config = FinetuneConfig(max_epochs=2, batch_size=4, min_steps_per_epoch=2, device="cpu")
    x, y, xv, yv, _ = members[0]
    a, b = finetune_stacked([StackMember(_encoder(1), x, y, xv, yv, 1),
                             StackMember(_encoder(2), x, y, xv, yv, 2)], 2, config)
    pa, pb = predict_proba(a[0], x_test, device="cpu"), predict_proba(b[0], x_test, device="cpu")
    assert np.abs(pa - pb).max() > 1e-4


def test_weighted_cross_entropy_equals_torch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 4, generator=gen)
    y = torch.randint(0, 4, (3, 7), generator=gen)
    w = torch.rand(3, 4, generator=gen) + 0.1
    for smoothing in (0.0, 0.2):
        ours = weighted_cross_entropy(logits, y, w, smoothing)
        ref = torch.stack([F.cross_entropy(logits[k], y[k], weight=w[k], label_smoothing=smoothing)
                           for k in range(3)])
        assert torch.allclose(ours, ref, atol=1e-6)


def test_recipes_the_stacked_path_does_not_implement_are_refused():
    assert unstackable_reason(FinetuneConfig()) is None
    assert "semi" in unstackable_reason(FinetuneConfig(semi=True))
    assert "frozen" in unstackable_reason(FinetuneConfig(freeze_encoder=True))

    @dataclasses.dataclass
    class NewRecipe(FinetuneConfig):
        lp_ft_epochs: int = 0  # an option added later: unknown here, so never stacked silently

    assert "lp_ft_epochs" in unstackable_reason(NewRecipe())
    with pytest.raises(ValueError, match="lp_ft_epochs"):
        finetune_stacked([], 2, NewRecipe())


def test_members_of_other_batch_geometry_are_refused():
    rng = np.random.default_rng(0)
    (x, y), (x2, y2) = _data(rng, 8), _data(rng, 40)
    config = FinetuneConfig(max_epochs=1, batch_size=4, min_steps_per_epoch=1, device="cpu")
    with pytest.raises(ValueError, match="geometry"):
        finetune_stacked([StackMember(_encoder(0), x, y, None, None, 0),
                          StackMember(_encoder(1), x2, y2, None, None, 1)], 2, config)


@pytest.mark.gpu
@needs_cuda
def test_stacked_on_cuda_with_mixed_precision():
    members, x_test = _members()
    config = FinetuneConfig(max_epochs=4, patience=2, batch_size=4, min_steps_per_epoch=3, device="cuda")
    stacked = finetune_stacked([StackMember(_encoder(s), x, y, xv, yv, s) for x, y, xv, yv, s in members],
                               2, config)
    single = [finetune(x, y, xv, yv, 2, _encoder(s), config, seed=s) for x, y, xv, yv, s in members]
    for (c1, _), (c2, r2) in zip(single, stacked, strict=True):
        assert next(c2.parameters()).device.type == "cuda" and r2.steps > 0
        p1, p2 = predict_proba(c1, x_test, device="cuda"), predict_proba(c2, x_test, device="cuda")
        assert np.isfinite(p2).all() and np.abs(p1 - p2).mean() < 0.1  # AMP: close, not bit-equal


def test_curve_with_stacking_on_matches_stacking_off(tmp_path, monkeypatch):
    from fewlabel.experiments import run_curve

    from factory import make_class_folder

    data = make_class_folder(tmp_path / "data", classes={"a": 12, "b": 12}, size=(16, 16), separable=False)
    grid = {"strategies": "scratch", "sizes": [2, 3], "repeats": 2, "test_size": 4,
            "finetune": {"max_epochs": 2}, "log": None, "progress": False}
    monkeypatch.setenv("FEWLABEL_STACKING", "off")
    plain = run_curve(data, tmp_path / "plain", **grid)
    monkeypatch.setenv("FEWLABEL_STACKING", "on")
    stacked = run_curve(data, tmp_path / "stacked", **grid)
    assert plain.ok and stacked.ok and len(stacked.rows) == 4
    key = lambda r: (r["n_per_class"], r["repeat"])  # noqa: E731
    for a, b in zip(sorted(plain.rows, key=key), sorted(stacked.rows, key=key), strict=True):
        assert (a["n_train"], a["epochs"], a["best_epoch"]) == (b["n_train"], b["epochs"], b["best_epoch"])
        assert abs(a["roc_auc"] - b["roc_auc"]) < 1e-6
        pa = np.load(tmp_path / "plain" / a["proba_path"])
        pb = np.load(tmp_path / "stacked" / b["proba_path"])
        # Adam turns float-rounding noise in near-zero gradients into small steps: equal to ~1e-4
        assert np.abs(pa - pb).max() < 1e-3
    # the two repeats of each size shared a stack (2 per class -> same batch geometry)
    assert all((r.get("extra") or {}).get("stacked_with") == 2 for r in stacked.rows)


def test_cpu_measure_mode_falls_back_to_the_reference_path_and_auto_does_not_stack(tmp_path, monkeypatch):
    """On a CPU ``auto`` trains one at a time (same seed, same numbers, whatever the load); ``measure``
    groups cells but stacks only when a timing says it pays; when it does not, every cell runs
    through run_cell: bit-for-bit the numbers of stacking off."""
    from fewlabel.experiments import run_curve, stacking

    from factory import make_class_folder

    probed = []
    monkeypatch.setattr(stacking, "stacking_pays", lambda members, *a, **k: probed.append(len(members)))
    data = make_class_folder(tmp_path / "data", classes={"a": 12, "b": 12}, size=(16, 16), separable=False)
    grid = {"strategies": "scratch", "sizes": [2], "repeats": 2, "test_size": 4,
            "finetune": {"max_epochs": 1, "device": "cpu"}, "log": None, "progress": False}
    runs = {}
    for mode in ("off", "auto", "measure"):
        monkeypatch.setenv("FEWLABEL_STACKING", mode)
        runs[mode] = run_curve(data, tmp_path / mode, **grid)
        assert probed == ([2] if mode == "measure" else [])  # the two repeats were timed as one group
    for mode in ("auto", "measure"):
        for a, b in zip(runs["off"].rows, runs[mode].rows, strict=True):
            assert a["roc_auc"] == b["roc_auc"]
            pa, pb = (tmp_path / name / a["proba_path"] for name in ("off", mode))
            assert pa.read_bytes() == pb.read_bytes()


def _curve_rows(run, folder):
    key = lambda r: (r["n_per_class"], r["repeat"])  # noqa: E731
    return [(r, np.load(folder / r["proba_path"])) for r in sorted(run.rows, key=key)]


def _assert_same_cells(plain, stacked, tol=1e-3):
    for (a, pa), (b, pb) in zip(plain, stacked, strict=True):
        assert (a["n_train"], a["n_val"], a["epochs"]) == (b["n_train"], b["n_val"], b["epochs"])
        assert abs(a["roc_auc"] - b["roc_auc"]) < 1e-6 or np.abs(pa - pb).max() < 1e-4
        assert np.abs(pa - pb).max() < tol


def test_the_imagenet_recipe_levers_stack_and_match_one_at_a_time(tmp_path, monkeypatch):
    """Ensemble members (stacked as members, averaged per cell), test-time augmentation, the 8
    flips / turns, every label training with a fixed schedule: stacked cells end where one-at-a-time
    cells end. A stack the device has no memory for is halved until it fits, with the same numbers."""
    import torch

    import fewlabel.training.stacked as stacked_module
    import fewlabel.training.stacked_module as prediction_module
    from fewlabel.experiments import run_curve

    from factory import make_class_folder

    data = make_class_folder(tmp_path / "data", classes={"a": 12, "b": 12}, size=(16, 16), separable=False)
    # independent members (the default; snapshots of one run would train as one model: not stacked)
    recipe = {"max_epochs": 9, "epochs_without_validation": 3, "ensemble": 2, "tta": True,
              "augment": "dihedral", "hold_out": False, "min_steps_per_epoch": 2,
              "ensemble_mode": "independent"}
    grid = {"strategies": "scratch", "sizes": [3], "repeats": 2, "test_size": 4, "finetune": recipe,
            "log": None, "progress": False}
    monkeypatch.setenv("FEWLABEL_STACKING", "off")
    plain = run_curve(data, tmp_path / "plain", **grid)
    monkeypatch.setenv("FEWLABEL_STACKING", "on")
    stacked = run_curve(data, tmp_path / "stacked", **grid)
    assert plain.ok and stacked.ok
    assert all((r.get("extra") or {}).get("stacked_with") == 2 for r in stacked.rows)
    assert all(r["n_val"] == 0 and r["epochs"] == 3 for r in stacked.rows)
    _assert_same_cells(_curve_rows(plain, tmp_path / "plain"), _curve_rows(stacked, tmp_path / "stacked"))

    real_fit, real_predict = stacked_module.finetune_stacked, prediction_module.predict_proba_stacked
    sizes: list[int] = []

    def short_of_memory_after_training(members, num_classes, config=None):
        # the memory runs out once the stack has trained (its encoders' weights have moved)
        got = real_fit(members, num_classes, config)
        sizes.append(len(members))
        if len(members) > 1:
            raise torch.OutOfMemoryError("a test's full device")
        return got

    monkeypatch.setattr(stacked_module, "finetune_stacked", short_of_memory_after_training)
    halved = run_curve(data, tmp_path / "halved", **grid)
    assert halved.ok and sizes[:3] == [4, 2, 1] and max(sizes[3:]) == 1
    assert all((r.get("extra") or {}).get("stacked_with") == 2 for r in halved.rows)
    _assert_same_cells(_curve_rows(plain, tmp_path / "plain"), _curve_rows(halved, tmp_path / "halved"))

    monkeypatch.setattr(stacked_module, "finetune_stacked", real_fit)
    predicted: list[int] = []

    def prediction_short_of_memory(classifiers, *args, **kwargs):
        predicted.append(len(classifiers))
        if len(classifiers) > 1:
            raise torch.OutOfMemoryError("a test's full device")
        return real_predict(classifiers, *args, **kwargs)

    monkeypatch.setattr(prediction_module, "predict_proba_stacked", prediction_short_of_memory)
    split = run_curve(data, tmp_path / "split", **grid)
    assert split.ok and predicted[:3] == [4, 2, 1] and len(predicted) == 2 + 4
    assert all((r.get("extra") or {}).get("stacked_with") == 2 for r in split.rows)
    _assert_same_cells(_curve_rows(plain, tmp_path / "plain"), _curve_rows(split, tmp_path / "split"))


def _mobilenet_both_ways(tmp_path, monkeypatch, repeats: int, finetune: dict, input_size: int,
                         stacking: str):
    """scratch_mobilenet's curve one at a time and with ``stacking``: (rows + probabilities) each."""
    from fewlabel.experiments import run_curve

    from factory import make_class_folder

    data = make_class_folder(tmp_path / "data", classes={"a": 10, "b": 10}, size=(16, 16), channels=3,
                             separable=False)
    grid = {"strategies": "scratch_mobilenet", "sizes": [2], "repeats": repeats, "test_size": 4,
            "finetune": finetune, "log": None, "progress": False,
            "strategy_options": {"scratch_mobilenet": {"encoder_kwargs": {"input_size": input_size}}}}
    runs = []
    for name, mode in (("plain", "off"), ("stacked", stacking)):
        monkeypatch.setenv("FEWLABEL_STACKING", mode)
        run = run_curve(data, tmp_path / name, **grid)
        assert run.ok
        runs.append(_curve_rows(run, tmp_path / name))
    assert all((r.get("extra") or {}).get("stacked_with") == repeats for r, _ in runs[1])
    return runs


def test_mobilenet_with_the_imagenet_recipe_stacks(tmp_path, monkeypatch):
    """scratch_mobilenet carries the ImageNet family's recipe (3 members, TTA, flips / turns): its
    MobileNetV2 (depthwise convolutions, BatchNorm, the input resize) trains stacked and matches."""
    recipe = {"max_epochs": 1, "ensemble_mode": "independent"}  # as on a GPU
    plain, stacked = _mobilenet_both_ways(tmp_path, monkeypatch, 2, recipe, 32, "on")
    _assert_same_cells(plain, stacked)


@pytest.mark.gpu
@needs_cuda
def test_the_imagenet_recipe_stacks_on_cuda(tmp_path, monkeypatch):
    """On CUDA (mixed precision) the ImageNet family's recipe trains stacked: every cell of a size
    shares one stack, and its numbers stay close to one-at-a-time training (AMP: not bit-equal)."""
    plain, stacked = _mobilenet_both_ways(tmp_path, monkeypatch, 3, {"max_epochs": 2, "device": "cuda"}, 64,
                                          "auto")
    for (_, pa), (_, pb) in zip(plain, stacked, strict=True):
        assert np.isfinite(pb).all() and np.abs(pa - pb).mean() < 0.1


@pytest.mark.gpu
@needs_cuda
def test_every_stacked_model_learns_on_cuda():
    """On CUDA (bf16 autocast) each model of a stack learns a learnable task: test accuracy well above
    chance, and weights moved from where they started. An untrained or frozen stack fails both."""
    rng = np.random.default_rng(1)
    config = FinetuneConfig(max_epochs=25, batch_size=8, min_steps_per_epoch=4, lr=3e-3, augment="none",
                            device="cuda", ensemble_mode="independent")
    members, starts = [], []
    for seed in (21, 22, 23, 24):
        x, y = _data(rng, 48)
        x[y == 1, :, 4:12, 4:12] += 1.5  # plainly learnable
        encoder = _encoder(seed)
        starts.append({k: v.clone() for k, v in encoder.state_dict().items()})
        members.append(StackMember(encoder, x, y, None, None, seed))
    x_test, y_test = _data(rng, 96)
    x_test[y_test == 1, :, 4:12, 4:12] += 1.5
    assert unstackable_reason(config) is None
    for (classifier, _), start in zip(finetune_stacked(members, 2, config), starts, strict=True):
        accuracy = (predict_proba(classifier, x_test, device="cuda").argmax(1) == y_test).mean()
        assert accuracy >= 0.8, accuracy  # chance is 0.5
        weights = classifier.encoder.state_dict().items()
        moved = [not torch.equal(start[k], v.detach().cpu()) for k, v in weights
                 if v.is_floating_point() and "running" not in k]
        assert all(moved)
