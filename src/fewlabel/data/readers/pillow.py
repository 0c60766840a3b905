"""PNG, JPEG and BMP through Pillow; 16-bit colour PNGs through libpng (``imagecodecs``).

Why two decoders: Pillow truncates 16-bit colour PNGs to 8 bits, and nothing may go through 8 bits.

An EXIF orientation (cameras, phones, some microscope exports) is applied, so the pixels are the
image as every viewer shows it; ``meta.orientation`` says which one was. Of an animated PNG or a
multi-picture JPEG only the first frame is read; ``meta.unread_frames`` says how many were not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.readers.common import ImageMeta, Reader
from fewlabel.limits import check_declared_size

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


_EXIF_ORIENTATION = 0x0112


def _orientation(im: Any) -> int:
    """EXIF orientation 1..8 from the header (1: none or unreadable). Asked before pixels are decoded:
    a PNG's eXIf chunk counts only before the image data (Pillow would decode everything to look
    further), so the header and the full read agree on the shape."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block: the pixels are still fine, as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _oriented(arr: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W[, C]) as ``PIL.ImageOps.exif_transpose`` turns it, for any dtype (16-bit colour too)."""
    if orientation in (5, 6, 7, 8):
        arr = np.swapaxes(arr, 0, 1)  # transpose, then the flip that makes each rotation
    flip_rows = orientation in (3, 4, 7, 8)
    flip_cols = orientation in (2, 3, 6, 7)
    return arr[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def _frames(im: Any) -> int:
    return max(1, int(getattr(im, "n_frames", 1) or 1))


def read(address: str, mask: bool = False) -> tuple[np.ndarray, ImageMeta]:
    path = Path(address)
    header = _png_header(path)
    if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
        return _read_png16(path)
    with _pil_open(path) as im:
        check_declared_size((im.size[1], im.size[0], len(im.getbands())), path)
        orientation, frames = _orientation(im), _frames(im)
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
    arr = _oriented(arr, orientation)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    meta = ImageMeta(path=str(path), format=fmt, dtype=dtype, shape=tuple(shape), spatial_dims=2,
                     channels=int(arr.shape[0]), spatial_shape=tuple(arr.shape[1:]), has_alpha=has_alpha,
                     orientation=orientation, unread_frames=frames - 1)
    return arr.astype(np.float32), meta


def read_header(path: Path) -> ImageMeta:

    header = _png_header(path)
    with _pil_open(path) as im:
        w, h = im.size
        check_declared_size((h, w, len(im.getbands())), path)
        mode = im.mode
        fmt = _PIL_FORMATS.get(im.format or "", (im.format or "image").lower())
        transparency = "transparency" in im.info
        orientation, frames = _orientation(im), _frames(im)
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
                     spatial_shape=(w, h) if orientation >= 5 else (h, w), has_alpha=alpha,
                     orientation=orientation, unread_frames=frames - 1)


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
    shape = arr.shape
    with _pil_open(path) as im:  # the header only: libpng is not asked for EXIF or frames
        orientation, frames = _orientation(im), _frames(im)
    arr = _oriented(arr, orientation)
    meta = ImageMeta(path=str(path), format="png", dtype="uint16", shape=shape, spatial_dims=2,
                     channels=int(arr.shape[2]), spatial_shape=tuple(arr.shape[:2]),
                     has_alpha=colour in (4, 6), orientation=orientation, unread_frames=frames - 1)
    return np.moveaxis(arr, -1, 0).astype(np.float32), meta


PNG = Reader((".png",), read, read_header)
JPEG = Reader((".jpg", ".jpeg"), read, read_header)
BMP = Reader((".bmp",), read, read_header)
