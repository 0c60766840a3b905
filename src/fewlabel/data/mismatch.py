"""Does an image look like the ones a model was trained on? Said out loud before it is scored.

Why: a model trained on 8-bit RGB photographs, shown a 1-channel float TIFF, is still "able" to score
it (channels are repeated, values rescaled) and answers with confident nonsense. ``predict`` refuses
such images (or warns, when the user says the difference is intended).
"""

from __future__ import annotations

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


def describe_mismatch(meta: Any, preprocess: Any) -> str | None:
    """One line saying how ``meta`` (an ``ImageMeta``) differs from the training images recorded in
    ``preprocess`` (channels, value type, spatial dimensions, size beyond ``MAX_RESIZE_FACTOR``), or
    None when it does not."""
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
        factors = [max(a, b) / max(1, min(a, b)) for a, b in zip(meta.spatial_shape, preprocess.size,
                                                                  strict=False)]
        if factors and max(factors) > MAX_RESIZE_FACTOR:
            shown = "×".join(str(s) for s in meta.spatial_shape)
            model = "×".join(str(s) for s in preprocess.size)
            problems.append(f"size {shown}, the model's input is {model}")
    return "; ".join(problems) if problems else None


def screen_image(meta: Any, preprocess: Any, allow_mismatch: bool = False) -> str | None:
    """``predict``'s and ``explain``'s rule for one image: None when it is like the training images;
    when it is not, a ``DataError`` naming the file, or with ``allow_mismatch`` the warning to show
    beside its result."""
    mismatch = describe_mismatch(meta, preprocess)
    if mismatch is None:
        return None
    if not allow_mismatch:
        raise DataError(f"unlike the training images ({mismatch}); pass --allow-mismatch to score it anyway",
                        path=meta.path)
    return f"unlike the training images ({mismatch})"
