"""The frozen-feature strategies: ``probe`` (logistic regression on cached encoder features) and
``knn``: they learn, the feature cache is computed once and keyed by encoder and content, the saved
probe predicts what its cell scored, and nothing of the test set reaches a head."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fewlabel
from fewlabel.errors import FewlabelError
from fewlabel.models.encoder import create_encoder
from fewlabel.pipeline import add_draw, default_spec, fit_cell, prepare_data
from fewlabel.pipeline import feature_cache as feature_cache_mod
from fewlabel.pipeline.feature_cache import FeatureCache
from fewlabel.training.finetune import FinetuneConfig, predict_proba
from fewlabel.training.probe import descriptors, fit_logistic, knn_proba

from factory import fake_imagenet_file, make_class_folder, write_png

CPU = FinetuneConfig(device="cpu", progress=False)
CLASSES = {"a": 10, "b": 10, "c": 10}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test its own feature cache: none reads another's."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FEWLABEL_CACHE", str(path))
    return path


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images whose features were computed by the encoder, one entry per extraction."""
    calls: list[int] = []
    original = FeatureCache._compute

    def counting(self: FeatureCache, data, ids):  # noqa: ANN001, ANN202
        calls.append(len(ids))
        return original(self, data, ids)

    monkeypatch.setattr(FeatureCache, "_compute", counting)
    return calls


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("probe") / "data", CLASSES, size=(32, 32), seed=0)


def _data(root: Path):  # noqa: ANN202
    return prepare_data(root, test_size=0.3, seed=0)


def _cell(data, name: str = "probe", n: int = 3, encoder: str | None = "convnet", **kw):  # noqa: ANN001, ANN202
    draw = add_draw(data, n, 0, 0)
    spec = default_spec(name, encoder, **kw)
    return fit_cell(data, list(draw["labelled"]), spec, 0, CPU, train_ids=draw["train"], val_ids=draw["val"],
                    model_needed=name != "knn")


def test_probe_learns_a_separable_set_and_keeps_the_encoder(cells: Path) -> None:
    data = _data(cells)
    cell = _cell(data)
    assert cell.metrics["accuracy"]["value"] >= 0.9
    assert cell.val_ids == [] and len(cell.train_ids) == 3 * len(CLASSES)  # every drawn label fits
    assert cell.fit.stopped_because == "frozen_logistic"
    torch.manual_seed(0)  # the frozen encoder is the one built from seed 0: untouched by the probe
    fresh = create_encoder("convnet", in_channels=data.channels, spatial_dims=2)
    for key, value in fresh.state_dict().items():
        assert torch.equal(cell.classifier.encoder.state_dict()[key].cpu(), value), key
    assert cell.finetune_config.freeze_encoder and cell.finetune_config.tta


def test_logistic_head_is_deterministic_and_balanced() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 12 + [1] * 3)  # class 1 rare
    feats = rng.normal(0, 1, (15, 4, 6)).astype(np.float32) + 2.0 * y[:, None, None]
    w1, b1 = fit_logistic(feats, y, np.array([15 / 24, 15 / 6]), 2)
    w2, b2 = fit_logistic(feats, y, np.array([15 / 24, 15 / 6]), 2)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    logits = feats.reshape(-1, 6) @ w1.numpy().T + b1.numpy()
    assert (logits.argmax(1) == np.repeat(y, 4)).mean() >= 0.95


def test_curve_computes_features_once_and_reuses_them(cells: Path, tmp_path: Path, computed: list[int],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.experiments import RunView, run_curve

    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(fake_imagenet_file(tmp_path)))
    small = {"encoder_kwargs": {"input_size": 32}}  # the ImageNet MobileNetV2 at 32 px: fast
    kwargs = dict(strategies=["probe", "knn"], sizes=[1, 3], repeats=2, test_size=0.3, seed=0,
                  finetune={"device": "cpu"}, strategy_options={"probe": small, "knn": small},
                  progress=False, log=None)
    run_curve(cells, tmp_path / "run1", **kwargs)
    view = RunView(tmp_path / "run1")
    rows = view.rows()
    assert len(rows) == 2 * 2 * 2 and all(r["status"] == "ok" for r in rows)
    drawn = {i for d in view.plan.draws.values() for i in d["labelled"]}
    # one pass over the images the curve needs (test set and every draw), shared by probe and knn
    assert sum(computed) == len(set(view.plan.test_ids) | drawn)
    assert any("0 computed" in " ".join(r["extra"]["notes"]) for r in rows)
    # another run (another process would see the same files): every feature read, none computed
    computed.clear()
    run_curve(cells, tmp_path / "run2", **kwargs)
    assert computed == [] and all(r["status"] == "ok" for r in RunView(tmp_path / "run2").rows())

    # the probe model a cell kept predicts what the cell scored; knn keeps none
    test = view.open_test_set()
    compared = 0
    for row in rows:
        model_dir = view.model_dir(row)
        if row["strategy"] == "knn":
            assert model_dir is None and row["model_path"] == ""
            continue
        if model_dir is None:
            continue
        proba = fewlabel.load_model(model_dir, device="cpu").predict_arrays(test.x)
        np.testing.assert_allclose(proba, view.proba(row), rtol=1e-4, atol=1e-5)
        assert np.allclose(proba.sum(1), 1.0, atol=1e-5)
        compared += 1
    assert compared == 2  # repeat 0 of each size keeps its model (keep_models="first")


