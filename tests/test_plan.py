"""The split plan: one saved value every command follows, leak-proof by construction.

Each test here names the hole it closes; each would fail on a pipeline that re-derived the split per
command, split copies of one image apart, or trusted an encoder that cannot say what it saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fewlabel
from fewlabel.data.plan import SplitPlan
from fewlabel.errors import DataError, FewlabelError
from fewlabel.pipeline import add_draw, prepare_data
from fewlabel.training.finetune import FinetuneConfig

from factory import GROUP_PATTERN, make_class_folder, make_image_mask_tree, make_pool, run_cli, write_image

FAST = FinetuneConfig(max_epochs=1, batch_size=8, min_steps_per_epoch=1, progress=False)


def _patients(ids: list[str]) -> set[str]:
    import re

    return {re.search(GROUP_PATTERN, i).group(1) for i in ids}


@pytest.fixture
def patients(tmp_path: Path) -> Path:
    """3 slices per patient, 8 patients per class."""
    return make_class_folder(tmp_path / "pat", {"a": 24, "b": 24}, size=(8, 8), images_per_group=3)


def test_curve_count_groups_holds_out_whole_patients(patients: Path, tmp_path: Path) -> None:
    """--count groups --test-size 2: 2 PATIENTS per class are test (it used to be 2 images)."""
    from fewlabel.experiments import run_curve

    out = tmp_path / "run"
    run_curve(patients, out, ["scratch"], [2], 1, group_pattern=GROUP_PATTERN, test_size=2, count="groups",
              finetune={"max_epochs": 1}, log=None, progress=False)
    plan = SplitPlan.load(out / "plan.json")
    assert len(plan.test_ids) == 2 * 2 * 3  # 2 patients x 2 classes x 3 slices
    assert len(_patients(plan.test_ids)) == 4
    assert not _patients(plan.test_ids) & _patients(plan.pool_ids)
    assert plan.params["count"] == "groups"


def test_a_copy_under_another_name_never_sits_on_both_sides(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "d", {"a": 10, "b": 10}, size=(8, 8))
    first = prepare_data(data, test_size=0.3, seed=0)
    test_file = first.catalog.by_id[first.test_ids[0]].path
    label = first.catalog.by_id[first.test_ids[0]].label
    shutil.copy(test_file, data / label / "zz_copy.png")  # same pixels, another name, same class
    original = first.test_ids[0]
    for seed in range(6):
        prepared = prepare_data(data, test_size=0.3, seed=seed)
        assert prepared.plan.merged == [sorted([original, f"{label}/zz_copy.png"])]
        sides = {("test" if i in prepared.test_ids else "pool") for i in
                 (original, f"{label}/zz_copy.png")}
        assert len(sides) == 1, f"seed {seed}: the copy and its original were split apart"


def test_copies_with_different_labels_are_refused(tmp_path: Path, capsys) -> None:
    data = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(8, 8))
    src = sorted((data / "a").iterdir())[0]
    shutil.copy(src, data / "b" / "mislabelled.png")
    with pytest.raises(DataError, match="same image but are labelled"):
        prepare_data(data)
    code = run_cli("train", "--strategy", "scratch", data, "--out", tmp_path / "m", "--max-epochs", "1")
    err = capsys.readouterr().err
    assert code != 0 and "mislabelled.png" in err and "Traceback" not in err


def test_a_test_image_copied_into_the_pool_is_dropped_from_pretraining(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(8, 8))
    pool = make_pool(tmp_path / "pool", n=6, size=(8, 8))
    prepared = prepare_data(data, test_size=0.25, unlabelled=pool)
    assert prepared.plan.pretrain_pools["unlabelled"]["dropped_test_content"] == 0
    shutil.copy(prepared.catalog.by_id[prepared.test_ids[0]].path, pool / "renamed.png")
    prepared = prepare_data(data, test_size=0.25, unlabelled=pool)
    entry = prepared.plan.pretrain_pools["unlabelled"]
    assert entry["dropped_test_content"] == 1 and "renamed.png" not in entry["ids"]
    inputs = prepared.pretrain_inputs("pool")
    assert len(inputs.images) == 6 and not set(inputs.seen_files) & prepared.test_file_keys
    from fewlabel.pipeline import dropped_note

    assert dropped_note(prepared.plan) == "1 image(s) dropped: same content as a test image"


def test_changing_a_test_image_leaves_statistics_cache_keys_and_pool_arrays_alone(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "d", {"a": 10, "b": 10}, size=(8, 8))
    pool = make_pool(tmp_path / "pool", n=6, size=(8, 8))
    before = prepare_data(data, test_size=0.3, unlabelled=pool)
    pool_before = before.pretrain_inputs("pool")
    test_path = Path(before.catalog.by_id[before.test_ids[0]].path)
    write_image(test_path, (np.random.default_rng(5).random((1, 8, 8)) * 255).astype(np.uint8))
    after = prepare_data(data, test_size=0.3, unlabelled=pool)
    assert after.test_ids == before.test_ids
    assert after.preprocess.to_dict() == before.preprocess.to_dict()
    pool_after = after.pretrain_inputs("pool")
    assert pool_after.fingerprint == pool_before.fingerprint  # the encoder cache key's data part
    np.testing.assert_array_equal(pool_after.images, pool_before.images)
    # ... and changing a POOL image leaves the test set where it was
    pool_path = Path(after.catalog.by_id[after.pool_ids[0]].path)
    write_image(pool_path, (np.random.default_rng(6).random((1, 8, 8)) * 255).astype(np.uint8))
    assert prepare_data(data, test_size=0.3, unlabelled=pool).test_ids == before.test_ids


def test_validation_and_training_are_nested_across_sizes(patients: Path) -> None:
    prepared = prepare_data(patients, group_pattern=GROUP_PATTERN, test_size=2, count="groups")
    small = add_draw(prepared, 5, 0, draw_seed=11, count="groups")
    large = add_draw(prepared, 6, 0, draw_seed=11, count="groups")
    assert small["val"] and set(small["val"]) <= set(large["val"])
    assert set(small["train"]) <= set(large["train"])
    assert not _patients(large["train"]) & _patients(large["val"])
    tiny = add_draw(prepared, 4, 0, draw_seed=11, count="groups")  # < 5 patients: everything trains
    assert tiny["val"] == [] and tiny["train"] == tiny["labelled"]


def test_segmentation_validates_on_whole_patients(tmp_path: Path) -> None:
    data = make_image_mask_tree(tmp_path / "seg", {"a": 12, "b": 12}, size=(8, 8), images_per_group=3)
    prepared = prepare_data(data, group_pattern=GROUP_PATTERN, test_size=0.25)
    entry = prepared.plan.pretrain_pools["masks"]
    assert entry["val"] and not _patients(entry["val"]) & _patients(entry["train"])
    assert not (set(entry["val"]) | set(entry["train"])) & set(prepared.test_ids)
    inputs = prepared.pretrain_inputs("masks")
    assert len(inputs.val_images) == len(entry["val"]) and len(inputs.images) == len(entry["train"])


def test_unrecorded_encoder_is_refused_unless_trusted(tmp_path: Path, capsys) -> None:
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.io import save_encoder

    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(8, 8))
    path = save_encoder(tmp_path / "bare.safetensors",
                        create_encoder("convnet", in_channels=1, spatial_dims=2, width=4, depth=2), {})
    code = run_cli("train", data, "--out", tmp_path / "m", "--strategy", "ssl", "--encoder-weights", path,
                   "--max-epochs", "1")
    err = capsys.readouterr().err
    assert code == 2 and "records no list of the images" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
    assert run_cli("train", data, "--out", tmp_path / "m", "--strategy", "ssl", "--encoder-weights", path,
                   "--max-epochs", "1", "--trust-encoder") == 0


def test_a_fine_tuned_model_reused_for_another_seed_is_refused(tmp_path: Path, capsys) -> None:
    """Its weights saw seed 0's training images; seed 1 tests on some of them."""
    data = make_class_folder(tmp_path / "d", {"a": 10, "b": 10}, size=(8, 8))
    fewlabel.train(data, tmp_path / "m0", strategy="scratch", seed=0, test_size=0.3, finetune=FAST)
    config = json.loads((tmp_path / "m0" / "config.json").read_text())
    assert config["provenance"]["seen_files"] and config["provenance"]["plan_fingerprint"]
    weights = tmp_path / "m0" / "model.safetensors"
    plan0 = SplitPlan.load(tmp_path / "m0" / "plan.json")
    seed = next(s for s in range(1, 20) if set(prepare_data(data, test_size=0.3, seed=s).test_ids)
                - set(plan0.test_ids))
    code = run_cli("train", data, "--out", tmp_path / "m1", "--seed", seed, "--test-size", 0.3,
                   "--strategy", "ssl", "--encoder-weights", weights, "--max-epochs", "1")
    err = capsys.readouterr().err
    assert code == 2 and "trained on" in err and "test images" in err and "Traceback" not in err
    # The same plan (same seed) has disjoint test images: accepted.
    assert run_cli("train", data, "--out", tmp_path / "m2", "--plan", tmp_path / "m0" / "plan.json",
                   "--strategy", "ssl", "--encoder-weights", weights, "--max-epochs", "1") == 0


