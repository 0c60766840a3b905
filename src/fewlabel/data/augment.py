"""THE augmentation module: batch transforms for fine-tuning and for pretraining views.

Why in-house and on batches: the inputs are z-scored float tensors (often 16-bit or float at source,
e.g. quantitative phase), so PIL-style 8-bit colour transforms do not apply, and one vectorised call
per batch is far cheaper than per-image Python transforms on a CPU. Every transform takes a batch
``(B, C, H, W)`` or ``(B, C, D, H, W)``, keeps its shape and float dtype, and passes gradients (a GAN
augments its fakes).

Random numbers: every primitive takes a ``torch.Generator`` and draws its parameters on the CPU from
it (then moves them to the batch's device), so a seed gives the same parameters on any device.
Pretraining views always pass one (``make_generator``). Fine-tuning's ``Augment`` passes ``None`` unless
given a seed, meaning torch's global generator: the training loop seeds it and the stacked trainer
replays it per model, so one-at-a-time and stacked fine-tunings draw the same augmentations and
dropout masks in the same order.

Conventions, and why:
  * Depth is never flipped, turned or shifted: slice order carries anatomy (superior/inferior) and
    depth spacing is often coarser. Flips and 90-degree turns act in the (H, W) plane; turns only
    when H == W.
  * Padding (pixels a warp brings in from outside the image) is REFLECTION: it continues the image's
    own texture and intensities, whereas a constant fill (0 = the mean after z-scoring) draws a
    straight edge at a place no real image has one, which a classifier or discriminator can learn.
    Cutout's 0 is not padding: it hides content on purpose.
  * Intensity changes are shared by all channels unless asked (``per_channel``): per-channel gain
    alters stain colour, which carries the diagnosis in haematology and histology.

Primitives (each takes the batch and the generator): ``draw_spatial`` + ``apply_spatial`` (flips,
90-degree turns, whole-pixel shifts, small affines; the two halves let an image and its mask share one
draw), ``dihedral``, ``resized_crop``, ``scale_shift``, ``add_noise``, ``blur`` (``gaussian_blur`` is
its fixed-sigma core) and ``cutout``.
Compositions live next to their method (``pretrain.ssl.SimCLRViews``, ``pretrain.gan.DiffAugment``).

Fine-tuning kinds (``make_augment``):

* ``weak``: random flips of H and W, random 90° turns, and a small random shift of whole pixels (up to
  1/8 of the side). FixMatch's weak view.
* ``strong``: weak + a small affine (rotation ±15° in-plane, scale 0.9-1.1) + intensity jitter (gain
  and offset ±0.2; ``colour_jitter=True`` varies them per channel), gaussian noise with σ up to 0.1,
  and one random erased box (cutout, 10-40 % of each side). FixMatch's strong view.
* ``none``: identity.

``paired_spatial`` applies the SAME spatial transform to an image and its mask (mask by nearest
neighbour, so labels stay labels); intensity changes touch the image only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment", "make_augment", "paired_spatial", "make_paired_augment", "KINDS", "make_generator",
           "SpatialTransform", "draw_spatial", "apply_spatial", "dihedral", "resized_crop",
           "scale_shift", "add_noise", "gaussian_blur", "blur", "cutout"]

KINDS = ("none", "weak", "strong")


def make_generator(seed: int, stream: str = "augment") -> torch.Generator:
    """A CPU generator for one named random stream of a run seeded with ``seed``.

    The stream's seed is a hash of (stream, seed), so two streams of one run, and torch's global
    generator (seeded with the bare seed), start from unrelated states.
    """
    digest = hashlib.blake2b(f"{stream}:{int(seed)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _uniform(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator)


def _sample_view(x: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts one value per sample over a batch like ``x``."""
    return (x.shape[0],) + (1,) * (x.ndim - 1)


# -- spatial --------------------------------------------------------------------------------------
@dataclass
class SpatialTransform:
    flip_h: torch.Tensor  # (B,) bool
    flip_w: torch.Tensor
    rot90: torch.Tensor  # (B,) int in 0..3 (zeros when not square)
    theta: torch.Tensor | None  # (B, sd, sd+1) affine for grid_sample, None = identity


def draw_spatial(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, *,
                 flips: bool = False, rot90: bool = False, shift: float = 0.0, rotate_deg: float = 0.0,
                 scale: tuple[float, float] = (1.0, 1.0)) -> SpatialTransform:
    """Draw per-sample spatial parameters for a batch of ``shape`` (shared by an image and its mask).

    ``shift``: whole pixels, up to that fraction of H and W; ``rotate_deg``/``scale``: in-plane affine.
    """
    b, spatial = shape[0], tuple(shape[2:])
    h, w = spatial[-2], spatial[-1]
    zeros = torch.zeros(b, dtype=torch.bool)
    flip_h = _uniform(generator, b) < 0.5 if flips else zeros
    flip_w = _uniform(generator, b) < 0.5 if flips else zeros
    k = torch.zeros(b, dtype=torch.long)
    if rot90 and h == w:
        k = (_uniform(generator, b) * 4).long().clamp_(0, 3)
    theta = None
    if rotate_deg > 0 or scale != (1.0, 1.0) or shift > 0:
        theta = _in_plane_theta(b, spatial, generator, shift, rotate_deg, scale)
    return SpatialTransform(flip_h, flip_w, k, theta)


