"""THE encoder family, and the registry every model is created through.

One class serves as classifier body, GAN discriminator body, U-Net down path and SSL backbone, so a
weight file from any preparation loads into any of them (same module names, same shapes).

Contract of every registered encoder (``Encoder``):
  * ``forward_features(x) -> list[Tensor]`` the per-stage maps, highest resolution first;
  * ``forward(x) -> Tensor`` pooled features of shape (B, ``out_features``);
  * attributes ``in_channels``, ``spatial_dims``, ``out_features``, ``stage_channels``,
    ``stage_strides`` (total down-sampling factor of each stage's map) and ``config``
    (the kwargs that rebuild it with ``create_encoder(**config)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fewlabel.models import layers

_REGISTRY: dict[str, Callable[..., Encoder]] = {}


class Encoder(nn.Module):
    """Base class. Subclasses set the attributes below and implement ``forward_features``."""

    in_channels: int
    spatial_dims: int
    out_features: int
    stage_channels: list[int]
    stage_strides: list[int]
    config: dict[str, Any]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def pool(self, last_map: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector from the last stage map. ``torch.flatten`` keeps captum's LRP happy."""
        return torch.flatten(self.global_pool(last_map), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)[-1])


class ConvEncoder(Encoder):
    """Plain conv net, 2D or 3D: a full-resolution stem, then ``depth - 1`` stages that halve the size.

    Stage 0: conv3x3 - norm - act at full resolution (width channels).
    Stage i >= 1: conv3x3 stride 2 - norm - act - conv3x3 - norm - act (width * 2**i channels, capped).
    Down-sampling by strided convolution, as in a DCGAN discriminator, so the same body trains as one.
    """

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        act: str = "relu",
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, not {depth}")
        self.in_channels, self.spatial_dims = int(in_channels), int(spatial_dims)
        self.config = {
            "name": "convnet", "in_channels": self.in_channels, "spatial_dims": self.spatial_dims,
            "width": width, "depth": depth, "norm": norm, "act": act, "max_channels": max_channels,
        }
        dims = self.spatial_dims
        chans = [min(width * 2**i, max_channels) for i in range(depth)]
        stages = [nn.Sequential(
            layers.conv(dims, in_channels, chans[0], 3, padding=1, bias=norm == "none"),
            layers.norm(dims, norm, chans[0]),
            layers.activation(act),
        )]
        for i in range(1, depth):
            stages.append(nn.Sequential(
                layers.conv(dims, chans[i - 1], chans[i], 3, stride=2, padding=1, bias=norm == "none"),
                layers.norm(dims, norm, chans[i]),
                layers.activation(act),
                layers.conv(dims, chans[i], chans[i], 3, padding=1, bias=norm == "none"),
                layers.norm(dims, norm, chans[i]),
                layers.activation(act),
            ))
        self.stages = nn.ModuleList(stages)
        self.global_pool = layers.global_pool(dims)
        self.stage_channels = chans
        self.stage_strides = [2**i for i in range(depth)]
        self.out_features = chans[-1]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def max_convnet_depth(image_size: Sequence[int]) -> int:
    """The most stages a ``ConvEncoder`` may have for inputs of ``image_size``: each stage after the
    first halves every side (rounding up), so beyond 2**(depth-1) = the largest side the last stages
    only compute on 1-pixel maps, costing memory and time for nothing."""
    return max(int(s) for s in image_size).bit_length()


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: make a builder available as ``create_encoder(name, ...)``."""

    def wrap(builder: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[name] = builder
        return builder

    return wrap


@register_encoder("convnet")
def _convnet(in_channels: int = 1, spatial_dims: int = 2, image_size: Any = None, **kwargs: Any) -> Encoder:
    del image_size  # fully convolutional: any size whose sides divide by 2**(depth-1)
    return ConvEncoder(in_channels=in_channels, spatial_dims=spatial_dims, **kwargs)


def _load_builtin_encoders() -> None:
    # Imported for their @register_encoder side effect; kept lazy so this module has no cycle.
    import importlib

    for module in ("fewlabel.models.schouten", "fewlabel.models.mobilenet", "fewlabel.models.vit"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name != module:
                raise


def encoder_names() -> list[str]:
    _load_builtin_encoders()
    return sorted(_REGISTRY)


# Published weights an encoder can start from: (encoder name, weights name) -> loader(encoder, path).
# The loader finds the file (an explicit path, $FEWLABEL_IMAGENET_WEIGHTS, the torch hub cache) itself.
PRETRAINED_WEIGHTS = {("mobilenet_v2", "imagenet"): "fewlabel.models.imagenet:load_imagenet_weights"}


def create_encoder(
    name: str = "convnet",
    in_channels: int = 1,
    spatial_dims: int = 2,
    image_size: tuple[int, ...] | None = None,
    pretrained: str | None = None,
    weights_path: str | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build an encoder by name. ``image_size`` is the (H, W) or (D, H, W) input size; only encoders
    with a dense layer after the convolutions (``schouten``) need it. ``pretrained="imagenet"`` starts
    it from published weights (``PRETRAINED_WEIGHTS``; ``weights_path`` names the file, else it is
    looked up and, online, downloaded), as timm's ``create_model(..., pretrained=True)`` does."""
    from fewlabel.errors import FewlabelError

    _load_builtin_encoders()
    if name not in _REGISTRY:
        raise FewlabelError(f"unknown encoder {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    builder = _REGISTRY[name]
    encoder = builder(in_channels=in_channels, spatial_dims=spatial_dims, image_size=image_size, **kwargs)
    if pretrained is not None:
        loader = PRETRAINED_WEIGHTS.get((name, pretrained))
        if loader is None:
            known = ", ".join(f"{e}/{w}" for e, w in PRETRAINED_WEIGHTS)
            raise FewlabelError(f"no {pretrained!r} weights for encoder {name!r}; known: {known}")
        import importlib

        module, func = loader.split(":")
        getattr(importlib.import_module(module), func)(encoder, path=weights_path, download=True)
    return encoder