def test_curve_cached_encoders_record_what_they_saw(tmp_path: Path) -> None:
    from fewlabel.experiments import run_curve
    from fewlabel.models.io import read_header

    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(8, 8))
    out = tmp_path / "run"
    small = {"ssl": {"encoder_kwargs": {"width": 4, "depth": 2}}}
    run_curve(data, out, ["ssl"], [2], 1, test_size=0.25, finetune={"max_epochs": 1},
              pretrain={"steps": 2, "batch_size": 4}, strategy_options=small, log=None, progress=False)
    [encoder] = (out / "pretrained").glob("ssl-*.safetensors")
    meta = read_header(encoder)["meta"]
    plan = SplitPlan.load(out / "plan.json")
    prepared = prepare_data(data, test_size=0.25, plan=out / "plan.json")
    assert meta["plan_fingerprint"] == plan.fingerprint
    # the files' keys and their pixels' keys: a re-encoded copy of what it saw is recognised too
    assert set(meta["seen_files"]) == prepared.seen_keys_of(plan.pool_ids)
    assert set(prepared.keys_of(plan.pool_ids)) < set(meta["seen_files"])
    assert not set(meta["seen_files"]) & prepared.test_file_keys


def test_pretrain_follows_a_plan_and_train_accepts_the_encoder(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(8, 8))
    pool = make_pool(tmp_path / "pool", n=6, size=(8, 8))
    fewlabel.train(data, tmp_path / "m0", strategy="scratch", seed=3, test_size=0.25, finetune=FAST)
    plan = tmp_path / "m0" / "plan.json"
    shutil.copy(Path(data) / SplitPlan.load(plan).test_ids[0], pool / "leak.png")
    enc = tmp_path / "enc.safetensors"
    assert run_cli("pretrain", "ssl", pool, "--out", enc, "--plan", plan, "--steps", "2", "--batch-size", "4",
                   "--width", "4", "--depth", "2", "--image-size", "8", "--cache-dir", tmp_path / "c") == 0
    from fewlabel.models.io import read_header

    meta = read_header(enc)["meta"]
    assert meta["plan_fingerprint"] == SplitPlan.load(plan).fingerprint
    assert len(meta["seen_files"]) == 2 * 6  # file and pixel keys of 6 images: the copied test image left out
    assert run_cli("train", data, "--out", tmp_path / "m1", "--plan", plan, "--strategy", "ssl",
                   "--encoder-weights", enc, "--max-epochs", "1") == 0


