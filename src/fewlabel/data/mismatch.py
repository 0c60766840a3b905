"""Does an image look like the ones a model was trained on? Said out loud before it is scored.

Why: a model trained on 8-bit RGB photographs, shown a 1-channel float TIFF, is still "able" to score
it (channels are repeated, values rescaled) and answers with confident nonsense. ``predict`` refuses
such images (or warns, when the user says the difference is intended).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fewlabel.errors import DataError

#: Largest factor between an image side and the model's input side that still counts as the same kind
#: of image; beyond it the resize changes what the image shows (cell size, texture scale).
MAX_RESIZE_FACTOR = 2.0


def dtype_family(dtype: str) -> str:
    """"integer", "float" or "bool": value types that are scaled differently by the preprocessing."""
    if dtype == "bool":
        return "bool"
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return dtype
    return {"u": "integer", "i": "integer", "f": "float", "b": "bool"}.get(kind, dtype)


def size_range_of(metas: Iterable[Any]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The smallest and largest side per axis of images (``ImageMeta``s of one dimensionality), or
    None for none."""
    shapes = [tuple(int(s) for s in m.spatial_shape) for m in metas]
    if not shapes or len({len(s) for s in shapes}) > 1:
        return None
    axes = list(zip(*shapes, strict=True))
    return tuple(min(a) for a in axes), tuple(max(a) for a in axes)


def _size_problem(meta: Any, preprocess: Any, trained_sizes: Sequence[Sequence[int]] | None) -> str | None:
    """The size part of ``describe_mismatch``: against the training images' own sizes when the model
    recorded them (a model trained at 64 px on 360-px images accepts 360-px images), else against the
    model's input size."""
    shape = tuple(int(s) for s in meta.spatial_shape)
    shown = "×".join(str(s) for s in shape)
    if trained_sizes is not None and len(trained_sizes[0]) == len(shape):
        low, high = trained_sizes
        factors = [max(lo / max(1, a), a / max(1, hi), 1.0)
                   for a, lo, hi in zip(shape, low, high, strict=True)]
        if max(factors) <= MAX_RESIZE_FACTOR:
            return None
        seen = ("×".join(map(str, low)) if tuple(low) == tuple(high)
                else f"{'×'.join(map(str, low))} to {'×'.join(map(str, high))}")
        return f"size {shown}, the training images were {seen}"
    factors = [max(a, b) / max(1, min(a, b)) for a, b in zip(shape, preprocess.size, strict=False)]
    if factors and max(factors) > MAX_RESIZE_FACTOR:
        return f"size {shown}, the model's input is {'×'.join(str(s) for s in preprocess.size)}"
    return None


def describe_mismatch(meta: Any, preprocess: Any,
                      trained_sizes: Sequence[Sequence[int]] | None = None) -> str | None:
    """One line saying how ``meta`` (an ``ImageMeta``) differs from the training images recorded in
    ``preprocess`` (channels, value type, spatial dimensions) and ``trained_sizes`` (their smallest and
    largest sides; size beyond ``MAX_RESIZE_FACTOR``), or None when it does not."""
    problems = []
    if meta.spatial_dims != preprocess.spatial_dims:
        problems.append(f"it is {meta.spatial_dims}D, the model was trained on {preprocess.spatial_dims}D "
                        "images")
    channels = tuple(preprocess.source_channels)
    if channels and meta.channels not in channels:
        trained = "/".join(str(c) for c in channels)
        problems.append(f"{meta.channels} channel(s), trained on {trained}")
    families = sorted({dtype_family(d) for d in preprocess.source_dtypes})
    if families and dtype_family(meta.dtype) not in families:
        problems.append(f"{meta.dtype} values, trained on {'/'.join(preprocess.source_dtypes)}")
    if meta.spatial_dims == preprocess.spatial_dims:
        size = _size_problem(meta, preprocess, trained_sizes)
        if size is not None:
            problems.append(size)
    return "; ".join(problems) if problems else None


def screen_image(meta: Any, preprocess: Any, allow_mismatch: bool = False,
                 trained_sizes: Sequence[Sequence[int]] | None = None, verb: str = "score") -> str | None:
    """``predict``'s and ``explain``'s rule for one image: None when it is like the training images;
    when it is not, a ``DataError`` naming the file, or with ``allow_mismatch`` the warning to show
    beside its result."""
    mismatch = describe_mismatch(meta, preprocess, trained_sizes)
    if mismatch is None:
        return None
    if not allow_mismatch:
        raise DataError(f"unlike the training images ({mismatch}); pass --allow-mismatch to {verb} it anyway",
                        path=meta.path)
    return f"unlike the training images ({mismatch})"
