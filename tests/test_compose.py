"""Composed strategies: one preparation started from another's weights, usable like any strategy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fewlabel
from fewlabel import strategies
from fewlabel.models.io import load_encoder, read_header
from fewlabel.training.finetune import FinetuneConfig

from factory import fake_imagenet_file, make_class_folder, make_pool

FAST = FinetuneConfig(max_epochs=1, batch_size=8, min_steps_per_epoch=1, progress=False)


def _fake_imagenet_file(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = fake_imagenet_file(folder)
    return path, torch.load(path, weights_only=True)


def test_registry_lists_composed_strategies() -> None:
    entry = strategies.get("imagenet+ssl")
    assert entry.init == "imagenet" and entry.prepare == "ssl" and not entry.pretrained_weights
    assert strategies.get("imagenet").pretrained_weights
    assert "imagenet+semi" in strategies.NAMES and strategies.PRETRAIN_METHODS.count("ssl") == 1


def test_imagenet_plus_ssl_starts_simclr_from_imagenet_weights(tmp_path: Path, monkeypatch) -> None:
    weights, state = _fake_imagenet_file(tmp_path)
    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(weights))
    data = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(16, 16), channels=3)
    pool = make_pool(tmp_path / "pool", n=8, size=(16, 16), channels=3)
    cache = tmp_path / "cache"
    model = fewlabel.train(data, tmp_path / "m", strategy="imagenet+ssl", unlabelled=pool, test_size=0.34,
                           finetune=FAST, cache_dir=cache, pretrain={"steps": 2, "batch_size": 4})
    assert model.metrics["strategy"] == "imagenet+ssl"
    [encoder_file] = cache.glob("ssl-*.safetensors")
    meta = read_header(encoder_file)["meta"]
    # the pool (file and pixel keys of its 8 images), never a test image
    assert meta["init"] == "imagenet" and len(meta["seen_files"]) == 2 * 8
    encoder, _ = load_encoder(encoder_file)
    # Two SimCLR steps moved the weights, but from ImageNet's: they still point where those point.
    moved = encoder.features.state_dict()["18.0.weight"].flatten()
    start = state["features.18.0.weight"].flatten()
    assert not torch.equal(moved, start)
    assert torch.nn.functional.cosine_similarity(moved, start, dim=0) > 0.9


def test_imagenet_plus_ssl_refuses_3d(tmp_path: Path, monkeypatch) -> None:
    from fewlabel.errors import FewlabelError

    weights, _ = _fake_imagenet_file(tmp_path)
    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(weights))
    data = make_class_folder(tmp_path / "v", {"a": 4, "b": 4}, size=(8, 8, 8), fmt="npy")
    with pytest.raises(FewlabelError, match="2D images only"):
        fewlabel.train(data, strategy="imagenet+ssl", finetune=FAST, cache_dir=tmp_path / "c")


def test_published_weights_come_through_the_encoder_registry(tmp_path: Path) -> None:
    from fewlabel.errors import FewlabelError
    from fewlabel.models.encoder import create_encoder

    weights, state = _fake_imagenet_file(tmp_path)
    encoder = create_encoder("mobilenet_v2", in_channels=3, pretrained="imagenet", weights_path=str(weights))
    assert torch.equal(encoder.features.state_dict()["18.0.weight"], state["features.18.0.weight"])
    assert "pretrained" not in encoder.config  # the architecture only: a saved model reloads offline
    with pytest.raises(FewlabelError, match="no 'imagenet' weights for encoder 'convnet'"):
        create_encoder("convnet", pretrained="imagenet")