def test_cache_is_keyed_by_encoder_and_by_content(cells: Path, tmp_path: Path, computed: list[int]) -> None:
    root = tmp_path / "data"
    shutil.copytree(cells, root)
    data = _data(root)
    ids = list(data.test_ids)
    device = torch.device("cpu")

    def cache_of(encoder: torch.nn.Module) -> FeatureCache:
        return FeatureCache(encoder, data.preprocess.to_dict(), data.image_size, views=True, device=device,
                            precision="fp32")

    torch.manual_seed(0)
    first = create_encoder("convnet", in_channels=1, width=8, depth=3)
    a, stats = cache_of(first).features(data, ids)
    assert a.shape == (len(ids), 8, first.out_features) and stats.computed == len(ids)
    again, stats = cache_of(first).features(data, ids)
    assert stats.computed == 0 and stats.cached == len(ids) and np.array_equal(a, again)
    torch.manual_seed(1)  # the same architecture with other weights: other features
    other = create_encoder("convnet", in_channels=1, width=8, depth=3)
    assert cache_of(other).key != cache_of(first).key
    b, stats = cache_of(other).features(data, ids)
    assert stats.computed == len(ids) and not np.allclose(a, b)

    # one test image changes: it alone is computed again (the pool, and so the z-score, is unchanged)
    changed = data.catalog.by_id[ids[0]].path
    write_png(changed, np.full((32, 32), 7, dtype=np.uint8))
    data2 = _data(root)
    assert list(data2.test_ids) == ids and data2.preprocess.to_dict() == data.preprocess.to_dict()
    c, stats = cache_of(first).features(data2, ids)
    assert stats.computed == 1 and stats.cached == len(ids) - 1
    assert np.array_equal(c[1:], a[1:]) and not np.allclose(c[0], a[0])


def test_knn_probabilities() -> None:
    bank = np.eye(4)[[0, 1, 2, 3, 0]]
    labels = np.array([0, 1, 2, 0, 1])
    query = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.2, 0.98, 0.0]])
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    one = knn_proba(bank, labels, query, 3, k=1)
    np.testing.assert_allclose(one, [[1, 0, 0], [0, 0, 1]])  # k=1: the nearest neighbour's class
    many = knn_proba(bank, labels, query, 3, k=5, temperature=0.07)
    np.testing.assert_allclose(many.sum(1), 1.0, rtol=1e-6)
    assert (many >= 0).all() and many[1].argmax() == 2 and many[1, 2] > 0.99  # the nearest dominates
    # two equally near neighbours of classes 0 and 1 (bank rows 0 and 4): they share the vote
    np.testing.assert_allclose(knn_proba(bank, labels, query[:1], 3, k=2)[0], [0.5, 0.5, 0.0], atol=1e-6)
    d = descriptors(np.ones((2, 8, 3)) + np.arange(2)[:, None, None], np.zeros(3))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)


def test_knn_cell_and_its_refusal_in_train(cells: Path) -> None:
    data = _data(cells)
    cell = _cell(data, "knn")
    assert cell.classifier is None and cell.metrics["accuracy"]["value"] >= 0.9
    np.testing.assert_allclose(cell.proba_test.sum(1), 1.0, rtol=1e-5)
    with pytest.raises(FewlabelError, match="curve-only"):
        fewlabel.train(cells, strategy="knn", encoder="convnet", labels_per_class=2, test_size=0.3,
                       device="cpu")


