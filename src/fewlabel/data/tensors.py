"""Tensors: the preprocessing policy (a value saved with the model) and cached array loading.

``Preprocess.apply`` is THE function between a file's raw array and the network; training uses it
through ``load_images`` and ``predict`` repeats it from the saved ``Preprocess``, so both see the same
numbers. The order of steps, all recorded in the dataclass:

1. channels: alpha dropped when the reader says the file has one (``drop_alpha``); gray repeated to
   N channels; N channels averaged to gray when the model is gray; anything else is an error.
2. intensity: integer inputs divided by their dtype's maximum (uint8 /255, uint16 /65535, …) unless the
   reader already applied a physical rescale (DICOM/NIfTI slope); floats kept (``intensity="dtype_max"``;
   ``"none"`` keeps every value).
3. geometry to ``size``: ``resize`` interpolates (bilinear 2D with antialias when shrinking, trilinear
   3D; masks nearest-exact), ``pad_crop`` pads with zeros / crops around the centre (e.g. volumes of
   different depth to one depth without touching in-plane pixels).
4. per-channel z-score with ``mean``/``std`` fitted on the ids given to ``fit_preprocess`` — in the
   pipeline, the labelled pool (every labelled non-test image), never a test image.

Caching: ``load_images`` keeps the result of steps 1-3 in memory, keyed by (path, size, mtime, the
geometry part of the policy), so a learning-curve sweep decodes each file once; the z-score (step 4)
is cheap and applied on every call with the one fitted mean/std that every cell of a curve shares.
The cache is an LRU bounded by ``FEWLABEL_CACHE_MB`` (default 2048 MB); ``clear_cache()`` empties it.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data import readers
from fewlabel.data.catalog import Catalog
from fewlabel.data.readers import ImageMeta
from fewlabel.errors import ConfigMismatchError, DataError, InvalidImageError, MaskError
from fewlabel.limits import check_target_size

__all__ = ["Preprocess", "fit_preprocess", "load_images", "load_masks", "clear_cache", "cache_info",
           "cache_lookup", "cache_store"]

PREPROCESS_FORMAT = "fewlabel-preprocess/1"
_RESIZE = ("resize", "pad_crop")
_INTENSITY = ("dtype_max", "none")
_STD_FLOOR = 1e-6  # relative to the channel's largest magnitude


@dataclass(frozen=True)
class Preprocess:
    """The resize + channel + intensity policy: a frozen value, JSON round-trip exact.

    ``size`` is the spatial size, (H, W) or (D, H, W). ``mean``/``std`` are per output channel, None
    when not normalised. ``source_dtypes``/``source_channels`` record what the training data were.
    """

    spatial_dims: int
    size: tuple[int, ...]
    channels: int
    resize: str = "resize"
    intensity: str = "dtype_max"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    drop_alpha: bool = True
    source_dtypes: tuple[str, ...] = ()
    source_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in (self.size if isinstance(self.size, Sequence) else (self.size,)))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spatial_dims", int(self.spatial_dims))
        object.__setattr__(self, "channels", int(self.channels))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(float(x) for x in v))
        object.__setattr__(self, "source_dtypes", tuple(str(x) for x in self.source_dtypes))
        object.__setattr__(self, "source_channels", tuple(int(x) for x in self.source_channels))
        if self.spatial_dims not in (2, 3) or len(size) != self.spatial_dims or min(size) < 1:
            raise ConfigMismatchError(f"preprocess size {size} does not fit spatial_dims={self.spatial_dims}")
        check_target_size(size)
        if self.resize not in _RESIZE:
            raise ConfigMismatchError(f"resize must be one of {_RESIZE} (got {self.resize!r})")
        if self.intensity not in _INTENSITY:
            raise ConfigMismatchError(f"intensity must be one of {_INTENSITY} (got {self.intensity!r})")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.channels:
                raise ConfigMismatchError(f"{name} has {len(v)} values for {self.channels} channel(s)")

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": PREPROCESS_FORMAT}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        data = dict(data)
        fmt = data.pop("format", PREPROCESS_FORMAT)
        if fmt != PREPROCESS_FORMAT:
            raise ConfigMismatchError(f"not a fewlabel preprocessing record (format {fmt!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigMismatchError(f"unknown preprocessing fields {unknown} (saved by a newer fewlabel?)")
        return cls(**data)

    # -- application -----------------------------------------------------------------------------
    def geometry_key(self) -> tuple:
        """What the cached part of ``apply`` (everything but the z-score) depends on."""
        return (self.spatial_dims, self.size, self.channels, self.resize, self.intensity, self.drop_alpha)

    def apply(self, array: np.ndarray, meta: ImageMeta | None = None) -> np.ndarray:
        """Raw reader output → float32 ``(channels, *size)``, normalised. What ``predict`` repeats."""
        return self.normalise(self.apply_geometry(array, meta))

    def apply_geometry(self, array: np.ndarray, meta: ImageMeta | None = None) -> np.ndarray:
        """Steps 1-3 (channels, intensity scale, resize/pad-crop) without the z-score."""
        where = meta.path if meta is not None else None
        dtype = meta.dtype if meta is not None else np.asarray(array).dtype.name
        arr = np.asarray(array, dtype=np.float32)
        if arr.ndim == self.spatial_dims:
            arr = arr[None]
        if arr.ndim != self.spatial_dims + 1:
            raise InvalidImageError(f"image has {arr.ndim - 1} spatial dimensions; the model expects "
                                    f"{self.spatial_dims}D input of {self.channels} channel(s)", path=where)
        arr = self._fix_channels(arr, meta, where)
        if self.intensity == "dtype_max" and not (meta is not None and meta.rescaled):
            top = readers.dtype_max(dtype)
            if top is not None:
                arr = arr / np.float32(top)
        arr = _to_size(arr, self.size, self.resize, mask=False)
        return np.ascontiguousarray(arr, dtype=np.float32)

    def normalise(self, arr: np.ndarray) -> np.ndarray:
        """Per-channel z-score with the fitted mean/std (identity when not fitted)."""
        if self.mean is None or self.std is None:
            return arr.astype(np.float32, copy=False)
        shape = (-1,) + (1,) * self.spatial_dims
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        return ((arr - mean) / std).astype(np.float32, copy=False)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """A label mask ``(*spatial)`` or ``(1, *spatial)`` → int64 ``(1, *size)``, nearest neighbour."""
        m = np.asarray(mask)
        if m.ndim == self.spatial_dims:
            m = m[None]
        if m.ndim != self.spatial_dims + 1 or m.shape[0] != 1:
            raise MaskError(f"mask of shape {m.shape} does not fit {self.spatial_dims}D data")
        return _to_size(m.astype(np.float32), self.size, self.resize, mask=True).round().astype(np.int64)

    def _fix_channels(self, arr: np.ndarray, meta: ImageMeta | None, where: str | None) -> np.ndarray:
        c = arr.shape[0]
        alpha = meta.has_alpha if meta is not None else (c == self.channels + 1 and c in (2, 4))
        if self.drop_alpha and alpha and c in (2, 4):
            arr, c = arr[:-1], c - 1
        if c == self.channels:
            return arr
        if c == 1:
            return np.repeat(arr, self.channels, axis=0)
        if self.channels == 1:
            return arr.mean(axis=0, keepdims=True)
        raise InvalidImageError(f"image has {c} channel(s); the model expects {self.channels}", path=where)


def _to_size(arr: np.ndarray, size: tuple[int, ...], mode: str, mask: bool) -> np.ndarray:
    if tuple(arr.shape[1:]) == tuple(size):
        return arr
    if mode == "pad_crop":
        return _pad_crop(arr, size)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    if mask:
        out = F.interpolate(t, size=size, mode="nearest-exact")
    elif len(size) == 2:
        shrink = any(s < a for s, a in zip(size, arr.shape[1:], strict=True))
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    else:
        out = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    return out[0].numpy()


def _pad_crop(arr: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Centre crop where larger, zero-pad (split evenly, extra after) where smaller."""
    out = arr
    for axis, target in enumerate(size, start=1):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - n - before)
            out = np.pad(out, pad)
    return out


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def _effective_channels(meta: ImageMeta) -> int:
    return meta.channels - 1 if (meta.has_alpha and meta.channels in (2, 4)) else meta.channels


