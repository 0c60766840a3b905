"""Readers: one function per file format, each giving a float32 channel-first array + ``ImageMeta``.

Why one module with one entry point (``read_image``): every other part of fewlabel (catalog,
preprocessing, predict) sees the same array for the same file, so what a model was trained on is
exactly what it is later asked to score.

Conventions (the contract other modules rely on):

* The array is float32, channels first: ``(C, H, W)`` for 2D, ``(C, D, H, W)`` for 3D.
* Values are NOT rescaled: uint8 stays 0..255, uint16 stays 0..65535, float32 is bit-exact. Scaling
  is the job of ``tensors.Preprocess`` and is recorded there. Nothing goes through 8 bits: 16-bit
  colour PNGs (which Pillow would truncate to 8 bits) are decoded by libpng through ``imagecodecs``.
  int32/uint32/float64 inputs are exact in float32 up to 2**24 (and to float32 precision).
* Physical rescaling stored in the file IS applied (DICOM RescaleSlope/Intercept, NIfTI scl_slope/
  scl_inter), because those values are what the file means; ``meta.rescaled`` says so.
* Alpha is kept (RGBA → 4 channels, ``meta.has_alpha``); ``Preprocess`` decides to drop it.
* NIfTI: the volume is first re-oriented to the closest canonical (RAS+) orientation (flips and axis
  swaps only, no resampling), then the axes are reversed: NIfTI ``(i, j, k)`` = (X, Y, Z) becomes the
  spatial ``(D, H, W)`` = (Z, Y, X), so ``volume[z]`` is an axial slice. 4D (X, Y, Z, T|C) → channels
  first. A 3D NIfTI with one slice (Z = 1) is a 2D image. Spacing = pixdim in the same (D, H, W) order.
* DICOM: one file → ``(C, H, W)`` (multi-frame → ``(C, F, H, W)``); a folder of slices → one volume,
  sorted by ImagePositionPatient projected on the slice normal (fallback InstanceNumber, then file
  name), rescale applied per slice. A folder mixing series is an error. MONOCHROME1 values are kept
  as stored (not inverted).
* NPY / NPZ: arrays are taken channel-first when they look so: 2D → (1, H, W); 3D with a last axis
  of 1–4 (and a first axis > 4) → channels-last image; 3D with a first axis of 1–4 → (C, H, W);
  any other 3D array → a volume (1, D, H, W); 4D with a first axis of 1–4 → (C, D, H, W), with a last
  axis of 1–4 → (D, H, W, C). NPZ members are addressed ``"file.npz::<key>/<index>"`` (or
  ``"file.npz::<key>"`` for a whole member).
* Every reader checks the size a file DECLARES (header: pixels, channels, slices, frames) against
  ``fewlabel.limits`` before it decodes, so a decompression bomb or a lying header costs a header
  read, not the machine's memory.
* Any failure raises ``UnreadableFileError`` (or ``UnknownFormatError`` / ``InvalidImageError``) with
  one line naming the file; a NaN/Inf in a float image raises ``InvalidImageError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.errors import (
    DataError,
    FewlabelError,
    InvalidImageError,
    MaskError,
    UnknownFormatError,
    UnreadableFileError,
)
from fewlabel.limits import check_declared_size

__all__ = [
    "ImageMeta",
    "IMAGE_EXTENSIONS",
    "read_image",
    "read_meta",
    "read_mask",
    "file_format",
    "split_suffix",
    "is_dicom_file",
    "is_dicom_series_dir",
    "discover_images",
    "is_ignored_name",
]

#: Extension (lower case) → format name. ``.nii.gz`` is matched before ``.gz``.
IMAGE_EXTENSIONS: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".npz": "npz",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".ima": "dicom",
}

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


# --------------------------------------------------------------------------------------------
# Formats, discovery
# --------------------------------------------------------------------------------------------


def split_suffix(name: str) -> tuple[str, str]:
    """``("brain", ".nii.gz")`` for ``brain.nii.gz``: the stem and the (lower-case) known suffix."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return name[: -len(".nii.gz")], ".nii.gz"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext.lower()


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


