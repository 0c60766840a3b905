"""End to end: `fewlabel train` / `predict` and the Python API on tiny generated data."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import fewlabel
from fewlabel.data.plan import SplitPlan
from fewlabel.training.finetune import FinetuneConfig

from factory import GROUP_PATTERN, corrupt_file, fake_imagenet_file, make_class_folder, make_manifest, run_cli

FAST = FinetuneConfig(max_epochs=3, batch_size=8, min_steps_per_epoch=2, augment="none", progress=False)
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cells")
    # 2 images per patient: the split must keep each patient on one side.
    return make_class_folder(root / "data", {"healthy": 16, "cancer": 16}, size=(16, 16), channels=3,
                             images_per_group=2, seed=0)


def test_train_writes_model_metrics_and_split(cells: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    model = fewlabel.train(cells, out, strategy="scratch", labels_per_class=5, group_pattern=GROUP_PATTERN,
                           seed=1, test_size=0.25, finetune=FinetuneConfig(**{**FAST.to_dict()}))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRICS:
        m = metrics[key]
        assert m["ci_low"] <= m["value"] <= m["ci_high"], key
    assert model.metrics["n_test"] == metrics["n_test"] > 0
    plan = SplitPlan.load(out / "plan.json")
    draw = plan.draw(5, 0)
    split = SimpleNamespace(test=plan.test_ids, labelled=draw["labelled"], train=draw["train"],
                            val=draw["val"])
    assert not set(split.test) & set(split.labelled)
    assert not set(split.val) & set(split.test)
    assert set(split.train) | set(split.val) == set(split.labelled)
    def patients(ids):
        return {re.search(GROUP_PATTERN, i).group(1) for i in ids}

    assert not patients(split.test) & patients(split.labelled)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_same_seed_same_numbers(cells: Path) -> None:
    a = fewlabel.train(cells, strategy="scratch", labels_per_class=4, seed=3,
                       finetune=FinetuneConfig(**FAST.to_dict()))
    b = fewlabel.train(cells, strategy="scratch", labels_per_class=4, seed=3,
                       finetune=FinetuneConfig(**FAST.to_dict()))
    assert a.metrics["roc_auc"] == b.metrics["roc_auc"]


def test_predict_new_process_identical_and_corrupt_file_named(cells: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    fewlabel.train(cells, out, strategy="scratch", labels_per_class=4, seed=0,
                   finetune=FinetuneConfig(**FAST.to_dict()))
    new = make_class_folder(tmp_path / "new", {"x": 3, "y": 2}, size=(20, 20), channels=3, seed=5)
    bad = sorted(new.rglob("*.png"))[0]
    corrupt_file(bad)
    (new / "x" / "notes.xyz").write_text("not an image")
    csv_path = tmp_path / "p.csv"
    code = run_cli("predict", out, new, "--out", csv_path)
    assert code == 1  # some files could not be scored
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 4  # 5 images, one corrupt; the .xyz is not an image
    assert set(rows[0]) == {"path", "predicted", "p_cancer", "p_healthy"}
    assert all(abs(float(r["p_cancer"]) + float(r["p_healthy"]) - 1) < 1e-4 for r in rows)
    assert bad.name not in {Path(r["path"]).name for r in rows}

    # the same model loaded in a fresh process gives the same probabilities, to the bit
    script = (
        "import sys, fewlabel, numpy as np;"
        "p = fewlabel.load_model(sys.argv[1]).predict([sys.argv[2]]);"
        "np.save(sys.argv[3], p.proba)"
    )
    good = [Path(r["path"]) for r in rows]
    again = tmp_path / "again.npy"
    subprocess.run([sys.executable, "-c", script, str(out), str(good[0]), str(again)], check=True)
    here = fewlabel.load_model(out).predict([good[0]]).proba
    np.testing.assert_array_equal(np.load(again), here)


def test_predict_error_names_file_on_stderr(cells: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m"
    fewlabel.train(cells, out, strategy="scratch", labels_per_class=3, seed=0,
                   finetune=FinetuneConfig(**FAST.to_dict()))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    code = run_cli("predict", out, bad, "--out", tmp_path / "p.csv")
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err and "Traceback" not in err


def test_cli_train_and_bad_input_is_one_line(cells: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli_m"
    code = run_cli("train", "--strategy", "scratch", cells, "--out", out, "--labels-per-class", "3",
                   "--max-epochs", "2")
    assert code == 0 and (out / "metrics.json").is_file()
    capsys.readouterr()
    code = run_cli("train", "--strategy", "scratch", cells, "--out", out, "--labels-per-class", "500")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0]


def test_float32_single_channel_tiff_trains_with_imagenet(tmp_path: Path, monkeypatch) -> None:
    data = make_class_folder(tmp_path / "phase", {"a": 8, "b": 8}, size=(32, 32), channels=1,
                             dtype="float32", fmt="tif", seed=2)
    weights = fake_imagenet_file(tmp_path)
    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(weights))
    model = fewlabel.train(data, tmp_path / "m", strategy="imagenet", labels_per_class=4,
                           finetune=FinetuneConfig(**{**FAST.to_dict(), "max_epochs": 1}))
    assert model.config["preprocess"]["channels"] == 1
    # the house imagenet recipe: three members (each adapted to one channel), TTA at test time
    members = model.classifier.members
    assert len(members) == 3 and all(m.encoder.in_channels == 1 for m in members)
    assert model.config["finetune"]["tta"] is True
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["strategy"] == "imagenet"


def test_same_seed_same_numbers_across_processes(cells: Path, tmp_path: Path) -> None:
    """torch's start-up seed is random per process: every random start must come from our seed."""
    script = (
        "import sys, fewlabel; from fewlabel.training.finetune import FinetuneConfig as F;"
        "m = fewlabel.train(sys.argv[1], strategy='scratch', labels_per_class=3, seed=4, finetune=F("
        "max_epochs=1,"
        " min_steps_per_epoch=1, augment='weak', progress=False));"
        "print(repr(sum(float(v.double().sum()) for v in m.classifier.state_dict().values())))"
    )
    outs = [subprocess.run([sys.executable, "-c", script, str(cells)], check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1] for _ in range(2)]
    assert outs[0] == outs[1]


