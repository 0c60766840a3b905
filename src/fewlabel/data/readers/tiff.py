"""TIFF through ``tifffile``: the first series, its axes mapped onto (C, [D,] H, W).

Pages of one shape are one series, read whole (a volume); pages unlike the first make further
series, which are not read: ``meta.unread_frames`` counts their pages, so ``inspect`` can say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.readers.common import ImageMeta, Reader, quiet_library_logs, to_float
from fewlabel.errors import InvalidImageError, UnreadableFileError
from fewlabel.limits import check_declared_size

_TIFF_DEPTH_AXES = "ZIQT"
_TIFF_CHANNEL_AXES = "SC"


def _tiff_plan(axes: str, shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Split a tifffile axes string into (channel, depth, H, W) axis indices; size-1 extras dropped."""
    chan, depth, hh, ww = [], [], [], []
    for i, (ax, n) in enumerate(zip(axes, shape, strict=True)):
        if ax == "Y":
            hh.append(i)
        elif ax == "X":
            ww.append(i)
        elif n == 1:
            continue
        elif ax in _TIFF_CHANNEL_AXES:
            chan.append(i)
        elif ax in _TIFF_DEPTH_AXES:
            depth.append(i)
        else:
            raise InvalidImageError(
                f"TIFF axis {ax!r} of size {n} (axes {axes}) has no place in (C, D, H, W)")
    if len(hh) != 1 or len(ww) != 1 or len(chan) > 1 or len(depth) > 1:
        raise InvalidImageError(f"TIFF with axes {axes} and shape {shape} cannot be read as (C, [D,] H, W)")
    return chan, depth, hh, ww


def _tiff_alpha(page: Any) -> bool:
    extras = tuple(getattr(page, "extrasamples", ()) or ())
    return any(int(e) in (1, 2) for e in extras)


def _tiff_series(tf: Any, path: Path) -> Any:
    if not tf.series or not tf.pages:
        raise UnreadableFileError("cannot read as tiff: the file holds no readable image (corrupt or "
                                  "truncated)", path=path)
    return tf.series[0]


def _unread_pages(tf: Any) -> int:
    """Pages outside the first series: pages of one shape form one series (a volume, read whole);
    pages that differ from the first make further series, which are not read."""
    return sum(max(1, len(s.pages)) for s in tf.series[1:])


def read(address: str, mask: bool = False) -> tuple[np.ndarray, ImageMeta]:
    import tifffile

    path = Path(address)
    with tifffile.TiffFile(path) as tf:
        series = _tiff_series(tf, path)
        check_declared_size(series.shape, path)
        arr = series.asarray()
        axes = series.axes
        alpha = _tiff_alpha(tf.pages[0])
        notes = (f"{len(tf.series)} series in file; read the first",) if len(tf.series) > 1 else ()
        unread = _unread_pages(tf)
    chan, depth, hh, ww = _tiff_plan(axes, arr.shape)
    order = chan + depth + hh + ww
    rest = [i for i in range(arr.ndim) if i not in order]  # all of size 1
    out = np.transpose(arr, order + rest).reshape([arr.shape[i] for i in order])
    if not chan:
        out = out[None]
    meta = ImageMeta(path=str(path), format="tiff", dtype=str(arr.dtype), shape=tuple(arr.shape),
                     spatial_dims=3 if depth else 2, channels=int(out.shape[0]),
                     spatial_shape=tuple(out.shape[1:]), has_alpha=alpha, notes=notes, unread_frames=unread)
    return to_float(out), meta


def read_header(path: Path) -> ImageMeta:
    import tifffile

    with quiet_library_logs(), tifffile.TiffFile(path) as tf:
        series = _tiff_series(tf, path)
        check_declared_size(series.shape, path)
        shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
        alpha = _tiff_alpha(tf.pages[0])
        unread = _unread_pages(tf)
    chan, depth, hh, ww = _tiff_plan(axes, shape)
    spatial = tuple(shape[i] for i in depth + hh + ww)
    return ImageMeta(path=str(path), format="tiff", dtype=str(dtype), shape=shape,
                     spatial_dims=3 if depth else 2, channels=shape[chan[0]] if chan else 1,
                     spatial_shape=spatial, has_alpha=alpha, unread_frames=unread)


READER = Reader((".tif", ".tiff"), read, read_header)