def test_pretrain_segmentation_on_dicom_series_folders(tmp_path: Path) -> None:
    """Each image is a folder of DICOM slices (a series); content keys hash the folder's files."""
    data = make_image_mask_tree(tmp_path / "dcm", {"a": 4, "b": 4}, size=(4, 8, 8), fmt="dcm",
                                mask_fmt="nii.gz")
    enc = tmp_path / "seg.safetensors"
    code = run_cli("pretrain", "segmentation", data, "--out", enc, "--steps", "1", "--batch-size", "2",
                   "--width", "4", "--depth", "2", "--cache-dir", tmp_path / "c")
    assert code == 0 and enc.is_file()


@pytest.mark.parametrize("dtype,scale", [("float32", 1e-7), ("uint32", 4095.0)])
def test_tiny_values_keep_their_spread(tmp_path: Path, dtype: str, scale: float) -> None:
    """Phase maps in metres (~1e-7) and 12-bit data in a uint32 file (scaled by 2**32 to ~1e-6) used to
    fall under an absolute std floor of 1e-6 and be left unscaled: every input nearly blank."""
    rng = np.random.default_rng(0)
    root = tmp_path / dtype
    for cls in ("a", "b"):
        for i in range(6):
            arr = rng.random((1, 8, 8)) * scale
            write_image(root / cls / f"p{i:04d}_s00.tif", arr.astype(dtype), "tif")
    prepared = prepare_data(root, test_size=0.25)
    x, _ = prepared.arrays(prepared.pool_ids)
    assert 0.5 < float(x.std()) < 2.0  # z-scored, not left at ~1e-7


