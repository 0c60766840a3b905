"""Segmentation preparation (Wong et al. 2018): train a U-Net on images with masks, keep its down
path. 2D and 3D; Dice + cross-entropy (MONAI's ``DiceCELoss``); validation Dice picks the best
weights; a PNG shows image | true | predicted mask for a few validation images (3D: middle slices).

Leakage rule: give this function only training images' masks. ``fewlabel.pipeline`` passes the
pool (never the test set); ``fewlabel.prepare.leakage`` has the checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.data.augment import make_paired_augment
from fewlabel.errors import DataError, MaskError
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.models.unet import UNet
from fewlabel.prepare import views
from fewlabel.prepare.common import PretrainConfig, check_images, check_masks, history_summary, loop_config
from fewlabel.prepare.figures import save_mask_comparison
from fewlabel.training.batches import TensorBatches, sequential_batches
from fewlabel.training.loop import Loop, Task, fit


def masks_to_classes(*masks: torch.Tensor, num_classes: int | None = None
                     ) -> tuple[list[torch.Tensor], int, list[int]]:
    """Turn masks into class indices 0..K-1, the same mapping for all arrays given.

    Binary masks stored as 0/255 (8-bit PNGs) become 0/1. Other labels that are not already
    0..K-1 (e.g. BraTS's 0, 1, 2, 4) are renumbered in sorted order. Returns the masks, K and the
    original label of each class.
    """
    values = torch.unique(torch.cat([m.flatten() for m in masks]))
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


def dice_per_class(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K-1) Dice of each foreground class per image; 1 where both masks lack the class
    (nothing to find, nothing found), as MONAI's ``DiceMetric(ignore_empty=False)``."""
    dims = tuple(range(2, pred.dim()))
    p = torch.nn.functional.one_hot(pred[:, 0], num_classes).movedim(-1, 1)[:, 1:].float()
    t = torch.nn.functional.one_hot(true[:, 0], num_classes).movedim(-1, 1)[:, 1:].float()
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return torch.where(denom > 0, 2 * inter / denom.clamp(min=1e-8), torch.ones_like(denom))


class SegmentationTask(Task):
    """Dice + CE on paired-augmented batches; validation Dice (foreground mean) picks the best epoch."""

    monitor = "val_dice"
    mode = "max"

    def __init__(self, unet: UNet, config: PretrainConfig) -> None:
        from monai.losses import DiceCELoss

        self.unet, self.config = unet, config
        # The data layer's weak spatial transform: in-plane flips, 90-degree turns, whole-pixel shifts.
        self.paired = make_paired_augment(unet.spatial_dims, "weak")
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self._opt: torch.optim.Optimizer | None = None

    def modules(self) -> nn.Module:
        return self.unet

    def optimizers(self) -> list[torch.optim.Optimizer]:
        self._opt = torch.optim.AdamW(self.unet.parameters(), lr=self.config.learning_rate("segmentation"),
                                      weight_decay=self.config.weight_decay)
        return [self._opt]

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float]:
        x, m = batch
        with torch.no_grad():  # one spatial transform for image and mask; mild intensity on the image
            x, m = self.paired(x, m)
            x = views.random_intensity(views.random_noise(x, 0.05), 0.1, 0.1)
        with ctx.autocast():
            logits = self.unet(x)
        loss = self.loss_fn(logits.float(), m)
        assert self._opt is not None
        ctx.backward_step(loss, self._opt)
        return {"loss": float(loss.detach())}

    def validate(self, batches: Any, ctx: Loop) -> dict[str, float]:
        total, n, dices = 0.0, 0, []
        for x, m in batches:
            x, m = ctx.to_device((x, m))
            logits = self.unet(x).float()
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
        out = [self.unet(xb.to(device)).argmax(1, keepdim=True).cpu()
               for xb in sequential_batches(x, None, 16)]
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
    task = SegmentationTask(unet, config)
    has_val = len(xv) > 0
    batches = TensorBatches(x, m, config.batch_size, seed=config.seed, min_steps=config.log_every,
                            drop_last=len(x) > config.batch_size)
    val_batches = sequential_batches(xv, mv, 16) if has_val else None
    result = fit(task, batches, val_batches, loop_config(config, "pretrain segmentation", checkpoint_path))
    info = history_summary(result)
    info.update(num_classes=num_classes, labels=labels)
    if has_val:
        info["val_dice"] = float(result.best_score) if result.best_score is not None else float("nan")
    show_x, show_m = (xv, mv) if has_val else (x, m)
    if out_dir is not None:
        n = min(4, len(show_x))
        save_mask_comparison(show_x[:n], show_m[:n], task.predict(show_x[:n]),
                             Path(out_dir) / "masks_val.png")
    return unet.encoder.cpu().eval(), info
