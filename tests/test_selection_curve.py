"""Selection rules as a learning-curve axis: ``curve --selection`` trains every strategy on the rules'
picks beside the class-stratified draw, blind to labels and to the test set, paired and resumable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fewlabel.errors import FewlabelError
from fewlabel.experiments import run_curve
from fewlabel.experiments.arms import arm_name, arm_parts, parse_selection
from fewlabel.experiments.grid import CurveConfig
from fewlabel.pipeline import prepare_data
from fewlabel.pipeline.selection_draws import add_selection_draw, pool_embedding

from factory import fake_imagenet_file, make_class_folder, make_manifest, run_cli

CLASSES = {"a": 12, "b": 12, "c": 12}
RULES = ("random", "typiclust", "probcover")
FAST = {"max_epochs": 2}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-shaped ImageNet file (the selection embedding's encoder) and one feature cache for
    the module: features are keyed by content, so the tests share what they computed."""
    root = tmp_path_factory.mktemp("imagenet")
    fake_imagenet_file(root)
    return root


@pytest.fixture(autouse=True)
def imagenet_and_cache(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(next(shared.glob("mobilenet_v2-*.pth"))))
    monkeypatch.setenv("FEWLABEL_CACHE", str(shared / "cache"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("sel") / "cells", CLASSES, size=(32, 32), seed=3)


def curve(data: Path, out: Path, lines: list[str] | None = None, **kw: object):
    args = {"strategies": ["scratch"], "sizes": [1, 2], "repeats": 2, "selection": RULES, "test_size": 3,
            "finetune": FAST, "log": (lines.append if lines is not None else None), **kw}
    return run_curve(data, out, **args)


@pytest.fixture(scope="module")
def run(folder: Path, shared: Path,
        tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[str]]:
    """One curve with every rule (size 2, 2 repeats): its folder, result and log."""
    out = tmp_path_factory.mktemp("selrun") / "run"
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(next(shared.glob("mobilenet_v2-*.pth"))))
        mp.setenv("FEWLABEL_CACHE", str(shared / "cache"))
        result = curve(folder, out, lines, sizes=[2])
    return out, result, lines


def test_every_rule_is_an_arm_with_its_budget_recorded_and_no_test_image(run: tuple) -> None:
    out, result, _ = run
    arms = {r["strategy"] for r in result.rows}
    assert arms == {"scratch", *(f"scratch@{r}" for r in RULES)}
    assert result.counts["ok"] == 4 * 2 and result.ok
    plan = json.loads((out / "plan.json").read_text())
    test = set(plan["test"]["ids"])
    selected = [d for d in plan["draws"].values() if "selection" in d]
    assert len(selected) == len(RULES) * 2
    for d in selected:
        assert len(d["labelled"]) == d["n_per_class"] * len(CLASSES) == d["chosen"]["budget"]
        assert not test & set(d["labelled"]) and set(d["train"]) | set(d["val"]) == set(d["labelled"])
        assert 1 <= d["chosen"]["classes_covered"] <= len(CLASSES)
        assert sum(d["chosen"]["per_class"].values()) == d["chosen"]["budget"]
        # random draws by row: no embedding; the rules embed the pool (never the test set), in fp32
        expect = "none: uniform" if d["selection"] == "random" else f"the {len(plan['pool'])} pool images"
        assert expect in d["chosen"]["embedding"]
        assert d["selection"] == "random" or "fp32" in d["chosen"]["embedding"]
    # rows say which rule labelled them and how many classes its picks reached
    for row in result.rows:
        rule = arm_parts(row["strategy"])[1]
        extra = row.get("extra") or {}
        if rule is None:
            assert "selection" not in extra
        else:
            key = f"{rule}:n{row['n_per_class']}_r{row['repeat']}"
            assert extra["selection"] == rule
            assert extra["classes_covered"] == plan["draws"][key]["chosen"]["classes_covered"]


def test_arms_are_paired_the_same_test_set_and_training_seed(run: tuple) -> None:
    out, result, _ = run
    seeds: dict[tuple[int, int], set[int]] = {}
    for row in result.rows:
        seeds.setdefault((row["n_per_class"], row["repeat"]), set()).add(row["seed"])
        proba = np.load(out / row["proba_path"])
        assert proba.shape == (result.rows[0]["n_test"], len(CLASSES))
    assert all(len(s) == 1 for s in seeds.values())


