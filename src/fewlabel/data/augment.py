"""Augmentation on batches: torch ops, 2D and 3D, float-safe, deterministic from a seed.

Why in-house and on batches: the inputs are z-scored float tensors (often 16-bit or float at source),
so PIL-style 8-bit colour transforms do not apply, and one vectorised call per batch is far cheaper than
per-image Python transforms on a CPU. Every random number comes from one ``torch.Generator`` (made from
``seed``), or from torch's global generator when none is given, so the loop's ``torch.manual_seed``
makes a run repeatable.

Kinds:

* ``weak``: random flips of the in-plane axes (H, W), random 90° rotations in the (H, W) plane (only
  when H == W), and a small random shift of whole pixels (up to 1/8 of the side, reflection padding, so
  it is exact). FixMatch's weak view.
* ``strong``: weak + a small affine (rotation ±15° in-plane, scale 0.9-1.1, via ``affine_grid`` /
  ``grid_sample``) + intensity jitter in normalised space (gain and offset ±0.2, the same for every
  channel so stain colour balance is kept; ``colour_jitter=True`` varies them per channel), gaussian
  noise with σ up to 0.1) + one random erased box (cutout, filled with 0 = the mean after z-scoring).
  FixMatch's strong view and SimCLR-style views.
* ``none``: identity.

3D volumes are never flipped or rotated along depth: slice order carries anatomy (superior/inferior)
that a classifier may need. ``paired_spatial`` applies the SAME spatial transform to an image and its
mask (mask by nearest neighbour, so labels stay labels); intensity changes touch the image only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment", "make_augment", "paired_spatial", "make_paired_augment", "KINDS"]

KINDS = ("none", "weak", "strong")


@dataclass
class SpatialTransform:
    flip_h: torch.Tensor  # (B,) bool
    flip_w: torch.Tensor
    rot90: torch.Tensor  # (B,) int in 0..3 (zeros when not square)
    theta: torch.Tensor | None  # (B, sd, sd+1) affine for grid_sample, None = identity


class Augment:
    """A batch transform ``(B, C, *spatial) → same shape``. Configure once, call per batch."""

    def __init__(self, spatial_dims: int, kind: str = "weak", seed: int | None = None,
                 generator: torch.Generator | None = None, *, flips: bool | None = None,
                 rot90: bool | None = None, shift: float | None = None, rotate_deg: float | None = None,
                 scale: tuple[float, float] | None = None, jitter: float | None = None,
                 noise: float | None = None, erase: bool | None = None,
                 colour_jitter: bool = False) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3 (got {spatial_dims})")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} (got {kind!r})")
        weak, strong = kind in ("weak", "strong"), kind == "strong"
        self.spatial_dims = spatial_dims
        self.kind = kind
        self.flips = weak if flips is None else flips
        self.rot90 = weak if rot90 is None else rot90
        self.shift = (0.125 if weak else 0.0) if shift is None else shift
        self.rotate_deg = (15.0 if strong else 0.0) if rotate_deg is None else rotate_deg
        self.scale = ((0.9, 1.1) if strong else (1.0, 1.0)) if scale is None else scale
        self.jitter = (0.2 if strong else 0.0) if jitter is None else jitter
        self.noise = (0.1 if strong else 0.0) if noise is None else noise
        self.erase = strong if erase is None else erase
        # Per-channel gain changes the hue of stained RGB images, whose colour carries diagnosis.
        self.colour_jitter = colour_jitter
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator

    @property
    def active(self) -> bool:
        return bool(self.flips or self.rot90 or self.shift > 0 or self.rotate_deg > 0
                    or self.scale != (1.0, 1.0) or self.jitter > 0 or self.noise > 0 or self.erase)

    # -- random numbers (always drawn on the CPU generator, then moved) -------------------------
    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator)

    def sample_spatial(self, shape: torch.Size) -> SpatialTransform:
        """Draw the spatial parameters for a batch of this shape (shared by image and mask)."""
        b = shape[0]
        spatial = tuple(shape[2:])
        h, w = spatial[-2], spatial[-1]
        zeros = torch.zeros(b, dtype=torch.bool)
        flip_h = self._rand(b) < 0.5 if self.flips else zeros
        flip_w = self._rand(b) < 0.5 if self.flips else zeros
        k = torch.zeros(b, dtype=torch.long)
        if self.rot90 and h == w:
            k = (self._rand(b) * 4).long().clamp_(0, 3)
        theta = self._theta(b, spatial)
        return SpatialTransform(flip_h, flip_w, k, theta)

    def _theta(self, b: int, spatial: tuple[int, ...]) -> torch.Tensor | None:
        sd = self.spatial_dims
        h, w = spatial[-2], spatial[-1]
        rotating = self.rotate_deg > 0 or self.scale != (1.0, 1.0)
        if not rotating and self.shift <= 0:
            return None
        angle = (self._rand(b) * 2 - 1) * math.radians(self.rotate_deg)
        lo, hi = self.scale
        s = lo + self._rand(b) * (hi - lo)
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.zeros(b, sd, sd + 1)
        # in-plane rotation in pixel space (x = W, y = H), expressed in normalised coordinates
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
        if sd == 3:
            theta[:, 2, 2] = 1.0
        # shift by whole pixels: exact under bilinear sampling when there is no rotation/scale
        for axis, n in ((0, w), (1, h)):
            max_px = int(self.shift * n)
            if max_px > 0:
                px = torch.floor(self._rand(b) * (2 * max_px + 1)) - max_px
                theta[:, axis, sd] = 2.0 * px / n
        return theta

    # -- application ------------------------------------------------------------------------------
    def apply_spatial(self, x: torch.Tensor, p: SpatialTransform, nearest: bool = False) -> torch.Tensor:
        """Apply drawn spatial parameters to ``x`` (image: bilinear; ``nearest`` for masks)."""
        dtype = x.dtype
        y = x if x.is_floating_point() else x.float()
        dev = y.device
        view = (-1,) + (1,) * (y.ndim - 1)
        y = torch.where(p.flip_h.to(dev).view(view), y.flip(-2), y)
        y = torch.where(p.flip_w.to(dev).view(view), y.flip(-1), y)
        if bool((p.rot90 != 0).any()):
            rots = torch.stack([torch.rot90(y, r, dims=(-2, -1)) for r in range(4)])
            y = rots[p.rot90.to(dev), torch.arange(y.shape[0], device=dev)]
        if p.theta is not None:
            theta = p.theta.to(device=dev, dtype=y.dtype)
            grid = F.affine_grid(theta, list(y.shape), align_corners=False)
            y = F.grid_sample(y, grid, mode="nearest" if nearest else "bilinear", padding_mode="reflection",
                              align_corners=False)
        if y.dtype != dtype:
            y = y.to(dtype) if dtype.is_floating_point else y.round().to(dtype)
        return y

    def apply_intensity(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        view = (b, c) + (1,) * self.spatial_dims
        out = x
        if self.jitter > 0:
            cj = c if self.colour_jitter else 1
            gain = (1 + (self._rand(b, cj) * 2 - 1) * self.jitter).expand(b, c)
            offset = ((self._rand(b, cj) * 2 - 1) * self.jitter).expand(b, c)
            out = out * gain.view(view).to(x) + offset.view(view).to(x)
        if self.noise > 0:
            sigma = (self._rand(b) * self.noise).view((b,) + (1,) * (x.ndim - 1)).to(x)
            out = out + sigma * self._randn(*x.shape).to(x)
        if self.erase:
            out = out * (~self._erase_mask(x.shape)).to(x)
        return out

    def _erase_mask(self, shape: torch.Size) -> torch.Tensor:
        b = shape[0]
        inside = torch.ones((b,) + (1,) + tuple(shape[2:]), dtype=torch.bool)
        for axis, n in enumerate(shape[2:]):  # one box, 10-40 % of each side
            frac = 0.1 + self._rand(b) * 0.3
            length = (frac * n).ceil().long().clamp(min=1)
            start = (self._rand(b) * (n - length + 1)).floor().long()
            coords = torch.arange(n).view(1, n)
            sel = (coords >= start.view(b, 1)) & (coords < (start + length).view(b, 1))
            view = [b, 1] + [1] * (len(shape) - 2)
            view[2 + axis] = n
            inside = inside & sel.view(view)
        return inside

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a batch (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W); "
                             f"got shape {tuple(x.shape)}")
        out = self.apply_spatial(x, self.sample_spatial(x.shape))
        return self.apply_intensity(out)

    def paired(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same spatial transform for image and mask; intensity changes on the image only."""
        if image.shape[0] != mask.shape[0] or image.shape[2:] != mask.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} do not match")
        p = self.sample_spatial(image.shape)
        return self.apply_intensity(self.apply_spatial(image, p)), self.apply_spatial(mask, p, nearest=True)