def test_bad_settings_fail_before_anything_is_written(tmp_path: Path, capsys) -> None:
    data = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(8, 8))
    for args, says in ((["--set", "batch_size=abc"], "batch_size must be an integer"),
                       (["--set", "lr=-1"], "lr must be > 0"),
                       (["--set", "balance=nonsense"], "balance must be"),
                       (["--set", "bacth_size=4"], "unknown fine-tuning setting"),
                       (["--pretrain", "stepz=3"], "unknown pretraining setting")):
        out = tmp_path / "run"
        code = run_cli("curve", data, "--out", out, "--strategies", "scratch,ssl", "--sizes", "2",
                       "--repeats", "1", *args)
        err = capsys.readouterr().err
        assert code == 2 and says in err and "Traceback" not in err, (args, err)
        assert not out.exists()


def test_auto_device_is_resolved_before_hashing(tmp_path: Path) -> None:
    from fewlabel.experiments import run_curve

    data = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(8, 8))
    result = run_curve(data, tmp_path / "run", ["scratch"], [2], 1, finetune={"max_epochs": 1}, log=None,
                       progress=False)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["config"]["finetune"]["device"] in ("cpu", "cuda")


def test_strategy_typos_are_one_line_errors(tmp_path: Path) -> None:
    from fewlabel.experiments import run_curve

    data = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(8, 8))
    with pytest.raises(FewlabelError, match="unknown strategy"):
        run_curve(data, tmp_path / "r", ["scrach"], [2], 1, log=None)
    with pytest.raises(FewlabelError, match="has no setting"):
        run_curve(data, tmp_path / "r", ["scratch"], [2], 1, strategy_options={"scratch": {"encodr": "x"}},
                  log=None)
    with pytest.raises(FewlabelError, match="fine-tuning setting max_epochs"):
        run_curve(data, tmp_path / "r", ["scratch"], [2], 1,
                  strategy_options={"scratch": {"finetune": {"max_epochs": "many"}}}, log=None)
    assert not (tmp_path / "r").exists()


