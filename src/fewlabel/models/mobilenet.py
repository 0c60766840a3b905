"""MobileNetV2 (Sandler et al. 2018) in plain PyTorch, 2D only, registered as ``mobilenet_v2``.

Module names and shapes match torchvision's ``mobilenet_v2()`` exactly (``features.0.0.weight``,
``features.1.conv.0.0.weight`` ... ``features.18.0.weight``), so torchvision's ImageNet file loads
strictly into it without torchvision (see ``fewlabel.models.imagenet``). The encoder has no
``classifier``: its output is the global-average-pooled 1280 features of ``features.18``.

Stage maps (``forward_features``) are the outputs of the last block at each resolution:

    stride  2: features.1   (16 ch)      stride 16: features.13  (96 ch)
    stride  4: features.3   (24 ch)      stride 32: features.18  (1280 ch, the pooled one)
    stride  8: features.6   (32 ch)

For captum's LRP: every activation is its own ``nn.ReLU6`` instance and the residual sum is an
``Add`` module (no parameters, so no state-dict keys), so the explain module can hang a rule on each.
captum has no default rule for ReLU6 or for our ``Add``; it needs them set explicitly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models import layers
from fewlabel.models.encoder import Encoder, register_encoder

# t (expansion), c (channels), n (repeats), s (first stride): torchvision's table.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STAGE_INDICES = (1, 3, 6, 13, 18)  # indices into ``features`` whose outputs are the stage maps


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never more than 10% down."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: keys ``0`` (conv), ``1`` (BN), ``2`` (ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=False),  # not in-place: LRP/saliency hooks need the pre-activation intact
        )


class Add(nn.Module):
    """``a + b`` as a module so attribution methods can attach a rule to the residual sum."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class InvertedResidual(nn.Module):
    """torchvision's block: ``conv`` = [expand 1x1] - depthwise 3x3 - project 1x1 - BN; residual if
    the stride is 1 and the channels are unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        body: list[nn.Module] = []
        if expand_ratio != 1:
            body.append(ConvBNReLU6(cin, hidden, kernel_size=1))
        body += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*body)
        self.add = Add() if self.use_res_connect else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add is not None:
            return self.add(x, self.conv(x))
        return self.conv(x)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MobileNetV2Encoder(Encoder):
    """MobileNetV2 body; ``width_mult`` scales the channels as torchvision does (the ImageNet file
    only fits ``width_mult=1.0``).

    Input adapter (part of the config, so ``predict`` and saved models repeat it): ``input_size``
    resizes every input bilinearly inside ``forward`` (ImageNet features are made at 224 px, while
    the data stay at their native size for every other strategy and for the test arrays);
    ``input_mean``/``input_std`` (per channel, the data's own z-score in [0, 1] units) undo the
    data's z-score and apply ImageNet's normalisation instead, as a plain torchvision script would.
    """

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2, width_mult: float = 1.0,
                 input_size: int | None = None, input_mean: list[float] | None = None,
                 input_std: list[float] | None = None) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise FewlabelError(f"encoder 'mobilenet_v2' is 2D only, got spatial_dims={spatial_dims}")
        if width_mult <= 0:
            raise FewlabelError(f"encoder 'mobilenet_v2' needs width_mult > 0, got {width_mult}")
        adapter, self._renorm = input_adapter("mobilenet_v2", input_size, input_mean, input_std, min_size=32)
        self.in_channels, self.spatial_dims = int(in_channels), 2
        self.config = {
            "name": "mobilenet_v2", "in_channels": self.in_channels, "spatial_dims": 2,
            "width_mult": float(width_mult), **adapter,
        }
        self.input_size = adapter.get("input_size")
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        feats: list[nn.Module] = [ConvBNReLU6(self.in_channels, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(ConvBNReLU6(cin, last, kernel_size=1))
        self.features = nn.Sequential(*feats)
        self.global_pool = layers.global_pool(2)

        def out_channels(block: nn.Module) -> int:
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
            return convs[-1].out_channels

        self.stage_channels = [out_channels(self.features[i]) for i in STAGE_INDICES]
        self.stage_strides = [2, 4, 8, 16, 32]
        self.out_features = last
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so training from scratch behaves like the reference model.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input adapter: ImageNet re-normalisation, then bilinear resize to ``input_size``."""
        size = (self.input_size,) * 2 if self.input_size is not None else None
        return apply_input_adapter(x, self._renorm, size)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.adapt_input(x)
        maps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in STAGE_INDICES:
                maps.append(x)
        return maps


def input_adapter(
    name: str, input_size: int | None, input_mean: list[float] | None, input_std: list[float] | None,
    min_size: int,
) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor] | None]:
    """The checked settings of the input adapter that encoders started from ImageNet-normalised weights
    share: ``(config entries, (scale, shift) or None)``. ``input_size`` resizes inside ``forward`` (the
    data stay native); ``input_mean``/``input_std`` are the data's own z-score in [0, 1] units, undone
    and replaced by ImageNet's normalisation (``_imagenet_renorm``)."""
    if input_size is not None and int(input_size) < min_size:
        raise FewlabelError(f"encoder {name!r} needs input_size >= {min_size}, got {input_size}")
    if (input_mean is None) != (input_std is None):
        raise FewlabelError(f"encoder {name!r} needs input_mean and input_std together")
    entries: dict[str, Any] = {}
    if input_size is not None:
        entries["input_size"] = int(input_size)
    renorm = None
    if input_mean is not None and input_std is not None:
        entries["input_mean"] = [float(v) for v in input_mean]
        entries["input_std"] = [float(v) for v in input_std]
        renorm = _imagenet_renorm(entries["input_mean"], entries["input_std"])
    return entries, renorm


def apply_input_adapter(x: torch.Tensor, renorm: tuple[torch.Tensor, torch.Tensor] | None,
                        size: tuple[int, int] | None) -> torch.Tensor:
    """ImageNet re-normalisation (``renorm``), then a bilinear resize to ``size`` (antialiased when it
    shrinks, so a large image is not aliased into the network's input)."""
    if renorm is not None:
        scale, shift = (t.to(device=x.device, dtype=x.dtype) for t in renorm)
        x = x * scale + shift
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                          antialias=bool(min(x.shape[-2:]) > min(size)))
    return x


def _imagenet_renorm(mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel with ``scale * z + shift = (z * std + mean - im_mean) / im_std``.

    Grey data (1 channel) use the mean of ImageNet's statistics; N channels repeat them cyclically,
    as the first conv's weights are repeated."""
    n = len(mean)
    if len(std) != n or n < 1:
        raise FewlabelError(f"input_mean and input_std need one value per channel (got {n} and {len(std)})")
    if n == 1:
        im_mean, im_std = [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
    else:
        im_mean = [IMAGENET_MEAN[i % 3] for i in range(n)]
        im_std = [IMAGENET_STD[i % 3] for i in range(n)]
    scale = torch.tensor([s / t for s, t in zip(std, im_std, strict=True)]).view(1, n, 1, 1)
    shift = torch.tensor([(m - a) / t for m, a, t in zip(mean, im_mean, im_std, strict=True)])
    shift = shift.view(1, n, 1, 1)
    return scale, shift


@register_encoder("mobilenet_v2")
def _mobilenet_v2(
    in_channels: int = 3, spatial_dims: int = 2, image_size: Any = None, **kwargs: Any
) -> Encoder:
    del image_size  # fully convolutional; sides that divide by 32 keep every stage map whole
    return MobileNetV2Encoder(in_channels=in_channels, spatial_dims=spatial_dims, **kwargs)
