"""A U-Net whose down path IS the shared encoder (Wong et al. 2018: segment first, classify after).

``UNet.encoder`` is the ``Encoder`` object itself; the decoder reads its per-stage maps from
``forward_features`` (highest resolution first), so any encoder of the family works, 2D or 3D.
Each decoder step up-samples by interpolation to the skip map's exact size (so odd sizes and
encoders whose strides are not exact powers of two still line up), concatenates the skip and runs
two conv-norm-act layers. Interpolation + conv rather than transposed convs: no checkerboard
artefacts, and the step works for any size ratio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.models import layers
from fewlabel.models.encoder import Encoder


def _block(dims: int, c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        layers.conv(dims, c_in, c_out, 3, padding=1, bias=norm == "none"),
        layers.norm(dims, norm, c_out),
        nn.ReLU(),
        layers.conv(dims, c_out, c_out, 3, padding=1, bias=norm == "none"),
        layers.norm(dims, norm, c_out),
        nn.ReLU(),
    )


class UNet(nn.Module):
    """``forward(x) -> logits (B, num_classes, *spatial)`` at the input's size.

    ``norm`` of the decoder defaults to the encoder's own (``encoder.config["norm"]``), else batch.
    """

    def __init__(self, encoder: Encoder, num_classes: int, norm: str | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one), not {num_classes}")
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.spatial_dims = encoder.spatial_dims
        norm = norm or encoder.config.get("norm", "batch")
        dims, chans = self.spatial_dims, list(encoder.stage_channels)
        ups = []
        c_below = chans[-1]
        for c_skip in reversed(chans[:-1]):  # from the second-deepest stage up to the first
            ups.append(_block(dims, c_below + c_skip, c_skip, norm))
            c_below = c_skip
        self.up_blocks = nn.ModuleList(ups)
        self.out_conv = layers.conv(dims, c_below, self.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encoder.forward_features(x)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        y = maps[-1]
        for block, skip in zip(self.up_blocks, reversed(maps[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[2:], mode=mode, align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        y = self.out_conv(y)
        if y.shape[2:] != x.shape[2:]:  # encoders whose first stage already down-samples
            y = F.interpolate(y, size=x.shape[2:], mode=mode, align_corners=False)
        return y
