"""The strategy used when none is named: chosen from what the data offer."""

from __future__ import annotations

import pytest
from curve_fakes import FakeBackend, make_fake_data

from fewlabel import strategies
from fewlabel.experiments import run_curve
from fewlabel.experiments.run_view import RunView


@pytest.mark.parametrize("dims,masks,expected", [
    (2, False, "imagenet"), (2, True, "imagenet"), (3, True, "segmentation"), (3, False, "scratch")])
def test_default_strategy_follows_the_data(dims, masks, expected):
    name, reason = strategies.default_strategy(dims, masks)
    assert name == expected and name in strategies.NAMES
    assert f"{dims}D" in reason
    assert name in strategies.default_note(name, reason)


def test_curve_without_strategies_runs_scratch_beside_the_default(tmp_path):
    lines: list[str] = []
    run_curve(make_fake_data(tmp_path / "data"), tmp_path / "run", None, "2", 1, backend=FakeBackend(),
              progress=False, log=lines.append)
    run = RunView(tmp_path / "run").info
    assert list(run["config"]["strategies"]) == ["scratch", "imagenet"]
    assert any(line.startswith("strategy: imagenet (default for this data") for line in lines)


def test_curve_keeps_an_explicit_choice(tmp_path):
    lines: list[str] = []
    run_curve(make_fake_data(tmp_path / "data"), tmp_path / "run", "ssl", "2", 1, backend=FakeBackend(),
              progress=False, log=lines.append)
    run = RunView(tmp_path / "run").info
    assert list(run["config"]["strategies"]) == ["ssl"]
    assert not any("default for this data" in line for line in lines)


def test_train_without_strategy_on_volumes_says_it_chose_scratch(tmp_path, capsys):
    import fewlabel
    from fewlabel.training.finetune import FinetuneConfig

    from factory import make_class_folder

    data = make_class_folder(tmp_path / "vol", classes={"a": 6, "b": 6}, size=(8, 8, 8), fmt="npy")
    model = fewlabel.train(data, labels_per_class=3, seed=0,
                           finetune=FinetuneConfig(max_epochs=1, progress=False, device="cpu"))
    assert model.config["strategy"]["name"] == "scratch"
    assert model.metrics["strategy_choice"].startswith("strategy: scratch (default for this data: 3D")
    assert "strategy: scratch" in capsys.readouterr().err
