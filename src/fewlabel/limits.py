"""Size limits checked BEFORE anything is allocated: declared image sizes, resize targets, model sizes.

Why: a 1 KB header can declare a 30000×30000×3000 volume, and a tampered model config a network of
terabytes. Every reader compares what a file *declares* with these limits before it decodes a byte,
so a hostile or broken file costs a header read and one line of error, never the machine's memory.

The limits fit medical images (a 512×512×512 CT volume, the largest accepted by default, has 134 M
values) and can be raised with environment variables (documented in docs/guarantees.md):

* ``FEWLABEL_MAX_IMAGE_VALUES``: values (pixels × channels × slices) one image may declare.
* ``FEWLABEL_MAX_SIDE``: largest resize target per side (``--image-size``, a model's preprocess size).

This module imports nothing from fewlabel but ``errors``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from fewlabel.errors import FewlabelError, InvalidImageError

MAX_IMAGE_VALUES_ENV = "FEWLABEL_MAX_IMAGE_VALUES"
MAX_SIDE_ENV = "FEWLABEL_MAX_SIDE"
# 134 M values = a 512³ CT volume or an 8k × 8k RGB slide: 512 MiB as float32, so decoding one image,
# source array included, stays under 1 GB.
DEFAULT_MAX_IMAGE_VALUES = 1 << 27
DEFAULT_MAX_SIDE = 1024  # a classifier input of 1024² (2D) or 1024³ would not fit any batch anyway
MAX_TARGET_VALUES = 1 << 24  # values per resized image (4096², 256³): a batch of them fits in memory
MAX_MODEL_WIDTH = 4096  # channels / hidden units in any one layer of a model config
MAX_CLASSES = 100_000


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise FewlabelError(f"environment variable {name}={raw!r} is not a whole number") from None
    if value < 1:
        raise FewlabelError(f"environment variable {name}={raw!r} must be at least 1")
    return value


def max_image_values() -> int:
    """Values one image may declare (read from the environment on each call, so tests can set it)."""
    return _env_int(MAX_IMAGE_VALUES_ENV, DEFAULT_MAX_IMAGE_VALUES)


def max_side() -> int:
    return _env_int(MAX_SIDE_ENV, DEFAULT_MAX_SIDE)


def check_declared_size(shape: Sequence[int], path: str | Path | None, what: str = "image") -> None:
    """Refuse an image whose declared shape (header, before decoding) is absurd or over the limit."""
    dims = [int(s) for s in shape]
    if any(s < 0 for s in dims):
        raise InvalidImageError(f"{what} declares a negative size {tuple(dims)} (corrupt header)", path=path)
    total = math.prod(dims)
    limit = max_image_values()
    if total > limit:
        shown = "×".join(str(s) for s in dims)
        raise InvalidImageError(
            f"{what} declares {shown} = {total:,} values, over the limit of {limit:,} (a decompression "
            f"bomb or a corrupt header?); set {MAX_IMAGE_VALUES_ENV} to raise the limit", path=path)


def check_declared_bytes(n_bytes: int, path: str | Path | None, what: str = "image") -> None:
    """The same limit for formats that declare a byte count (4 bytes per value, as decoded)."""
    check_declared_size((max(0, int(n_bytes)) // 4,), path, what)


#: Bytes one image file may hold per value the image limit allows: 8 (float64/int64, the widest value
#: type a reader accepts) twice over, for pyramid levels and encodings that compress badly; plus
#: ``FILE_BYTES_SLACK`` for headers and metadata (private DICOM tags, thumbnails, ICC profiles).
#: 2 GiB + 64 MiB by default: a bigger file cannot decode to one image within the limit.
BYTES_PER_VALUE = 16
FILE_BYTES_SLACK = 64 << 20


def max_file_bytes() -> int:
    """Bytes one image file may hold (follows ``FEWLABEL_MAX_IMAGE_VALUES``)."""
    return BYTES_PER_VALUE * max_image_values() + FILE_BYTES_SLACK


def check_file_bytes(n_bytes: int, path: str | Path | None, what: str = "file") -> None:
    """Refuse a file (or a DICOM folder) too large to be one image, before it is hashed or decoded:
    a sparse 1 TB file costs a stat, not minutes of reading."""
    limit = max_file_bytes()
    if n_bytes > limit:
        raise InvalidImageError(
            f"{what} is {n_bytes:,} bytes, over the limit of {limit:,} for one image (a sparse or "
            f"corrupt file?); set {MAX_IMAGE_VALUES_ENV} to raise the limit", path=path)


def check_target_size(size: Sequence[int], path: str | Path | None = None, what: str = "image size") -> None:
    """Refuse a resize target (``--image-size``, a model's preprocess size) that cannot fit in memory."""
    dims = [int(s) for s in size]
    side = max_side()
    if any(s < 1 for s in dims):
        raise FewlabelError(f"{what} {tuple(dims)} must be at least 1 per side", path=path)
    if max(dims, default=0) > side or math.prod(dims) > MAX_TARGET_VALUES:
        raise FewlabelError(
            f"{what} {tuple(dims)} is too large: at most {side} per side and {MAX_TARGET_VALUES:,} pixels "
            f"in all (set {MAX_SIDE_ENV} to raise the per-side limit)", path=path)
