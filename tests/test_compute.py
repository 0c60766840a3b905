"""How fine-tuning uses the hardware (``training.compute``): precision, layout and snapshot ensembles,
each ``auto`` made concrete before a run is hashed, and a model scored as it was trained."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_finetune import FAST, blobs, tiny_encoder

from fewlabel.errors import FewlabelError
from fewlabel.experiments.grid import CurveConfig
from fewlabel.models.heads import Ensemble
from fewlabel.training import compute
from fewlabel.training.finetune import FinetuneConfig, finetune, predict_proba, snapshots_apply
from fewlabel.training.loop import Loop, LoopConfig
from fewlabel.training.recipe import cyclic_lr_factor, snapshot_epochs
from fewlabel.training.stacked import unstackable_reason


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "1")
    assert compute.resolve_precision("auto", "cpu") == "bf16"
    assert compute.resolve_precision("auto", "cpu", amp=False) == "fp32"  # the older switch still wins
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "0")
    assert compute.resolve_precision("auto", "cpu") == "fp32"
    assert compute.resolve_precision("bf16", "cpu") == "bf16"  # asked for: given, even emulated
    with pytest.raises(FewlabelError, match="fp16 needs a CUDA"):
        compute.resolve_precision("fp16", "cpu")
    with pytest.raises(FewlabelError, match="precision must be one of"):
        compute.resolve_precision("half", "cpu")


def test_probe_follows_the_cpu_when_not_pinned(monkeypatch):
    monkeypatch.delenv(compute.NATIVE_BF16_ENV, raising=False)
    probes = [getattr(torch.cpu, p, lambda: False)() for p in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    assert compute.native_bf16_cpu() == any(probes)


def test_resolved_config_is_concrete_and_said_in_one_line(monkeypatch):
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "1")
    config = compute.resolved(FinetuneConfig(device="auto", ensemble=3))
    assert (config.device, config.precision, config.ensemble_mode, config.channels_last) == (
        "cpu", "bf16", "independent", True)
    line = compute.compute_line(config, 3)
    assert line.startswith("compute: cpu, bf16") and "one by one" in line and "\n" not in line
    asked = compute.resolved(FinetuneConfig(device="cpu", ensemble=3, ensemble_mode="snapshot"))
    assert "snapshots of one run" in compute.compute_line(asked, 3)
    explicit = compute.resolved(FinetuneConfig(precision="fp32", ensemble_mode="independent",
                                               channels_last=False))
    assert (explicit.precision, explicit.ensemble_mode, explicit.channels_last) == (
        "fp32", "independent", False)
    assert "one by one" in compute.compute_line(explicit, 3)


def test_loop_autocasts_to_the_resolved_precision_on_cpu(monkeypatch):
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "1")
    loop = Loop(LoopConfig(device="cpu", precision="auto"))
    with loop.autocast():
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert loop.precision == "bf16" and out.dtype == torch.bfloat16
    # the preparations (precision None) keep fp32 on a CPU whatever it can do
    legacy = Loop(LoopConfig(device="cpu"))
    with legacy.autocast():
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.float32
    assert not legacy.scaler.is_enabled()


def test_bf16_fine_tune_learns_and_is_scored_in_bf16_where_native(monkeypatch):
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "1")
    x, y = blobs()
    xt, yt = blobs(seed=1)
    torch.manual_seed(0)
    config = FinetuneConfig(**{**FAST, "max_epochs": 15, "lr": 3e-3})
    clf, _ = finetune(x, y, None, None, 2, tiny_encoder(), config, seed=0)
    assert clf.precision == "bf16" and clf.channels_last is True
    proba = predict_proba(clf, xt)
    assert (proba.argmax(1) == yt).mean() >= 0.9 and proba.dtype == np.float32
    assert np.allclose(proba.sum(1), 1, atol=1e-3)
    fp32 = predict_proba(clf, xt, precision="fp32")
    # bf16 scoring rounds: close to the fp32 scores of the same weights, not equal to them
    assert np.abs(proba - fp32).max() < 0.05 and not np.array_equal(proba, fp32)
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "0")  # another machine without bf16: scored in fp32
    np.testing.assert_array_equal(predict_proba(clf, xt), fp32)


def test_channels_last_changes_only_the_rounding():
    x, y = blobs()
    probs = []
    for layout in (False, True):
        torch.manual_seed(0)
        config = FinetuneConfig(**FAST, precision="fp32", channels_last=layout)
        clf, _ = finetune(x, y, None, None, 2, tiny_encoder(), config, seed=0)
        probs.append(predict_proba(clf, x))
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-4)


def test_snapshot_schedule_is_the_fine_tune_then_short_restarted_cycles():
    assert snapshot_epochs(30, 3) == [30, 35, 40] and snapshot_epochs(3, 3) == [3, 4, 5]
    assert snapshot_epochs(30, 1) == [30]
    with pytest.raises(FewlabelError):
        snapshot_epochs(0, 3)
    bounds = [100, 120, 140]
    # the fine-tune's own schedule first: constant stays constant, cosine decays over the first cycle
    assert cyclic_lr_factor(0, bounds, 0) == cyclic_lr_factor(99, bounds, 0) == 1.0
    assert math.isclose(cyclic_lr_factor(50, bounds, 0, "cosine"), 0.5)
    assert cyclic_lr_factor(4, bounds, 10) == 0.5  # warm-up
    # then each short cycle restarts at the base rate and anneals to 0
    assert cyclic_lr_factor(100, bounds, 0) == 1.0 and math.isclose(cyclic_lr_factor(110, bounds, 0), 0.5)
    assert cyclic_lr_factor(119, bounds, 0) < 0.01 and cyclic_lr_factor(120, bounds, 0) == 1.0
    assert cyclic_lr_factor(140, bounds, 0) == 0.0


def test_snapshot_ensemble_costs_one_run_and_its_members_differ():
    x, y = blobs()
    xt, yt = blobs(seed=1)
    config = FinetuneConfig(**{**FAST, "max_epochs": 9, "lr": 3e-3}, ensemble=3, ensemble_mode="snapshot",
                            precision="fp32")
    torch.manual_seed(0)
    start = tiny_encoder()
    snap, fit = finetune(x, y, None, None, 2, copy.deepcopy(start), config, seed=0)
    single, one = finetune(x, y, None, None, 2, copy.deepcopy(start),
                           FinetuneConfig(**{**FAST, "max_epochs": 9, "lr": 3e-3}, precision="fp32"), seed=0)
    assert isinstance(snap, Ensemble) and len(snap.members) == 3
    # the fine-tune's 9 epochs, then 2 cycles of 2: 13 epochs of one run, not 27 of three
    assert fit.epochs == 13 and fit.steps == one.steps * 13 // 9
    # the first member IS the single fine-tune (same seed, same schedule up to its end)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(snap.members[0].state_dict()[key], value, rtol=0, atol=0)
    states = [m.state_dict() for m in snap.members]
    weights = [k for k in states[0] if states[0][k].is_floating_point()]
    for a, b in ((0, 1), (1, 2)):
        assert any(not torch.equal(states[a][k], states[b][k]) for k in weights)
    assert (predict_proba(snap, xt).argmax(1) == yt).mean() >= 0.9
    mean = np.mean([predict_proba(m, xt) for m in snap.members], axis=0)
    np.testing.assert_allclose(predict_proba(snap, xt), mean, atol=1e-5)
    # the same seed gives the same snapshots
    torch.manual_seed(0)
    again, _ = finetune(x, y, None, None, 2, copy.deepcopy(start), config, seed=0)
    np.testing.assert_array_equal(predict_proba(again, xt), predict_proba(snap, xt))


def test_snapshots_need_a_fixed_schedule_else_members_train_independently():
    config = compute.resolved(FinetuneConfig(ensemble=3, ensemble_mode="snapshot", max_epochs=30))
    assert snapshots_apply(config, has_val=False)
    assert not snapshots_apply(config, has_val=True)  # early stopping would pick one epoch
    assert not snapshots_apply(compute.resolved(FinetuneConfig(ensemble=3, ensemble_mode="snapshot",
                                                               semi=True)), has_val=False)
    x, y = blobs()
    torch.manual_seed(0)
    model, fit = finetune(x, y, x[::4], y[::4], 2, tiny_encoder(),
                          FinetuneConfig(**FAST, ensemble=2, ensemble_mode="snapshot"), seed=0)
    assert isinstance(model, Ensemble) and fit.best_epoch is not None  # independent, with validation


def test_stacking_refuses_what_it_would_compute_otherwise(monkeypatch):
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "1")
    assert "bf16 autocast on a CPU" in unstackable_reason(compute.resolved(FinetuneConfig(device="cpu")))
    monkeypatch.setenv(compute.NATIVE_BF16_ENV, "0")
    snapshot = compute.resolved(FinetuneConfig(ensemble=3, hold_out=False, max_epochs=30,
                                               ensemble_mode="snapshot"))
    assert "snapshot" in unstackable_reason(snapshot)
    independent = compute.resolved(FinetuneConfig(ensemble=3, ensemble_mode="independent", max_epochs=30))
    assert unstackable_reason(independent) is None


def _curve(finetune: dict, specs: dict | None = None) -> CurveConfig:
    return CurveConfig(data_fingerprint="d" * 16, strategies=("imagenet",),
                       strategy_specs=specs or {"imagenet": {"finetune": {"ensemble": 3}}}, sizes=(2,),
                       repeats=1, finetune=finetune)


def test_run_hash_names_precision_and_members_but_not_the_layout():
    before = _curve({"device": "cpu"})  # a run written before these settings existed
    fp32 = _curve({"device": "cpu", "precision": "fp32", "ensemble_mode": "independent",
                   "channels_last": True})
    assert fp32.config_hash() == before.config_hash() and fp32.extends(before.to_dict())
    bf16 = _curve({"device": "cpu", "precision": "bf16", "ensemble_mode": "independent"})
    assert bf16.config_hash() != before.config_hash()
    assert any("precision" in d for d in bf16.differences(before.to_dict()))
    snap = _curve({"device": "cpu", "precision": "fp32", "ensemble_mode": "snapshot"})
    assert snap.config_hash() != before.config_hash()
    # with no ensemble anywhere, how members would be made changes no number
    lone = {"imagenet": {"finetune": {}}}
    assert (_curve({"device": "cpu", "ensemble_mode": "snapshot"}, lone).config_hash()
            == _curve({"device": "cpu"}, lone).config_hash())