def test_test_images_never_reach_the_head(cells: Path, tmp_path: Path) -> None:
    data = _data(cells)
    cell = _cell(data)
    head = {k: v.clone() for k, v in cell.classifier.head.state_dict().items()}

    # other pixels in every test image (another copy of the data): same split, same head
    root = tmp_path / "noisy"
    shutil.copytree(cells, root)
    rng = np.random.default_rng(3)
    for i in data.test_ids:
        write_png(Path(root) / Path(data.catalog.by_id[i].path).relative_to(cells),
                  rng.integers(0, 255, (32, 32), dtype=np.uint8))
    noisy = _data(root)
    assert list(noisy.test_ids) == list(data.test_ids)
    other = _cell(noisy)
    for key, value in other.classifier.head.state_dict().items():
        assert torch.equal(value, head[key]), key
    assert not np.allclose(other.proba_test, cell.proba_test)

    # other labels for the test images: same head (only the metrics change)
    k = len(data.class_names)
    test = set(data.test_ids)
    relabelled = [dataclasses.replace(s, label=data.class_names[(data.class_names.index(s.label) + 1) % k])
                  if s.id in test else s for s in data.catalog.samples]
    data.catalog = dataclasses.replace(data.catalog, samples=relabelled)
    swapped = _cell(data)
    for key, value in swapped.classifier.head.state_dict().items():
        assert torch.equal(value, head[key]), key
    assert swapped.metrics["accuracy"]["value"] < cell.metrics["accuracy"]["value"]


def test_probe_refuses_training_the_encoder(cells: Path) -> None:
    data = _data(cells)
    draw = add_draw(data, 2, 0, 0)
    with pytest.raises(FewlabelError, match="frozen features"):
        fit_cell(data, list(draw["labelled"]), default_spec("probe", "convnet"), 0,
                 FinetuneConfig(device="cpu", semi=True))


def test_saved_probe_model_predicts_the_cell(cells: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    model = fewlabel.train(cells, out, strategy="probe", encoder="convnet", labels_per_class=3, test_size=0.3,
                           device="cpu")
    assert model.metrics["accuracy"]["value"] >= 0.9
    data = _data(cells)
    loaded = fewlabel.load_model(out, device="cpu")
    proba = loaded.predict_arrays(data.test_arrays[0])
    cell = _cell(data)
    np.testing.assert_allclose(proba, cell.proba_test, rtol=1e-4, atol=1e-5)
    assert loaded.config["finetune"]["freeze_encoder"] and loaded.config["finetune"]["tta"]


def test_probe_on_a_vit_checkpoint(tmp_path: Path, computed: list[int]) -> None:
    refs = pytest.importorskip("test_vit_refs")
    weights = refs.write_timm(refs.RefViT("timm"), tmp_path / "vit.safetensors")
    root = make_class_folder(tmp_path / "data", CLASSES, size=(16, 16), seed=0)
    data = _data(root)
    kw = {"encoder_weights": str(weights), "encoder_kwargs": {"input_size": 16}}
    cell = _cell(data, encoder="vit", **kw)
    assert cell.classifier.encoder.config["name"] == "vit" and sum(computed) == len(data.test_ids) + 9
    assert _cell(data, "knn", encoder="vit", **kw).metrics["n"] == len(data.test_ids)
    assert sum(computed) == len(data.test_ids) + 9  # knn read the probe's features
    x = data.test_arrays[0]
    proba = predict_proba(cell.classifier, x, device="cpu")
    np.testing.assert_allclose(proba, cell.proba_test, rtol=1e-4, atol=1e-5)


def test_default_cache_dir_follows_fewlabel_cache(cache_dir: Path) -> None:
    assert feature_cache_mod.default_feature_dir() == cache_dir / "features"


@pytest.mark.slow
def test_probe_with_the_real_imagenet_weights(cells: Path, shared_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    weights = shared_dir / "weights" / "mobilenet_v2-b0353104.pth"
    if not weights.is_file():
        pytest.skip("no ImageNet MobileNetV2 file in ../shared/weights")
    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(weights))
    data = _data(cells)
    cell = _cell(data, encoder=None)
    assert cell.metrics["accuracy"]["value"] >= 0.9
    knn = _cell(data, "knn", encoder=None)
    assert knn.metrics["accuracy"]["value"] >= 0.8
    assert "0 computed" in knn.notes[-1]  # the probe's features, read back


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_probe_features_on_the_gpu(cells: Path, computed: list[int]) -> None:
    data = _data(cells)
    draw = add_draw(data, 3, 0, 0)
    cell = fit_cell(data, list(draw["labelled"]), default_spec("probe", "convnet"), 0,
                    FinetuneConfig(device="cuda", progress=False), train_ids=draw["train"],
                    val_ids=draw["val"])
    assert cell.finetune_config.device.startswith("cuda") and sum(computed) == len(data.test_ids) + 9
    assert next(cell.classifier.encoder.parameters()).is_cuda
    assert cell.metrics["accuracy"]["value"] >= 0.9
    proba = predict_proba(cell.classifier, data.test_arrays[0], device="cuda")
    np.testing.assert_allclose(proba, cell.proba_test, atol=1e-3)