def is_ignored_name(name: str) -> bool:
    """Hidden (dot) names and OS droppings (Thumbs.db, desktop.ini, __MACOSX) are never samples."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_dicom_file(path: str | Path) -> bool:
    """True for a file with the DICOM preamble magic ``DICM`` at byte 128 (or a .dcm extension)."""
    path = Path(path)
    if split_suffix(path.name)[1] in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_series_dir(path: str | Path) -> bool:
    """A folder is one DICOM volume when it has no sub-folders and every (non-hidden) file is DICOM."""
    path = Path(path)
    try:
        entries = [e for e in os.scandir(path) if not is_ignored_name(e.name)]
        if not entries or any(e.is_dir() for e in entries):
            return False
    except OSError:  # a symlink loop inside: not a DICOM series, and the walker names the loop
        return False
    return all(is_dicom_file(e.path) for e in entries)


def discover_images(root: str | Path) -> tuple[list[Path], list[Path]]:
    """All readable images under ``root`` (recursive), and the files no reader handles.

    A sub-folder made only of DICOM files is one volume (one entry). Hidden files and OS droppings are
    skipped (see ``is_ignored_name``); everything else that is not an image lands in the second list so
    the caller can report it: nothing is skipped silently. ``root`` may also be a single file.
    """
    root = Path(root)
    if root.is_file():
        return ([root], []) if file_format(root) else ([], [root])
    found: list[Path] = []
    unknown: list[Path] = []
    _walk(root, found, unknown, set())
    return found, unknown


def dangling_reason(path: str | Path) -> str | None:
    """Why a symlink cannot be followed ("symlink loop", "broken symlink"), or None.

    Why: a symlink loop or a link to nowhere raises ELOOP/ENOENT from deep inside a reader; callers
    skip such entries with a note, and readers name the problem.
    """
    import errno

    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself), not an image"
        return "broken symlink (its target does not exist)"
    return None


def _walk(folder: Path, found: list[Path], unknown: list[Path], seen: set[tuple[int, int]]) -> None:
    try:
        st = os.stat(folder)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise UnreadableFileError(f"cannot list folder: {exc.strerror or exc}", path=folder) from exc
    if (st.st_dev, st.st_ino) in seen:  # a folder symlink back up the tree: walked once already
        return
    seen.add((st.st_dev, st.st_ino))
    for entry in entries:
        if is_ignored_name(entry.name):
            continue
        p = Path(entry.path)
        if entry.is_symlink() and dangling_reason(p) is not None:
            unknown.append(p)  # reported by the caller as an unreadable entry, never followed
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


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def read_image(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read one image or volume: float32 ``(C, H, W)`` / ``(C, D, H, W)`` and its ``ImageMeta``.

    ``path`` is a file, a folder of DICOM slices, or ``"file.npz::key/index"``.
    """
    arr, meta = _read(path, mask=False)
    _check_finite(arr, meta.path)
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
    top = _dtype_max(meta.dtype)
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
        fmt = file_format(fpath)
        if fmt in ("png", "jpeg", "bmp"):
            return _pil_meta(fpath)
        if fmt == "tiff":
            return _tiff_meta(fpath)
        if fmt == "npy":
            with open(fpath, "rb") as fh:
                shape, dtype = _npy_header(fh)
            check_declared_size(shape, fpath)
            return _array_meta(fpath, "npy", dtype, shape)
        if fmt == "nifti":
            return _nifti_meta(fpath)
        if fmt == "dicom":
            return _dicom_meta(fpath)
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
        return _guard(p, "npz", lambda: _read_npz_address(p))
    fpath = Path(p)
    if not fpath.exists():
        raise UnreadableFileError(dangling_reason(fpath) or "file does not exist", path=fpath)
    if fpath.is_dir():
        if not is_dicom_series_dir(fpath):
            raise UnknownFormatError(
                "folder is not a DICOM series (a folder is read as one volume only when every file in it "
                "is DICOM)", path=fpath)
        return _guard(fpath, "dicom", lambda: _read_dicom_series(fpath))
    fmt = file_format(fpath)
    if fmt is None:
        suffix = split_suffix(fpath.name)[1] or "(none)"
        raise UnknownFormatError(
            f"unknown file extension {suffix}; readable: {', '.join(sorted(set(IMAGE_EXTENSIONS)))}",
            path=fpath)
    if fpath.stat().st_size == 0:
        raise UnreadableFileError(f"empty file (0 bytes), not a valid {fmt}", path=fpath)
    readers = {
        "png": lambda: _read_pil(fpath, mask),
        "jpeg": lambda: _read_pil(fpath, mask),
        "bmp": lambda: _read_pil(fpath, mask),
        "tiff": lambda: _read_tiff(fpath),
        "npy": lambda: _read_npy(fpath),
        "npz": lambda: _read_npz_address(p),
        "nifti": lambda: _read_nifti(fpath),
        "dicom": lambda: _read_dicom_file(fpath),
    }
    return _guard(fpath, fmt, readers[fmt])


