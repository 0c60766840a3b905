"""Bounded memory for whole volumes: prediction, features, attributions and the explanation checks run
in batches capped by voxels, and give the numbers they gave in one batch; cached volumes equal freshly
preprocessed ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fewlabel.data import tensors
from fewlabel.data.catalog import load_catalog
from fewlabel.data.readers import read_image
from fewlabel.explain import checks
from fewlabel.explain.attributions import attribute
from fewlabel.explain.embedding import extract_features
from fewlabel.models.encoder import create_encoder
from fewlabel.models.heads import Classifier
from fewlabel.training import batches
from fewlabel.training.batches import GRADIENT_VOXELS, bounded_batch_size
from fewlabel.training.finetune import frozen_features, predict_proba
from fewlabel.training.loop import Loop, LoopConfig
from fewlabel.training.recipe import ClassifierTask, FinetuneConfig

from factory import make_class_folder

VOLUME = (1, 8, 16, 16)  # (C, D, H, W)


def _classifier_3d(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    clf = Classifier(create_encoder("convnet", 1, 3, width=4, depth=3), 2)
    clf.train()
    with torch.no_grad():  # BatchNorm running statistics away from their initial values
        for _ in range(3):
            clf(torch.randn(4, *VOLUME))
    return clf.eval()


def _volumes(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *VOLUME)).astype(np.float32)


class _CountForwards:
    def __init__(self, module: nn.Module) -> None:
        self.sizes: list[int] = []
        self.handle = module.register_forward_pre_hook(lambda m, args: self.sizes.append(len(args[0])))


def test_batch_caps_keep_2d_batches_and_split_whole_volumes() -> None:
    assert bounded_batch_size((3, 224, 224), 64) == 64  # 2D batches as before
    assert bounded_batch_size((1, 96, 96), 16, GRADIENT_VOXELS) == 16
    assert bounded_batch_size((1, 36, 128, 128), 64) == 7  # whole MRI volumes: 7 per forward pass
    assert bounded_batch_size((1, 36, 128, 128), 16, GRADIENT_VOXELS) == 1  # one per backward pass
    assert bounded_batch_size((1, 512, 512, 512), 64) == 1  # never fewer than one


def test_prediction_and_features_in_capped_batches_equal_one_batch(monkeypatch) -> None:
    clf, x = _classifier_3d(), _volumes(5)
    whole = (predict_proba(clf, x, device="cpu"), frozen_features(clf.encoder, x).numpy(),
             extract_features(clf, x))
    monkeypatch.setattr(batches, "INFERENCE_VOXELS", 2 * int(np.prod(VOLUME)))  # 2 volumes a batch
    counter = _CountForwards(clf.encoder)
    capped = (predict_proba(clf, x, device="cpu"), frozen_features(clf.encoder, x).numpy(),
              extract_features(clf, x))
    assert counter.sizes == [2, 2, 1] * 3
    for a, b in zip(whole, capped, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["saliency", "gradcam", "lrp"])
def test_attributions_one_volume_at_a_time_equal_one_batch(monkeypatch, method: str) -> None:
    clf, x = _classifier_3d(), _volumes(3)
    monkeypatch.setattr(batches, "GRADIENT_VOXELS", 10 * int(np.prod(VOLUME)))
    whole = attribute(clf, x, target=None, method=method)
    monkeypatch.setattr(batches, "GRADIENT_VOXELS", int(np.prod(VOLUME)))
    counter = _CountForwards(clf.encoder)
    single = attribute(clf, x, target=None, method=method)
    if method != "lrp":  # LRP explains a copy of the model: the hook does not see it
        assert counter.sizes[-3:] == [1, 1, 1]
    assert single.shape == (3, *VOLUME[1:])
    np.testing.assert_allclose(single, whole, rtol=1e-4, atol=1e-6 * float(np.abs(whole).max()))


def _curves_all_at_once(model, x, order, target, steps, insert):
    """The former implementation: every perturbed copy of every image in memory and one pass."""
    n, spatial = len(x), int(np.prod(x.shape[2:]))
    flat = x.reshape(n, x.shape[1], spatial)
    variants = []
    for k in range(steps + 1):
        count = int(round(k * spatial / steps))
        chosen = np.zeros((n, spatial), dtype=bool)
        np.put_along_axis(chosen, order[:, :count], True, axis=1)
        keep = chosen if insert else ~chosen
        variants.append(np.where(keep[:, None, :], flat, 0.0).reshape(x.shape))
    with torch.no_grad():
        logits = model(torch.as_tensor(np.concatenate(variants).astype(np.float32)))
    probs = torch.softmax(logits, 1).numpy()[np.arange(len(logits)), np.tile(target, steps + 1)]
    return np.trapezoid(probs.reshape(steps + 1, n), dx=1.0 / steps, axis=0)


@pytest.mark.parametrize("insert", [False, True])
def test_faithfulness_curves_streamed_by_step_equal_all_at_once(monkeypatch, insert: bool) -> None:
    clf, x = _classifier_3d(), _volumes(3)
    rng = np.random.default_rng(0)
    order = np.stack([rng.permutation(int(np.prod(VOLUME[1:]))) for _ in range(3)])
    target = np.array([0, 1, 1])
    expected = _curves_all_at_once(clf, x, order, target, 10, insert)
    monkeypatch.setattr(batches, "INFERENCE_VOXELS", int(np.prod(VOLUME)))  # one volume per pass
    counter = _CountForwards(clf)
    got = checks._curves(clf, x, order, target, 10, insert=insert)
    assert max(counter.sizes) == 1 and len(counter.sizes) == 11 * 3
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_validation_sums_on_the_device_equal_host_sums() -> None:
    clf, x = _classifier_3d(), _volumes(5)
    y = torch.tensor([0, 1, 1, 0, 1])
    task = ClassifierTask(clf, FinetuneConfig(), torch.ones(2))
    val = [(torch.as_tensor(x[i:i + 2]), y[i:i + 2]) for i in range(0, 5, 2)]
    with torch.no_grad():
        got = task.validate(val, Loop(LoopConfig(device="cpu")))
        total, correct = 0.0, 0
        for xb, yb in val:
            logits = clf(xb).float()
            total += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    assert got == {"val_loss": total / 5, "val_accuracy": correct / 5}


def test_cached_volumes_equal_freshly_preprocessed_ones(tmp_path) -> None:
    """Volumes of several depths, resized to one working size: the second load comes from the cache
    and both equal ``Preprocess.apply`` on the file read again (what ``predict`` does)."""
    roots = [make_class_folder(tmp_path / f"d{depth}", {"a": 2, "b": 2}, size=(depth, 12, 12), fmt="nii.gz",
                               seed=depth) for depth in (6, 9)]
    paths = sorted(str(p) for root in roots for p in root.rglob("*.nii.gz"))
    (tmp_path / "all").mkdir()
    for i, p in enumerate(paths):  # one data set, two depths
        cls = "a" if "/a/" in p else "b"
        (tmp_path / "all" / cls).mkdir(exist_ok=True)
        (tmp_path / "all" / cls / f"v{i}.nii.gz").symlink_to(p)
    cat = load_catalog(tmp_path / "all")
    tensors.clear_cache()
    pre = tensors.fit_preprocess(cat, cat.ids, image_size=(8, 12, 12))
    first = tensors.load_images(cat, cat.ids, pre)
    hits = tensors.cache_info()["hits"]
    second = tensors.load_images(cat, cat.ids, pre)
    assert tensors.cache_info()["hits"] == hits + len(cat.ids)
    fresh = np.stack([pre.apply(*read_image(cat.by_id[i].path)) for i in cat.ids])
    assert first.shape == (8, 1, 8, 12, 12)
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(second, fresh)


def test_reusing_freed_memory_changes_no_number(monkeypatch) -> None:
    """FEWLABEL_REUSE_MEMORY=1 keeps freed blocks in the heap (``training.heap``): same weights."""
    from fewlabel.training import heap
    from fewlabel.training.finetune import finetune

    x, y = _volumes(6, seed=3), np.array([0, 1] * 3)
    weights = []
    for flag in ("1", "0"):
        monkeypatch.setenv("FEWLABEL_REUSE_MEMORY", flag)
        torch.manual_seed(0)
        encoder = create_encoder("convnet", 1, 3, width=4, depth=3)
        clf, _ = finetune(x[:4], y[:4], x[4:], y[4:], 2, encoder,
                          FinetuneConfig(max_epochs=2, batch_size=2, device="cpu", progress=False), seed=0)
        weights.append(torch.cat([p.detach().flatten() for p in clf.parameters()]))
    assert heap.enabled() is False  # the flag is read at each use; off unless asked for
    assert torch.equal(weights[0], weights[1])
    with heap.reuse_freed_memory(), heap.reuse_freed_memory():  # nested scopes are one scope
        assert heap._depth == 2
    assert heap._depth == 0
