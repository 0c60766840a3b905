"""GAN preparation (TOP-GAN): the discriminator body is the shared encoder and learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewlabel.data.augment import make_generator
from fewlabel.errors import DataError
from fewlabel.models.encoder import create_encoder
from fewlabel.models.gan import Discriminator, Generator, add_spectral_norm, remove_spectral_norm
from fewlabel.pretrain.common import PretrainConfig
from fewlabel.pretrain.gan import DiffAugment, pixel_w1, pretrain_gan


def blob_images(n: int = 48, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Bright discs on a dark background: float, z-scored, not 8-bit (like a phase map)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.12, size * 0.22)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * 2.5 - 0.5
        out.append(np.stack([disc + rng.normal(0, 0.05, disc.shape) for _ in range(channels)]))
    x = np.stack(out).astype(np.float32)
    return (x - x.mean()) / x.std()


def small_encoder(channels: int = 1, seed: int = 0):
    torch.manual_seed(seed)  # torch's start-up seed is random: fix the initial weights
    return create_encoder("convnet", in_channels=channels, spatial_dims=2, width=8, depth=4, act="leaky_relu")


def test_discriminator_body_is_the_encoder_object():
    enc = small_encoder()
    disc = Discriminator(enc, image_size=(32, 32))
    assert disc.encoder is enc
    logits = disc(torch.randn(3, 1, 32, 32))
    assert logits.shape == (3,)


def test_gan_learns_and_saves_sample_grids(tmp_path):
    x = blob_images()
    cfg = PretrainConfig(steps=80, batch_size=16, log_every=20, sample_every=40, progress=False)
    encoder, info = pretrain_gan(x, cfg, encoder=small_encoder(), out_dir=tmp_path)
    rows = info["history"]
    assert info["steps"] == 80 and len(rows) == 4
    # The discriminator separates real from fake early on (chance is 0.5) ...
    assert max(r["d_acc"] for r in rows) > 0.65
    # ... and the generator moves towards the data: its pixel values get closer to the real ones
    # (1-Wasserstein distance) than those of a fresh generator. A GAN's losses do not simply fall;
    # this is the meaningful "goes down" for it.
    # Batch statistics in both generators (train mode), as the discriminator saw them. Over seeds
    # 0-3 the ratio was 0.79-0.82 and the logged distance fell 13-20 %.
    torch.manual_seed(0)
    fresh = Generator(1, (32, 32), z_dim=cfg.z_dim, width=8)
    z, real = torch.randn(48, cfg.z_dim), torch.from_numpy(x)
    with torch.no_grad():
        trained_samples, fresh_samples = info["generator"].train()(z), fresh(z)
    assert pixel_w1(trained_samples, real) < 0.9 * pixel_w1(fresh_samples, real)
    assert rows[-1]["pixel_w1"] < 0.92 * rows[0]["pixel_w1"]
    # Linear output on z-scored data: samples reach beyond +-1 (a tanh could not).
    assert float(trained_samples.max()) > 1.0
    for name in ("real.png", "samples_step000040.png", "samples_step000080.png", "samples_final.png"):
        assert (tmp_path / name).stat().st_size > 0
    # The exported encoder has plain keys: it loads strictly into a fresh encoder of its config.
    fresh_encoder = create_encoder(**encoder.config)
    fresh_encoder.load_state_dict(encoder.state_dict(), strict=True)
    assert not any("parametrizations" in k for k in encoder.state_dict())


def test_spectral_norm_removal_keeps_the_function():
    torch.manual_seed(0)
    disc = add_spectral_norm(Discriminator(small_encoder(), image_size=(32, 32)))
    x = torch.randn(4, 1, 32, 32)
    for _ in range(3):  # a few power iterations, as in training
        disc(x)
    disc.eval()
    with torch.no_grad():
        before = disc.encoder(x).clone()
        remove_spectral_norm(disc)
        after = disc.encoder(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert not any("parametrizations" in k for k in disc.state_dict())


def test_stop_and_resume_reaches_the_step_budget(tmp_path):
    x = blob_images(16, 16)
    ckpt = tmp_path / "gan.ckpt"
    enc_cfg = dict(in_channels=1, spatial_dims=2, width=4, depth=3)
    first = PretrainConfig(steps=4, batch_size=8, log_every=2, progress=False, sample_every=0)
    _, info1 = pretrain_gan(x, first, encoder=create_encoder("convnet", **enc_cfg), checkpoint_path=ckpt)
    assert info1["steps"] == 4 and not info1["resumed"] and ckpt.exists()
    second = PretrainConfig(steps=8, batch_size=8, log_every=2, progress=False, sample_every=0)
    _, info2 = pretrain_gan(x, second, encoder=create_encoder("convnet", **enc_cfg), checkpoint_path=ckpt)
    assert info2["resumed"] and info2["steps"] == 8
    assert [r["step"] for r in info2["history"]] == [2.0, 4.0, 6.0, 8.0]


def test_gan_pretraining_is_deterministic_for_a_seed():
    x = blob_images(16, 16)

    def run(seed: int) -> dict[str, torch.Tensor]:
        cfg = PretrainConfig(steps=4, batch_size=8, log_every=2, progress=False, sample_every=0, seed=seed)
        torch.manual_seed(99)  # the caller's encoder starts from the same weights every run
        enc = create_encoder("convnet", in_channels=1, spatial_dims=2, width=4, depth=3, act="leaky_relu")
        return pretrain_gan(x, cfg, encoder=enc)[0].state_dict()

    first = run(0)
    assert all(torch.equal(first[k], v) for k, v in run(0).items())
    assert any(not torch.equal(first[k], v) for k, v in run(1).items())


def test_diff_augment_passes_gradients_and_draws_from_its_own_generator():
    fake = torch.randn(4, 1, 16, 16, requires_grad=True)
    before = torch.get_rng_state()
    out = DiffAugment(make_generator(0))(fake)
    assert torch.equal(torch.get_rng_state(), before)
    out.sum().backward()  # the generator learns through the augmentation
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert (out == 0).flatten(1).float().mean(1).min() >= 0.25  # a half-side box is cut out of each
    assert torch.equal(out, DiffAugment(make_generator(0))(fake))


def test_rgb_images_any_size_divisible_by_16(tmp_path):
    x = blob_images(8, 16, channels=3)
    cfg = PretrainConfig(steps=2, batch_size=4, log_every=2, progress=False, sample_every=0)
    enc = create_encoder("convnet", in_channels=3, spatial_dims=2, width=4, depth=3)
    encoder, _ = pretrain_gan(x, cfg, encoder=enc, out_dir=tmp_path)
    assert encoder.in_channels == 3 and (tmp_path / "samples_final.png").exists()
    assert Generator(3, (48, 80)).sample(2).shape == (2, 3, 48, 80)


def test_sizes_not_divisible_by_16_are_refused():
    with pytest.raises(DataError, match="divisible by 16"):
        pretrain_gan(np.zeros((4, 1, 24, 24), np.float32), PretrainConfig(steps=1, progress=False))
