"""The dispatcher: picks a format's ``Reader`` by suffix (or content) and gives one contract for all.

Why one entry point (``read_image``): every other part of fewlabel (catalog, preprocessing, predict)
sees the same array for the same file, so what a model was trained on is exactly what it is later
asked to score. Format modules only decode; the checks every image gets (existence, empty files,
zero-size arrays, NaN/Inf, one-line errors for library exceptions) happen here, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import fewlabel.data.readers.dicom as dicom
import fewlabel.data.readers.nifti as nifti
import fewlabel.data.readers.npy as npy
import fewlabel.data.readers.pillow as pillow
import fewlabel.data.readers.tiff as tiff
from fewlabel.data.readers.common import (
    NOT_UTF8,
    NPZ_SEP,
    ImageMeta,
    Reader,
    check_finite,
    dtype_max,
    list_folder_once,
    quiet_library_logs,
    regular_file_size,
    special_file_reason,
    split_suffix,
    undecodable_name,
)
from fewlabel.data.readers.dicom import is_dicom_file, is_dicom_series_dir
from fewlabel.errors import (
    FewlabelError,
    InvalidImageError,
    MaskError,
    UnknownFormatError,
    UnreadableFileError,
)
from fewlabel.fileio import dangling_link_reason

#: Format name → its reader. A new format is one module with a ``Reader`` and one line here.
READERS: dict[str, Reader] = {
    "png": pillow.PNG,
    "jpeg": pillow.JPEG,
    "bmp": pillow.BMP,
    "tiff": tiff.READER,
    "npy": npy.NPY,
    "npz": npy.NPZ,
    "nifti": nifti.READER,
    "dicom": dicom.READER,
}

#: Extension (lower case) → format name. ``.nii.gz`` is matched before ``.gz`` (``split_suffix``).
IMAGE_EXTENSIONS: dict[str, str] = {
    suffix: name for name, reader in READERS.items() for suffix in reader.suffixes}


# --------------------------------------------------------------------------------------------
# Formats, discovery
# --------------------------------------------------------------------------------------------


def file_format(path: str | Path) -> str | None:
    """Format name from the extension (``"png"``, ``"nifti"``, ...), or None when unknown.

    ``"dicom"`` also for extension-less files that carry the DICOM magic bytes; ``"dicom-series"`` for
    a folder of DICOM slices; ``"npz"`` for ``file.npz::key/index`` addresses.
    """
    p = str(path)
    if NPZ_SEP in p:
        return "npz"
    path = Path(p)
    if path.is_dir():
        return "dicom-series" if is_dicom_series_dir(path) else None
    _, suffix = split_suffix(path.name)
    fmt = IMAGE_EXTENSIONS.get(suffix)
    if fmt is None and (suffix == "" or suffix[1:].isdigit()) and is_dicom_file(path):
        return "dicom"  # DICOM files often have no extension, or a number as one (IM.0001)
    return fmt


def discover_images(root: str | Path) -> tuple[list[Path], list[Path]]:
    """All readable images under ``root`` (recursive), and the files no reader handles.

    A sub-folder made only of DICOM files is one volume (one entry). Hidden files and OS droppings are
    skipped (see ``is_ignored_name``); everything else that is not an image lands in the second list so
    the caller can report it: nothing is skipped silently. ``root`` may also be a single file.
    """
    root = Path(root)
    if root.is_file():
        return ([root], []) if file_format(root) and not undecodable_name(root.name) else ([], [root])
    if special_file_reason(root):
        return [], [root]
    found: list[Path] = []
    unknown: list[Path] = []
    _walk(root, found, unknown, set())
    return found, unknown


def collect_image_paths(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand folders recursively into image files; what is missing or not an image is reported as
    (path, problem) pairs (``predict`` and ``explain`` take files and folders alike)."""
    paths: list[Path] = []
    errors: list[tuple[str, str]] = []
    for item in inputs:
        item = Path(item)
        if not item.exists():
            errors.append((str(item), dangling_reason(item) or "does not exist"))
            continue
        found, unknown = discover_images(item)
        # The caller records each path as given (a CSV row): one it cannot write is named, not scored.
        paths.extend(p for p in found if not undecodable_name(str(p)))
        errors.extend((str(p), NOT_UTF8) for p in found if undecodable_name(str(p)))
        errors.extend((str(u), skip_reason(u) or "unknown file extension; not an image fewlabel can read")
                      for u in unknown)
    return paths, errors


