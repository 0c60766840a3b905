"""Segmentation preparation: a U-Net on the shared encoder learns masks in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewlabel.errors import MaskError
from fewlabel.models.encoder import create_encoder
from fewlabel.models.unet import UNet
from fewlabel.pretrain.common import PretrainConfig, check_masks
from fewlabel.pretrain.segmentation import dice_per_class, masks_to_classes, pretrain_segmentation


def blobs_with_masks(n: int, size: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy bright balls and their masks stored as 0/255 (an 8-bit mask file)."""
    rng = np.random.default_rng(seed)
    grids = np.mgrid[tuple(slice(0, size) for _ in range(dims))]
    images, masks = [], []
    for _ in range(n):
        centre = rng.uniform(size * 0.3, size * 0.7, dims)
        r = rng.uniform(size * 0.15, size * 0.3)
        inside = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) < r * r
        images.append((inside * 2.0 - 0.5 + rng.normal(0, 0.3, inside.shape))[None])
        masks.append(inside.astype(np.uint8)[None] * 255)
    return np.stack(images).astype(np.float32), np.stack(masks)


def encoder(dims: int):
    torch.manual_seed(0)  # torch's start-up seed is random: fix the initial weights
    return create_encoder("convnet", in_channels=1, spatial_dims=dims, width=4, depth=3)


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_unet_learns_masks_and_keeps_the_encoder(tmp_path, dims, size):
    x, m = blobs_with_masks(24, size, dims)
    # lr 3e-3 (default 1e-3): over seeds 0-3, val Dice >= 0.85 and loss ratio <= 0.8 in 45 steps.
    cfg = PretrainConfig(steps=45, batch_size=8, log_every=15, lr=3e-3, progress=False)
    enc = encoder(dims)
    trained, info = pretrain_segmentation(x, m, cfg, encoder=enc, out_dir=tmp_path)
    rows = info["history"]
    assert trained is enc  # the U-Net's down path IS the encoder that comes back
    assert info["num_classes"] == 2 and info["labels"] == [0, 255]
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"]
    assert info["val_dice"] > 0.7
    assert (tmp_path / "masks_val.png").stat().st_size > 0


def test_separate_validation_set_and_multiclass_labels(tmp_path):
    x, m = blobs_with_masks(12, 16, 2)
    labels = (m > 0).astype(np.int64) * 4  # labels 0 and 4 ...
    labels[:, :, :, :4] = 2  # ... and 2: three classes, not numbered 0..2
    cfg = PretrainConfig(steps=4, batch_size=4, log_every=2, progress=False)
    _, info = pretrain_segmentation(x[:8], labels[:8], cfg, encoder=encoder(2), val_images=x[8:],
                                    val_masks=labels[8:], out_dir=tmp_path)
    assert info["num_classes"] == 3 and info["labels"] == [0, 2, 4]
    assert 0.0 <= info["val_dice"] <= 1.0


def test_unet_output_matches_input_size_2d_3d():
    for dims, shape in ((2, (20, 28)), (3, (12, 16, 20))):
        net = UNet(encoder(dims), num_classes=3)
        out = net(torch.randn(2, 1, *shape))
        assert out.shape == (2, 3, *shape)


def test_mask_values_become_class_indices():
    (m,), k, labels = masks_to_classes(torch.tensor([[0, 255], [255, 0]]))
    assert k == 2 and labels == [0, 255] and m.tolist() == [[0, 1], [1, 0]]
    (m,), k, labels = masks_to_classes(torch.tensor([0, 1, 2, 4]))
    assert k == 4 and m.tolist() == [0, 1, 2, 3]
    (m,), k, _ = masks_to_classes(torch.tensor([0, 1]), num_classes=3)
    assert k == 3 and m.tolist() == [0, 1]
    with pytest.raises(MaskError):
        masks_to_classes(torch.tensor([0, 1, 2]), num_classes=2)


def test_bad_masks_are_refused_in_one_line():
    images = torch.zeros(2, 1, 8, 8)
    with pytest.raises(MaskError, match="do not match"):
        check_masks(np.zeros((2, 1, 8, 9)), images)
    with pytest.raises(MaskError, match="whole-number"):
        check_masks(np.full((2, 1, 8, 8), 0.5), images)


def test_dice_is_one_for_perfect_and_empty_agreement():
    true = torch.tensor([[[[0, 1], [1, 0]]], [[[0, 0], [0, 0]]]])
    d = dice_per_class(true.clone(), true, 2)
    assert torch.equal(d, torch.ones(2, 1))
    assert float(dice_per_class(1 - true[:1], true[:1], 2)) == 0.0


def test_3d_patches_are_seeded_and_foreground_weighted():
    from fewlabel.pretrain.segmentation import PatchBatches, patch_batch_size, patch_size_3d

    assert patch_size_3d((36, 128, 128)) == (16, 64, 64)
    assert patch_size_3d((20, 30, 6)) == (16, 24, 6)
    assert patch_batch_size((16, 64, 64), 32) == 2  # a step's voxels are bounded, not its volumes
    x = torch.randn(6, 1, 16, 40, 40)
    m = torch.zeros(6, 1, 16, 40, 40, dtype=torch.long)
    m[:, :, 6:9, 30:34, 4:8] = 1  # a small object in one corner: uniform crops would rarely see it
    batches = PatchBatches(x, m, (8, 16, 16), 4, seed=3, min_steps=10)
    got = list(batches)
    assert len(got) == 10 and got[0][0].shape == (4, 1, 8, 16, 16) and got[0][1].dtype == torch.long
    again = list(PatchBatches(x, m, (8, 16, 16), 4, seed=3, min_steps=10))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again, strict=True))
    with_fg = np.mean([bool(mb[i].any()) for _, mb in got for i in range(len(mb))])
    assert with_fg >= 0.35  # about half are centred on foreground; uniform crops hit it ~10% of the time


def test_3d_pretraining_on_patches_validates_whole_volumes(tmp_path, monkeypatch):
    from fewlabel.pretrain import segmentation

    monkeypatch.setattr(segmentation, "PATCH_SIDES_3D", (16, 16, 16))
    x, m = blobs_with_masks(24, 24, 3)
    cfg = PretrainConfig(steps=45, batch_size=8, log_every=15, lr=3e-3, progress=False)
    _, info = pretrain_segmentation(x, m, cfg, encoder=encoder(3), out_dir=tmp_path)
    assert info["patch"] == [16, 16, 16]
    assert info["val_dice"] > 0.6  # Dice of whole 24^3 volumes, predicted window by window
    assert (tmp_path / "masks_val.png").stat().st_size > 0
