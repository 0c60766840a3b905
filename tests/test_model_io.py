"""Encoder files and model folders: safetensors + JSON, exact round trips, one-line errors, no pickle."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewlabel.errors import ModelFileError
from fewlabel.models import create_encoder
from fewlabel.models import io as mio
from fewlabel.models.heads import Classifier
from fewlabel.models.io import (
    encoder_state,
    load_encoder,
    load_encoder_into,
    load_model_dir,
    save_encoder,
    save_model_dir,
)


def _trained_like(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and non-trivial BN statistics, so a round trip that dropped a buffer would show."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
            else:
                t.fill_(7)
    return module.eval()


def _convnet(width: int = 8, **kw: object) -> torch.nn.Module:
    return _trained_like(create_encoder("convnet", in_channels=1, width=width, depth=3, **kw))


def test_encoder_round_trip_exact(tmp_path: Path) -> None:
    enc = _convnet()
    path = save_encoder(tmp_path / "enc.safetensors", enc, {"method": "gan", "steps": 10})
    loaded, meta = load_encoder(path)
    assert meta == {"method": "gan", "steps": 10} and loaded.config == enc.config
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), enc(x))
    for key, value in enc.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # no temp file left behind; the checksum a cache verifies before trusting the file sits beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.safetensors", "enc.safetensors.sha256"]


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("schouten", {"image_size": 96, "filters": [4, 8, 8, 8]}, (2, 1, 96, 96)),
        ("mobilenet_v2", {"width_mult": 0.35}, (2, 1, 32, 32)),
        ("convnet", {"spatial_dims": 3, "width": 4, "depth": 2}, (1, 1, 8, 8, 8)),
    ],
)
def test_every_encoder_round_trips(tmp_path: Path, name: str, kwargs: dict, shape: tuple) -> None:
    enc = _trained_like(create_encoder(name, in_channels=1, **kwargs))
    loaded, _ = load_encoder(save_encoder(tmp_path / "e.safetensors", enc, {}))
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), enc(x))


def test_encoder_file_loads_into_a_fresh_encoder(tmp_path: Path) -> None:
    enc = _convnet()
    path = save_encoder(tmp_path / "enc.safetensors", enc, {"method": "ssl"})
    fresh = create_encoder("convnet", in_channels=1, width=8, depth=3).eval()
    header = load_encoder_into(fresh, path)
    assert header["format"] == "fewlabel-encoder" and header["meta"] == {"method": "ssl"}
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), enc(x))
    # A weight-free difference (the GAN discriminator's leaky ReLU) still loads: same keys, same shapes.
    leaky = create_encoder("convnet", in_channels=1, width=8, depth=3, act="leaky_relu")
    load_encoder_into(leaky, path)
    assert torch.equal(leaky.stages[0][0].weight, enc.stages[0][0].weight)


def test_width_mismatch_is_one_clear_line(tmp_path: Path) -> None:
    path = save_encoder(tmp_path / "x.safetensors", _convnet(width=16), {})
    target = create_encoder("convnet", in_channels=1, width=32, depth=3)
    with pytest.raises(ModelFileError) as err:
        load_encoder_into(target, path)
    message = str(err.value)
    assert message.startswith(f"{path}: encoder 'convnet' width 16 does not match the target's width 32")
    assert "shape mismatches" in message and "\n" not in message
    with pytest.raises(ModelFileError, match="'convnet' does not match the target's encoder 'schouten'"):
        load_encoder_into(create_encoder("schouten", image_size=190), path)


def test_header_is_json_and_there_is_no_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_encoder(tmp_path / "enc.safetensors", _convnet(), {"note": "ü"})
    raw = path.read_bytes()
    # safetensors layout: u64 little-endian header length, then a JSON header, then raw tensor bytes.
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    inner = json.loads(header["__metadata__"]["fewlabel"])
    assert inner["format"] == "fewlabel-encoder" and inner["version"] == 1
    assert inner["encoder"]["name"] == "convnet" and inner["meta"] == {"note": "ü"}
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:16]  # not a pickle, not a torch zip

    # Loading must not touch pickle or torch.load at all.
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while loading")

    model_dir = save_model_dir(tmp_path / "m", Classifier(_convnet(), 2), {})
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_encoder(path)
    load_model_dir(model_dir)


def test_half_precision_state_saves_as_float32(tmp_path: Path) -> None:
    enc = _convnet().to(torch.bfloat16)
    path = save_encoder(tmp_path / "bf16.safetensors", enc, {})
    tensors = load_file(str(path))
    assert tensors["stages.0.0.weight"].dtype == torch.float32
    assert tensors["stages.0.1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(tensors["stages.0.0.weight"], enc.stages[0][0].weight.float())


def test_shared_tensors_save(tmp_path: Path) -> None:
    enc = _convnet()
    enc.tied = enc.stages[0][0]  # the same conv twice in the state dict: safetensors refuses shared memory
    state, _ = encoder_state(save_encoder(tmp_path / "tied.safetensors", enc, {}))
    assert torch.equal(state["tied.weight"], state["stages.0.0.weight"])


def test_not_an_encoder_file(tmp_path: Path) -> None:
    pt = tmp_path / "weights.safetensors"
    torch.save({"a": torch.zeros(2)}, pt)  # a pickle/zip file under a safetensors name
    with pytest.raises(ModelFileError, match="not a safetensors file") as err:
        load_encoder(pt)
    assert str(pt) in str(err.value)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFileError, match="without a fewlabel header"):
        load_encoder(plain)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_encoder(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------ model folders
def _classifier(width: int = 8, classes: int = 3) -> Classifier:
    encoder = create_encoder("convnet", in_channels=1, width=width, depth=3)
    return _trained_like(Classifier(encoder, classes, 0.1))


def test_model_dir_round_trip(tmp_path: Path) -> None:
    model = _classifier()
    config = {"class_names": ["a", "b", "c"], "preprocess": {"size": [16, 16]}, "seed": 3,
              "metrics": {"auc": 0.9}, "encoder": "ignored: fewlabel's own value wins"}
    folder = save_model_dir(tmp_path / "run" / "model", model, config)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # the temp folder was renamed
    loaded, cfg = load_model_dir(folder)
    assert cfg["class_names"] == ["a", "b", "c"] and cfg["seed"] == 3 and cfg["metrics"] == {"auc": 0.9}
    assert cfg["encoder"] == model.encoder.config and cfg["num_classes"] == 3 and cfg["dropout"] == 0.1
    assert len(cfg["weights_sha256"]) == 64
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    # The fine-tuned encoder part is an ordinary encoder state again.
    enc = create_encoder("convnet", in_channels=1, width=8, depth=3).eval()
    load_encoder_into(enc, folder / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(enc(x), model.encoder(x))


def test_model_dir_overwrite_keeps_other_files(tmp_path: Path) -> None:
    folder = save_model_dir(tmp_path / "m", _classifier(), {"seed": 1})
    (folder / "predictions.csv").write_text("id,p\n")
    second = _trained_like(_classifier(), seed=5)
    save_model_dir(folder, second, {"seed": 2})
    loaded, cfg = load_model_dir(folder)
    assert cfg["seed"] == 2 and (folder / "predictions.csv").exists()
    assert torch.equal(loaded.head[1].weight, second.head[1].weight)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "predictions.csv"]


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    from fewlabel.errors import DiskFullError

    monkeypatch.setattr(mio, "save_file", disk_full)
    with pytest.raises(DiskFullError, match="no space left"):  # said as a full disk, naming the file
        save_model_dir(tmp_path / "m", _classifier(), {})
    with pytest.raises(DiskFullError, match="e.safetensors"):
        save_encoder(tmp_path / "e.safetensors", _convnet(), {})
    assert list(tmp_path.iterdir()) == []


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


def test_tampered_or_mixed_model_dirs(tmp_path: Path) -> None:
    folder = save_model_dir(tmp_path / "theirs", _classifier(width=8), {"class_names": ["a", "b", "c"]})
    weights = folder / "model.safetensors"

    _edit_config(folder, encoder={"width": 32})
    with pytest.raises(ModelFileError, match="'convnet' width 8 does not match config.json's width 32"):
        load_model_dir(folder)

    save_model_dir(folder, _classifier(width=8), {})
    _edit_config(folder, num_classes=5)
    with pytest.raises(ModelFileError, match="config.json says num_classes 5, the weights were saved with 3"):
        load_model_dir(folder)

    # Weights from another save beside this config: the recorded sha256 catches it.
    save_model_dir(folder, _classifier(width=8), {})
    other = save_model_dir(tmp_path / "other", _trained_like(_classifier(width=8), seed=9), {})
    weights.write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ModelFileError, match="come from different saves") as err:
        load_model_dir(folder)
    assert str(weights) in str(err.value)


def test_missing_or_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model folder does not exist"):
        load_model_dir(tmp_path / "nothing")
    folder = save_model_dir(tmp_path / "m", _classifier(), {})
    config = (folder / "config.json").read_text()

    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON") as err:
        load_model_dir(folder)
    assert str(folder / "config.json") in str(err.value)

    (folder / "config.json").unlink()
    with pytest.raises(ModelFileError, match="config.json: missing"):
        load_model_dir(folder)

    (folder / "config.json").write_text(config)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="model.safetensors: not a safetensors file"):
        load_model_dir(folder)

    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="model.safetensors: file does not exist"):
        load_model_dir(folder)

    # An encoder file where the model belongs.
    save_encoder(folder / "model.safetensors", _convnet(), {})
    _edit_config(folder, weights_sha256=None)
    with pytest.raises(ModelFileError, match="holds an encoder, not a model"):
        load_model_dir(folder)


def test_unknown_encoder_or_version(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    def write(name: str, header: dict) -> Path:
        path = tmp_path / name
        save_file({"w": torch.zeros(1)}, str(path), metadata={"fewlabel": json.dumps(header)})
        return path

    fmt = "fewlabel-encoder"
    future = write("future.safetensors", {"format": fmt, "version": 2, "encoder": {"name": "x"}})
    with pytest.raises(ModelFileError, match="version 2 is not supported"):
        load_encoder(future)
    alien = write("alien.safetensors", {"format": fmt, "version": 1, "encoder": {"name": "swin"}})
    with pytest.raises(ModelFileError, match="cannot be built: unknown encoder 'swin'") as err:
        load_encoder(alien)
    assert str(err.value).startswith(str(alien))