def _in_plane_theta(b: int, spatial: tuple[int, ...], generator: torch.Generator | None, shift: float,
                    rotate_deg: float, scale: tuple[float, float]) -> torch.Tensor:
    sd = len(spatial)
    h, w = spatial[-2], spatial[-1]
    angle = (_uniform(generator, b) * 2 - 1) * math.radians(rotate_deg)
    lo, hi = scale
    s = lo + _uniform(generator, b) * (hi - lo)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.zeros(b, sd, sd + 1)
    # in-plane rotation in pixel space (x = W, y = H), expressed in normalised coordinates
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    if sd == 3:
        theta[:, 2, 2] = 1.0
    # shift by whole pixels: exact under bilinear sampling when there is no rotation/scale
    for axis, n in ((0, w), (1, h)):
        max_px = int(shift * n)
        if max_px > 0:
            px = torch.floor(_uniform(generator, b) * (2 * max_px + 1)) - max_px
            theta[:, axis, sd] = 2.0 * px / n
    return theta


def _warp(x: torch.Tensor, theta: torch.Tensor, nearest: bool = False) -> torch.Tensor:
    """Resample ``x`` (float) through per-sample affines; the module's one padding convention."""
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest" if nearest else "bilinear", padding_mode="reflection",
                         align_corners=False)


def apply_spatial(x: torch.Tensor, p: SpatialTransform, nearest: bool = False) -> torch.Tensor:
    """Apply drawn spatial parameters to ``x`` (image: bilinear; ``nearest`` for masks)."""
    dtype = x.dtype
    y = x if x.is_floating_point() else x.float()
    dev = y.device
    view = _sample_view(y)
    y = torch.where(p.flip_h.to(dev).view(view), y.flip(-2), y)
    y = torch.where(p.flip_w.to(dev).view(view), y.flip(-1), y)
    if bool((p.rot90 != 0).any()):
        rots = torch.stack([torch.rot90(y, r, dims=(-2, -1)) for r in range(4)])
        y = rots[p.rot90.to(dev), torch.arange(y.shape[0], device=dev)]
    if p.theta is not None:
        y = _warp(y, p.theta, nearest)
    if y.dtype != dtype:
        y = y.to(dtype) if dtype.is_floating_point else y.round().to(dtype)
    return y


def dihedral(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random flips of H and W and 90-degree turns (square images): exact, no interpolation."""
    return apply_spatial(x, draw_spatial(x.shape, generator, flips=True, rot90=True))


def resized_crop(x: torch.Tensor, generator: torch.Generator | None, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random box covering ``scale`` of the area (volume) and resize it back, per sample.

    The box keeps the same fraction on every axis, times an aspect change ``ratio`` between W and H;
    it lies inside the image, so padding only touches the outermost half pixel.
    """
    b, n = x.shape[0], x.ndim - 2
    area = scale[0] + (scale[1] - scale[0]) * _uniform(generator, b)
    side = area ** (1.0 / n)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _uniform(generator, b)).sqrt()
    sides = side[:, None].repeat(1, n)
    sides[:, 0] = sides[:, 0] * aspect  # theta's axes are (W, H[, D])
    sides[:, 1] = sides[:, 1] / aspect
    sides = sides.clamp(max=1.0)
    centre = (_uniform(generator, b, n) * 2 - 1) * (1 - sides)
    theta = torch.zeros(b, n, n + 1)
    theta[:, range(n), range(n)] = sides
    theta[:, :, n] = centre
    y = x if x.is_floating_point() else x.float()
    return _warp(y, theta)


# -- intensity ------------------------------------------------------------------------------------
def scale_shift(x: torch.Tensor, generator: torch.Generator | None, scale: float = 0.1, shift: float = 0.1,
                per_channel: bool = False) -> torch.Tensor:
    """``x * a + b`` with a in [1-scale, 1+scale], b in [-shift, shift], one (a, b) per sample for all
    channels unless ``per_channel`` (colour jitter). In z-scored units: exposure/gain changes."""
    b, c = x.shape[:2]
    cj = c if per_channel else 1
    view = (b, c) + (1,) * (x.ndim - 2)
    gain = (1 + (_uniform(generator, b, cj) * 2 - 1) * scale).expand(b, c)
    offset = ((_uniform(generator, b, cj) * 2 - 1) * shift).expand(b, c)
    return x * gain.view(view).to(x) + offset.view(view).to(x)


