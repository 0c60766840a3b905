"""Segmentation preparation (Wong et al. 2018): train a U-Net on images with masks, keep its down
path. 2D and 3D; Dice + cross-entropy (MONAI's ``DiceCELoss``); validation Dice picks the best
weights; a PNG shows image | true | predicted mask for a few validation images (3D: middle slices).

3D volumes train on patches: random crops (half of them centred on a foreground voxel, as MONAI's
``RandCropByPosNegLabel`` with pos = neg), a few per step, and validate by sliding windows over whole
volumes. A step's cost is then bounded by ``PATCH_VOXELS``, not by the volume size (whole 36x128x128
volumes in batches of 32 took ~200 s a step and 9.5 GB on 2 cores).

Leakage rule: give this function only training images' masks. ``fewlabel.pipeline`` passes the
pool (never the test set); ``fewlabel.pretrain.leakage`` has the checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.data.augment import add_noise, make_generator, make_paired_augment, scale_shift
from fewlabel.errors import DataError, MaskError
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.models.unet import UNet
from fewlabel.pretrain.common import PretrainConfig, check_images, check_masks, history_summary, loop_config
from fewlabel.pretrain.figures import save_mask_comparison
from fewlabel.training.batches import TensorBatches, sequential_batches
from fewlabel.training.loop import Loop, Task, fit


def masks_to_classes(*masks: torch.Tensor, num_classes: int | None = None
                     ) -> tuple[list[torch.Tensor], int, list[int]]:
    """Turn masks into class indices 0..K-1, the same mapping for all arrays given.

    Binary masks stored as 0/255 (8-bit PNGs) become 0/1. Other labels that are not already
    0..K-1 (e.g. BraTS's 0, 1, 2, 4) are renumbered in sorted order. Returns the masks, K and the
    original label of each class.
    """
    values = _labels_present(masks)
    labels = [int(v) for v in values]
    if labels and labels[-1] > 0 and set(labels) <= {0, labels[-1]} and num_classes in (None, 2):
        # 0/1, 0/255, 0/k: background vs one foreground
        out = [(m > 0).long() for m in masks]
        return out, 2, [0, labels[-1]]
    if num_classes is not None and len(labels) > num_classes:
        raise MaskError(f"masks hold {len(labels)} labels {labels[:10]} but num_classes={num_classes}")
    if num_classes is not None and labels and labels[-1] < num_classes:
        return [m.long() for m in masks], int(num_classes), list(range(num_classes))
    if labels == list(range(len(labels))):
        k = max(len(labels), 2)
        return [m.long() for m in masks], k, list(range(k))
    lut = torch.zeros(labels[-1] + 1, dtype=torch.long)
    lut[values] = torch.arange(len(labels))
    k = max(len(labels), num_classes or 0, 2)
    return [lut[m] for m in masks], k, labels


def _labels_present(masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Sorted label values found in the masks. Counted per array (``bincount``, one pass, no copy):
    concatenating and sorting whole 3D mask sets took several GB for a 90-volume set."""
    found: set[int] = set()
    for m in masks:
        if m.numel() == 0:
            continue
        flat = m.reshape(-1)
        if flat.is_floating_point() or int(flat.max()) > 65535:  # sparse huge labels: sort instead
            found.update(int(v) for v in torch.unique(flat))
        else:
            found.update(int(v) for v in torch.nonzero(torch.bincount(flat.long() if flat.dtype == torch.bool
                                                                       else flat)).flatten())
    return torch.tensor(sorted(found), dtype=torch.long)


def dice_per_class(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K-1) Dice of each foreground class per image; 1 where both masks lack the class
    (nothing to find, nothing found), as MONAI's ``DiceMetric(ignore_empty=False)``."""
    dims = tuple(range(2, pred.dim()))
    p = torch.nn.functional.one_hot(pred[:, 0], num_classes).movedim(-1, 1)[:, 1:].float()
    t = torch.nn.functional.one_hot(true[:, 0], num_classes).movedim(-1, 1)[:, 1:].float()
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return torch.where(denom > 0, 2 * inter / denom.clamp(min=1e-8), torch.ones_like(denom))


UNET_FILE = "unet.safetensors"  # in the encoder's ``<stem>_files`` folder (``pretrain.common.artefact_dir``)
PATCH_SIDES_3D = (16, 64, 64)  # largest (D, H, W) patch; smaller volumes train whole
PATCH_VOXELS = 2**17  # voxels per 3D step: the batch is this many voxels' worth of patches
FOREGROUND_FRACTION = 0.5  # share of patches centred on a foreground voxel


def patch_size_3d(spatial: tuple[int, ...], sides: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The training patch for volumes of ``spatial`` size: each side capped (``PATCH_SIDES_3D``), kept
    a multiple of 8 where the volume allows (the encoder halves it three times)."""
    out = []
    for n, cap in zip(spatial, sides or PATCH_SIDES_3D, strict=True):
        p = min(n, cap)
        out.append(p - p % 8 if p >= 8 else p)
    return tuple(out)


def patch_batch_size(patch: tuple[int, ...], batch_size: int) -> int:
    return max(1, min(int(batch_size), PATCH_VOXELS // math.prod(patch)))


class PatchBatches:
    """Random (image, mask) patches of fixed size from volumes held once in memory.

    Each patch comes from a volume drawn in shuffled order; with probability ``foreground`` it is
    centred (then clamped inside the volume) on a random foreground voxel of that volume, else placed
    uniformly. Every random number comes from a private generator: the order depends on the seed only.
    """

    def __init__(self, x: torch.Tensor, m: torch.Tensor, patch: tuple[int, ...], batch_size: int,
                 seed: int, min_steps: int = 1, foreground: float = FOREGROUND_FRACTION) -> None:
        self.x, self.m = x, m if m.dtype == torch.uint8 or int(m.max()) >= 256 else m.to(torch.uint8)
        self.patch = tuple(int(p) for p in patch)
        self.spatial = tuple(x.shape[2:])
        self.batch_size = int(batch_size)
        self.foreground = float(foreground)
        self.steps_per_epoch = max(int(min_steps), math.ceil(len(x) / self.batch_size), 1)
        self.generator = torch.Generator().manual_seed(int(seed))
        # Foreground voxel coordinates per volume, found once (not per step).
        self.fg = [torch.nonzero(v[0] > 0) for v in m]

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _corner(self, i: int) -> list[int]:
        g = self.generator
        fg = self.fg[i]
        if len(fg) and float(torch.rand(1, generator=g)) < self.foreground:
            centre = fg[int(torch.randint(len(fg), (1,), generator=g))].tolist()
            return [min(max(c - p // 2, 0), n - p)
                    for c, p, n in zip(centre, self.patch, self.spatial, strict=True)]
        return [int(torch.randint(n - p + 1, (1,), generator=g))
                for p, n in zip(self.patch, self.spatial, strict=True)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order: list[int] = []
        for _ in range(self.steps_per_epoch):
            xs, ms = [], []
            for _ in range(self.batch_size):
                if not order:
                    order = torch.randperm(len(self.x), generator=self.generator).tolist()
                i = order.pop()
                sl = tuple(slice(c, c + p) for c, p in zip(self._corner(i), self.patch, strict=True))
                xs.append(self.x[(i, slice(None)) + sl])
                ms.append(self.m[(i, slice(None)) + sl])
            yield torch.stack(xs), torch.stack(ms).long()


def sliding_window_logits(unet: nn.Module, x: torch.Tensor, patch: tuple[int, ...] | None,
                          batch_size: int = 4) -> torch.Tensor:
    """Logits of a whole batch of volumes, window by window (``patch``) when given, else at once."""
    if patch is None or tuple(x.shape[2:]) == tuple(patch):
        return unet(x)
    from monai.inferers import sliding_window_inference

    # No overlap: validation runs every epoch, and overlapping windows would double its cost.
    return sliding_window_inference(x, roi_size=patch, sw_batch_size=batch_size, predictor=unet, overlap=0.0)


class SegmentationTask(Task):
    """Dice + CE on paired-augmented batches; validation Dice (foreground mean) picks the best epoch."""

    monitor = "val_dice"
    mode = "max"

    def __init__(self, unet: UNet, config: PretrainConfig, patch: tuple[int, ...] | None = None) -> None:
        from monai.losses import DiceCELoss

        self.unet, self.config = unet, config
        self.patch = patch  # 3D: train on patches of this size, validate by sliding windows
        # The data layer's weak spatial transform: in-plane flips, 90-degree turns, whole-pixel shifts.
        self.generator = make_generator(config.seed)
        self.paired = make_paired_augment(unet.spatial_dims, "weak", generator=self.generator)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self._opt: torch.optim.Optimizer | None = None

    def modules(self) -> nn.Module:
        return self.unet

    def reseed(self, seed: int) -> None:
        self.generator.set_state(make_generator(seed).get_state())

    def optimizers(self) -> list[torch.optim.Optimizer]:
        self._opt = torch.optim.AdamW(self.unet.parameters(), lr=self.config.learning_rate("segmentation"),
                                      weight_decay=self.config.weight_decay)
        return [self._opt]

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float]:
        x, m = batch
        with torch.no_grad():  # one spatial transform for image and mask; mild intensity on the image
            x, m = self.paired(x, m)
            x = scale_shift(add_noise(x, self.generator, 0.05), self.generator, 0.1, 0.1)
        with ctx.autocast():
            logits = self.unet(x)
        loss = self.loss_fn(logits.float(), m)
        assert self._opt is not None
        ctx.backward_step(loss, self._opt)
        return {"loss": loss.detach()}

    def validate(self, batches: Any, ctx: Loop) -> dict[str, float]:
        total, n, dices = 0.0, 0, []
        for x, m in batches:
            x, m = ctx.to_device((x, m))
            logits = sliding_window_logits(self.unet, x, self.patch).float()
            total += float(self.loss_fn(logits, m)) * len(x)
            n += len(x)
            dices.append(dice_per_class(logits.argmax(1, keepdim=True), m, self.unet.num_classes))
        d = torch.cat(dices)
        return {"val_loss": total / max(n, 1), "val_dice": float(d.mean())}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.unet.training
        self.unet.eval()
        device = next(self.unet.parameters()).device
        out = [sliding_window_logits(self.unet, xb.to(device), self.patch).argmax(1, keepdim=True).cpu()
               for xb in sequential_batches(x, None, 16 if self.patch is None else 1)]
        self.unet.train(was_training)
        return torch.cat(out)


def default_encoder(in_channels: int, spatial_dims: int) -> Encoder:
    return create_encoder("convnet", in_channels=in_channels, spatial_dims=spatial_dims, width=16, depth=4)


def _hold_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction)) if n >= 5 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def pretrain_segmentation(
    images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    config: PretrainConfig | None = None,
    *,
    encoder: Encoder | None = None,
    val_images: np.ndarray | torch.Tensor | None = None,
    val_masks: np.ndarray | torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
) -> tuple[Encoder, dict[str, Any]]:
    """Train a U-Net on (images, masks) and return its encoder and a summary.

    ``masks`` (N, [1,] *spatial): binary (0/1 or 0/255) or integer labels. Without a validation set,
    ``config.val_fraction`` of the images (at least 5 needed) are held out for validation Dice.
    The summary has ``val_dice`` (best epoch), ``num_classes``, ``labels`` (original label of each
    class), steps, final losses and history. With ``out_dir``: ``masks_val.png`` (image | true |
    predicted) for up to 4 validation images.
    """
    config = config or PretrainConfig()
    x = check_images(images)
    m = check_masks(masks, x)
    if (val_images is None) != (val_masks is None):
        raise DataError("give both val_images and val_masks, or neither")
    if val_images is not None:
        xv = check_images(val_images, "validation images")
        mv = check_masks(val_masks, xv)
    else:
        train_idx, val_idx = _hold_out(len(x), config.val_fraction, config.seed)
        xv, mv = x[val_idx], m[val_idx]
        x, m = x[train_idx], m[train_idx]
    (m, mv), num_classes, labels = masks_to_classes(m, mv, num_classes=config.num_classes)
    torch.manual_seed(config.seed)
    encoder = encoder if encoder is not None else default_encoder(x.shape[1], x.dim() - 2)
    if encoder.in_channels != x.shape[1] or encoder.spatial_dims != x.dim() - 2:
        raise DataError(f"encoder is {encoder.spatial_dims}D with {encoder.in_channels} channel(s); images "
                        f"are {x.dim() - 2}D with {x.shape[1]}")
    unet = UNet(encoder, num_classes)
    spatial = tuple(x.shape[2:])
    patch = patch_size_3d(spatial) if len(spatial) == 3 else None
    patch = None if patch == spatial else patch
    if patch is not None and num_classes < 256:
        m = m.to(torch.uint8)  # int64 masks of whole volumes are 8x the images' size; patches widen
    task = SegmentationTask(unet, config, patch)
    has_val = len(xv) > 0
    batches: Any
    if patch is not None:
        batches = PatchBatches(x, m, patch, patch_batch_size(patch, config.batch_size), seed=config.seed,
                               min_steps=config.log_every)
    else:
        batches = TensorBatches(x, m, config.batch_size, seed=config.seed, min_steps=config.log_every,
                                drop_last=len(x) > config.batch_size)
    val_batches = sequential_batches(xv, mv, 16 if patch is None else 1) if has_val else None
    result = fit(task, batches, val_batches, loop_config(config, "pretrain segmentation", checkpoint_path))
    info = history_summary(result)
    info.update(num_classes=num_classes, labels=labels)
    if patch is not None:
        info.update(patch=list(patch), patch_batch=batches.batch_size)
    if has_val:
        info["val_dice"] = float(result.best_score) if result.best_score is not None else float("nan")
    show_x, show_m = (xv, mv) if has_val else (x, m)
    if out_dir is not None:
        # The whole U-Net (best weights) beside the encoder: region crops predict with it later.
        from fewlabel.models.io import save_unet

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_unet(Path(out_dir) / UNET_FILE, unet.cpu().eval(), {"val_dice": info.get("val_dice")})
        n = min(4, len(show_x))
        save_mask_comparison(show_x[:n], show_m[:n], task.predict(show_x[:n]),
                             Path(out_dir) / "masks_val.png")
    return unet.encoder.cpu().eval(), info