def make_augment(spatial_dims: int, kind: str = "weak", seed: int | None = None,
                 generator: torch.Generator | None = None, **options: object) -> Augment:
    """The batch augmentation for ``kind`` ("none" | "weak" | "strong"); see the module docstring.

    ``seed`` or ``generator`` makes it deterministic; ``options`` override single settings
    (``flips``, ``rot90``, ``shift``, ``rotate_deg``, ``scale``, ``jitter``, ``noise``, ``erase``).
    """
    return Augment(spatial_dims, kind, seed=seed, generator=generator, **options)  # type: ignore[arg-type]


def paired_spatial(image: torch.Tensor, mask: torch.Tensor, spatial_dims: int, kind: str = "weak",
                   seed: int | None = None, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random spatial transform applied to an image batch and its mask batch (mask: nearest).

    Only the spatial part of ``kind`` is used: the mask must stay aligned and the image's intensities
    are left for the caller's own choice.
    """
    aug = Augment(spatial_dims, kind, seed=seed, generator=generator, jitter=0.0, noise=0.0, erase=False)
    return aug.paired(image, mask)


def make_paired_augment(spatial_dims: int, kind: str = "weak", seed: int | None = None,
                        generator: torch.Generator | None = None
                        ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A reusable ``(image, mask) → (image, mask)`` transform (spatial part of ``kind`` only)."""
    aug = Augment(spatial_dims, kind, seed=seed, generator=generator, jitter=0.0, noise=0.0, erase=False)
    return aug.paired