def test_repeats_vary_the_selector_and_a_seed_repeats_its_picks(run: tuple, folder: Path,
                                                                 tmp_path: Path) -> None:
    """Each size is picked cold, so a run of sizes 1 and 2 makes the same picks at 2."""
    one = json.loads((run[0] / "plan.json").read_text())["draws"]
    curve(folder, tmp_path / "two", sizes=[1, 2], strategies=["knn"])
    two = json.loads((tmp_path / "two" / "plan.json").read_text())["draws"]
    for rule in RULES:
        assert one[f"{rule}:n2_r0"]["labelled"] == two[f"{rule}:n2_r0"]["labelled"]
    assert one["random:n2_r0"]["labelled"] != one["random:n2_r1"]["labelled"]
    assert one["random:n2_r0"]["draw_seed"] != one["random:n2_r1"]["draw_seed"]


def test_a_resumed_run_follows_its_picks_without_embedding_again(run: tuple, folder: Path) -> None:
    out, _, first = run
    assert any("embedding the training pool" in line for line in first)
    before = (out / "plan.json").read_text()
    again: list[str] = []
    result = curve(folder, out, lines=again, sizes=[2])
    assert result.ran == 0 and not any("embedding" in line for line in again)
    assert (out / "plan.json").read_text() == before


def test_the_rules_never_see_a_label(tmp_path: Path) -> None:
    """The same images with the training pool's labels shuffled: the same embedding, the same picks."""
    manifest = make_manifest(tmp_path / "m", CLASSES, size=(32, 32), splits=True)
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    pool = [r for r in rows if r["split"] != "test"]
    shuffled = [r["label"] for r in pool]
    np.random.default_rng(0).shuffle(shuffled)
    assert shuffled != [r["label"] for r in pool]
    for r, new in zip(pool, shuffled, strict=True):
        r["label"] = new
    other = manifest.with_name("shuffled.csv")
    with other.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    picks = []
    for path in (manifest, other):
        data = prepare_data(path, seed=0)
        x, _ = pool_embedding(data, "cpu")  # the second reads the first's features: same images
        entry = add_selection_draw(data, "typiclust", 2, 0, 7, lambda x=x: (x, "test embedding"))
        picks.append(entry["labelled"])
        assert not set(entry["labelled"]) & set(data.test_ids)
    assert picks[0] == picks[1]


def test_a_budget_beyond_the_pool_is_a_skipped_row_that_says_so(tmp_path: Path) -> None:
    small = make_class_folder(tmp_path / "small", {"a": 6, "b": 3}, size=(32, 32))
    result = run_curve(small, tmp_path / "run", strategies=["scratch"], sizes=[1, 3, 4], repeats=1,
                       selection=["random"], test_size=1, finetune=FAST, log=None)
    status = {(r["strategy"], r["n_per_class"]): r for r in result.rows}
    # 3 per class: class b has 2 in the pool (stratified skipped), 6 of 7 pool images can be picked
    assert status[("scratch", 3)]["status"] == "skipped" and status[("scratch@random", 3)]["status"] == "ok"
    assert status[("scratch@random", 4)]["status"] == "skipped"
    assert "budget of 8 images" in status[("scratch@random", 4)]["error"]
    assert "7 images of the training pool" in status[("scratch@random", 4)]["error"]


def test_selection_is_refused_in_one_line_where_it_cannot_run(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="selection rule oracle is unknown; choose from random"):
        parse_selection("typiclust,oracle")
    with pytest.raises(ValueError, match="cannot count groups"):
        curve(folder, tmp_path / "run", count="groups")
    assert not (tmp_path / "run").exists()