def test_real_pipeline_curve_is_nested_paired_and_follows_its_plan(tmp_path: Path) -> None:
    """The real pipeline, not a fake backend: cells of two strategies share draws and seeds, draws
    nest across sizes, every cell trained on the plan's training ids, and a resume reads the plan."""
    from fewlabel.experiments import run_curve

    data = make_class_folder(tmp_path / "d", {"a": 12, "b": 12}, size=(8, 8))
    out = tmp_path / "run"
    kw = dict(finetune={"max_epochs": 1, "batch_size": 4}, test_size=0.25, log=None, progress=False)
    result = run_curve(data, out, ["scratch", "semi"], [2, 6], 2, **kw)
    assert result.counts["ok"] == 8
    plan = SplitPlan.load(out / "plan.json")
    for r in range(2):
        small, large = plan.draw(2, r), plan.draw(6, r)
        assert set(small["labelled"]) < set(large["labelled"])
        assert not set(large["labelled"]) & set(plan.test_ids)
        for n in (2, 6):
            cells = [json.loads((out / f"cells/{s}/n{n}_r{r}/cell.json").read_text())
                     for s in ("scratch", "semi")]
            assert cells[0]["labelled_ids"] == cells[1]["labelled_ids"] == plan.draw(n, r)["labelled"]
            assert cells[0]["train_ids"] == plan.draw(n, r)["train"]
            assert cells[0]["seed"] == cells[1]["seed"]
    rows = {(row["strategy"], row["n_per_class"], row["repeat"]): row for row in result.rows}
    assert rows[("scratch", 6, 0)]["n_train"] + rows[("scratch", 6, 0)]["n_val"] == 12
    # resumed: nothing to do, the plan file untouched
    before = (out / "plan.json").read_bytes()
    again = run_curve(data, out, ["scratch", "semi"], [2, 6], 2, **kw)
    assert again.ran == 0 and (out / "plan.json").read_bytes() == before


def test_pretrain_per_repeat_gives_each_repeat_its_own_encoder(tmp_path: Path) -> None:
    from fewlabel.experiments import run_curve

    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(8, 8))
    small = {"ssl": {"encoder_kwargs": {"width": 4, "depth": 2}}}
    kw = dict(test_size=0.25, finetune={"max_epochs": 1}, pretrain={"steps": 2, "batch_size": 4},
              strategy_options=small, log=None, progress=False)
    shared = run_curve(data, tmp_path / "shared", ["ssl"], [2], 2, **kw)
    per = run_curve(data, tmp_path / "per", ["ssl"], [2], 2, pretrain_per_repeat=True, **kw)
    assert len(list((tmp_path / "shared" / "pretrained").glob("ssl-*.safetensors"))) == 1
    assert len(list((tmp_path / "per" / "pretrained").glob("ssl-*.safetensors"))) == 2
    run = json.loads((tmp_path / "per" / "run.json").read_text())
    assert set(run["preparations"]) == {"ssl@r0", "ssl@r1"} and run["config"]["pretrain_per_repeat"]
    cells = [json.loads((tmp_path / "per" / f"cells/ssl/n2_r{r}/cell.json").read_text()) for r in (0, 1)]
    assert cells[0]["spec"]["encoder_weights"] != cells[1]["spec"]["encoder_weights"]
    assert shared.config_hash != per.config_hash


def test_report_says_how_many_pool_images_were_dropped(tmp_path: Path) -> None:
    from fewlabel.experiments import run_curve
    from fewlabel.report.html import build_report

    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(8, 8))
    pool = make_pool(tmp_path / "pool", n=4, size=(8, 8))
    test_id = prepare_data(data, test_size=0.25).test_ids[0]
    shutil.copy(data / test_id, pool / "renamed.png")
    out = tmp_path / "run"
    run_curve(data, out, ["scratch"], [2], 1, unlabelled=pool, test_size=0.25, finetune={"max_epochs": 1},
              log=None, progress=False)
    html = build_report(out, explain=False).read_text()
    assert "1 image(s) dropped: same content as a test image" in html
    assert "trained + validated" in html


def test_shared_arrays_travel_with_the_data_and_match_decoding(tmp_path: Path) -> None:
    """What the driver hands Ray workers through the object store: the same arrays as decoding."""
    import pickle

    data = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(8, 8))
    prepared = prepare_data(data, test_size=0.25)
    ids = prepared.pool_ids[:5]
    expected, labels = prepared.arrays(ids)
    prepared.share_arrays(prepared.test_ids + ids)
    copy = pickle.loads(pickle.dumps(prepared))
    got, got_labels = copy.arrays(ids[::-1])
    np.testing.assert_array_equal(got, expected[::-1])
    np.testing.assert_array_equal(got_labels, labels[::-1])
    assert copy.fingerprint() == prepared.fingerprint()


