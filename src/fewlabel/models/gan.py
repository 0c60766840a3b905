"""DCGAN-style generator, and a discriminator whose body IS the shared encoder (TOP-GAN).

The discriminator holds the encoder as ``.encoder`` (the very ``Encoder`` object, not a copy) plus a
one-unit real/fake head on its last stage map. Only the head is thrown away for fine-tuning.

The generator mirrors a DCGAN discriminator: a projection of ``z`` to a ``size / 2**upsamples``
map, then ``upsamples`` transposed convolutions (kernel 4, stride 2) that double the size and halve
the channels. Its output is LINEAR, not tanh: fewlabel images are z-scored floats (phase maps,
16-bit TIFFs), unbounded and often heavy-tailed. A tanh would cap the generator at +-1 (one standard
deviation), so the discriminator could tell fakes by their missing extremes alone; a linear output
after BatchNorm starts near the data's mean 0 / std 1 and can reach any value the data has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from fewlabel.models import layers
from fewlabel.models.encoder import Encoder


class Generator(nn.Module):
    """``z (B, z_dim) -> images (B, out_channels, *image_size)``, 2D (or 3D), DCGAN layout."""

    def __init__(
        self,
        out_channels: int = 1,
        image_size: Sequence[int] = (64, 64),
        z_dim: int = 64,
        width: int = 16,
        upsamples: int = 4,
        spatial_dims: int | None = None,
    ) -> None:
        super().__init__()
        size = tuple(int(s) for s in image_size)
        self.spatial_dims = int(spatial_dims or len(size))
        if len(size) != self.spatial_dims:
            raise ValueError(f"image_size {size} does not have {self.spatial_dims} sides")
        factor = 2**upsamples
        if any(s % factor for s in size):
            raise ValueError(f"every side of image_size {size} must divide by {factor} "
                             f"({upsamples} doublings of the generator)")
        self.z_dim, self.image_size, self.out_channels = int(z_dim), size, int(out_channels)
        self.start_size = tuple(s // factor for s in size)
        dims = self.spatial_dims
        chans = [width * 2 ** (upsamples - 1 - i) for i in range(upsamples)]  # e.g. 8w, 4w, 2w, w
        n_start = chans[0]
        for s in self.start_size:
            n_start *= s
        # A linear projection = DCGAN's 4x4 transposed conv from a 1x1 map, for any start size.
        self.project = nn.Linear(self.z_dim, n_start, bias=False)
        self.start_norm = layers.norm(dims, "batch", chans[0])
        blocks: list[nn.Module] = []
        for i in range(upsamples - 1):
            blocks += [
                layers.conv_transpose(dims, chans[i], chans[i + 1], 4, stride=2, padding=1, bias=False),
                layers.norm(dims, "batch", chans[i + 1]),
                nn.ReLU(),
            ]
        blocks.append(layers.conv_transpose(dims, chans[-1], self.out_channels, 4, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        self._start_channels = chans[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self._start_channels, *self.start_size)
        x = torch.relu(self.start_norm(x))
        return self.blocks(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.project.weight.device
        z = torch.randn(n, self.z_dim, generator=generator).to(device)
        return self.forward(z)


class Discriminator(nn.Module):
    """Real/fake logit = ``head(encoder's last map)``. ``encoder`` is the shared body, kept as-is.

    With ``image_size`` the head is a linear layer over the whole flattened last map (DCGAN's final
    full-extent conv), so it sees WHERE things are; without it, a linear layer on pooled features.
    A pooled head is blind to layout, and its generator then puts every object at the same place.
    ``minibatch_std`` adds the batch's feature spread as one more input (Karras et al. 2018), so a
    generator that makes the same image for every z is easy to spot.
    The head is not part of the encoder file; a classifier gets its own, on pooled features.
    """

    def __init__(self, encoder: Encoder, image_size: Sequence[int] | None = None,
                 minibatch_std: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.minibatch_std = bool(minibatch_std)
        self.flatten_map = image_size is not None
        if self.flatten_map:
            n_in = self._last_map_numel(tuple(int(s) for s in image_size))
        else:
            n_in = encoder.out_features
        self.head = nn.Linear(n_in + int(self.minibatch_std), 1)

    def _last_map_numel(self, image_size: tuple[int, ...]) -> int:
        was_training = self.encoder.training
        self.encoder.eval()  # a dry run must not touch BatchNorm statistics
        with torch.no_grad():
            param = next(self.encoder.parameters())
            x = torch.zeros(1, self.encoder.in_channels, *image_size, device=param.device)
            numel = self.encoder.forward_features(x)[-1][0].numel()
        self.encoder.train(was_training)
        return int(numel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.encoder.forward_features(x)[-1]
        f = torch.flatten(last, 1) if self.flatten_map else self.encoder.pool(last)
        if self.minibatch_std:
            # sqrt(var + eps) as in Karras et al.: a feature with no spread across the batch (a dead
            # ReLU) has an infinite sqrt gradient, NaN in the R1 penalty's double backward.
            spread = ((last.float().var(0, unbiased=False) + 1e-8).sqrt().mean() if len(last) > 1
                      else last.new_zeros(()))
            f = torch.cat([f, spread.to(f.dtype).expand(f.shape[0], 1)], dim=1)
        return self.head(f).squeeze(1)


_SN_TYPES = (nn.Conv2d, nn.Conv3d, nn.Linear)


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise every conv and linear weight in place (parametrization, so the original
    module classes stay; ``remove_spectral_norm`` turns them back into plain weights)."""
    for sub in list(module.modules()):
        if isinstance(sub, _SN_TYPES) and not parametrize.is_parametrized(sub, "weight"):
            parametrizations.spectral_norm(sub)
    return module


def remove_spectral_norm(module: nn.Module) -> nn.Module:
    """Bake the normalised weights in (``leave_parametrized=True``) so the state dict has plain keys
    (``...weight``) that load into an encoder that never saw spectral norm."""
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
    return module
