"""SimCLR preparation: NT-Xent falls in 2D and 3D; views keep medical meaning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewlabel.data.augment import make_generator
from fewlabel.errors import DataError
from fewlabel.models.encoder import create_encoder
from fewlabel.pretrain.common import PretrainConfig
from fewlabel.pretrain.ssl import SimCLRViews, nt_xent, pretrain_ssl


def blob_images(n: int, size: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.mgrid[tuple(slice(0, size) for _ in range(dims))]
    out = []
    for _ in range(n):
        centre = rng.uniform(size * 0.3, size * 0.7, dims)
        r = rng.uniform(size * 0.12, size * 0.3)
        inside = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) < r * r
        out.append((inside * rng.uniform(1, 3) - 0.5 + rng.normal(0, 0.2, inside.shape))[None])
    return np.stack(out).astype(np.float32)


def test_nt_xent_rewards_matching_views():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    matched = nt_xent(z, z + 0.01 * torch.randn(8, 16), temperature=0.2)
    unrelated = nt_xent(z, torch.randn(8, 16), temperature=0.2)
    assert float(matched) < 0.5 < float(unrelated)
    # Collapsed projections: every other view looks alike, the loss is log(2B - 1).
    same = nt_xent(torch.ones(8, 16), torch.ones(8, 16))
    assert math.isclose(float(same), math.log(15), rel_tol=1e-4)


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_simclr_loss_goes_down(tmp_path, dims, size):
    x = blob_images(32, size, dims)
    cfg = PretrainConfig(steps=40, batch_size=16, log_every=10, progress=False)
    torch.manual_seed(0)  # torch's start-up seed is random: fix the initial weights
    enc = create_encoder("convnet", in_channels=1, spatial_dims=dims, width=4, depth=3)
    trained, info = pretrain_ssl(x, cfg, encoder=enc, out_dir=tmp_path)
    rows = info["history"]
    assert trained is enc and info["steps"] == 40
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
    assert (tmp_path / "views.png").stat().st_size > 0


def test_views_change_all_channels_alike_unless_colour_jitter_is_asked():
    # Flat 3-channel images: spatial ops leave them flat, so only intensity changes remain.
    x = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1).expand(6, 3, 8, 8).contiguous()
    plain = SimCLRViews(make_generator(0), crop_scale=(1, 1), blur_p=0, noise_std=0)(x)
    gain = (plain[:, 2] - plain[:, 1]) / (x[:, 2] - x[:, 1])
    torch.testing.assert_close((plain[:, 1] - plain[:, 0]) / (x[:, 1] - x[:, 0]), gain)
    coloured = SimCLRViews(make_generator(0), crop_scale=(1, 1), blur_p=0, noise_std=0, colour_jitter=True)(x)
    gain_c = (coloured[:, 2] - coloured[:, 1]) / (x[:, 2] - x[:, 1])
    assert not torch.allclose((coloured[:, 1] - coloured[:, 0]) / (x[:, 1] - x[:, 0]), gain_c)


@pytest.mark.parametrize("shape", [(4, 2, 16, 16), (3, 1, 6, 12, 12)])
def test_views_come_from_their_generator_only(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    before = torch.get_rng_state()
    a = SimCLRViews(make_generator(3), colour_jitter=True)(x)
    assert torch.equal(torch.get_rng_state(), before)  # torch's global generator was not touched
    torch.manual_seed(123)  # ... and does not matter
    assert torch.equal(a, SimCLRViews(make_generator(3), colour_jitter=True)(x))
    assert not torch.equal(a, SimCLRViews(make_generator(4), colour_jitter=True)(x))
    assert a.shape == x.shape and torch.isfinite(a).all()


def test_simclr_pretraining_is_deterministic_for_a_seed(tmp_path):
    x = blob_images(16, 16, 2)

    def run(seed: int, out_dir=None) -> dict[str, torch.Tensor]:
        cfg = PretrainConfig(steps=6, batch_size=8, log_every=3, progress=False, seed=seed)
        torch.manual_seed(99)  # the caller's encoder starts from the same weights every run
        enc = create_encoder("convnet", in_channels=1, spatial_dims=2, width=4, depth=2)
        return pretrain_ssl(x, cfg, encoder=enc, out_dir=out_dir)[0].state_dict()

    first = run(0)
    assert all(torch.equal(first[k], v) for k, v in run(0, tmp_path).items())  # the picture changes nothing
    assert any(not torch.equal(first[k], v) for k, v in run(1).items())


def test_needs_two_images_and_matching_encoder():
    with pytest.raises(DataError):
        pretrain_ssl(np.zeros((1, 1, 16, 16), np.float32), PretrainConfig(steps=1, progress=False))
    enc3d = create_encoder("convnet", in_channels=1, spatial_dims=3, width=4, depth=2)
    with pytest.raises(DataError, match="3D"):
        pretrain_ssl(np.zeros((4, 1, 16, 16), np.float32), PretrainConfig(steps=1, progress=False),
                     encoder=enc3d)
