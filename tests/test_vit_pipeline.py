"""A ViT from a user's checkpoint through fewlabel: fine-tuning, prediction, saliency and Grad-CAM, the
model folder, and ``fewlabel train --encoder vit --encoder-weights FILE``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_vit_refs import RefViT, write_timm

from fewlabel.explain.attributions import attribute
from fewlabel.fileio import file_sha256
from fewlabel.models.io import load_model_dir, save_model_dir
from fewlabel.models.vit import PRETRAINING_NOTE
from fewlabel.models.vit_io import load_vit_encoder
from fewlabel.training.finetune import FinetuneConfig, finetune, predict_proba

from factory import make_class_folder, run_cli


def _data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    x[y == 1, :, 4:12, 4:12] += 2.0  # class 1: a bright square in the middle
    return x, y


def test_finetune_predict_explain_and_save(tmp_path: Path) -> None:
    path = write_timm(RefViT("timm", reg=4, ls=True, swiglu=True), tmp_path / "vit.safetensors")
    enc = load_vit_encoder(path, in_channels=1, input_size=None)
    start = enc.blocks[0].attn.qkv.weight.detach().clone()
    x, y = _data()
    config = FinetuneConfig(max_epochs=2, batch_size=4, ensemble=1, device="cpu", progress=False)
    clf, fit = finetune(x, y, None, None, 2, enc, config, seed=0)
    assert fit.epochs == 2
    assert not torch.equal(clf.encoder.blocks[0].attn.qkv.weight.detach(), start)  # the ViT was trained
    proba = predict_proba(clf, x, device="cpu")
    assert proba.shape == (12, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    for method in ("saliency", "gradcam"):
        maps = attribute(clf, x[:3], method=method)
        assert maps.shape == (3, 16, 16) and np.isfinite(maps).all()
        # Grad-CAM's map lies on the path to the class token: its gradient is not zero
        assert all(m.max() > 0 for m in maps), method
    save_model_dir(tmp_path / "model", clf, {"class_names": ["a", "b"]})
    loaded, config_json = load_model_dir(tmp_path / "model")
    assert config_json["encoder"]["weights"]["sha256"] == file_sha256(path)
    np.testing.assert_allclose(predict_proba(loaded, x, device="cpu"), proba, atol=1e-6)


@pytest.mark.parametrize("how", [["--encoder", "vit"], ["--strategy", "foundation"]])
def test_cli_train_and_predict_with_vit_weights(tmp_path: Path, how: list[str]) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    # width 64: one head of 64 channels, guessed without a JSON beside the file
    weights = write_timm(RefViT("timm", dim=64, heads=1, hidden=128, patch=16, img=32, ls=True),
                         tmp_path / "dinov2_like.safetensors", heads=None)
    out = tmp_path / "model"
    assert run_cli("train", data, "--out", out, *how, "--encoder-weights", weights,
                   "--set", "ensemble=1", "--set", "max_epochs=1") == 0
    config = json.loads((out / "config.json").read_text())
    record = config["encoder"]["weights"]
    assert config["encoder"]["name"] == "vit" and config["encoder"]["input_size"] == 224
    assert record["sha256"] == file_sha256(weights) and record["note"] == PRETRAINING_NOTE
    notes = json.loads((out / "metrics.json").read_text())["notes"]
    assert any(PRETRAINING_NOTE in n and "dinov2_like.safetensors" in n for n in notes)
    assert run_cli("predict", out, data / "a", "--out", tmp_path / "p.csv") == 0
    with open(tmp_path / "p.csv", newline="") as fh:
        assert len(list(csv.reader(fh))) == 1 + 6
    image = sorted((data / "a").iterdir())[0]
    # saliency explains a ViT; LRP has no rule for attention, and says so in one line
    assert run_cli("explain", out, image, "--out", tmp_path / "ex", "--method", "saliency") == 0
    assert any((tmp_path / "ex").glob("*_saliency.npy"))
    assert run_cli("explain", out, image, "--out", tmp_path / "ex2", "--method", "lrp") != 0


def test_foundation_without_weights_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    assert run_cli("train", data, "--out", tmp_path / "m", "--strategy", "foundation") != 0
    err = [line for line in capsys.readouterr().err.splitlines() if "--encoder-weights" in line]
    assert len(err) == 1 and "checkpoint you hold" in err[0]
    # a curve refuses it before its folder is written, not with a failed cell per draw
    assert run_cli("curve", data, "--out", tmp_path / "run", "--strategies", "foundation", "--sizes", "2",
                   "--repeats", "1", "-q") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint you hold" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_fine_tuned_vit_seeds_another_run_the_fewlabel_way(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    weights = write_timm(RefViT("timm", dim=64, heads=1, hidden=128, patch=16, img=32),
                         tmp_path / "vit.pth", heads=None)
    quick = ("--set", "ensemble=1", "--set", "max_epochs=1")
    assert run_cli("train", data, "--out", tmp_path / "first", "--encoder", "vit", "--encoder-weights",
                   weights, *quick) == 0
    # the model file records the images it saw, so it is checked against the test set, then loaded as is
    again = tmp_path / "first" / "model.safetensors"
    assert run_cli("train", data, "--out", tmp_path / "second", "--strategy", "foundation",
                   "--encoder-weights", again, *quick) == 0
    config = json.loads((tmp_path / "second" / "config.json").read_text())
    assert config["encoder"]["weights"]["sha256"] == file_sha256(weights)  # still names the foundation file
    notes = json.loads((tmp_path / "second" / "metrics.json").read_text())["notes"]
    assert not any(PRETRAINING_NOTE in n for n in notes)  # not read as a foundation checkpoint this time


def test_curve_takes_a_vit_checkpoint_for_probe_and_foundation(tmp_path: Path, capsys) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 8, "b": 8}, size=(32, 32))
    weights = write_timm(RefViT("timm", dim=64, heads=1, hidden=128, patch=16, img=32, ls=True),
                         tmp_path / "vit.safetensors", heads=None)
    run = tmp_path / "run"
    assert run_cli("curve", data, "--out", run, "--strategies", "probe,foundation", "--sizes", "2",
                   "--repeats", "1", "--test-size", "2", "--encoder", "vit", "--encoder-weights", weights,
                   "--set", "max_epochs=1", "--set", "ensemble=1", "--quiet") == 0
    specs = json.loads((run / "run.json").read_text())["config"]["strategy_specs"]
    assert {specs[s]["encoder_weights"] for s in ("probe", "foundation")} == {str(weights.resolve())}
    assert specs["probe"]["encoder"] == "vit"
    capsys.readouterr()
    # another checkpoint under the same path is another run: refused, never resumed into this one
    write_timm(RefViT("timm", dim=64, heads=1, hidden=128, patch=16, img=32, ls=True, seed=1),
               tmp_path / "vit.safetensors", heads=None)
    assert run_cli("curve", data, "--out", run, "--strategies", "probe,foundation", "--sizes", "2",
                   "--repeats", "1", "--test-size", "2", "--encoder", "vit", "--encoder-weights", weights,
                   "--set", "max_epochs=1", "--set", "ensemble=1", "--quiet") == 2
    assert "encoder weights file (sha256)" in capsys.readouterr().err
    # a run none of whose strategies takes an encoder file: the flags would change nothing
    assert run_cli("curve", data, "--out", tmp_path / "r2", "--strategies", "scratch", "--encoder-weights",
                   weights) == 2
    assert "name one of them in --strategies" in capsys.readouterr().err


def test_encoder_weights_that_are_a_fifo_are_named_as_one(tmp_path: Path, capsys) -> None:
    import os

    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    assert run_cli("train", data, "--out", tmp_path / "m", "--encoder", "vit", "--encoder-weights", fifo) == 2
    assert "is a FIFO" in capsys.readouterr().err
    assert run_cli("curve", data, "--out", tmp_path / "r", "--strategies", "probe", "--encoder-weights",
                   fifo) == 2
    assert "is a FIFO" in capsys.readouterr().err
