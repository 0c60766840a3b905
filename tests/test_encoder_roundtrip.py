"""One encoder, many hosts: a file from any preparation loads into any other host exactly;
``prepare_encoder`` caches by (data, method, config) and resumes a stopped run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewlabel.models.encoder import create_encoder
from fewlabel.models.gan import Discriminator
from fewlabel.models.heads import Classifier
from fewlabel.models.io import load_encoder, load_encoder_into, read_header, save_encoder
from fewlabel.models.unet import UNet
from fewlabel.pretrain import PretrainConfig, prepare_encoder
from fewlabel.pretrain.ssl import SimCLR
from fewlabel.training.finetune import FinetuneConfig, finetune

ENC = {"name": "convnet", "in_channels": 1, "spatial_dims": 2, "width": 4, "depth": 3}
FAST = dict(steps=3, batch_size=4, log_every=3, sample_every=0, progress=False)


def images(n: int = 8, size: int = 16, dims: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1) + (size,) * dims).astype(np.float32)


def host(kind: str, encoder, size: int = 16):
    """The four things an encoder file must load into."""
    if kind == "classifier":
        return Classifier(encoder, 3)
    if kind == "unet":
        return UNet(encoder, 2)
    if kind == "discriminator":
        return Discriminator(encoder, image_size=(size,) * encoder.spatial_dims)
    return SimCLR(encoder)


KINDS = ("classifier", "unet", "discriminator", "ssl")


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory):
    """An encoder file from each preparation (a few steps each) and one from a fine-tuned classifier."""
    root = tmp_path_factory.mktemp("encoders")
    x = images()
    masks = (x > 0).astype(np.int64)
    cfg = PretrainConfig(**FAST)
    files = {
        "gan": prepare_encoder("gan", x, encoder_config=ENC, config=cfg, cache_dir=root),
        "segmentation": prepare_encoder("segmentation", x, masks, encoder_config=ENC, config=cfg,
                                        cache_dir=root),
        "ssl": prepare_encoder("ssl", x, encoder_config=ENC, config=cfg, cache_dir=root),
    }
    clf, _ = finetune(x, np.arange(8) % 3, None, None, 3, create_encoder(**ENC),
                      FinetuneConfig(max_epochs=1, min_steps_per_epoch=2, device="cpu", progress=False))
    files["classifier"] = save_encoder(root / "classifier.safetensors", clf.encoder, {"method": "finetune"})
    return files


@pytest.mark.parametrize("source", ["gan", "segmentation", "ssl", "classifier"])
def test_every_file_loads_into_every_host_exactly(encoder_files, source):
    path = encoder_files[source]
    reference, _ = load_encoder(path)
    reference.eval()
    x = torch.from_numpy(images(3, seed=5))
    with torch.no_grad():
        expected = reference(x)
        expected_maps = reference.forward_features(x)
    state = reference.state_dict()
    for kind in KINDS:
        torch.manual_seed(123)  # a different random start each time: the file must overwrite it all
        target = host(kind, create_encoder(**ENC))
        load_encoder_into(target.encoder, path)
        target.eval()
        with torch.no_grad():
            assert torch.equal(target.encoder(x), expected), (source, kind)
            for a, b in zip(target.encoder.forward_features(x), expected_maps, strict=True):
                assert torch.equal(a, b)
        for k, v in target.encoder.state_dict().items():
            assert torch.equal(v, state[k]), (source, kind, k)


def test_host_to_host_through_files_is_exact(tmp_path):
    """classifier -> unet -> discriminator -> ssl -> classifier: the encoder never changes (2D and 3D)."""
    for dims in (2, 3):
        torch.manual_seed(0)
        cfg = {**ENC, "spatial_dims": dims}
        first = host("classifier", create_encoder(**cfg), size=8)
        with torch.no_grad():  # non-trivial BatchNorm statistics too
            first.encoder.train()(torch.randn(4, 1, *(8,) * dims))
        first.eval()
        x = torch.randn(2, 1, *(8,) * dims)
        with torch.no_grad():
            expected = first.encoder(x)
        current = first
        for i, kind in enumerate(("unet", "discriminator", "ssl", "classifier")):
            path = save_encoder(tmp_path / f"{dims}d_{i}.safetensors", current.encoder, {})
            current = host(kind, create_encoder(**cfg), size=8)
            load_encoder_into(current.encoder, path)
            current.eval()
            with torch.no_grad():
                assert torch.equal(current.encoder(x), expected), (dims, kind)


def test_encoder_file_meta(encoder_files):
    meta = read_header(encoder_files["segmentation"])["meta"]
    for key in ("method", "config", "data_fingerprint", "steps", "final_losses", "cache_key"):
        assert key in meta
    assert meta["method"] == "segmentation" and meta["steps"] == 3
    assert meta["config"]["lr"] == 1e-3 and "loss" in meta["final_losses"]
    assert "val_dice" in meta and meta["num_classes"] == 2
    assert read_header(encoder_files["gan"])["meta"]["config"]["real_label"] == 0.9


def test_asking_twice_trains_once(tmp_path, monkeypatch):
    import fewlabel.pretrain.ssl as ssl_mod

    calls = []
    real = ssl_mod.pretrain_ssl

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl_mod, "pretrain_ssl", counting)
    x = images()
    cfg = PretrainConfig(**FAST)
    first = prepare_encoder("ssl", x, encoder_config=ENC, config=cfg, cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    # Run-time settings (progress, device, checkpoint cadence) are not part of the key.
    again = PretrainConfig(**{**FAST, "progress": None}, checkpoint_every_s=5.0, device="cpu")
    second = prepare_encoder("ssl", x, encoder_config=ENC, config=again, cache_dir=tmp_path)
    assert second == first and second.stat().st_mtime_ns == mtime and len(calls) == 1
    # What changes the result makes a new file: the config, the data, the encoder.
    prepare_encoder("ssl", x, encoder_config=ENC, config=PretrainConfig(**FAST, temperature=0.5),
                    cache_dir=tmp_path)
    prepare_encoder("ssl", images(seed=1), encoder_config=ENC, config=cfg, cache_dir=tmp_path)
    prepare_encoder("ssl", x, encoder_config={**ENC, "width": 8}, config=cfg, cache_dir=tmp_path)
    assert len(calls) == 4
    # A given fingerprint replaces the array hash: same fingerprint, same file.
    a = prepare_encoder("ssl", x, encoder_config=ENC, config=cfg, cache_dir=tmp_path, data_fingerprint="fp")
    b = prepare_encoder("ssl", images(seed=2), encoder_config=ENC, config=cfg, cache_dir=tmp_path,
                        data_fingerprint="fp")
    assert a == b and len(calls) == 5


def test_out_copy_carries_pictures_and_history(tmp_path):
    out = tmp_path / "mine" / "gan.safetensors"
    path = prepare_encoder("gan", images(), encoder_config=ENC, config=PretrainConfig(**FAST),
                           cache_dir=tmp_path / "cache", out=out)
    assert path == out and out.exists()
    files = tmp_path / "mine" / "gan_files"
    assert (files / "samples_final.png").exists() and (files / "real.png").exists()
    history = json.loads((files / "history.json").read_text())
    assert history[-1]["step"] == 3


def test_stopped_preparation_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from fewlabel.pretrain import ssl as ssl_mod

    original = ssl_mod.SimCLRTask.training_step
    state = {"n": 0}

    def interrupted(self, batch, ctx):
        state["n"] += 1
        if state["n"] == 5:  # Ctrl-C during step 5; steps 1-4 are in the checkpoint (log_every=2)
            raise KeyboardInterrupt
        return original(self, batch, ctx)

    monkeypatch.setattr(ssl_mod.SimCLRTask, "training_step", interrupted)
    cfg = PretrainConfig(steps=8, batch_size=4, log_every=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        prepare_encoder("ssl", images(), encoder_config=ENC, config=cfg, cache_dir=tmp_path)
    assert list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob("*.safetensors"))
    monkeypatch.setattr(ssl_mod.SimCLRTask, "training_step", original)
    path = prepare_encoder("ssl", images(), encoder_config=ENC, config=cfg, cache_dir=tmp_path)
    meta = read_header(path)["meta"]
    assert meta["resumed"] and meta["steps"] == 8
    assert not list(tmp_path.glob("*.ckpt"))  # the finished file replaces the resume point


def test_scratch_is_a_seeded_random_init(tmp_path):
    a = prepare_encoder("scratch", None, encoder_config=ENC, config=PretrainConfig(seed=3),
                        cache_dir=tmp_path)
    enc, meta = load_encoder(a)
    torch.manual_seed(3)
    fresh = create_encoder(**ENC)
    assert meta["method"] == "scratch"
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, enc.state_dict()[k])
