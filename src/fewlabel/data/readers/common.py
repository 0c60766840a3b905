"""What every reader shares: ``ImageMeta``, the ``Reader`` interface, names, and value checks.

Why a module of its own: the format modules and the dispatcher all need these, and none of them
should import another format's module for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.errors import FewlabelError, InvalidImageError, UnreadableFileError
from fewlabel.fileio import special_kind
from fewlabel.limits import check_file_bytes

#: Names skipped everywhere, silently: OS droppings. Hidden files/folders (leading dot) too.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx", "$recycle.bin"})

NPZ_SEP = "::"


@dataclass(frozen=True)
class ImageMeta:
    """What a reader knows about a file besides its pixels.

    ``dtype`` and ``shape`` are the ORIGINAL stored dtype and array shape (e.g. ``uint8``,
    ``(96, 96, 3)`` for an RGB PNG); ``spatial_shape`` is the spatial part of the returned array.
    ``spacing`` follows ``spatial_shape``'s axis order, in the file's unit (mm for NIfTI/DICOM), or
    None where the format does not say. ``rescaled``: the reader applied a slope/intercept, so values
    are physical units and must not be divided by the dtype's maximum.
    """

    path: str
    format: str
    dtype: str
    shape: tuple[int, ...]
    spatial_dims: int
    channels: int
    spatial_shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    has_alpha: bool = False
    rescaled: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    orientation: int = 1  # the EXIF orientation applied on reading (1: none, the pixels as stored)
    unread_frames: int = 0  # frames / pages / series in the file beyond the one read

    def __post_init__(self) -> None:
        # One spelling per dtype (">i2" and "int16" are the same thing to a user) and spacing without
        # float32 noise (0.699999988 → 0.7), so metadata compare and print cleanly.
        try:
            object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        except TypeError:
            pass
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(f"{float(v):.6g}") for v in self.spacing))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "spatial_shape", tuple(int(v) for v in self.spatial_shape))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("shape", "spatial_shape", "spacing", "notes"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class Reader:
    """One file format as the dispatcher sees it.

    ``suffixes``: lower-case extensions that select it. ``read(address, mask)`` decodes the file the
    caller named (``address``: a path, or for NPZ ``"file.npz::key/index"``) into a channel-first array
    and its ``ImageMeta``; ``mask=True`` asks for label values where the format has a choice (palette
    indices). The dispatcher turns the array into float32 and library exceptions into one-line errors.
    ``header(path)`` gives ``ImageMeta`` without decoding pixels; None: ``read`` is used instead.
    """

    suffixes: tuple[str, ...]
    read: Callable[[str, bool], tuple[np.ndarray, ImageMeta]]
    header: Callable[[Any], ImageMeta] | None = None


def split_suffix(name: str) -> tuple[str, str]:
    """``("brain", ".nii.gz")`` for ``brain.nii.gz``: the stem and the (lower-case) known suffix."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return name[: -len(".nii.gz")], ".nii.gz"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext.lower()


#: What every command says of a file or folder whose name is not UTF-8 (see ``undecodable_name``).
NOT_UTF8 = "name is not valid UTF-8 (results could not record it); rename it"


def undecodable_name(name: str) -> bool:
    """True for a name whose bytes are not UTF-8 (Python holds them as lone surrogates).

    Why refused, not read: such a name cannot be written to the JSON, CSV and SQLite files that
    record which file did what, so a data set holding one would fail (or be misrecorded) at the end.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def is_ignored_name(name: str) -> bool:
    """Hidden (dot) names and OS droppings (Thumbs.db, desktop.ini, __MACOSX) are never samples."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def list_folder_once(folder: Path, seen: set[tuple[int, int]], key: Callable[[os.DirEntry], Any],
                     error: type[FewlabelError]) -> list[os.DirEntry] | None:
    """Entries of ``folder`` sorted by ``key``, hidden names and OS droppings left out; None when
    ``folder`` is in ``seen`` (a folder symlink back up the tree: walked once already), else added.

    Why shared: discovery and the catalog walk the same trees and must stop at the same loops.
    """
    try:
        st = os.stat(folder)
        entries = sorted(os.scandir(folder), key=key)
    except OSError as exc:
        raise error(f"cannot list folder: {exc.strerror or exc}", path=folder) from exc
    if (st.st_dev, st.st_ino) in seen:
        return None
    seen.add((st.st_dev, st.st_ino))
    return [e for e in entries if not is_ignored_name(e.name)]


def special_file_reason(path: str | Path) -> str | None:
    """Why ``path`` must never be opened: a FIFO, a device or a socket (also behind a symlink); None
    for a regular file, a folder, or a path that cannot be stat'ed (whoever reads it names that).

    Why: opening a FIFO for reading blocks until some writer appears, and ``/dev/zero`` never ends;
    a stat opens nothing, so every walk and every reader asks this first.
    """
    kind = special_kind(path)
    return f"{kind}, not a regular file (never opened)" if kind else None


def regular_file_size(path: str | Path) -> int:
    """Size of the regular file ``path``; a FIFO, device or socket, or a file too large to be one
    image (``limits.max_file_bytes``), raises one line naming it. Nothing is opened."""
    reason = special_file_reason(path)
    if reason:
        raise UnreadableFileError(reason, path=path)
    size = os.stat(path).st_size
    check_file_bytes(size, path)
    return size


_LIBRARY_LOGGERS = ("tifffile", "nibabel", "pydicom", "PIL", "imagecodecs")


@contextlib.contextmanager
def quiet_library_logs() -> Any:
    """Libraries log (and warn) their own view of a damaged file (tifffile: "<tifffile.TiffFile> ...")
    beside the exception they raise; the user gets one line from us instead of both."""
    import warnings

    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with warnings.catch_warnings():  # pydicom/nibabel warn about odd headers on stderr as well
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, was in zip(loggers, before, strict=True):
            lg.disabled = was


def check_finite(arr: np.ndarray, path: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise InvalidImageError(
            f"image contains {n_nan} NaN and {n_inf} Inf values (or values beyond float32 range)", path=path)


def dtype_max(dtype: str) -> float | None:
    """Largest value of an integer dtype (1 for bool), None for floats."""
    if dtype == "bool":
        return 1.0
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return None
    if np.issubdtype(dt, np.integer):
        return float(np.iinfo(dt).max)
    return None


def to_float(arr: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(arr):
        raise InvalidImageError("complex-valued image; fewlabel reads real-valued images only")
    if arr.dtype.kind not in "biuf":
        raise InvalidImageError(f"unsupported array dtype {arr.dtype}")
    return arr.astype(np.float32)