def dangling_reason(path: str | Path) -> str | None:
    """Why a symlink cannot be followed, worded for an image (see ``fileio.dangling_link_reason``)."""
    reason = dangling_link_reason(path)
    return None if reason is None else (reason + ", not an image" if reason.startswith("symlink loop")
                                        else reason)


def skip_reason(path: str | Path) -> str | None:
    """Why a walk names an entry instead of reading it: a symlink loop, a broken link, a FIFO,
    device or socket (``special_file_reason``), or a name that is not UTF-8 (``NOT_UTF8``); None for
    a regular file or a folder."""
    return (dangling_reason(path) or special_file_reason(path)
            or (NOT_UTF8 if undecodable_name(Path(path).name) else None))


def is_skipped_entry(entry: os.DirEntry) -> bool:
    """A folder entry every walk names and never opens (see ``skip_reason``). Costs a stat only for
    symlinks and entries that are neither files nor folders."""
    if undecodable_name(entry.name):
        return True
    if entry.is_symlink() and dangling_reason(entry.path) is not None:
        return True
    return not (entry.is_file() or entry.is_dir()) and special_file_reason(entry.path) is not None


def _walk(folder: Path, found: list[Path], unknown: list[Path], seen: set[tuple[int, int]]) -> None:
    entries = list_folder_once(folder, seen, key=lambda e: e.name, error=UnreadableFileError)
    for entry in entries or ():
        p = Path(entry.path)
        if is_skipped_entry(entry):
            unknown.append(p)  # reported by the caller with its reason, never followed or opened
            continue
        if entry.is_dir():
            if is_dicom_series_dir(p):
                found.append(p)
            else:
                _walk(p, found, unknown, seen)
        elif file_format(p) is not None:
            found.append(p)
        else:
            unknown.append(p)


