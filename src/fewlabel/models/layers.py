"""Dimension-generic building blocks: one code path for 2D and 3D (``spatial_dims``)."""

from __future__ import annotations

from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_POOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")


def conv(spatial_dims: int, *args, **kwargs) -> nn.Module:
    _check_dims(spatial_dims)
    return _CONV[spatial_dims](*args, **kwargs)


def conv_transpose(spatial_dims: int, *args, **kwargs) -> nn.Module:
    _check_dims(spatial_dims)
    return _CONV_T[spatial_dims](*args, **kwargs)


def norm(spatial_dims: int, kind: str, channels: int) -> nn.Module:
    """``batch`` | ``instance`` | ``group`` | ``none``. Group norm uses up to 8 groups."""
    _check_dims(spatial_dims)
    if kind == "batch":
        return _BN[spatial_dims](channels)
    if kind == "instance":
        return _IN[spatial_dims](channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: use batch, instance, group or none")


def activation(kind: str) -> nn.Module:
    """A fresh module each call: captum's LRP needs every activation to be its own module."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if kind == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {kind!r}: use relu, leaky_relu or gelu")


def global_pool(spatial_dims: int) -> nn.Module:
    _check_dims(spatial_dims)
    return _POOL[spatial_dims](1)


def max_pool(spatial_dims: int, kernel_size: int = 2) -> nn.Module:
    _check_dims(spatial_dims)
    return _MAXPOOL[spatial_dims](kernel_size)
