"""ImageNet MobileNetV2 weights: search order, hash check, strict load, first-conv adaptation."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.models import create_encoder, imagenet
from fewlabel.models.imagenet import (
    ENV_VAR,
    FILENAME,
    adapt_input_conv,
    find_imagenet_weights,
    load_imagenet_weights,
)


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and no env var: the search sees only what a test puts there."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert imagenet.hub_path() == home / "hub" / "checkpoints" / FILENAME
    return home


def _sha8(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def _fake_file(folder: Path, stem: str = "fake", seed: int = 0, name: str | None = None) -> tuple[Path, dict]:
    """A torchvision-shaped state dict (random weights + a 1000-class head) named ``stem-<sha8>.pth``."""
    torch.manual_seed(seed)
    state = dict(create_encoder("mobilenet_v2", in_channels=3).state_dict())
    state["classifier.1.weight"] = torch.randn(1000, 1280)
    state["classifier.1.bias"] = torch.randn(1000)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    final = folder / (name or f"{stem}-{_sha8(tmp)}.pth")
    tmp.rename(final)
    return final, state


# ------------------------------------------------------------------------------------- the real file
@pytest.fixture(scope="module")
def real_file(shared_dir: Path) -> Path:
    path = shared_dir / "weights" / FILENAME
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def test_real_file_loads_strictly(real_file: Path) -> None:
    enc = create_encoder("mobilenet_v2", in_channels=3)
    info = load_imagenet_weights(enc, real_file)
    file_state = torch.load(real_file, weights_only=True)
    assert info["n_tensors"] == 312 == len(file_state) - 2
    assert info["dropped"] == ["classifier.1.bias", "classifier.1.weight"]
    assert info["sha256"].startswith("b0353104") and info["first_conv"] == "as is (RGB)"
    for key, value in enc.state_dict().items():
        assert torch.equal(value, file_state[key]), key

    # Sanity forward: pretrained features are finite, within ReLU6's range, not collapsed, and fit the
    # file's own 1000-class head.
    enc.eval()
    torch.manual_seed(0)
    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        feats = enc(x)
    assert torch.isfinite(feats).all() and feats.min() >= 0 and feats.max() <= 6
    assert feats.std() > 0.01
    logits = feats @ file_state["classifier.1.weight"].T + file_state["classifier.1.bias"]
    assert logits.shape == (4, 1000) and torch.isfinite(logits).all()


def test_real_file_one_channel_equals_rgb_sum(real_file: Path) -> None:
    grey = create_encoder("mobilenet_v2", in_channels=1).eval()
    rgb = create_encoder("mobilenet_v2", in_channels=3).eval()
    info = load_imagenet_weights(grey, real_file)
    load_imagenet_weights(rgb, real_file)
    assert info["first_conv"] == "sum over RGB" and info["in_channels"] == 1
    assert torch.allclose(grey.features[0][0].weight, rgb.features[0][0].weight.sum(1, keepdim=True))
    # Convolution is linear: a grey image through the summed filter = the same image as R = G = B.
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_real_file_found_in_torch_hub_cache(real_file: Path, clean_env: Path) -> None:
    cached = imagenet.hub_path()
    cached.parent.mkdir(parents=True)
    shutil.copy(real_file, cached)
    assert find_imagenet_weights() == cached


def test_download_goes_to_the_hub_cache(
    real_file: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, hash_prefix))
        shutil.copy(real_file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(ModelFileError):
        find_imagenet_weights()  # no download unless asked
    assert calls == []
    path = find_imagenet_weights(download=True)
    assert path == imagenet.hub_path() and path.is_file()
    assert calls == [("https://download.pytorch.org/models/mobilenet_v2-b0353104.pth", "b0353104")]
    find_imagenet_weights(download=True)  # second time: found in the cache, no download
    assert len(calls) == 1


def test_width_mult_mismatch_is_a_clear_error(real_file: Path) -> None:
    with pytest.raises(ModelFileError, match="width_mult 1.0, the encoder has 0.5") as info:
        load_imagenet_weights(create_encoder("mobilenet_v2", width_mult=0.5), real_file)
    assert FILENAME in str(info.value) and "shape mismatches" in str(info.value)


# ------------------------------------------------------------------------------------- logic, fake files
def test_adapt_input_conv_rules() -> None:
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_input_conv(w, 3), w)
    assert torch.allclose(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    five = adapt_input_conv(w, 5)
    assert five.shape == (8, 5, 3, 3)
    assert torch.allclose(five, torch.cat([w, w[:, :2]], 1) * 3 / 5)  # R G B R G, scaled by 3/N
    two = adapt_input_conv(w, 2)
    assert torch.allclose(two, w[:, :2] * 1.5)
    assert adapt_input_conv(w.half(), 4).dtype == torch.float16


def test_explicit_file_and_folder(tmp_path: Path, clean_env: Path) -> None:
    fake, state = _fake_file(tmp_path / "w")
    assert find_imagenet_weights(fake) == fake
    enc = create_encoder("mobilenet_v2", in_channels=5)
    info = load_imagenet_weights(enc, fake)
    assert info["source"] == str(fake) and info["n_tensors"] == 312
    assert torch.allclose(enc.features[0][0].weight, adapt_input_conv(state["features.0.0.weight"], 5))
    assert torch.equal(enc.features[18][0].weight, state["features.18.0.weight"])

    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ModelFileError, match=f"holds no {FILENAME}") as err:
        find_imagenet_weights(folder)
    assert str(folder) in str(err.value)
    with pytest.raises(ModelFileError, match="does not exist"):
        find_imagenet_weights(tmp_path / "missing.pth")


def test_search_order(tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, _ = _fake_file(tmp_path / "a", "explicit", seed=1)
    via_env, _ = _fake_file(tmp_path / "b", "env", seed=2)
    cached, _ = _fake_file(imagenet.hub_path().parent, seed=3, name=FILENAME)  # wrong hash for its name

    monkeypatch.setenv(ENV_VAR, str(via_env))
    assert find_imagenet_weights(explicit) == explicit  # 1. explicit path wins
    assert find_imagenet_weights() == via_env  # 2. then the env var, before the hub cache
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(ModelFileError, match=f"\\${ENV_VAR}"):
        find_imagenet_weights()  # a configured path that is missing is an error, not a fall-through
    monkeypatch.delenv(ENV_VAR)
    # 3. the hub cache: here a file whose content does not match the hash in its name.
    with pytest.raises(ModelFileError, match="not b0353104") as err:
        find_imagenet_weights()
    assert str(cached) in str(err.value)


def test_nothing_found_says_where_to_look(clean_env: Path) -> None:
    with pytest.raises(ModelFileError) as err:
        find_imagenet_weights()
    message = str(err.value)
    assert ENV_VAR in message and FILENAME in message and "\n" not in message


def test_hash_is_always_checked(tmp_path: Path, clean_env: Path) -> None:
    fake, _ = _fake_file(tmp_path)
    renamed = fake.with_name("fake-00000000.pth")
    fake.rename(renamed)
    with pytest.raises(ModelFileError, match="sha256 starts with"):
        find_imagenet_weights(renamed)
    plain = renamed.with_name("weights.pth")
    renamed.rename(plain)
    with pytest.raises(ModelFileError, match="no sha256 prefix"):
        find_imagenet_weights(plain)


def test_download_failure_is_one_line(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelFileError, match="could not download .*unreachable.*FEWLABEL_IMAGENET"):
        find_imagenet_weights(download=True)


class Payload:
    """Something only a full unpickler would rebuild (and it could run code)."""

    def __reduce__(self) -> tuple:
        return (print, ("pickled code ran",))


def test_pickled_objects_are_refused(tmp_path: Path, clean_env: Path) -> None:
    tmp = tmp_path / "tmp.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "evil": Payload()}, tmp)
    path = tmp.rename(tmp_path / f"evil-{_sha8(tmp)}.pth")
    with pytest.raises(ModelFileError, match="cannot be read as a PyTorch weight file"):
        load_imagenet_weights(create_encoder("mobilenet_v2"), path)


def test_only_for_mobilenet(tmp_path: Path, clean_env: Path) -> None:
    fake, _ = _fake_file(tmp_path)
    with pytest.raises(FewlabelError, match="only for encoder 'mobilenet_v2', not 'convnet'"):
        load_imagenet_weights(create_encoder("convnet"), fake)


def test_missing_keys_named(tmp_path: Path, clean_env: Path) -> None:
    state = dict(create_encoder("mobilenet_v2", in_channels=3).state_dict())
    del state["features.18.1.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    tmp = tmp_path / "tmp.pth"
    torch.save(state, tmp)
    path = tmp.rename(tmp_path / f"partial-{_sha8(tmp)}.pth")
    with pytest.raises(ModelFileError, match="1 missing keys \\(features.18.1.running_mean\\); 1 unexpected"):
        load_imagenet_weights(create_encoder("mobilenet_v2"), path)