def add_noise(x: torch.Tensor, generator: torch.Generator | None, std: float = 0.05) -> torch.Tensor:
    """Additive Gaussian noise with a per-sample level drawn in [0, std] (z-scored units)."""
    sigma = (_uniform(generator, x.shape[0]) * std).view(_sample_view(x)).to(x)
    return x + sigma * torch.randn(*x.shape, generator=generator).to(x)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over every spatial axis, depthwise; keeps each channel's mass."""
    n, c = x.ndim - 2, x.shape[1]
    k = _gauss_kernel(sigma).to(device=x.device, dtype=x.dtype)
    conv = F.conv2d if n == 2 else F.conv3d
    r = (k.numel() - 1) // 2
    for axis in range(n):
        shape = [1, 1] + [1] * n
        shape[2 + axis] = k.numel()
        pad = [0, 0] * n
        pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = r  # F.pad lists the last axis first
        # reflection, as for warps; replicate where a side is too short to reflect the kernel's radius
        mode = "reflect" if min(x.shape[2:]) > r else "replicate"
        weight = k.view(shape).expand(c, *shape[1:])
        x = conv(F.pad(x, pad, mode=mode), weight, groups=c)
    return x


def blur(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5,
         sigma: tuple[float, float] = (0.1, 1.0)) -> torch.Tensor:
    """Blur a random share ``p`` of the samples with one sigma (pixels) drawn for the batch: focus
    variation. One sigma keeps it to one convolution per batch."""
    if p <= 0:
        return x
    s = sigma[0] + (sigma[1] - sigma[0]) * float(_uniform(generator, 1))
    chosen = (_uniform(generator, x.shape[0]) < p).view(_sample_view(x)).to(x.device)
    return torch.where(chosen, gaussian_blur(x, s), x)


def cutout(x: torch.Tensor, generator: torch.Generator | None,
           size: tuple[float, float] = (0.1, 0.4)) -> torch.Tensor:
    """Set one random box per sample to 0 (the mean after z-scoring); the box spans a fraction drawn
    in ``size`` of each spatial side."""
    b = x.shape[0]
    inside = torch.ones((b, 1) + tuple(x.shape[2:]), dtype=torch.bool)
    for axis, n in enumerate(x.shape[2:]):  # the box is the product of per-axis intervals
        frac = size[0] + _uniform(generator, b) * (size[1] - size[0])
        length = (frac * n).ceil().long().clamp(min=1)
        start = (_uniform(generator, b) * (n - length + 1)).floor().long()
        coords = torch.arange(n).view(1, n)
        sel = (coords >= start.view(b, 1)) & (coords < (start + length).view(b, 1))
        view = [b, 1] + [1] * (x.ndim - 2)
        view[2 + axis] = n
        inside = inside & sel.view(view)
    return x * (~inside).to(x)


# -- fine-tuning's configured transform -----------------------------------------------------------
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
        self.colour_jitter = colour_jitter
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator

    @property
    def active(self) -> bool:
        return bool(self.flips or self.rot90 or self.shift > 0 or self.rotate_deg > 0
                    or self.scale != (1.0, 1.0) or self.jitter > 0 or self.noise > 0 or self.erase)

    def sample_spatial(self, shape: torch.Size) -> SpatialTransform:
        """Draw the spatial parameters for a batch of this shape (shared by image and mask)."""
        return draw_spatial(shape, self.generator, flips=self.flips, rot90=self.rot90, shift=self.shift,
                            rotate_deg=self.rotate_deg, scale=self.scale)

    def apply_spatial(self, x: torch.Tensor, p: SpatialTransform, nearest: bool = False) -> torch.Tensor:
        return apply_spatial(x, p, nearest)

    def apply_intensity(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.jitter > 0:
            out = scale_shift(out, self.generator, self.jitter, self.jitter, per_channel=self.colour_jitter)
        if self.noise > 0:
            out = add_noise(out, self.generator, self.noise)
        if self.erase:
            out = cutout(out, self.generator)
        return out

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

    ``seed`` or ``generator`` makes it independent of torch's global generator; ``options`` override
    single settings (``flips``, ``rot90``, ``shift``, ``rotate_deg``, ``scale``, ``jitter``, ``noise``,
    ``erase``, ``colour_jitter``).
    """
    return Augment(spatial_dims, kind, seed=seed, generator=generator, **options)  # type: ignore[arg-type]


def paired_spatial(image: torch.Tensor, mask: torch.Tensor, spatial_dims: int, kind: str = "weak",
                   seed: int | None = None, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random spatial transform applied to an image batch and its mask batch (mask: nearest).

    Only the spatial part of ``kind`` is used: the mask must stay aligned and the image's intensities
    are left for the caller's own choice.
    """
    return make_paired_augment(spatial_dims, kind, seed, generator)(image, mask)


def make_paired_augment(spatial_dims: int, kind: str = "weak", seed: int | None = None,
                        generator: torch.Generator | None = None
                        ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A reusable ``(image, mask) → (image, mask)`` transform (spatial part of ``kind`` only)."""
    aug = Augment(spatial_dims, kind, seed=seed, generator=generator, jitter=0.0, noise=0.0, erase=False)
    return aug.paired
