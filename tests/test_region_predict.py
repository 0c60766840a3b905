"""A ``segmentation+region`` model folder carries its U-Net, and ``predict`` / ``explain`` crop every
image as training did: the kept model scores its test images exactly as its curve cell recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fewlabel
from fewlabel.cli import main
from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.experiments.curve import run_curve
from fewlabel.experiments.run_view import RunView
from fewlabel.explain.run import REGION_CAPTION, explain_files, explain_run
from fewlabel.models.io import UNET_FILE, load_unet
from fewlabel.pipeline import region as region_mod

from factory import GROUP_PATTERN, make_image_mask_tree

STRATEGY = "segmentation+region"
PRETRAIN = {"steps": 30, "batch_size": 8, "log_every": 10, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def region_curve(tmp_path_factory):
    """A one-cell curve of the region strategy (repeat 0 kept), and its test images in plan order."""
    tmp = tmp_path_factory.mktemp("region_curve")
    root = make_image_mask_tree(tmp / "data", classes={"a": 16, "b": 16}, size=(32, 32), images_per_group=2,
                                mask_value=255)
    run_curve(root, tmp / "run", STRATEGY, [3], 1, group_pattern=GROUP_PATTERN, test_size=0.25,
              count="groups", finetune={"max_epochs": 2, "device": "cpu"}, pretrain=PRETRAIN, progress=False,
              log=None)
    view = RunView(tmp / "run")
    (row,) = view.rows()
    assert row["status"] == "ok", row.get("error")
    ts = view.open_test_set()
    return view, view.model_dir(row), np.load(view.root / row["proba_path"]), ts


def test_kept_model_holds_its_unet_and_predict_repeats_the_cells_probabilities(region_curve):
    view, model_dir, proba_test, ts = region_curve
    config = json.loads((model_dir / "config.json").read_text())
    assert (model_dir / UNET_FILE).is_file() and len(config["unet_sha256"]) == 64
    load_unet(model_dir / UNET_FILE)  # a whole U-Net, loadable on its own
    model = fewlabel.load_model(model_dir, device="cpu")
    assert model.crops_region
    # Batches of 3: the crop is streamed like any prediction, and batching changes no number.
    preds = model.predict(ts.paths, batch_size=3)
    assert preds.paths == ts.paths and not preds.errors
    np.testing.assert_allclose(preds.proba, proba_test, rtol=0, atol=1e-5)
    # Whole images would give other numbers: the crop is what makes them equal.
    whole = model.classifier.eval()
    from fewlabel.training.finetune import predict_proba

    assert np.abs(predict_proba(whole, ts.x, device="cpu") - proba_test).max() > 1e-3
    np.testing.assert_allclose(model.predict_arrays(ts.x, ts.paths), proba_test, rtol=0, atol=1e-5)
    with pytest.raises(FewlabelError, match="paths"):
        model.predict_arrays(ts.x)


def test_predict_cli_scores_a_region_model(region_curve, tmp_path, capsys):
    _, model_dir, proba_test, ts = region_curve
    main(["predict", str(model_dir), *ts.paths[:4], "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    got = np.array([[float(v) for v in r.split(",")[2:]] for r in rows])
    np.testing.assert_allclose(got, proba_test[:4], atol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "edited"])
def test_missing_or_edited_unet_is_a_one_line_error(region_curve, tmp_path, damage):
    import shutil

    _, model_dir, _, _ = region_curve
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    if damage == "missing":
        (copy / UNET_FILE).unlink()
    else:
        data = bytearray((copy / UNET_FILE).read_bytes())
        data[-1] ^= 1
        (copy / UNET_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as exc:
        fewlabel.load_model(copy)
    assert UNET_FILE in str(exc.value) and "\n" not in str(exc.value)
    assert ("missing" if damage == "missing" else "sha256") in str(exc.value)


def test_region_model_without_a_unet_is_refused_not_scored_on_whole_images(region_curve, tmp_path):
    import shutil

    _, model_dir, _, ts = region_curve
    copy = tmp_path / "old"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["unet_sha256"]  # a folder saved before region models carried their U-Net
    (copy / "config.json").write_text(json.dumps(config))
    (copy / UNET_FILE).unlink()
    model = fewlabel.load_model(copy)
    with pytest.raises(FewlabelError, match="no U-Net"):
        model.predict(ts.paths[:1])


def test_saved_again_the_model_keeps_its_unet(region_curve, tmp_path):
    _, model_dir, proba_test, ts = region_curve
    fewlabel.load_model(model_dir, device="cpu").save(tmp_path / "again")
    assert (tmp_path / "again" / UNET_FILE).read_bytes() == (model_dir / UNET_FILE).read_bytes()
    again = fewlabel.load_model(tmp_path / "again", device="cpu").predict(ts.paths[:5])
    np.testing.assert_allclose(again.proba, proba_test[:5], atol=1e-5)


def test_explain_run_explains_region_models_on_their_crops(region_curve):
    view, model_dir, _, ts = region_curve
    index = explain_run(view.root, n_per_class=1, tsne=True, checks=True)
    assert not index["errors"]
    (cell,) = index["cells"]
    assert cell["strategy"] == STRATEGY and cell["input"] == REGION_CAPTION
    assert (view.root / cell["grid"]).read_bytes().startswith(b"\x89PNG")
    # The predictions shown are the model's on the crops: the same as its recorded test probabilities.
    proba = np.load(view.root / view.rows()[0]["proba_path"])
    picked = [ts.ids.index(e["id"]) for e in index["examples"]]
    assert cell["predicted"] == [ts.class_names[int(p.argmax())] for p in proba[picked]]
    # The report says the maps are over the crop (explain=False: the index above is what it shows).
    from fewlabel.report.html import build_report

    html = build_report(view.root, explain=False, n_boot=50).read_text()
    assert f"{REGION_CAPTION}: the images and maps are the crops" in html


def test_explain_files_maps_the_crop(region_curve, tmp_path, monkeypatch):
    _, model_dir, _, ts = region_curve
    seen = []
    real = region_mod.crop_images

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out[0][0])
        return out

    monkeypatch.setattr(region_mod, "crop_images", spy)
    (record,) = explain_files(model_dir, ts.paths[:1], out=tmp_path / "ex")
    assert record["input"] == REGION_CAPTION and len(seen) == 1
    amap = np.load(record["npy"])
    assert amap.shape == seen[0].shape[1:]


def test_train_writes_a_region_model_folder_that_predicts(tmp_path):
    root = make_image_mask_tree(tmp_path / "data", classes={"a": 12, "b": 12}, size=(32, 32),
                                images_per_group=2, mask_value=255)
    model = fewlabel.train(root, tmp_path / "m", strategy=STRATEGY, labels_per_class=3, count="groups",
                           group_pattern=GROUP_PATTERN, test_size=0.25, max_epochs=1, device="cpu",
                           progress=False, pretrain=PRETRAIN, cache_dir=tmp_path / "cache")
    assert (tmp_path / "m" / UNET_FILE).is_file()
    loaded = fewlabel.load_model(tmp_path / "m", device="cpu")
    files = sorted(str(p) for p in (root / "images").rglob("*.png"))[:4]
    np.testing.assert_allclose(loaded.predict(files).proba, model.predict(files).proba, atol=1e-6)