def test_a_real_run_grows_with_the_draws_it_would_have_made_from_the_start(tmp_path: Path) -> None:
    """Growing a curve (more sizes and repeats) keeps every stored draw and finished cell, and the new
    draws are the ones a run with the larger grid from the start makes: nested and seeded alike."""
    from fewlabel.experiments import RunView, run_curve

    data = make_class_folder(tmp_path / "data", {"a": 14, "b": 14}, size=(16, 16), channels=3, seed=0)
    args = {"test_size": 0.25, "finetune": {"max_epochs": 1}, "progress": False, "log": None}
    run_curve(data, tmp_path / "grown", ["scratch"], [2], 1, **args)
    first = json.loads((tmp_path / "grown" / "plan.json").read_text())["draws"]
    run_curve(data, tmp_path / "grown", ["scratch"], [2, 4], 2, **args)
    run_curve(data, tmp_path / "whole", ["scratch"], [2, 4], 2, **args)
    grown, whole = (json.loads((tmp_path / d / "plan.json").read_text())["draws"] for d in ("grown", "whole"))
    assert all(grown[k] == v for k, v in first.items()) and grown == whole and len(grown) == 4
    rows = {(r["n_per_class"], r["repeat"]): r["roc_auc"] for r in RunView(tmp_path / "grown").rows()}
    assert rows == {(r["n_per_class"], r["repeat"]): r["roc_auc"] for r in RunView(tmp_path / "whole").rows()}


def test_a_run_from_before_a_new_fine_tuning_setting_still_resumes(tmp_path: Path) -> None:
    """A run written when ``FinetuneConfig`` lacked a setting (its stored settings miss the key, and
    its hash was taken over them) resumes without running a cell again; the new hash is recorded."""
    from fewlabel.experiments import ResultStore, run_curve

    data = make_class_folder(tmp_path / "data", {"a": 14, "b": 14}, size=(16, 16), channels=3, seed=0)
    args = {"test_size": 0.25, "finetune": {"max_epochs": 1}, "progress": False, "log": None}
    out = tmp_path / "run"
    run_curve(data, out, ["scratch"], [2], 1, **args)
    run = json.loads((out / "run.json").read_text())
    new_hash = run["config_hash"]
    for key in ("hold_out", "ensemble", "pseudo_per_label", "pseudo_min_probability"):
        del run["config"]["finetune"][key]
    run["config"]["finetune"]["tta"] = False  # the default of that time
    run["config_hash"] = "feedfacefeedface"
    (out / "run.json").write_text(json.dumps(run))
    store = ResultStore(out)
    store.set_meta("config_hash", "feedfacefeedface")
    store.close()
    again = run_curve(data, out, ["scratch"], [2], 1, **args)
    assert again.ran == 0 and again.resumed == 1
    run = json.loads((out / "run.json").read_text())
    assert run["config_hash"] == new_hash and run["earlier_hashes"] == ["feedfacefeedface"]
    # a setting that differs from its default is still another configuration
    with pytest.raises(FewlabelError, match="another configuration"):
        run_curve(data, out, ["scratch"], [2], 1, **{**args, "finetune": {"max_epochs": 1, "ensemble": 2}})


