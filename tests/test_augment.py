"""Augmentation: shapes and dtypes kept, deterministic from a seed, exact weak transforms, depth never
flipped, image and mask moved together; the primitives of the pretraining views draw from their
generator only."""

from __future__ import annotations

import pytest
import torch

from fewlabel.data import augment
from fewlabel.data.augment import make_augment, make_paired_augment, paired_spatial


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", ["none", "weak", "strong"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_determinism(spatial_dims, kind, dtype):
    shape = (4, 2) + ((6,) if spatial_dims == 3 else ()) + (12, 12)
    x = torch.randn(shape, dtype=dtype)
    a = make_augment(spatial_dims, kind, seed=3)(x)
    b = make_augment(spatial_dims, kind, seed=3)(x)
    assert a.shape == x.shape and a.dtype == dtype
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()
    if kind == "none":
        assert torch.equal(a, x)
    else:
        c = make_augment(spatial_dims, kind, seed=4)(x)
        assert not torch.equal(a, c)


def test_generator_and_global_seed():
    x = torch.randn(3, 1, 8, 8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(make_augment(2, "strong", generator=g1)(x), make_augment(2, "strong", generator=g2)(x))
    torch.manual_seed(0)
    a = make_augment(2, "weak")(x)
    torch.manual_seed(0)
    assert torch.equal(a, make_augment(2, "weak")(x))


def test_weak_without_shift_is_a_pixel_permutation():
    x = torch.randn(8, 3, 10, 10)
    y = make_augment(2, "weak", seed=0, shift=0.0)(x)
    for i in range(8):
        assert torch.equal(torch.sort(y[i].flatten()).values, torch.sort(x[i].flatten()).values)
    assert not torch.equal(x, y)


def test_rot90_skipped_when_not_square():
    x = torch.randn(6, 1, 8, 12)
    y = make_augment(2, "weak", seed=0)(x)
    assert y.shape == x.shape


def test_3d_depth_axis_untouched():
    d = 7
    x = torch.arange(d, dtype=torch.float32).view(1, 1, d, 1, 1).expand(5, 1, d, 10, 10).contiguous()
    y = make_augment(3, "strong", seed=0, jitter=0.0, noise=0.0, erase=False, scale=(1.0, 1.0))(x)
    # every slice stays constant at its own depth value: no flip/rotation/shift along depth
    for z in range(d):
        torch.testing.assert_close(y[:, :, z], torch.full_like(y[:, :, z], float(z)))


def test_strong_changes_intensities_and_erases():
    x = torch.ones(6, 1, 16, 16)
    y = make_augment(2, "strong", seed=1, jitter=0.0, noise=0.0)(x)
    assert (y == 0).any()  # a cutout box
    z = make_augment(2, "strong", seed=1, erase=False)(x)
    assert not torch.allclose(z, x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_paired_weak_is_exact(spatial_dims):
    shape = (4, 1) + ((5,) if spatial_dims == 3 else ()) + (16, 16)
    mask = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.7).long()
    image = mask.float() * 10.0 + 1.0
    img2, mask2 = paired_spatial(image, mask, spatial_dims, "weak", seed=2)
    assert mask2.dtype == torch.long and img2.dtype == torch.float32
    torch.testing.assert_close(img2, mask2.float() * 10.0 + 1.0)
    assert not torch.equal(mask2, mask)


def test_paired_strong_keeps_labels_and_alignment():
    mask = torch.zeros(4, 1, 24, 24, dtype=torch.long)
    mask[:, :, 6:18, 8:16] = 2
    image = mask.float()
    aug = make_paired_augment(2, "strong", seed=0)
    img2, mask2 = aug(image, mask)
    assert set(mask2.unique().tolist()) <= {0, 2}
    agree = ((img2 > 1.0) == (mask2 == 2)).float().mean()
    assert agree > 0.95
    with pytest.raises(ValueError, match="do not match"):
        aug(image, mask[:, :, :20])


def test_strong_jitter_keeps_colour_balance_unless_asked() -> None:
    """Stain colour carries meaning: by default gain/offset are the same for all channels."""
    import torch

    from fewlabel.data.augment import Augment

    x = torch.zeros(4, 3, 8, 8)
    kw = dict(flips=False, rot90=False, shift=0.0, rotate_deg=0.0, scale=(1.0, 1.0), noise=0.0, erase=False)
    shared = Augment(2, "strong", seed=0, **kw)(x + 1.0)
    assert torch.allclose(shared[:, 0], shared[:, 1]) and torch.allclose(shared[:, 1], shared[:, 2])
    per_channel = Augment(2, "strong", seed=0, colour_jitter=True, **kw)(x + 1.0)
    assert not torch.allclose(per_channel[:, 0], per_channel[:, 1])


# -- the primitives the pretraining views are composed of ---------------------------------------------
PRIMITIVES = {
    "dihedral": lambda x, g: augment.dihedral(x, g),
    "shift": lambda x, g: augment.apply_spatial(x, augment.draw_spatial(x.shape, g, shift=0.25)),
    "resized_crop": lambda x, g: augment.resized_crop(x, g, (0.3, 0.6)),
    "scale_shift": lambda x, g: augment.scale_shift(x, g, 0.2, 0.2, per_channel=True),
    "add_noise": lambda x, g: augment.add_noise(x, g, 0.1),
    "blur": lambda x, g: augment.blur(x, g, 1.0, (0.5, 1.5)),
    "cutout": lambda x, g: augment.cutout(x, g),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
@pytest.mark.parametrize("shape", [(3, 2, 12, 12), (2, 1, 5, 8, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_primitives_draw_from_their_generator_only(name, shape, dtype):
    """Shape, float dtype and gradients kept; the seed decides; torch's global generator untouched."""
    fn = PRIMITIVES[name]
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype) * 300).requires_grad_()
    before = torch.get_rng_state()
    a = fn(x, augment.make_generator(1))
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == x.shape and a.dtype == dtype and torch.isfinite(a).all()
    assert torch.equal(a, fn(x, augment.make_generator(1)))
    assert not torch.equal(a, fn(x, augment.make_generator(2)))
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_make_generator_streams_differ_from_each_other_and_from_the_global_one():
    torch.manual_seed(0)
    draws = [torch.rand(4), torch.rand(4, generator=augment.make_generator(0)),
             torch.rand(4, generator=augment.make_generator(0, "figure"))]
    assert len({tuple(d.tolist()) for d in draws}) == 3


def test_padding_reflects_the_image_instead_of_filling_it():
    x = torch.full((6, 1, 16, 16), 5.0)  # a flat image stays flat under any shift, zoom or turn
    g = augment.make_generator(0)
    shifted = augment.apply_spatial(x, augment.draw_spatial(x.shape, g, shift=0.25, rotate_deg=30))
    torch.testing.assert_close(shifted, x)
    torch.testing.assert_close(augment.resized_crop(x, g, (0.2, 0.5)), x)


def test_dihedral_is_exact_moves_masks_along_and_never_touches_depth():
    g = augment.make_generator(1)
    x = torch.randn(16, 2, 8, 8)
    mask = (x[:, :1] > 0).long()
    p = augment.draw_spatial(x.shape, g, flips=True, rot90=True)
    xa, ma = augment.apply_spatial(x, p), augment.apply_spatial(mask, p, nearest=True)
    assert torch.equal(xa.flatten(1).sort(1).values, x.flatten(1).sort(1).values)  # no interpolation
    assert torch.equal((xa[:, :1] > 0).long(), ma)
    vol = torch.randn(4, 1, 5, 8, 8)
    va = augment.dihedral(vol, g)
    for d in range(5):
        assert torch.equal(va[:, :, d].flatten(1).sort(1).values, vol[:, :, d].flatten(1).sort(1).values)


def test_blur_keeps_each_channels_mass_2d_3d():
    img = torch.zeros(2, 3, 9, 9)
    img[:, :, 4, 4] = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(augment.gaussian_blur(img, 1.0).sum((2, 3)), img.sum((2, 3)))
    vol = torch.zeros(1, 2, 9, 9, 9)
    vol[..., 4, 4, 4] = 1.0
    torch.testing.assert_close(augment.gaussian_blur(vol, 1.0).sum((2, 3, 4)), torch.ones(1, 2))


def test_cutout_box_spans_the_asked_share_of_each_side():
    x = torch.ones(8, 1, 6, 16, 16)
    out = augment.cutout(x, augment.make_generator(0), (0.5, 0.5))
    assert torch.equal((out == 0).flatten(1).sum(1), torch.full((8,), 3 * 8 * 8))
