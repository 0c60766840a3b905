"""The Schouten et al. (2021) sequential CNN, registered as ``schouten``.

Six stages of [3x3 'valid' convolution (no padding), ReLU, 2x2 max-pool] with 4-8-8-8-16-16 filters,
then flatten and a 32-unit dense layer + ReLU: that dense output is the encoder's feature vector (the
``Dense -> classes`` layer of the paper is the ``Classifier`` head). The paper used 257 px inputs.

Because the dense layer sees the flattened last map, the encoder is tied to one input size
(``image_size``). Every layer is its own module and the flatten is ``torch.flatten`` in ``pool``, so
captum's LRP runs on it with its default rules (2D).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models import layers
from fewlabel.models.encoder import Encoder, register_encoder

FILTERS = (4, 8, 8, 8, 16, 16)


def stage_size(size: int) -> int:
    """Side length after one stage: a 3x3 valid conv removes 2 px, the 2x2 pool halves (floor)."""
    return (size - 2) // 2


def min_image_size(n_stages: int) -> int:
    """Smallest side for which every stage still has a map of at least 1 px.

    A stage needs ``2 * out + 2`` input px for ``out`` output px; unroll that from 1 px at the end.
    Six stages need 190 px, so the 96 px images used elsewhere in fewlabel are too small.
    """
    size = 1
    for _ in range(n_stages):
        size = 2 * size + 2
    return size


def _as_size(image_size: Any, spatial_dims: int) -> tuple[int, ...]:
    if image_size is None:
        raise FewlabelError(
            "encoder 'schouten' needs image_size (its dense layer is sized from the input), "
            f"e.g. image_size={(257,) * spatial_dims}"
        )
    if isinstance(image_size, int):
        return (image_size,) * spatial_dims
    size = tuple(int(s) for s in image_size)
    if len(size) != spatial_dims:
        raise FewlabelError(f"image_size {size} has {len(size)} sides but spatial_dims is {spatial_dims}")
    return size


class SchoutenEncoder(Encoder):
    """Sequential valid-conv CNN of Schouten et al. (2021); 2D or 3D, any ``in_channels``.

    ``filters`` (one entry per stage) and ``dense`` default to the paper's 4-8-8-8-16-16 and 32;
    fewer stages let smaller images through (see ``min_image_size``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        image_size: int | Sequence[int] | None = None,
        filters: Sequence[int] = FILTERS,
        dense: int = 32,
    ) -> None:
        super().__init__()
        self.in_channels, self.spatial_dims = int(in_channels), int(spatial_dims)
        filters = [int(f) for f in filters]
        if not filters:
            raise FewlabelError("encoder 'schouten' needs at least one stage (filters is empty)")
        size = _as_size(image_size, self.spatial_dims)
        final = list(size)
        for _ in filters:
            final = [stage_size(s) for s in final]
        if min(final) < 1:
            need = min_image_size(len(filters))
            raise FewlabelError(
                f"encoder 'schouten' needs images of at least {need} px per side for {len(filters)} "
                f"stages of 3x3 valid conv + 2x2 max-pool, got image_size {size}; "
                "resize to at least that, or use fewer stages (filters=...)"
            )
        self.image_size = size
        self.config = {
            "name": "schouten", "in_channels": self.in_channels, "spatial_dims": self.spatial_dims,
            "image_size": list(size), "filters": filters, "dense": int(dense),
        }
        dims = self.spatial_dims
        stages, prev = [], self.in_channels
        for f in filters:
            stages.append(nn.Sequential(
                layers.conv(dims, prev, f, 3, padding=0),
                layers.activation("relu"),
                layers.max_pool(dims, 2),
            ))
            prev = f
        self.stages = nn.ModuleList(stages)
        flat = filters[-1]
        for s in final:
            flat *= s
        self.flat_features = flat
        self.dense = nn.Linear(flat, int(dense))
        self.dense_act = nn.ReLU()
        self.stage_channels = filters
        # Nominal: each pool halves; the valid convs also trim 2 px, so the maps are a little smaller
        # than size / stride (257 px -> 127, 62, 30, 14, 6, 2).
        self.stage_strides = [2 ** (i + 1) for i in range(len(filters))]
        self.out_features = int(dense)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if tuple(x.shape[2:]) != self.image_size:
            # The dense layer is sized for one input size; say so instead of a matmul shape error.
            raise FewlabelError(
                f"encoder 'schouten' was built for image_size {self.image_size}, "
                f"got input of size {tuple(x.shape[2:])}"
            )
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def pool(self, last_map: torch.Tensor) -> torch.Tensor:
        """Flatten + dense + ReLU instead of a global pool, so ``Encoder.forward`` gives the 32 features."""
        return self.dense_act(self.dense(torch.flatten(last_map, 1)))


@register_encoder("schouten")
def _schouten(
    in_channels: int = 1, spatial_dims: int = 2, image_size: Any = None, **kwargs: Any
) -> Encoder:
    return SchoutenEncoder(
        in_channels=in_channels, spatial_dims=spatial_dims, image_size=image_size, **kwargs
    )
