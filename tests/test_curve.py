"""The learning-curve orchestration on a fake pipeline: RUN_DIR layout, paired nested draws, seeds,
resume, refusal of another configuration, skipped and failed cells, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from curve_fakes import FakeBackend, make_fake_data

from fewlabel.errors import ConfigMismatchError, FewlabelError
from fewlabel.experiments import CSV_COLUMNS, Curve, ResultStore, RunView, run_curve
from fewlabel.experiments.grid import train_seed

GRID = {"strategies": "scratch,ssl", "sizes": [2, 5], "repeats": 2}


def _run(data, out, **kw):
    args = {**GRID, "backend": FakeBackend(), "log": None, "progress": False, "command": "test", **kw}
    return run_curve(data, out, **args)


@pytest.fixture
def data(tmp_path):
    return make_fake_data(tmp_path / "data", {"a": 20, "b": 20, "c": 20})


def test_run_writes_the_layout(data, tmp_path):
    out = tmp_path / "run"
    result = _run(data, out)
    assert result.ok and result.counts == {"ok": 8, "failed": 0, "skipped": 0} and result.ran == 8
    assert {p.name for p in out.iterdir()} >= {"run.json", "store.sqlite", "results.csv", "plan.json",
                                                "pretrained", "cells"}
    run = json.loads((out / "run.json").read_text())
    assert run["config_hash"] == result.config_hash and run["command"] == "test"
    assert run["dataset"]["classes"] == ["a", "b", "c"] and run["dataset"]["n_test"] == 12
    assert {"python", "torch", "numpy", "fewlabel", "monai", "captum"} <= set(run["versions"])
    assert run["data_args"]["data"] == str(data.resolve()) and run["status"]["ok"] == 8
    assert "ssl" in run["preparations"]
    with open(result.results_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0])[: len(CSV_COLUMNS)] == CSV_COLUMNS and len(rows) == 8
    # keep_models="first": model dirs for repeat 0 only; probabilities for every cell
    assert (out / "cells/ssl/n5_r0/config.json").exists()
    assert (out / "cells/ssl/n5_r0/proba_test.npy").exists()
    assert not (out / "cells/ssl/n5_r1/config.json").exists()
    assert (out / "cells/ssl/n5_r1/proba_test.npy").exists()
    by_key = {(r["strategy"], r["n_per_class"], r["repeat"]): r for r in result.rows}
    assert by_key[("ssl", 5, 0)]["model_path"] == "cells/ssl/n5_r0"
    assert by_key[("ssl", 5, 1)]["model_path"] == ""
    proba = np.load(out / by_key[("ssl", 5, 1)]["proba_path"])
    assert proba.shape == (12, 3)
    assert not list(out.rglob(".*tmp*"))


def test_draws_are_nested_paired_and_seeded(data, tmp_path):
    out = tmp_path / "run"
    result = _run(data, out)
    split = json.loads((out / "plan.json").read_text())
    draws = {(d["n_per_class"], d["repeat"]): set(d["labelled"]) for d in split["draws"].values()}
    for r in range(2):
        assert draws[(2, r)] < draws[(5, r)]  # nested within a repeat
        assert not draws[(5, r)] & set(split["test"]["ids"])  # never a test image
    assert draws[(5, 0)] != draws[(5, 1)]
    for n in (2, 5):
        for r in range(2):
            cells = [json.loads((out / f"cells/{s}/n{n}_r{r}/cell.json").read_text())
                     for s in ("scratch", "ssl")]
            assert cells[0]["labelled_ids"] == cells[1]["labelled_ids"]  # paired: same images
            assert cells[0]["seed"] == cells[1]["seed"] == train_seed(0, r, n)  # ... and the same seed
    seeds = {(r["strategy"], r["n_per_class"], r["repeat"]): r["seed"] for r in result.rows}
    assert seeds[("scratch", 5, 1)] == seeds[("ssl", 5, 1)]


def test_rerun_skips_finished_cells(data, tmp_path):
    out = tmp_path / "run"
    first = _run(data, out)
    again = _run(data, out)
    assert again.ran == 0 and again.resumed == 8
    assert [r["roc_auc"] for r in again.rows] == [r["roc_auc"] for r in first.rows]
    assert (out / "pretrained/computed.log").read_text().split() == ["ssl"]  # prepared once, cached
    run = json.loads((out / "run.json").read_text())
    assert len(run["invocations"]) == 2


def test_same_seeds_same_numbers_in_another_run_dir(data, tmp_path):
    a = _run(data, tmp_path / "a")
    b = Curve(**GRID, backend=FakeBackend(), log=None, progress=False).run(data, tmp_path / "b")
    cols = ("strategy", "n_per_class", "repeat", "seed", "roc_auc", "accuracy")
    assert [[r[c] for c in cols] for r in a.rows] == [[r[c] for c in cols] for r in b.rows]


def test_another_configuration_is_refused_and_named(data, tmp_path):
    out = tmp_path / "run"
    _run(data, out, sizes=[2, 5], repeats=1)
    with pytest.raises(ConfigMismatchError) as err:
        _run(data, out, sizes=[2, 10], repeats=1)  # drops size 5: not a growth
    msg = str(err.value)
    assert msg.startswith(f"{out}: holds a run of another configuration (sizes 2,5 vs 2,10)")
    assert msg.endswith("a run may only add sizes or repeats: use a new --out or delete it")
    with pytest.raises(ConfigMismatchError, match="strategies scratch,ssl vs scratch"):
        _run(data, out, strategies="scratch", repeats=1)
    (data / "fake.json").write_text(json.dumps({"classes": {"a": 21, "b": 20, "c": 20}}))
    with pytest.raises(ConfigMismatchError, match="data "):
        _run(data, out, repeats=1)
    assert len(RunView(out).rows()) == 4  # nothing was mixed in


class _ResizingBackend(FakeBackend):
    """imagenet's encoder resizes its input (as MobileNetV2 does); the others compute at the data's size."""

    def strategy_spec(self, name):
        encoder = "mobilenet_v2" if name == "imagenet" else "fake"
        return {**super().strategy_spec(name), "encoder": encoder, "encoder_kwargs": {"input_size": 160}}


def test_input_size_reaches_the_default_strategies_and_is_part_of_the_configuration(data, tmp_path):
    """With the strategies left to the data (scratch + imagenet), ``input_size`` reaches imagenet only,
    is recorded in run.json, and a resume at another size is refused instead of mixing the two."""
    out = tmp_path / "run"
    args = {"sizes": [2], "repeats": 1, "backend": _ResizingBackend(), "log": None, "progress": False}
    run_curve(data, out, None, input_size=64, **args)
    specs = json.loads((out / "run.json").read_text())["config"]["strategy_specs"]
    assert set(specs) == {"scratch", "imagenet"}
    assert specs["imagenet"]["encoder_kwargs"]["input_size"] == 64
    assert specs["scratch"]["encoder_kwargs"]["input_size"] == 160  # not a resizing encoder: untouched
    with pytest.raises(ConfigMismatchError):
        run_curve(data, out, None, input_size=96, **args)
    with pytest.raises(FewlabelError, match="--input-size .* scratch computes at the images' own size"):
        run_curve(data, tmp_path / "other", "scratch", input_size=64, **args)
    assert not (tmp_path / "other").exists()


def test_a_run_grows_by_sizes_and_repeats_and_keeps_its_cells(data, tmp_path):
    out = tmp_path / "run"
    first = _run(data, out, sizes=[2, 5], repeats=1)
    before = {(r["strategy"], r["n_per_class"], r["repeat"]): r for r in RunView(out).rows()}
    old_hash = json.loads((out / "run.json").read_text())["config_hash"]
    grown = _run(data, out, sizes=[2, 5, 10], repeats=2)
    assert grown.ran == 2 * 3 * 2 - len(first.rows) and grown.resumed == len(first.rows)
    after = {(r["strategy"], r["n_per_class"], r["repeat"]): r for r in RunView(out).rows()}
    for key, row in before.items():  # the finished cells were kept, not run again
        assert after[key]["finished_at"] == row["finished_at"] and after[key]["roc_auc"] == row["roc_auc"]
    run = json.loads((out / "run.json").read_text())
    assert run["earlier_hashes"] == [old_hash] and run["config"]["sizes"] == [2, 5, 10]
    plan = json.loads((out / "plan.json").read_text())
    assert {"n10_r1", "n2_r0"} <= set(plan["draws"])
    assert _run(data, out, sizes=[2, 5, 10], repeats=2).ran == 0
    with pytest.raises(ConfigMismatchError, match="repeats 2 vs 1"):
        _run(data, out, sizes=[2, 5, 10], repeats=1)  # fewer repeats: not a growth
    with pytest.raises(ConfigMismatchError, match="pretraining per repeat"):  # named, not a KeyError
        _run(data, out, sizes=[2, 5, 10, 20], repeats=2, pretrain_per_repeat=True)


def test_a_folder_that_is_not_a_run_is_refused(data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(FewlabelError, match="holds no fewlabel run"):
        _run(data, out)
    assert (out / "notes.txt").read_text() == "precious"


def test_sizes_a_class_cannot_supply_are_skipped(tmp_path):
    data = make_fake_data(tmp_path / "data", {"a": 30, "b": 8})
    lines = []
    result = _run(data, tmp_path / "run", sizes=[2, 5, 10], test_size=2, log=lines.append)
    skipped = [r for r in result.rows if r["status"] == "skipped"]
    assert len(skipped) == 2 * 2 and {r["n_per_class"] for r in skipped} == {10}
    assert "class b has 6 images" in skipped[0]["error"]
    assert any("n=10" in line and "skipped" in line for line in lines)
    assert result.ok and result.counts["ok"] == 8
    assert _run(data, tmp_path / "run", sizes=[2, 5, 10], test_size=2).ran == 0


def test_failed_cells_are_recorded_and_retried(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("FAKE_FAIL", "ssl:5")
    result = _run(data, out)
    assert not result.ok and len(result.failed) == 2 and result.counts["ok"] == 6
    assert result.failed[0]["error"] == "ValueError: loss is NaN at epoch 2 (strategy ssl)"
    assert "Traceback" in result.failed[0]["extra"]["traceback"]
    monkeypatch.delenv("FAKE_FAIL")
    again = _run(data, out)
    assert again.ok and again.ran == 2 and again.counts == {"ok": 8, "failed": 0, "skipped": 0}
    assert len(again.rows) == 8


def test_failed_preparation_fails_its_cells_only(data, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PREP_FAIL", "ssl")
    result = _run(data, tmp_path / "run")
    assert {r["strategy"] for r in result.failed} == {"ssl"} and len(result.failed) == 4
    assert result.failed[0]["error"].startswith("preparation of ssl failed: RuntimeError: ssl pretraining")
    assert result.counts["ok"] == 4


def test_bad_arguments(data, tmp_path):
    with pytest.raises(FewlabelError, match="unknown strategy magic"):
        _run(data, tmp_path / "r", strategies="scratch,magic")
    with pytest.raises(FewlabelError, match="needs masks"):
        _run(data, tmp_path / "r", strategies="segmentation")
    with pytest.raises(ValueError, match="sizes"):
        _run(data, tmp_path / "r", sizes="2,x")
    with pytest.raises(ValueError, match="keep_models"):
        _run(data, tmp_path / "r", keep_models="some")


def test_keep_models_all_and_none(data, tmp_path):
    all_ = _run(data, tmp_path / "all", keep_models="all")
    assert all(r["model_path"] for r in all_.rows)
    none = _run(data, tmp_path / "none", keep_models="none")
    assert not any(r["model_path"] for r in none.rows)
    assert not list((tmp_path / "none").rglob("config.json"))


def test_drop_classes(tmp_path):
    data = make_fake_data(tmp_path / "data", {"a": 20, "b": 20, "rare": 2})
    result = _run(data, tmp_path / "run", drop_classes=["rare"], repeats=1)
    assert result.ok
    assert json.loads((tmp_path / "run/run.json").read_text())["dataset"]["classes"] == ["a", "b"]


def test_store_is_readable_while_and_after(data, tmp_path):
    out = tmp_path / "run"
    _run(data, out)
    with ResultStore(out, create=False) as store:
        assert len(store.rows()) == 8


def _cli(args: list[str]) -> int:
    from fewlabel.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli(data, tmp_path, monkeypatch, capsys):
    import fewlabel.experiments.curve as curve_mod

    monkeypatch.setattr(curve_mod, "PipelineBackend", FakeBackend)
    out = tmp_path / "run"
    args = ["curve", str(data), "--out", str(out), "--strategies", "scratch,ssl", "--sizes", "2,5",
            "--repeats", "2", "--max-epochs", "3", "--set", "augment=none", "-q"]
    assert _cli(args) == 0
    printed = capsys.readouterr().out
    assert f"results: {out / 'results.csv'}" in printed and f"fewlabel report {out}" in printed
    assert "ssl" in printed and "median" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["finetune"] == {"max_epochs": 3, "augment": "none"}

    assert _cli([*args[:7], "2", "-q"]) == 2  # --sizes 2: another configuration
    assert "holds a run of another configuration (sizes 2,5 vs 2;" in capsys.readouterr().err

    monkeypatch.setenv("FAKE_FAIL", "scratch:2")
    code = _cli(["curve", str(data), "--out", str(tmp_path / "r2"), "--strategies", "scratch", "--sizes", "2",
                 "--repeats", "1", "-q"])
    assert code == 1
    err = capsys.readouterr().err
    assert "1 cell(s) failed (first: scratch n=2 r=0: ValueError: loss is NaN at epoch 2" in err


def test_process_pool_gives_the_same_rows(data, tmp_path):
    one = _run(data, tmp_path / "one")
    two = _run(data, tmp_path / "two", workers=2)
    cols = ("strategy", "n_per_class", "repeat", "seed", "roc_auc", "accuracy", "model_path")
    assert [[r[c] for c in cols] for r in two.rows] == [[r[c] for c in cols] for r in one.rows]


def test_one_driver_per_run_dir(data, tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as if another curve were running
        fh.write("4242")
        fh.flush()
        with pytest.raises(FewlabelError, match=r"another fewlabel curve \(pid 4242\)"):
            _run(data, out)
    assert _run(data, out).ok  # the lock is gone with its holder


def test_pretrain_and_strategy_options_enter_the_config(data, tmp_path):
    out = tmp_path / "run"
    _run(data, out, pretrain={"steps": 3}, strategy_options={"scratch": {"encoder": "tiny"}}, repeats=1)
    run = json.loads((out / "run.json").read_text())
    specs = run["config"]["strategy_specs"]
    assert specs["ssl"]["pretrain"] == {"steps": 3} and specs["scratch"]["encoder"] == "tiny"
    assert specs["scratch"]["pretrain"] == {"steps": 10}  # scratch does not pretrain: left as it was
    with pytest.raises(ConfigMismatchError, match=r"\(strategy ssl.pretrain.steps 3 vs 10\)"):
        _run(data, out, strategy_options={"scratch": {"encoder": "tiny"}}, repeats=1)
    with pytest.raises(FewlabelError, match="has no setting 'colour'"):
        _run(data, tmp_path / "x", strategy_options={"ssl": {"colour": 1}})
    with pytest.raises(FewlabelError, match="does not run"):
        _run(data, tmp_path / "y", strategy_options={"gan": {"encoder": "x"}})


def test_a_resumed_run_keeps_its_prepared_encoder(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("FAKE_FAIL", "ssl:5")
    _run(data, out)  # ssl n=5 cells fail: they are left for the next run
    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.setenv("FAKE_PREP_SALT", "-new-code")  # the pipeline's cache key changed meanwhile
    assert _run(data, out).ok
    assert (out / "pretrained/computed.log").read_text().split() == ["ssl"]  # not pretrained again
    cells = out.glob("cells/ssl/*/cell.json")
    weights = {json.loads(p.read_text())["spec"]["encoder_weights"] for p in cells}
    assert len(weights) == 1  # one encoder for the whole curve
    run = json.loads((out / "run.json").read_text())
    assert not run["preparations"]["ssl"]["spec"]["encoder_weights"].startswith("/")  # relative to RUN_DIR


def test_a_lost_encoder_with_finished_cells_is_refused(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("FAKE_FAIL", "ssl:5")
    _run(data, out)
    monkeypatch.delenv("FAKE_FAIL")
    for enc in (out / "pretrained").glob("*.enc"):
        enc.unlink()
    with pytest.raises(ConfigMismatchError, match="the ssl encoder its finished cells used .* is gone"):
        _run(data, out)


def test_a_named_default_changes_the_hash_only_where_a_recipe_sets_it():
    """A curve's ``--set`` value equal to its default still wins over a recipe, so it is another
    configuration there; where no strategy's recipe sets the key it changes nothing and neither
    does the hash. The list of named keys itself is not hashed (runs made before it resume)."""
    from fewlabel.experiments.grid import CurveConfig

    def config(specs, finetune):
        return CurveConfig(data_fingerprint="d", strategies=tuple(specs), strategy_specs=specs, sizes=(2,),
                           repeats=1, finetune=finetune)

    imagenet = {"imagenet": {"finetune": {"weight_decay": 0.0}}}
    scratch = {"scratch": {}}
    named = {"weight_decay": 1e-4, "explicit": ["weight_decay"]}
    unnamed = {"weight_decay": 1e-4}
    assert config(imagenet, named).config_hash() != config(imagenet, unnamed).config_hash()
    assert config(scratch, named).config_hash() == config(scratch, unnamed).config_hash()
    empty_list = {**unnamed, "explicit": []}
    assert config(imagenet, empty_list).config_hash() == config(imagenet, unnamed).config_hash()
    said = " ".join(config(imagenet, named).differences(config(imagenet, unnamed).to_dict()))
    assert "finetune weight_decay (default) vs 0.0001" in said and "leave it out to resume" in said
    # a recipe whose value is the default itself (gan's lr 1e-3) changes nothing for a named lr 1e-3
    gan = {"gan": {"finetune": {"lr": 1e-3, "encoder_lr": 3e-4}}}
    lr_named = {"lr": 1e-3, "explicit": ["lr"]}
    assert config(gan, lr_named).config_hash() == config(gan, {"lr": 1e-3}).config_hash()


def test_settings_a_curve_is_given_reach_the_fine_tuning_as_named():
    """The cells' path: the backend names every setting given, so imagenet's recipe (weight decay 0)
    does not replace a given 1e-4; a recipe cannot name settings; a name must be a setting."""
    from fewlabel import pipeline
    from fewlabel.experiments.cell import PipelineBackend
    from fewlabel.training.finetune import FinetuneConfig

    backend = PipelineBackend()
    given = backend.finetune_config({"weight_decay": 1e-4, "device": "cpu"})
    assert given["explicit"] == ["device", "weight_decay"]
    spec = pipeline.default_spec("imagenet")
    assert pipeline.finetune_config_for(spec, FinetuneConfig.from_dict(given)).weight_decay == 1e-4
    assert pipeline.finetune_config_for(spec, FinetuneConfig.from_dict(
        backend.finetune_config({"device": "cpu"}))).weight_decay == 0.0
    with pytest.raises(FewlabelError, match="recipe cannot set explicit"):
        backend.check_spec({"name": "imagenet", "finetune": {"explicit": ["lr"]}})
    with pytest.raises(FewlabelError, match="unknown fine-tuning setting.*lrr"):
        backend.finetune_config({"explicit": ["lrr"]})


def test_another_encoder_for_a_strategy_starts_from_its_own_settings() -> None:
    from fewlabel.experiments.cell import PipelineBackend
    from fewlabel.experiments.curve import _spec

    backend = PipelineBackend()
    assert backend.strategy_spec("probe")["encoder_kwargs"] == {"input_size": 160}
    # the probe's 160-px MobileNetV2 input is not a convnet setting (it would fail every cell)
    assert _spec(backend, "probe", None, {"probe": {"encoder": "convnet"}})["encoder_kwargs"] == {}
    kept = _spec(backend, "probe", None, {"probe": {"encoder": "vit", "encoder_kwargs": {"input_size": 112}}})
    assert kept["encoder_kwargs"] == {"input_size": 112}


def test_a_refused_resume_names_what_blocks_it_not_the_sizes_it_may_add() -> None:
    from fewlabel.experiments.grid import CurveConfig

    base = {"data_fingerprint": "d", "strategies": ("scratch",), "strategy_specs": {"scratch": {}},
            "repeats": 2}
    stored = CurveConfig(**base, sizes=(1,)).to_dict()
    grown_other_seed = CurveConfig(**base, sizes=(1, 2), seed=3)
    assert not grown_other_seed.extends(stored)
    assert grown_other_seed.differences(stored) == ["seed 0 vs 3"]
    assert CurveConfig(**base, sizes=(2,)).differences(stored) == ["sizes 1 vs 2"]  # 1 dropped: blocks