def test_usage_error_is_a_message_not_a_traceback(capsys) -> None:
    code = run_cli("train", "--no-such-option")
    err = capsys.readouterr().err
    assert code == 2 and "No such option" in err and "Traceback" not in err


def test_validation_threshold_counts_patients_not_slices(tmp_path: Path) -> None:
    """2 patients x 4 slices per class is 2 independent samples: no validation split is drawn."""
    from fewlabel.pipeline import prepare_data, split_labelled

    data_dir = make_class_folder(tmp_path / "d", {"a": 40, "b": 40}, size=(8, 8), images_per_group=4)
    data = prepare_data(data_dir, group_pattern=GROUP_PATTERN, test_size=0.25)
    from fewlabel.data.splits import draw_labelled

    two_patients = draw_labelled(data.catalog, data.pool_ids, 2, seed=0, count="groups")
    assert len(two_patients) == 16
    train_ids, val_ids = split_labelled(data, two_patients, seed=0)
    assert val_ids == [] and len(train_ids) == 16
    six = draw_labelled(data.catalog, data.pool_ids, 6, seed=0, count="groups")
    train_ids, val_ids = split_labelled(data, six, seed=0)
    assert val_ids and not set(data.catalog.groups(val_ids)) & set(data.catalog.groups(train_ids))


def test_drop_class_leaves_it_out_everywhere(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "d", {"a": 10, "b": 10, "rare": 2}, size=(8, 8), seed=1)
    code = run_cli("train", "--strategy", "scratch", data, "--out", tmp_path / "m", "--drop-class", "rare",
                   "--max-epochs", "1", "--labels-per-class", "3")
    assert code == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["class_names"] == ["a", "b"]
    plan = SplitPlan.load(tmp_path / "m" / "plan.json")
    assert not any(i.startswith("rare/") for i in plan.test_ids + plan.pool_ids)
    assert run_cli("train", "--strategy", "scratch", data, "--out", tmp_path / "m2",
                   "--drop-class", "nope") == 2