def fit_preprocess(catalog: Catalog, ids: Sequence[str], image_size: int | Sequence[int] | None = None,
                   resize: str = "resize", channels: int | None = None, intensity: str = "dtype_max",
                   normalize: bool = True, known: Mapping[str, ImageMeta] | None = None,
                   peaks: dict[str, float] | None = None) -> Preprocess:
    """The policy for these (training) ids: size = the most common spatial shape unless given,
    channels = the most common channel count (alpha not counted), mean/std over these ids only.

    ``image_size`` int → that side in every spatial dimension; a tuple of another length than the data's
    spatial dims is broadcast when all its values are equal. ``known``: metadata already read (id →
    ``ImageMeta``), not read again. ``peaks``, when given, is filled with each id's largest magnitude
    as the z-score sees it (after the intensity step), so a caller can name images that dominate it.
    """
    ids = list(ids)
    if not ids:
        raise DataError("no images to fit the preprocessing on (empty training set)", path=catalog.root)
    known = known or {}
    metas = [known[i] if i in known else readers.read_meta(catalog.by_id[i].path) for i in ids]
    dims = Counter(m.spatial_dims for m in metas)
    if len(dims) > 1:
        first3 = next(m for m in metas if m.spatial_dims == 3)
        first2 = next(m for m in metas if m.spatial_dims == 2)
        raise DataError(f"data mix 2D images and 3D volumes (e.g. {Path(first2.path).name} is 2D, "
                        f"{Path(first3.path).name} is 3D)", path=catalog.root)
    sd = metas[0].spatial_dims
    if image_size is None:
        shapes = Counter(m.spatial_shape for m in metas)
        size = max(shapes, key=lambda s: (shapes[s], int(np.prod(s)), s))
    elif isinstance(image_size, (int, np.integer)):
        size = (int(image_size),) * sd
    else:
        size = tuple(int(s) for s in image_size)
        if len(size) != sd:
            if len(set(size)) != 1:
                raise DataError(f"image_size {size} does not fit {sd}D data")
            size = (size[0],) * sd
    chans = Counter(_effective_channels(m) for m in metas)
    n_channels = int(channels) if channels is not None else max(chans, key=lambda c: (chans[c], c))
    pre = Preprocess(spatial_dims=sd, size=size, channels=n_channels, resize=resize, intensity=intensity,
                     source_dtypes=tuple(sorted({m.dtype for m in metas})),
                     source_channels=tuple(sorted({m.channels for m in metas})))
    if not normalize:
        return pre
    total = np.zeros(n_channels, np.float64)
    total_sq = np.zeros(n_channels, np.float64)
    peak = np.zeros(n_channels, np.float64)
    shift: np.ndarray | None = None
    count = 0
    axes = tuple(range(1, sd + 1))
    for i in ids:
        arr = _geometry_cached(catalog.by_id[i].path, pre).astype(np.float64)
        if peaks is not None:
            peaks[i] = float(np.abs(arr).max())
        if shift is None:  # sums about a typical value: no cancellation when the mean dwarfs the spread
            shift = arr.mean(axis=axes)
        centred = arr - shift.reshape((-1,) + (1,) * sd)
        total += centred.sum(axis=axes)
        total_sq += (centred**2).sum(axis=axes)
        peak = np.maximum(peak, np.abs(arr).max(axis=axes))
        count += int(np.prod(arr.shape[1:]))
    assert shift is not None
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    mean = mean + shift
    # A channel is constant only relative to its own magnitude: tiny real signals (values in metres,
    # 12-bit data in a uint32 file scaled by 2**32) keep their spread instead of being blanked.
    constant = std <= _STD_FLOOR * np.maximum(peak, np.finfo(np.float64).tiny)
    std = np.where(constant, 1.0, std)  # a constant channel: centre it, do not blow it up
    return replace(pre, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


# --------------------------------------------------------------------------------------------------
# Cached loading
# --------------------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_BYTES = 0
_STATS = {"hits": 0, "misses": 0}


def _budget() -> int:
    try:
        return int(float(os.environ.get("FEWLABEL_CACHE_MB", "2048")) * 2**20)
    except ValueError:
        return 2048 * 2**20


def _file_key(path: str) -> tuple:
    p = Path(path.split(readers.NPZ_SEP, 1)[0])
    try:
        st = p.stat()
    except OSError:
        return (path, None, None)
    extra = len(os.listdir(p)) if p.is_dir() else 0
    return (str(p.resolve()) + path[len(str(p)):], st.st_mtime_ns, st.st_size + extra)


def _cache_get(key: tuple) -> np.ndarray | None:
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        _STATS["hits"] += 1
    else:
        _STATS["misses"] += 1
    return hit


def _cache_put(key: tuple, value: np.ndarray) -> None:
    global _CACHE_BYTES
    budget = _budget()
    if value.nbytes > budget:
        return
    value.setflags(write=False)
    _CACHE[key] = value
    _CACHE_BYTES += value.nbytes
    while _CACHE_BYTES > budget and _CACHE:
        _, old = _CACHE.popitem(last=False)
        _CACHE_BYTES -= old.nbytes


def cache_lookup(key: tuple) -> np.ndarray | None:
    """An array another module cached under ``key`` (read-only), or None: one LRU and one budget
    (``FEWLABEL_CACHE_MB``) for every derived array, e.g. region crops."""
    return _cache_get(("derived", *key))


def cache_store(key: tuple, value: np.ndarray) -> None:
    """Cache ``value`` under ``key`` for ``cache_lookup`` (dropped when alone over the budget)."""
    _cache_put(("derived", *key), value)


def clear_cache() -> None:
    """Forget every cached array (e.g. after files changed in place within the same second)."""
    global _CACHE_BYTES
    _CACHE.clear()
    _CACHE_BYTES = 0
    _STATS.update(hits=0, misses=0)


def cache_info() -> dict[str, int]:
    """Entries, bytes, hits and misses of the array cache (tests use it to check 'read once')."""
    return {"entries": len(_CACHE), "bytes": _CACHE_BYTES, **_STATS}


def _geometry_cached(path: str, pre: Preprocess) -> np.ndarray:
    key = ("image", _file_key(path), pre.geometry_key())
    hit = _cache_get(key)
    if hit is not None:
        return hit
    array, meta = readers.read_image(path)
    out = pre.apply_geometry(array, meta)
    _cache_put(key, out)
    return out


def load_images(catalog: Catalog, ids: Sequence[str], preprocess: Preprocess) -> np.ndarray:
    """float32 ``(N, C, *size)`` of ``ids``, preprocessed; decoded files are cached (module docstring)."""
    ids = list(ids)
    out = np.empty((len(ids), preprocess.channels, *preprocess.size), np.float32)
    for n, i in enumerate(ids):
        out[n] = preprocess.normalise(_geometry_cached(catalog.by_id[i].path, preprocess))
    return out


def load_masks(catalog: Catalog, ids: Sequence[str], preprocess: Preprocess) -> np.ndarray:
    """int64 ``(N, 1, *size)`` masks of ``ids``, resized like their images (nearest neighbour).

    A missing mask, or a mask whose spatial shape differs from its image's, raises ``MaskError``.
    """
    ids = list(ids)
    out = np.empty((len(ids), 1, *preprocess.size), np.int64)
    for n, i in enumerate(ids):
        s = catalog.by_id[i]
        if s.mask is None:
            raise MaskError("no mask for this image", path=s.path)
        key = ("mask", _file_key(s.mask), _file_key(s.path), preprocess.geometry_key())
        hit = _cache_get(key)
        if hit is None:
            mask, _ = readers.read_mask(s.mask)
            image_shape = readers.read_meta(s.path).spatial_shape
            if tuple(mask.shape[1:]) != tuple(image_shape):
                raise MaskError(f"mask shape {tuple(mask.shape[1:])} differs from its image's "
                                f"{tuple(image_shape)} ({s.id})", path=s.mask)
            hit = preprocess.apply_mask(mask).astype(np.int16 if mask.max() < 2**15 else np.int64)
            _cache_put(key, hit)
        out[n] = hit
    return out
