"""Batch augmentations for pretraining, 2D and 3D, on the device, float-safe and differentiable.

Every function takes a batch ``(B, C, *spatial)`` of z-scored floats and draws its own random
numbers per sample from torch's global generator (seeded by the training loop), so a run is
reproducible. Zero is the data mean after z-scoring, so "empty" pixels (padding, cutout) are 0.

What keeps medical meaning, and why:
  * flips and 90-degree turns: cells on a slide and cross-sections have no canonical orientation,
    and the turns are exact (no interpolation), so texture and intensities are untouched. In 3D
    they stay in the (H, W) plane: slice order carries anatomy and depth spacing is often coarser.
  * mild crops/shifts: the object stays in view (area >= ``scale[0]``).
  * blur and noise of a few percent of a standard deviation: scanner and focus variation.
  * intensity scale/shift applied to ALL channels alike: exposure changes. Per-channel changes
    (colour jitter) alter stain colour, which carries the diagnosis in haematology/histology, so
    they are used only when asked for (``per_channel=True``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _per_sample(x: torch.Tensor, p: float) -> torch.Tensor:
    """A (B, 1, 1, ...) boolean: which samples get the transform."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return torch.rand(shape, device=x.device) < p


def random_dihedral(*tensors: torch.Tensor, rotate: bool = True) -> tuple[torch.Tensor, ...]:
    """Same random flips of H and W and 90-degree turns in the H-W plane (square images only)
    per sample for all ``tensors`` (e.g. image and mask). Exact: no interpolation. Depth is never
    flipped: slice order carries anatomy (as in ``fewlabel.data.augment``)."""
    ref = tensors[0]
    out = list(tensors)
    for axis in (ref.dim() - 2, ref.dim() - 1):
        flag = _per_sample(ref, 0.5)
        out = [torch.where(flag, t.flip(axis), t) for t in out]
    if rotate and ref.shape[-1] == ref.shape[-2]:
        flag = _per_sample(ref, 0.5)
        out = [torch.where(flag, t.rot90(1, dims=(-2, -1)), t) for t in out]
    return tuple(out)


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_translate(x: torch.Tensor, fraction: float = 0.125) -> torch.Tensor:
    """Shift each sample by up to ``fraction`` of each side, whole pixels, zero fill (DiffAugment)."""
    b, n = x.shape[0], x.dim() - 2
    sizes = torch.tensor(x.shape[2:][::-1], device=x.device, dtype=torch.float32)  # x, y(, z) order
    max_shift = torch.floor(sizes * fraction)
    shift = torch.round((torch.rand(b, n, device=x.device) * 2 - 1) * max_shift)
    theta = torch.zeros(b, n, n + 1, device=x.device)
    theta[:, :, :n] = torch.eye(n, device=x.device)
    theta[:, :, n] = -2 * shift / sizes  # normalised coordinates span 2 over a side
    return _warp(x, theta, mode="nearest")


def random_cutout(x: torch.Tensor, fraction: float = 0.5) -> torch.Tensor:
    """Zero one random box of ``fraction`` of each side per sample (DiffAugment's cutout)."""
    b = x.shape[0]
    box_mask = torch.ones((b, 1) + tuple(x.shape[2:]), device=x.device, dtype=x.dtype)
    for axis, size in enumerate(x.shape[2:]):  # the box is the product of per-axis intervals
        box = max(1, int(size * fraction))
        start = torch.randint(0, size - box + 1, (b,), device=x.device)
        coords = torch.arange(size, device=x.device)
        inside = (coords[None] >= start[:, None]) & (coords[None] < start[:, None] + box)  # (B, size)
        shape = [b] + [1] * (x.dim() - 1)
        shape[2 + axis] = size
        box_mask = box_mask * inside.view(shape).to(x.dtype)
    return x * (1 - box_mask)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random box covering ``scale`` of the area (volume) and resize it back, per sample."""
    b, n = x.shape[0], x.dim() - 2
    dev = x.device
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, device=dev)
    side = area ** (1.0 / n)  # same fraction per axis ...
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(b, device=dev)
    aspect = torch.exp(log_r).sqrt()
    sides = side[:, None].repeat(1, n)
    sides[:, 0] = sides[:, 0] * aspect  # ... times an aspect change between the two in-plane axes
    sides[:, 1] = sides[:, 1] / aspect
    sides = sides.clamp(max=1.0)
    centre = (torch.rand(b, n, device=dev) * 2 - 1) * (1 - sides)
    theta = torch.zeros(b, n, n + 1, device=dev)
    theta[:, range(n), range(n)] = sides
    theta[:, :, n] = centre
    return _warp(x, theta)


def _gauss_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over every spatial axis (reflect padding)."""
    n, c = x.dim() - 2, x.shape[1]
    k = _gauss_kernel(sigma, x.device).to(x.dtype)
    conv = F.conv2d if n == 2 else F.conv3d if n == 3 else F.conv1d
    r = (k.numel() - 1) // 2
    for axis in range(n):
        shape = [1, 1] + [1] * n
        shape[2 + axis] = k.numel()
        pad = [0, 0] * n
        pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = r  # F.pad lists the last axis first
        mode = "reflect" if min(x.shape[2:]) > r else "replicate"
        weight = k.view(shape).expand(c, *shape[1:])  # one kernel per channel (depthwise)
        x = conv(F.pad(x, pad, mode=mode), weight, groups=c)
    return x


def random_blur(x: torch.Tensor, p: float = 0.5, sigma: tuple[float, float] = (0.1, 1.0)) -> torch.Tensor:
    """Blur a random ``p`` of the samples with one sigma drawn for the batch."""
    if p <= 0:
        return x
    s = float(sigma[0] + (sigma[1] - sigma[0]) * torch.rand(()).item())
    return torch.where(_per_sample(x, p), gaussian_blur(x, s), x)


def random_noise(x: torch.Tensor, std: float = 0.05) -> torch.Tensor:
    """Additive Gaussian noise with a per-sample level in [0, std] (z-scored units)."""
    level = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) * std
    return x + torch.randn_like(x) * level


def random_intensity(x: torch.Tensor, scale: float = 0.1, shift: float = 0.1,
                     per_channel: bool = False) -> torch.Tensor:
    """``x * a + b`` with a in [1-scale, 1+scale], b in [-shift, shift]; one (a, b) per sample for
    all channels unless ``per_channel`` (colour jitter: changes stain colour, opt-in only)."""
    c = x.shape[1] if per_channel else 1
    shape = (x.shape[0], c) + (1,) * (x.dim() - 2)
    a = 1 + (torch.rand(shape, device=x.device, dtype=x.dtype) * 2 - 1) * scale
    b = (torch.rand(shape, device=x.device, dtype=x.dtype) * 2 - 1) * shift
    return x * a + b