def test_zero_labels_or_fractional_test_count_is_one_line_not_a_hang(cells: Path, tmp_path: Path,
                                                                      capsys) -> None:
    """--labels-per-class 0 used to train on an empty set forever; --test-size 1.5 was cut to 1."""
    import signal

    from fewlabel import pipeline
    from fewlabel.errors import FewlabelError

    def too_slow(*_):
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    try:
        code = run_cli("train", "--strategy", "scratch", cells, "--out", tmp_path / "z",
                       "--labels-per-class", "0")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "--labels-per-class" in err[0]
        prepared = pipeline.prepare_data(cells, group_pattern=GROUP_PATTERN, test_size=0.25)
        with pytest.raises(FewlabelError, match="no labelled images"):
            pipeline.fit_cell(prepared, [], pipeline.default_spec("scratch"), 0, FAST)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    code = run_cli("train", "--strategy", "scratch", cells, "--out", tmp_path / "f", "--test-size", "1.5")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "1.5" in err[0]


def test_missing_encoder_file_is_named_before_any_work(cells: Path, tmp_path: Path, capsys) -> None:
    code = run_cli("train", cells, "--out", tmp_path / "m", "--strategy", "gan",
                   "--encoder-weights", tmp_path / "nope.safetensors")
    err = capsys.readouterr().err
    assert code == 2 and "nope.safetensors" in err and "does not exist" in err
    assert not (tmp_path / "m").exists()


def test_unlabelled_pool_never_holds_a_test_image(tmp_path: Path) -> None:
    """The pool is the labelled folder's parent: other ids, the same files. Test files must go."""
    from fewlabel.pipeline import prepare_data

    root = tmp_path / "all"
    data = make_class_folder(root / "labelled", {"a": 10, "b": 10}, size=(8, 8), seed=3)
    prepared = prepare_data(data, unlabelled=root, test_size=0.3)
    pool = prepared.unlabelled
    kept = {str(Path(pool.by_id[i].path).resolve()) for i in prepared.pool_without_test_groups()}
    test = {str(Path(prepared.catalog.by_id[i].path).resolve()) for i in prepared.test_ids}
    assert kept and not kept & test
    assert len(kept) == 20 - len(test)


def test_a_given_test_split_is_used_and_never_trains(tmp_path: Path) -> None:
    """A manifest's (or MedMNIST's) designated test images are the test set, not training material."""
    from fewlabel.data.catalog import load_catalog
    from fewlabel.pipeline import prepare_data

    csv_path = make_manifest(tmp_path, {"a": 12, "b": 12}, splits=True)
    catalog = load_catalog(csv_path)
    given = {s.id for s in catalog.samples if s.split == "test"}
    prepared = prepare_data(csv_path)
    assert set(prepared.test_ids) == given and not given & set(prepared.pool_ids)
    drawn = prepare_data(csv_path, test_split="draw", test_size=0.5, seed=1)
    assert set(drawn.test_ids) != given


def test_predict_streams_batches_with_the_same_numbers(cells: Path, tmp_path: Path) -> None:
    """Scored batch by batch (a large folder never sits in memory whole): batch size changes nothing,
    and an unreadable file in the middle of a batch leaves the others scored in order."""
    model = fewlabel.train(cells, tmp_path / "m", strategy="scratch", labels_per_class=4, seed=0,
                           finetune=FinetuneConfig(**FAST.to_dict()))
    new = make_class_folder(tmp_path / "new", {"x": 4, "y": 3}, size=(16, 16), channels=3, seed=5)
    corrupt_file(sorted(new.rglob("*.png"))[2])
    whole = model.predict([new], batch_size=64)
    streamed = model.predict([new], batch_size=2)
    assert streamed.paths == whole.paths and len(whole.paths) == 6 and len(streamed.errors) == 1
    np.testing.assert_allclose(streamed.proba, whole.proba, atol=1e-6)