def _copy_with_new_times(src: Path, dst: Path) -> Path:
    """The files copied as a plain ``cp -r`` does: same bytes, new modification times."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    return dst


def test_a_run_resumes_on_a_copy_of_its_data_and_refuses_changed_contents(tmp_path: Path) -> None:
    """The data's fingerprint is its contents: a copy (other folder, new modification times) is the
    same data, so the run resumes; one image rewritten is other data, refused in one line."""
    from fewlabel.errors import ConfigMismatchError
    from fewlabel.experiments import run_curve

    data = make_class_folder(tmp_path / "data", {"a": 14, "b": 14}, size=(16, 16), channels=3, seed=0)
    pool = make_pool(tmp_path / "pool", 6, size=(16, 16), channels=3)
    args = {"test_size": 0.25, "finetune": {"max_epochs": 1}, "progress": False, "log": None}
    out = tmp_path / "run"
    run_curve(data, out, ["scratch"], [2], 1, unlabelled=pool, **args)
    copy = _copy_with_new_times(data, tmp_path / "copy")
    pool_copy = _copy_with_new_times(pool, tmp_path / "pool_copy")
    first = next(p for p in sorted(copy.rglob("*.png")))
    assert first.stat().st_mtime_ns != (data / first.relative_to(copy)).stat().st_mtime_ns
    again = run_curve(copy, out, ["scratch"], [2], 1, unlabelled=pool_copy, **args)
    assert again.ran == 0 and again.resumed == 1
    write_image(first, np.full((3, 16, 16), 7, np.uint8))
    with pytest.raises(ConfigMismatchError, match="other files"):
        run_curve(copy, out, ["scratch"], [2], 1, unlabelled=pool_copy, **args)


def _stat_fingerprint_as_written_before(catalog) -> str:
    """The catalog fingerprint of earlier fewlabel versions, written out here so it stays pinned."""
    def stat_key(path):
        if path is None:
            return None
        st = Path(path.split("::", 1)[0]).stat()
        return st.st_size, st.st_mtime_ns

    h = hashlib.sha256()
    h.update(repr(list(catalog.classes)).encode())
    for s in sorted(catalog.samples, key=lambda s: s.id):
        h.update(repr((s.id, s.label, s.group, s.mask is not None, stat_key(s.path),
                       stat_key(s.mask) if s.mask else None)).encode())
    return h.hexdigest()[:16]


def test_a_run_planned_with_stat_fingerprints_still_resumes_on_untouched_files(tmp_path: Path) -> None:
    """Plans written before fingerprints hashed contents hold one of sizes + modification times:
    such a run resumes while its files are untouched (no cell runs again), and is refused when a
    file's time changes, as it was then."""
    from fewlabel.data.catalog import load_catalog, load_pool
    from fewlabel.errors import ConfigMismatchError
    from fewlabel.experiments import ResultStore, run_curve
    from fewlabel.experiments.grid import CurveConfig

    data = make_class_folder(tmp_path / "data", {"a": 14, "b": 14}, size=(16, 16), channels=3, seed=0)
    pool = make_pool(tmp_path / "pool", 6, size=(16, 16), channels=3)
    args = {"test_size": 0.25, "finetune": {"max_epochs": 1}, "progress": False, "log": None,
            "unlabelled": pool}
    out = tmp_path / "run"
    run_curve(data, out, ["scratch"], [2], 1, **args)
    # Rewrite the run as the older code wrote it: stat fingerprints in the plan and the config.
    plan = SplitPlan.load(out / "plan.json")
    assert plan.data_fingerprint.startswith("c-")
    plan.data_fingerprint = load_catalog(data).stat_fingerprint()
    (out / "plan.json").write_text(json.dumps(plan.to_dict()))
    legacy = prepare_data(data, unlabelled=pool, plan=out / "plan.json", test_size=0.25)
    assert plan.data_fingerprint == _stat_fingerprint_as_written_before(load_catalog(data))
    pool_fp = _stat_fingerprint_as_written_before(load_pool(pool))
    assert legacy.unlabelled_fingerprint() == pool_fp
    # the prepared data's fingerprint as the older code took it (the curve's config holds it)
    h = hashlib.sha256(plan.data_fingerprint.encode())
    h.update(plan.fingerprint.encode())
    h.update(repr(sorted(legacy.preprocess.to_dict().items())).encode())
    h.update(pool_fp.encode())
    assert legacy.fingerprint() == h.hexdigest()[:16]
    run = json.loads((out / "run.json").read_text())
    run["config"]["data_fingerprint"] = h.hexdigest()[:16]
    run["config"]["unlabelled_fingerprint"] = pool_fp
    run["config_hash"] = CurveConfig.from_dict(run["config"]).config_hash()
    (out / "run.json").write_text(json.dumps(run))
    store = ResultStore(out)
    store.set_meta("config_hash", run["config_hash"])
    store.close()
    again = run_curve(data, out, ["scratch"], [2], 1, **args)
    assert again.ran == 0 and again.resumed == 1
    assert json.loads((out / "run.json").read_text())["config_hash"] == run["config_hash"]
    touched = next(iter(sorted(data.rglob("*.png"))))
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ConfigMismatchError, match="other files"):
        run_curve(data, out, ["scratch"], [2], 1, **args)