def check_header_limits(path: str | Path) -> None:
    """Refuse a file whose header declares more than the size limits, reading its header only.

    Why: content keys hash every file before anything decodes it; a file over the limits is refused
    by its header first, never read whole. A header that cannot be read is left to the full read,
    which names that problem.
    """
    fmt = file_format(path)
    reader = READERS.get(fmt or "")
    if reader is None or reader.header is None:
        return
    try:
        with quiet_library_logs():
            reader.header(Path(path))
    except InvalidImageError:
        raise
    except Exception as exc:  # a damaged header is named by the full read, in its own words
        from PIL import Image

        if isinstance(exc, Image.DecompressionBombError):  # Pillow's own limit, also from the header
            raise InvalidImageError(f"cannot read as {fmt}: {exc}", path=path) from None


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def read_image(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read one image or volume: float32 ``(C, H, W)`` / ``(C, D, H, W)`` and its ``ImageMeta``.

    ``path`` is a file, a folder of DICOM slices, or ``"file.npz::key/index"``.
    """
    arr, meta = _read(path, mask=False)
    check_finite(arr, meta.path)
    return arr, meta


def read_mask(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a segmentation mask as int64 ``(1, *spatial)`` with labels 0..K.

    Why these rules: masks come as 0/1, 0/255, label maps, palette PNGs or RGB exports. Palette PNGs
    give their indices; identical colour channels collapse to one; a mask whose only values are 0 and
    the dtype maximum (255, 65535) becomes 0/1. A mask that is not integer-valued, is negative, has
    channels that differ, or has more than 64 distinct values (an image or a lossy JPEG, not a label
    map) raises ``MaskError``.
    """
    arr, meta = _read(path, mask=True)
    where = meta.path
    if not np.isfinite(arr).all():
        raise MaskError("mask contains NaN/Inf values; expected a binary/integer label mask", path=where)
    if meta.has_alpha and arr.shape[0] in (2, 4):
        arr = arr[:-1]
    if arr.shape[0] > 1:
        if not all(np.array_equal(arr[0], arr[c]) for c in range(1, arr.shape[0])):
            raise MaskError(
                f"mask has {arr.shape[0]} channels that differ; expected one label channel "
                "(binary/integer)", path=where)
        arr = arr[:1]
    if not np.array_equal(arr, np.round(arr)):
        bad = arr[arr != np.round(arr)].flat[0]
        raise MaskError(f"mask is not binary/integer (it has values like {bad:g})", path=where)
    values = np.unique(arr)
    if values.size and values[0] < 0:
        raise MaskError(f"mask has negative values (min {values[0]:g}); expected labels 0..K", path=where)
    if values.size > 64:
        raise MaskError(
            f"mask is not binary/integer: {values.size} distinct values (an image or a lossy JPEG?); "
            "expected a label mask", path=where)
    top = dtype_max(meta.dtype)
    if top is not None and top > 1 and values.size and set(values.tolist()) <= {0.0, float(top)}:
        arr = arr / top
    return arr.astype(np.int64), meta


def read_meta(path: str | Path) -> ImageMeta:
    """``ImageMeta`` from the header only, where the format allows (PIL, TIFF, NPY, NIfTI, DICOM).

    Why: ``fit_preprocess`` needs every training image's shape before it decides the target size;
    this avoids decoding each file twice.
    """
    p = str(path)
    try:
        if NPZ_SEP in p:
            return _read(p, mask=False)[1]
        fpath = Path(p)
        if not fpath.exists():
            raise UnreadableFileError(dangling_reason(fpath) or "file does not exist", path=fpath)
        if not fpath.is_dir():
            regular_file_size(fpath)
        reader = READERS.get(file_format(fpath) or "")  # a DICOM folder has no reader here: read below
        if reader is not None and reader.header is not None:
            return reader.header(fpath)
    except FewlabelError:
        raise
    except Exception:  # header unreadable: the full reader below gives the proper error
        pass
    return _read(p, mask=False)[1]


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def _read(path: str | Path, mask: bool) -> tuple[np.ndarray, ImageMeta]:
    p = str(path)
    if NPZ_SEP in p:
        return _guard(p, "npz", lambda: READERS["npz"].read(p, mask))
    fpath = Path(p)
    if not fpath.exists():
        raise UnreadableFileError(dangling_reason(fpath) or "file does not exist", path=fpath)
    if fpath.is_dir():
        if not is_dicom_series_dir(fpath):
            raise UnknownFormatError(
                "folder is not a DICOM series (a folder is read as one volume only when every file in it "
                "is DICOM)", path=fpath)
        return _guard(fpath, "dicom", lambda: dicom.read_series(fpath))
    size = regular_file_size(fpath)  # before the format sniff, which would open a FIFO
    fmt = file_format(fpath)
    if fmt is None:
        suffix = split_suffix(fpath.name)[1] or "(none)"
        raise UnknownFormatError(
            f"unknown file extension {suffix}; readable: {', '.join(sorted(set(IMAGE_EXTENSIONS)))}",
            path=fpath)
    if size == 0:
        raise UnreadableFileError(f"empty file (0 bytes), not a valid {fmt}", path=fpath)
    # Readers get the caller's string: an NPZ file read whole keeps it, as ``meta.path``.
    return _guard(fpath, fmt, lambda: READERS[fmt].read(p, mask))


def _guard(path: str | Path, fmt: str, fn: Any) -> tuple[np.ndarray, ImageMeta]:
    """Turn any library exception into one ``UnreadableFileError`` line naming the file."""
    try:
        with quiet_library_logs():
            arr, meta = fn()
    except FewlabelError:
        raise
    except MemoryError:
        raise InvalidImageError("not enough memory to decode this image (is it far larger than the others?)",
                                path=path) from None
    except Exception as exc:  # PIL, nibabel, pydicom, tifffile, zlib, numpy: all one kind of problem
        text = str(exc).strip() or type(exc).__name__
        text = text.replace(repr(str(path)), Path(str(path)).name).replace(str(path), Path(str(path)).name)
        if "cannot identify image file" in text:
            text = "not a valid image (garbage, truncated, or another format than its extension says)"
        raise UnreadableFileError(f"cannot read as {fmt}: {text}", path=path) from exc
    if arr.size == 0 or 0 in arr.shape:
        raise InvalidImageError(f"image has zero size (shape {tuple(arr.shape)})", path=path)
    return np.ascontiguousarray(arr, dtype=np.float32), meta