def _guard(path: str | Path, fmt: str, fn: Any) -> tuple[np.ndarray, ImageMeta]:
    """Turn any library exception into one ``UnreadableFileError`` line naming the file."""
    try:
        with _quiet_library_logs():
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


_LIBRARY_LOGGERS = ("tifffile", "nibabel", "pydicom", "PIL", "imagecodecs")


@contextlib.contextmanager
def _quiet_library_logs() -> Any:
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


def _check_finite(arr: np.ndarray, path: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise InvalidImageError(
            f"image contains {n_nan} NaN and {n_inf} Inf values (or values beyond float32 range)", path=path)


def _dtype_max(dtype: str) -> float | None:
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


def _to_float(arr: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(arr):
        raise InvalidImageError("complex-valued image; fewlabel reads real-valued images only")
    if arr.dtype.kind not in "biuf":
        raise InvalidImageError(f"unsupported array dtype {arr.dtype}")
    return arr.astype(np.float32)


def _layout_from_array_shape(shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """For NPY/NPZ arrays: ("hw" | "hwc" | "chw" | "dhw" | "cdhw" | "dhwc", channel-first shape)."""
    nd = len(shape)
    if nd == 2:
        return "hw", (1, *shape)
    if nd == 3:
        if shape[-1] <= 4 and shape[0] > 4:
            return "hwc", (shape[2], shape[0], shape[1])
        if shape[0] <= 4:
            return "chw", shape
        return "dhw", (1, *shape)
    if nd == 4:
        if shape[0] <= 4:
            return "cdhw", shape
        if shape[-1] <= 4:
            return "dhwc", (shape[3], shape[0], shape[1], shape[2])
    raise InvalidImageError(
        f"array of shape {shape} is not an image: expected (H,W), (H,W,C), (C,H,W), (D,H,W), (C,D,H,W) "
        "or (D,H,W,C) with at most 4 channels")


def _array_to_cf(arr: np.ndarray) -> np.ndarray:
    layout, _ = _layout_from_array_shape(arr.shape)
    if layout in ("hw", "dhw"):
        return arr[None]
    if layout == "hwc":
        return np.moveaxis(arr, -1, 0)
    if layout == "dhwc":
        return np.moveaxis(arr, -1, 0)
    return arr


def _array_meta(path: str | Path, fmt: str, dtype: np.dtype, shape: tuple[int, ...]) -> ImageMeta:
    _, cf = _layout_from_array_shape(tuple(int(s) for s in shape))
    return ImageMeta(path=str(path), format=fmt, dtype=str(np.dtype(dtype)), shape=tuple(shape),
                     spatial_dims=len(cf) - 1, channels=int(cf[0]), spatial_shape=tuple(cf[1:]))


# --------------------------------------------------------------------------------------------
# PNG / JPEG / BMP (Pillow, plus a 16-bit colour PNG decoder)
# --------------------------------------------------------------------------------------------

_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "BMP": "bmp", "MPO": "jpeg", "DIB": "bmp"}


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None when the file is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _pil_open(path: Path) -> Any:
    """``Image.open`` (header only) without Pillow's bomb *warning*: the declared size is checked by
    ``check_declared_size`` right after, with one line; Pillow's hard limit (an error) stays."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _read_pil(path: Path, mask: bool) -> tuple[np.ndarray, ImageMeta]:

    header = _png_header(path)
    if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
        return _read_png16(path)
    with _pil_open(path) as im:
        check_declared_size((im.size[1], im.size[0], len(im.getbands())), path)
        im.load()
        fmt = _PIL_FORMATS.get(im.format or "", (im.format or "image").lower())
        mode = im.mode
        has_alpha = False
        if mode == "P" and mask:
            arr = np.asarray(im)  # palette indices are the labels
            dtype = "uint8"
        elif mode in ("P", "PA"):
            im2 = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
            arr, dtype, has_alpha = np.asarray(im2), "uint8", im2.mode == "RGBA"
        elif mode == "1":
            arr, dtype = np.asarray(im, dtype=np.uint8), "bool"
        elif mode.startswith("I;16"):
            arr, dtype = np.asarray(im).astype(np.uint16), "uint16"
        elif mode == "I":
            arr = np.asarray(im)
            dtype = "uint16" if (header is not None and header[0] == 16) else "int32"
        elif mode == "F":
            arr, dtype = np.asarray(im), "float32"
        elif mode in ("L", "LA", "RGB", "RGBA"):
            arr, dtype, has_alpha = np.asarray(im), "uint8", mode in ("LA", "RGBA")
        else:  # CMYK, YCbCr, LAB, HSV ...: RGB is what a classifier can use
            arr, dtype = np.asarray(im.convert("RGB")), "uint8"
        bands = 1 if mode == "P" else len(im.getbands())
        shape = (im.size[1], im.size[0]) if bands == 1 else (im.size[1], im.size[0], bands)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    meta = ImageMeta(path=str(path), format=fmt, dtype=dtype, shape=tuple(shape), spatial_dims=2,
                     channels=int(arr.shape[0]), spatial_shape=tuple(arr.shape[1:]), has_alpha=has_alpha)
    return arr.astype(np.float32), meta


def _pil_meta(path: Path) -> ImageMeta:

    header = _png_header(path)
    with _pil_open(path) as im:
        w, h = im.size
        check_declared_size((h, w, len(im.getbands())), path)
        mode = im.mode
        fmt = _PIL_FORMATS.get(im.format or "", (im.format or "image").lower())
        transparency = "transparency" in im.info
    if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
        channels, dtype, alpha = {2: 3, 4: 2, 6: 4}[header[1]], "uint16", header[1] in (4, 6)
    elif mode in ("P", "PA"):
        channels = 4 if (mode == "PA" or transparency) else 3
        dtype, alpha = "uint8", channels == 4
    else:
        bands = {"1": 1, "L": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3, "RGBA": 4}
        channels = bands.get(mode, 1 if mode.startswith("I;16") else 3)
        dtype = {"1": "bool", "I": "int32", "F": "float32"}.get(mode, "uint8")
        if mode.startswith("I;16") or (mode == "I" and header is not None and header[0] == 16):
            dtype = "uint16"
        alpha = mode in ("LA", "RGBA")
    shape = (h, w) if channels == 1 else (h, w, channels)
    return ImageMeta(path=str(path), format=fmt, dtype=dtype, shape=shape, spatial_dims=2, channels=channels,
                     spatial_shape=(h, w), has_alpha=alpha)


def _read_png16(path: Path) -> tuple[np.ndarray, ImageMeta]:
    """Decode a 16-bit colour PNG (RGB, gray+alpha, RGBA) exactly with libpng (``imagecodecs``);
    Pillow would drop it to 8 bits. The size in IHDR is checked before a byte is inflated."""
    import imagecodecs

    with open(path, "rb") as fh:
        head = fh.read(33)
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    colour = head[25]
    channels = {2: 3, 4: 2, 6: 4}[colour]
    check_declared_size((height, width, channels), path)
    arr = imagecodecs.png_decode(path.read_bytes())
    if arr.dtype != np.uint16 or arr.shape[:2] != (height, width):
        raise ValueError(f"PNG decoded to {arr.dtype} {arr.shape}, not the uint16 {height}×{width} "
                         "its header declares")
    arr = arr.reshape(height, width, -1)
    meta = ImageMeta(path=str(path), format="png", dtype="uint16", shape=arr.shape, spatial_dims=2,
                     channels=int(arr.shape[2]), spatial_shape=(height, width), has_alpha=colour in (4, 6))
    return np.moveaxis(arr, -1, 0).astype(np.float32), meta


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------

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


def _read_tiff(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = _tiff_series(tf, path)
        check_declared_size(series.shape, path)
        arr = series.asarray()
        axes = series.axes
        alpha = _tiff_alpha(tf.pages[0])
        notes = (f"{len(tf.series)} series in file; read the first",) if len(tf.series) > 1 else ()
    chan, depth, hh, ww = _tiff_plan(axes, arr.shape)
    order = chan + depth + hh + ww
    rest = [i for i in range(arr.ndim) if i not in order]  # all of size 1
    out = np.transpose(arr, order + rest).reshape([arr.shape[i] for i in order])
    if not chan:
        out = out[None]
    meta = ImageMeta(path=str(path), format="tiff", dtype=str(arr.dtype), shape=tuple(arr.shape),
                     spatial_dims=3 if depth else 2, channels=int(out.shape[0]),
                     spatial_shape=tuple(out.shape[1:]), has_alpha=alpha, notes=notes)
    return _to_float(out), meta


def _tiff_meta(path: Path) -> ImageMeta:
    import tifffile

    with _quiet_library_logs(), tifffile.TiffFile(path) as tf:
        series = _tiff_series(tf, path)
        check_declared_size(series.shape, path)
        shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
        alpha = _tiff_alpha(tf.pages[0])
    chan, depth, hh, ww = _tiff_plan(axes, shape)
    spatial = tuple(shape[i] for i in depth + hh + ww)
    return ImageMeta(path=str(path), format="tiff", dtype=str(dtype), shape=shape,
                     spatial_dims=3 if depth else 2, channels=shape[chan[0]] if chan else 1,
                     spatial_shape=spatial, has_alpha=alpha)


# --------------------------------------------------------------------------------------------
# NPY / NPZ
# --------------------------------------------------------------------------------------------


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an open .npy stream's header, without reading the data."""
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    if dtype.hasobject:
        raise InvalidImageError("array holds Python objects, not numbers; save it with a numeric dtype")
    return tuple(int(v) for v in shape), dtype


def _read_npy(path: Path) -> tuple[np.ndarray, ImageMeta]:
    with open(path, "rb") as fh:
        shape, _ = _npy_header(fh)
    check_declared_size(shape, path)
    arr = np.load(path, allow_pickle=False)
    meta = _array_meta(path, "npy", arr.dtype, arr.shape)
    return _to_float(_array_to_cf(arr)), meta


_NPZ_CACHE: OrderedDict[tuple[str, int, int, str], np.ndarray] = OrderedDict()
_NPZ_CACHE_ITEMS = 4


def npz_member(path: str | Path, key: str) -> np.ndarray:
    """One member of an .npz, kept in a small cache: reading sample i must not unzip the member again."""
    path = Path(path)
    st = path.stat()
    ckey = (str(path.resolve()), st.st_mtime_ns, st.st_size, key)
    hit = _NPZ_CACHE.get(ckey)
    if hit is not None:
        _NPZ_CACHE.move_to_end(ckey)
        return hit
    with np.load(path, allow_pickle=False) as z:
        if key not in z.files:
            raise UnreadableFileError(f"NPZ has no array {key!r} (it has: {', '.join(z.files)})", path=path)
        check_npz_member(path, key)
        arr = z[key]
    _NPZ_CACHE[ckey] = arr
    while len(_NPZ_CACHE) > _NPZ_CACHE_ITEMS:
        _NPZ_CACHE.popitem(last=False)
    return arr


def check_npz_member(path: str | Path, key: str) -> None:
    """Refuse an NPZ member that holds objects or declares more values than the limit, from its
    header alone (a compressed member can inflate to any size)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            shape, _ = _npy_header(fh)
    except InvalidImageError as exc:
        raise InvalidImageError(f"NPZ member {key!r}: {exc.problem}", path=path) from None
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UnreadableFileError(f"cannot read NPZ member {key!r}: {exc}", path=path) from None
    check_declared_size(shape, path, what=f"NPZ member {key!r}")


def _read_npz_address(address: str) -> tuple[np.ndarray, ImageMeta]:
    if NPZ_SEP in address:
        file_part, member = address.split(NPZ_SEP, 1)
    else:
        file_part, member = address, ""
    fpath = Path(file_part)
    if not fpath.is_file():
        raise UnreadableFileError("file does not exist", path=fpath)
    if not member:
        with np.load(fpath, allow_pickle=False) as z:
            names = list(z.files)
        if len(names) != 1:
            raise UnreadableFileError(
                f"NPZ holds {len(names)} arrays ({', '.join(names[:6])}); address one as "
                f"'{fpath.name}::<key>/<index>'", path=fpath)
        member = names[0]
    key, _, index = member.partition("/")
    arr = npz_member(fpath, key)
    if index != "":
        try:
            i = int(index)
            arr = arr[i]
        except (ValueError, IndexError) as exc:
            raise UnreadableFileError(
                f"NPZ member {key!r} has {len(arr)} entries; index {index!r} is not one of them",
                path=fpath) from exc
    meta = _array_meta(address, "npz", arr.dtype, arr.shape)
    return _to_float(_array_to_cf(arr)), meta


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def _nifti_layout(shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(spatial_dims, array shape before reversal) for a canonical NIfTI shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    if len(shape) > 4:
        raise InvalidImageError(f"NIfTI with {len(shape)} dimensions {shape}; expected 2D, 3D or 4D")
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1) or (len(shape) == 4 and shape[2] == 1):
        return 2, shape
    return 3, shape


def _nifti_to_cf(data: np.ndarray) -> tuple[np.ndarray, int]:
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    sd, _ = _nifti_layout(data.shape)
    if data.ndim == 2:
        out = data.T[None]
    elif data.ndim == 3:
        out = data[:, :, 0].T[None] if sd == 2 else np.transpose(data, (2, 1, 0))[None]
    else:  # (X, Y, Z, C)
        out = np.transpose(data[:, :, 0, :], (2, 1, 0)) if sd == 2 else np.transpose(data, (3, 2, 1, 0))
    return out, sd


def _nifti_spacing(zooms: tuple[float, ...], sd: int) -> tuple[float, ...]:
    z = [float(v) for v in zooms[:3]] + [1.0] * (3 - len(zooms[:3]))
    return (z[1], z[0]) if sd == 2 else (z[2], z[1], z[0])


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    img = nib.load(str(path))
    raw_shape = tuple(int(s) for s in img.shape)
    check_declared_size(raw_shape, path)
    stored = img.get_data_dtype()
    slope, inter = img.dataobj.slope, img.dataobj.inter
    rescaled = not (slope in (None, 1) or np.isnan(slope)) or not (inter in (None, 0) or np.isnan(inter))
    if len(raw_shape) >= 3:
        img = nib.as_closest_canonical(img)
    data = np.asanyarray(img.dataobj)
    out, sd = _nifti_to_cf(data)
    meta = ImageMeta(path=str(path), format="nifti", dtype=str(stored), shape=raw_shape, spatial_dims=sd,
                     channels=int(out.shape[0]), spatial_shape=tuple(out.shape[1:]),
                     spacing=_nifti_spacing(img.header.get_zooms(), sd), rescaled=bool(rescaled))
    return _to_float(out), meta


def _nifti_meta(path: Path) -> ImageMeta:
    import nibabel as nib
    from nibabel.orientations import io_orientation

    img = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape)
    check_declared_size(shape, path)
    zooms = tuple(float(z) for z in img.header.get_zooms())
    canon, czooms = list(shape), list(zooms)
    if len(shape) >= 3:
        ornt = io_orientation(img.affine)
        for src, (dst, _) in enumerate(ornt[:3]):
            canon[int(dst)] = shape[src]
            czooms[int(dst)] = zooms[src]
    sd, lay = _nifti_layout(tuple(canon))
    spatial = (lay[1], lay[0]) if sd == 2 else (lay[2], lay[1], lay[0])
    channels = lay[3] if len(lay) == 4 else 1
    slope, inter = img.dataobj.slope, img.dataobj.inter
    rescaled = not (slope in (None, 1) or np.isnan(slope)) or not (inter in (None, 0) or np.isnan(inter))
    return ImageMeta(path=str(path), format="nifti", dtype=str(img.get_data_dtype()), shape=shape,
                     spatial_dims=sd, channels=channels, spatial_shape=spatial,
                     spacing=_nifti_spacing(tuple(czooms), sd), rescaled=bool(rescaled))


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _dcmread(path: Path, header_only: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except InvalidDicomError as exc:
        raise UnreadableFileError(f"not a DICOM file ({exc})", path=path) from exc
    except Exception as exc:
        raise UnreadableFileError(f"cannot read as dicom: {exc}", path=path) from exc


def _rescale(ds: Any, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    slope = ds.get("RescaleSlope", None)
    inter = ds.get("RescaleIntercept", None)
    slope = 1.0 if slope in (None, "") else float(slope)
    inter = 0.0 if inter in (None, "") else float(inter)
    if slope == 1.0 and inter == 0.0:
        return arr, False
    return arr.astype(np.float64) * slope + inter, True


def _dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        modality = ds.get("Modality", "?")
        raise UnreadableFileError(f"DICOM file has no pixel data (modality {modality})", path=path)
    check_declared_size(_dicom_declared_shape(ds), path)
    try:
        arr = ds.pixel_array
        if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)  # indices → RGB, as the file means them to be seen
        return arr
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise UnreadableFileError(f"cannot decode DICOM pixel data (transfer syntax {name}): {exc}",
                                  path=path) from exc


def _dicom_declared_shape(ds: Any) -> tuple[int, ...]:
    """(frames, rows, columns, samples) as the header declares them (palette images decode to RGB)."""
    spp = 3 if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR" else int(
        ds.get("SamplesPerPixel", 1) or 1)
    return (int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("Rows", 0) or 0),
            int(ds.get("Columns", 0) or 0), spp)


def _pixel_spacing(ds: Any) -> tuple[float, float] | None:
    ps = ds.get("PixelSpacing", None) or ds.get("ImagerPixelSpacing", None)
    if ps is None or len(ps) < 2:
        return None
    return float(ps[0]), float(ps[1])


def _read_dicom_file(path: Path) -> tuple[np.ndarray, ImageMeta]:
    ds = _dcmread(path)
    arr = _dicom_pixels(ds, path)
    stored = str(arr.dtype)
    raw_shape = tuple(int(s) for s in arr.shape)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = arr.ndim == (4 if frames > 1 else 3)  # RGB samples, or a palette turned into RGB
    arr, rescaled = _rescale(ds, arr)
    if colour:
        arr = np.moveaxis(arr, -1, 0)  # (H,W,S) -> (S,H,W); (F,H,W,S) -> (S,F,H,W)
    else:
        arr = arr[None]
    sd = 3 if frames > 1 else 2
    ps = _pixel_spacing(ds)
    spacing: tuple[float, ...] | None = ps
    if ps is not None and sd == 3:
        dz = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None)
        spacing = (float(dz), *ps) if dz not in (None, "") else None
    meta = ImageMeta(path=str(path), format="dicom", dtype=stored, shape=raw_shape, spatial_dims=sd,
                     channels=int(arr.shape[0]), spatial_shape=tuple(arr.shape[1:]), spacing=spacing,
                     rescaled=rescaled)
    return arr, meta


def _dicom_stored_dtype(ds: Any) -> str:
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if bits == 1:
        return "bool"
    if bits in (8, 16, 32, 64):
        return f"{'int' if signed else 'uint'}{bits}"
    return "uint16"


def _dicom_meta(path: Path) -> ImageMeta:
    ds = _dcmread(path, header_only=True)
    check_declared_size(_dicom_declared_shape(ds), path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        spp = 3
    sd = 3 if frames > 1 else 2
    spatial = (frames, rows, cols) if sd == 3 else (rows, cols)
    shape = spatial + ((spp,) if spp > 1 else ())
    rescaled = (float(ds.get("RescaleSlope", 1) or 1) != 1.0
                or float(ds.get("RescaleIntercept", 0) or 0) != 0.0)
    ps = _pixel_spacing(ds)
    return ImageMeta(path=str(path), format="dicom", dtype=_dicom_stored_dtype(ds), shape=shape,
                     spatial_dims=sd, channels=spp, spatial_shape=spatial,
                     spacing=ps if sd == 2 else None, rescaled=rescaled)


def _slice_order(datasets: list[Any], files: list[Path]) -> tuple[list[int], float | None, str]:
    """Order of slices: by position along the slice normal, else InstanceNumber, else file name."""
    try:
        iops = [np.asarray([float(v) for v in ds.ImageOrientationPatient]) for ds in datasets]
        ipps = [np.asarray([float(v) for v in ds.ImagePositionPatient]) for ds in datasets]
    except (AttributeError, TypeError, ValueError):
        iops = ipps = []
    if iops and len(iops) == len(datasets):
        normal = np.cross(iops[0][:3], iops[0][3:])
        pos = np.asarray([float(np.dot(p, normal)) for p in ipps])
        order = list(np.argsort(pos, kind="stable"))
        steps = np.diff(pos[order])
        if len(steps) and np.min(np.abs(steps)) < 1e-4:
            k = int(np.argmin(np.abs(steps)))
            raise InvalidImageError(
                f"two slices at the same position ({files[order[k]].name} and {files[order[k + 1]].name}); "
                "is this folder two series?", path=files[0].parent)
        return order, (float(np.median(np.abs(steps))) if len(steps) else None), "position"
    numbers = [ds.get("InstanceNumber", None) for ds in datasets]
    if all(n not in (None, "") for n in numbers):
        return list(np.argsort([int(n) for n in numbers], kind="stable")), None, "instance_number"
    return list(range(len(datasets))), None, "file_name"


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, ImageMeta]:
    files = sorted(Path(e.path) for e in os.scandir(folder) if not is_ignored_name(e.name) and e.is_file())
    datasets = [_dcmread(f) for f in files]
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(uids) > 1:
        shown = ", ".join(u or "(none)" for u in uids[:3])
        raise DataError(
            f"folder mixes {len(uids)} DICOM series ({shown}{', …' if len(uids) > 3 else ''}); "
            "put each series in its own folder", path=folder)
    for ds, f in zip(datasets, files, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InvalidImageError("multi-frame DICOM file inside a slice folder; read it on its own",
                                    path=f)
    check_declared_size((len(datasets), *_dicom_declared_shape(datasets[0])), folder, what="DICOM series")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise InvalidImageError(f"DICOM slices of different sizes {sorted(sizes)} in one folder", path=folder)
    order, dz, how = _slice_order(datasets, files)
    slices, any_rescaled, stored = [], False, ""
    for i in order:
        px = _dicom_pixels(datasets[i], files[i])
        stored = str(px.dtype)
        px, r = _rescale(datasets[i], px)
        any_rescaled |= r
        slices.append(np.asarray(px, dtype=np.float64 if r else px.dtype))
    vol = np.stack(slices)  # (D,H,W) or (D,H,W,S)
    raw_shape = tuple(int(s) for s in vol.shape)
    vol = np.moveaxis(vol, -1, 0) if vol.ndim == 4 else vol[None]
    ps = _pixel_spacing(datasets[order[0]])
    if dz is None:
        v = datasets[0].get("SpacingBetweenSlices", None) or datasets[0].get("SliceThickness", None)
        dz = float(v) if v not in (None, "") else None
    spacing = (dz, *ps) if (ps is not None and dz is not None) else None
    meta = ImageMeta(path=str(folder), format="dicom", dtype=stored, shape=raw_shape, spatial_dims=3,
                     channels=int(vol.shape[0]), spatial_shape=tuple(vol.shape[1:]), spacing=spacing,
                     rescaled=any_rescaled, notes=(f"{len(files)} slices sorted by {how}",))
    return vol, meta