def test_cli_names_the_bad_rule(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli("curve", folder, "--out", tmp_path / "run", "--selection", "best")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--selection rule best is unknown" in err[0]


def test_a_run_without_selection_keeps_its_configuration_hash() -> None:
    base = {"data_fingerprint": "d", "strategies": ("scratch",), "strategy_specs": {"scratch": {}},
            "sizes": (1, 2), "repeats": 2}
    plain, empty = CurveConfig(**base), CurveConfig(**base, selection=())
    assert "selection" not in plain.hashed() and plain.config_hash() == empty.config_hash()
    chosen = CurveConfig(**base, selection=("typiclust",))
    assert chosen.config_hash() != plain.config_hash()
    assert chosen.arms == ("scratch", "scratch@typiclust")
    assert any(line.startswith("selection rules") for line in chosen.differences(plain.to_dict()))
    assert not chosen.extends(plain.to_dict())
    assert arm_parts(arm_name("imagenet+ssl", "probcover")) == ("imagenet+ssl", "probcover")


def test_the_report_shows_each_rule_against_random_with_the_classes_it_reached(run: tuple) -> None:
    from fewlabel.report.html import report_context

    out, result, _ = run
    values = report_context(out, n_boot=200)["sections"]["selection"]["values"]
    [block] = values["selection_blocks"]
    assert block["reference"] == "scratch@random"
    [table] = block["tables"]
    assert table["budget"] == 2 * len(CLASSES)
    lines = {line["arm"]: line for line in table["lines"]}
    assert set(lines) == {"scratch", *(f"scratch@{r}" for r in RULES)}
    assert lines["scratch@random"]["reference"] and lines["scratch"]["classes"] == "3 of 3"
    plan = json.loads((out / "plan.json").read_text())["draws"]
    reached = [plan[f"typiclust:n2_r{r}"]["chosen"]["classes_covered"] for r in (0, 1)]
    expect = (f"{min(reached)} of 3" if min(reached) == max(reached)
              else f"{min(reached)}–{max(reached)} of 3")
    assert lines["scratch@typiclust"]["classes"] == expect
    # two repeats: a difference, never a verdict
    difference = lines["scratch@typiclust"]["difference"]
    assert difference["few"] and not difference["above"]


def test_the_fewest_labels_sentence_names_a_clear_winner_only_when_intervals_part() -> None:
    from types import SimpleNamespace

    from fewlabel.report.sections.selection import fewest_labels

    def need(n, low, high):
        return SimpleNamespace(n=n, low=low, high=high)

    data = SimpleNamespace(targets={"a@random": need(8, 6, 11), "a@typiclust": need(3, 2, 4),
                                    "a@probcover": need(5, 4.5, 7)})
    arms = ["a@random", "a@typiclust", "a@probcover"]
    assert "a@typiclust needs the fewest" in fewest_labels(data, arms)
    assert "a clear difference" in fewest_labels(data, arms)
    data.targets["a@probcover"] = need(5, 3.5, 7)  # overlaps typiclust's 2-4
    assert "not a clear difference" in fewest_labels(data, arms)
    data.targets["a@probcover"] = need(3, 2, 5)
    assert "need the fewest labels alike" in fewest_labels(data, arms)
    assert fewest_labels(SimpleNamespace(targets={"a@random": need(3, 2, 4)}), arms) is None


@pytest.mark.slow  # explanations of every arm: ~3 s, kept out of the 2-minute fast suite
def test_the_report_explains_every_arm_and_can_skip_the_checks(run: tuple, tmp_path: Path) -> None:
    from fewlabel.report import build_report

    out, _, _ = run
    path = build_report(out, tmp_path / "report.html", n_boot=100, check_per_class=0)
    index = json.loads((out / "explanations" / "index.json").read_text())
    assert index["check_images"] == 0 and not index["errors"]
    assert {c["strategy"] for c in index["cells"]} == {"scratch", *(f"scratch@{r}" for r in RULES)}
    assert all(not c.get("checks") for c in index["cells"])
    assert 'id="selection"' in path.read_text()


def test_runs_written_before_these_settings_resume_under_their_old_hash() -> None:
    """Golden hashes of the configuration before selection rules and weight digests existed: such runs
    keep their hash, and a run that named --encoder-weights resumes (it gains the file's digest)."""
    base = {"data_fingerprint": "c-0123456789abcdef", "strategies": ("probe",), "sizes": (2, 5), "repeats": 3}
    plain = CurveConfig(**base, strategy_specs={"probe": {"name": "probe", "encoder": "vit"}})
    assert plain.config_hash() == "a541ddaabf89c484"
    specs = {"probe": {"name": "probe", "encoder": "vit", "encoder_weights": "/w/vit.pth"}}
    before = CurveConfig(**base, strategy_specs=specs).to_dict()
    before.pop("weights_sha256")
    before.pop("selection")
    now = CurveConfig(**base, strategy_specs=specs, weights_sha256={"probe": "ab" * 32})
    assert CurveConfig(**base, strategy_specs=specs).config_hash() == "b63c0302dad46a2c"
    assert now.extends(before) and not now.differences(before)
    # once recorded, another file is another run
    other = CurveConfig(**base, strategy_specs=specs, weights_sha256={"probe": "cd" * 32})
    assert not other.extends(now.to_dict())


def test_the_rules_order_names_one_run() -> None:
    assert parse_selection("probcover, typiclust,random") == ("random", "typiclust", "probcover")


def test_random_needs_no_embedding_and_an_embedding_rule_is_refused_on_volumes_before_any_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volumes = make_class_folder(tmp_path / "vol", {"a": 5, "b": 5}, size=(8, 16, 16), fmt="npy")
    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(tmp_path / "missing.pth"))  # none to load
    out = tmp_path / "run"
    with pytest.raises(FewlabelError, match="3D volumes: use --selection random"):
        run_curve(volumes, out, strategies=["scratch"], sizes=[1], repeats=1, selection=["typiclust"],
                  test_size=1, finetune=FAST, log=None)
    assert not out.exists() or not any(out.iterdir())
    result = run_curve(volumes, out, strategies=["scratch"], sizes=[1], repeats=1, selection=["random"],
                       test_size=1, finetune=FAST, log=None)
    assert result.ok and {r["strategy"] for r in result.rows} == {"scratch", "scratch@random"}
    [draw] = [d for d in json.loads((out / "plan.json").read_text())["draws"].values() if "selection" in d]
    assert draw["chosen"]["embedding"].startswith("none")


