"""Readers: one module per file format, each giving a float32 channel-first array + ``ImageMeta``.

Why one entry point (``read_image``, in ``dispatch``): every other part of fewlabel (catalog,
preprocessing, predict) sees the same array for the same file, so what a model was trained on is
exactly what it is later asked to score.

Layout: ``common`` (``ImageMeta``, the ``Reader`` interface, names, dtype and value checks),
``dispatch`` (``READERS``: format name → ``Reader``; suffix/content detection, discovery, the entry
points), and one module per format: ``pillow`` (PNG, JPEG, BMP), ``tiff``, ``npy`` (NPY, NPZ),
``nifti``, ``dicom``. A NEW FORMAT is one module exposing a ``Reader(suffixes, read, read_header)``
plus one line in ``dispatch.READERS``; its suffixes then count as images everywhere (catalog, pool,
``discover_images``).

Conventions (the contract other modules rely on):

* The array is float32, channels first: ``(C, H, W)`` for 2D, ``(C, D, H, W)`` for 3D.
* Values are NOT rescaled: uint8 stays 0..255, uint16 stays 0..65535, float32 is bit-exact. Scaling
  is the job of ``tensors.Preprocess`` and is recorded there. Nothing goes through 8 bits: 16-bit
  colour PNGs (which Pillow would truncate to 8 bits) are decoded by libpng through ``imagecodecs``.
  int32/uint32/float64 inputs are exact in float32 up to 2**24 (and to float32 precision).
* Physical rescaling stored in the file IS applied (DICOM RescaleSlope/Intercept, NIfTI scl_slope/
  scl_inter), because those values are what the file means; ``meta.rescaled`` says so.
* Alpha is kept (RGBA → 4 channels, ``meta.has_alpha``); ``Preprocess`` decides to drop it.
* An EXIF orientation (JPEG, PNG) is applied, in ``read`` and in the header's size alike, so the
  pixels are the image as a viewer shows it (``meta.orientation``: the one applied). Frames, pages
  or series beyond the one read (animated PNG, multi-picture JPEG, a TIFF whose pages differ) are
  counted in ``meta.unread_frames``; ``data.reader_notes`` turns both into the lines users see.
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

from fewlabel.data.readers.common import (
    IGNORED_NAMES,
    NOT_UTF8,
    NPZ_SEP,
    ImageMeta,
    Reader,
    dtype_max,
    is_ignored_name,
    list_folder_once,
    regular_file_size,
    special_file_reason,
    split_suffix,
    undecodable_name,
)
from fewlabel.data.readers.dicom import is_dicom_file, is_dicom_series_dir
from fewlabel.data.readers.dispatch import (
    IMAGE_EXTENSIONS,
    READERS,
    check_header_limits,
    collect_image_paths,
    dangling_reason,
    discover_images,
    file_format,
    is_skipped_entry,
    read_image,
    read_mask,
    read_meta,
    skip_reason,
)
from fewlabel.data.readers.npy import check_npz_member, npz_member

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
    "collect_image_paths",
    "is_ignored_name",
    "IGNORED_NAMES",
    "NPZ_SEP",
    "READERS",
    "Reader",
    "check_npz_member",
    "dangling_reason",
    "dtype_max",
    "NOT_UTF8",
    "undecodable_name",
    "list_folder_once",
    "npz_member",
    "check_header_limits",
    "regular_file_size",
    "skip_reason",
    "is_skipped_entry",
    "special_file_reason",
]