def test_a_class_no_pick_reached_trains_scores_and_is_reported(tmp_path: Path) -> None:
    """A rare class (2 of 42 pool images) that random picks of 3 miss: the cell still trains and scores
    every class, and the report counts the classes reached."""
    from fewlabel.report.html import report_context

    rare = make_class_folder(tmp_path / "rare", {"a": 21, "b": 21, "c": 3}, size=(32, 32))
    out = tmp_path / "run"
    result = run_curve(rare, out, strategies=["scratch"], sizes=[1], repeats=3, selection=["random"],
                       test_size=1, finetune=FAST, log=None)
    plan = json.loads((out / "plan.json").read_text())["draws"]
    missed = [d for d in plan.values() if d.get("selection") and d["chosen"]["classes_covered"] < 3]
    assert missed and all(0 in d["chosen"]["per_class"].values() for d in missed)
    rows = {(r["strategy"], r["repeat"]): r for r in result.rows}
    for d in missed:
        row = rows[("scratch@random", d["repeat"])]
        assert row["status"] == "ok" and np.isfinite(row["roc_auc"]) and np.isfinite(row["accuracy"])
        assert np.load(out / row["proba_path"]).shape[1] == 3
    ctx = report_context(out, n_boot=100)
    values = ctx["sections"]["selection"]["values"]
    [table] = values["selection_blocks"][0]["tables"]
    line = next(x for x in table["lines"] if x["arm"] == "scratch@random")
    assert line["classes"].startswith(f"{min(d['chosen']['classes_covered'] for d in missed)}")
    # the baseline comparison and the brief answer keep to the stratified draw
    assert all("@" not in p["strategy"] for p in ctx["sections"]["paired"]["values"]["paired"])


def _encoder_file(path: Path, seen: list[str]) -> Path:
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.io import save_encoder

    enc = create_encoder(name="convnet", in_channels=1, spatial_dims=2, width=4, depth=2)
    return save_encoder(path, enc, {"method": "ssl", "seen_files": seen})


def test_the_pool_can_be_embedded_by_the_user_s_encoder_never_one_that_saw_a_test_image(
        folder: Path, tmp_path: Path) -> None:
    own = _encoder_file(tmp_path / "own.safetensors", seen=[])
    out = tmp_path / "run"
    result = curve(folder, out, sizes=[1], repeats=1, selection=["typiclust"], selection_encoder="convnet",
                   selection_encoder_weights=own)
    assert result.ok
    draws = json.loads((out / "plan.json").read_text())["draws"]
    [chosen] = [d["chosen"] for d in draws.values() if d.get("selection") == "typiclust"]
    assert chosen["embedding"].startswith("convnet from own.safetensors")
    config = CurveConfig.from_dict(json.loads((out / "run.json").read_text())["config"])
    assert config.selection_embedding["sha256"] and config.selection_weights == str(own.resolve())
    imagenet_twin = CurveConfig.from_dict({**config.to_dict(), "selection_embedding": {}})
    assert imagenet_twin.config_hash() != config.config_hash()  # another embedding is another run
    # an encoder that saw a test image could pull the picks toward the test set: refused before run.json
    data = prepare_data(folder, test_size=3, seed=0)
    leaked = _encoder_file(tmp_path / "leaked.safetensors", seen=[data.content_keys[data.test_ids[0]]])
    with pytest.raises(FewlabelError, match="trained on 1 of the test images"):
        curve(folder, tmp_path / "refused", sizes=[1], repeats=1, selection=["typiclust"],
              selection_encoder="convnet", selection_encoder_weights=leaked)
    assert not (tmp_path / "refused" / "run.json").exists()
    with pytest.raises(FewlabelError, match="name one of them in --selection"):
        curve(folder, tmp_path / "r2", sizes=[1], repeats=1, selection=["random"],
              selection_encoder_weights=own)


def test_cli_takes_the_selection_encoder(folder: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli("curve", folder, "--out", tmp_path / "run", "--selection", "probcover",
                   "--selection-encoder-weights", tmp_path / "none.safetensors")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none.safetensors" in err[0] and "does not exist" in err[0]
