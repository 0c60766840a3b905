"""Tiny test files in every format fewlabel reads, and whole data sets built from them.

Import from any test module (pytest puts ``tests/`` on ``sys.path`` because it holds ``conftest.py``
and no ``__init__.py``)::

    from factory import make_class_folder, make_image_mask_tree, GROUP_PATTERN

    root = make_class_folder(tmp_path / "cells", classes={"a": 6, "b": 6}, size=(16, 16))
    catalog = load_catalog(root)

Everything is deterministic from ``seed``. Images are small (default 16-32 px) so tests stay fast.

Separable classes (``separable=True``): class k of K gets a mean brightness that rises with k and a
central blob whose radius grows with k, plus noise. A tiny CNN learns that in a few epochs, also under
flips, 90° rotations and small affine transforms (the blob is centred, the brightness global).

Masks (``make_image_mask_tree``): each image has a bright blob at a random place; its mask is the blob
(``1`` inside), so a segmentation net can learn it and masks correlate with image content.

File names carry groups: ``p{gid:04d}_s{slice:02d}.{ext}``, so ``GROUP_PATTERN`` (``r"(p\\d{4})_s"``)
recovers the group (patient) of every file; with ``images_per_group=1`` each group is one image.
"""

from __future__ import annotations

import csv
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

GROUP_PATTERN = r"(p\d{4})_s"

#: Format name → file extension used by the builders.
EXTENSIONS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "bmp": ".bmp", "tif": ".tif", "tiff": ".tif",
              "npy": ".npy", "nii": ".nii", "nii.gz": ".nii.gz", "dcm": ".dcm"}

__all__ = [
    "GROUP_PATTERN",
    "synthetic_image",
    "blob_image_and_mask",
    "to_dtype",
    "write_image",
    "write_png",
    "write_png16",
    "write_jpeg",
    "write_bmp",
    "write_tiff",
    "write_npy",
    "write_nifti",
    "write_dicom",
    "write_dicom_series",
    "write_medmnist_npz",
    "make_class_folder",
    "make_image_mask_tree",
    "make_manifest",
    "make_pool",
    "corrupt_file",
]


# ------------------------------------------------------------------------------------------------
# Pixel content
# ------------------------------------------------------------------------------------------------


def _grid(size: Sequence[int]) -> list[np.ndarray]:
    return np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in size], indexing="ij")


def synthetic_image(label: int, n_classes: int, size: Sequence[int], channels: int = 1,
                    rng: np.random.Generator | None = None, separable: bool = True) -> np.ndarray:
    """Float image in [0, 1], shape ``(C, *size)`` (2D or 3D by ``len(size)``).

    Separable: brightness 0.25 → 0.65 with the class and a centred blob of class-dependent radius.
    Not separable: the same noise and blob statistics for every class.
    """
    rng = rng or np.random.default_rng(0)
    frac = label / max(1, n_classes - 1) if separable else 0.5
    grid = _grid(size)
    r2 = sum(g**2 for g in grid)
    radius = 0.25 + 0.35 * frac
    blob = np.exp(-r2 / (2 * radius**2))
    base = 0.25 + 0.4 * frac
    chans = []
    for c in range(channels):
        tint = 1.0 - 0.1 * c
        img = tint * (base + 0.25 * blob) + rng.normal(0.0, 0.04, size=tuple(size))
        chans.append(img)
    return np.clip(np.stack(chans), 0.0, 1.0)


def blob_image_and_mask(size: Sequence[int], channels: int = 1, label: int = 0, n_classes: int = 2,
                        rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A (C, *size) image in [0, 1] with a bright blob at a random place, and its (*size) 0/1 mask."""
    rng = rng or np.random.default_rng(0)
    grid = _grid(size)
    centre = rng.uniform(-0.4, 0.4, size=len(size))
    radius = rng.uniform(0.2, 0.35)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    mask = (r2 <= radius**2).astype(np.uint8)
    if mask.sum() == 0:  # tiny sizes: make sure every mask has a foreground voxel
        mask[tuple(n // 2 for n in size)] = 1
    base = 0.2 + 0.3 * label / max(1, n_classes - 1)
    chans = [np.clip(base + 0.5 * mask + rng.normal(0.0, 0.03, size=tuple(size)), 0, 1)
             for _ in range(channels)]
    return np.stack(chans), mask


def to_dtype(img01: np.ndarray, dtype: str) -> np.ndarray:
    """[0, 1] floats → the stored dtype: uint8 0..255, uint16 using the full 0..65535 range (so a reader
    that squeezes through 8 bits is caught), int16 centred on 0, float32 mapped to [-0.5, 1.5]."""
    if dtype == "uint8":
        return np.round(img01 * 255).astype(np.uint8)
    if dtype == "uint16":
        return np.round(img01 * 65535).astype(np.uint16)
    if dtype == "int16":
        return np.round(img01 * 4000 - 1000).astype(np.int16)
    if dtype == "float32":
        return (img01 * 2.0 - 0.5).astype(np.float32)
    raise ValueError(f"unsupported dtype {dtype}")


# ------------------------------------------------------------------------------------------------
# Writers, one per format. Arrays are channel-first (C, *spatial) unless said otherwise.
# ------------------------------------------------------------------------------------------------


def _hwc(arr: np.ndarray) -> np.ndarray:
    """(C,H,W) → (H,W) for one channel, (H,W,C) otherwise."""
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)


def write_png(path: str | Path, arr: np.ndarray) -> Path:
    """PNG from (C,H,W) uint8/uint16 with C in 1..4. 16-bit colour goes through ``write_png16``."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == np.uint16 and arr.shape[0] > 1:
        return write_png16(path, arr)
    if arr.dtype == np.uint16:
        Image.fromarray(arr[0]).save(path)  # mode I;16
    else:
        Image.fromarray(_hwc(arr.astype(np.uint8))).save(path)
    return path


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png16(path: str | Path, arr: np.ndarray, filters: Sequence[int] = (0, 1, 2, 3, 4)) -> Path:
    """16-bit PNG (gray, gray+alpha, RGB, RGBA) written by hand, cycling the row filter types so a
    decoder's Sub/Up/Average/Paeth paths are all exercised. Pillow cannot write 16-bit colour."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = arr.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    raw = np.ascontiguousarray(np.moveaxis(arr.astype(np.uint16), 0, -1)).astype(">u2")
    rows = raw.view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    prev = np.zeros(w * bpp, np.int32)
    lines = []
    for y in range(h):
        f = filters[y % len(filters)]
        cur = rows[y]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if f == 0:
            filt = cur
        elif f == 1:
            filt = cur - left
        elif f == 2:
            filt = cur - prev
        elif f == 3:
            filt = cur - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            filt = cur - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        lines.append(bytes([f]) + (filt % 256).astype(np.uint8).tobytes())
        prev = cur
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(lines)))
            + _chunk(b"IEND", b""))
    path.write_bytes(data)
    return path


def write_jpeg(path: str | Path, arr: np.ndarray, quality: int = 95) -> Path:
    """JPEG from (C,H,W) uint8, C = 1 or 3 (lossy: compare with a tolerance)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_hwc(arr.astype(np.uint8))).save(path, quality=quality)
    return path


def write_bmp(path: str | Path, arr: np.ndarray) -> Path:
    """BMP from (C,H,W) uint8, C = 1 or 3."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_hwc(arr.astype(np.uint8))).save(path)
    return path


def write_tiff(path: str | Path, arr: np.ndarray) -> Path:
    """TIFF from (C,H,W) or (C,D,H,W) in any dtype: 3D → multi-page (one page per slice);
    several channels → samples per pixel (contiguous), 4 channels written as RGBA."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = arr.shape[0]
    if c == 1:
        tifffile.imwrite(path, arr[0], photometric="minisblack")
    else:
        data = np.moveaxis(arr, 0, -1)  # (H,W,C) or (D,H,W,C)
        extras = ["unassalpha"] if c == 4 else ([] if c == 3 else ["unspecified"] * (c - 1))
        tifffile.imwrite(path, data, photometric="rgb" if c in (3, 4) else "minisblack",
                         planarconfig="contig", extrasamples=extras or None)
    return path


def write_npy(path: str | Path, arr: np.ndarray, channels_last: bool = False) -> Path:
    """NPY of a (C,...) array; 1 channel stored without the channel axis; ``channels_last`` stores
    (H,W,C) as many tools do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = arr[0] if arr.shape[0] == 1 else (np.moveaxis(arr, 0, -1) if channels_last else arr)
    np.save(path, data)
    return path


def write_nifti(path: str | Path, arr: np.ndarray, spacing: Sequence[float] | None = None,
                slope: float | None = None, inter: float | None = None) -> Path:
    """NIfTI from (C,D,H,W) (or (C,H,W)) so that ``read_image`` gives the same array back: the data are
    stored as (X, Y, Z[, C]) = reversed spatial axes with an RAS affine diag(spacing reversed).
    ``spacing`` is in (D, H, W) order."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spatial = arr.shape[1:]
    spacing = tuple(spacing or (1.0,) * len(spatial))
    rev = np.transpose(arr, (0, *range(arr.ndim - 1, 0, -1)))  # (C, X, Y[, Z])
    data = rev[0] if arr.shape[0] == 1 else np.moveaxis(rev, 0, -1)
    if len(spatial) == 2 and arr.shape[0] > 1:
        data = data[:, :, None, :]  # (X, Y, 1, C)
    zooms = list(reversed(spacing)) + [1.0] * (3 - len(spacing))
    affine = np.diag([*zooms[:3], 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(zooms[: data.ndim]) + (1.0,) * max(0, data.ndim - 3))
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    nib.save(img, str(path))
    return path


def _dicom_dataset(arr2d: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                   position: Sequence[float] | None = None,
                   orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
                   pixel_spacing: Sequence[float] = (0.8, 0.8), slice_thickness: float | None = None,
                   series_uid: str | None = None, instance_number: int | None = 1,
                   modality: str = "CT"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = "TEST"
    ds.Modality = modality
    ds.Rows, ds.Columns = int(arr2d.shape[0]), int(arr2d.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    signed = arr2d.dtype.kind == "i"
    bits = arr2d.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = float(slice_thickness)
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if instance_number is not None:
        ds.InstanceNumber = int(instance_number)
    ds.PixelData = np.ascontiguousarray(arr2d).tobytes()
    return ds


def write_dicom(path: str | Path, arr2d: np.ndarray, **kwargs) -> Path:
    """One 2D DICOM file from an (H, W) uint8/uint16/int16 array; kwargs: slope, intercept, position,
    orientation, pixel_spacing, slice_thickness, series_uid, instance_number, modality."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _dicom_dataset(np.asarray(arr2d), **kwargs).save_as(str(path), enforce_file_format=True)
    return path


def write_dicom_series(folder: str | Path, volume: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                       spacing: Sequence[float] = (2.5, 0.8, 0.8), shuffle: bool = True, seed: int = 0,
                       positions: bool = True, instance_numbers: bool = True,
                       orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), series_uid: str | None = None,
                       extension: str = ".dcm") -> Path:
    """A folder of 2D DICOM slices from a (D, H, W) integer volume, one series.

    File names are shuffled (``shuffle``) so a reader must sort by position, not by name. Slice z sits
    at ``origin + z * spacing[0] * normal``; with ``positions=False`` only InstanceNumber orders them.
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    order = np.random.default_rng(seed).permutation(len(volume)) if shuffle else np.arange(len(volume))
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    for name_idx, z in enumerate(order):
        pos = (np.asarray([-10.0, 20.0, 5.0]) + z * spacing[0] * normal) if positions else None
        write_dicom(folder / f"IM{name_idx:04d}{extension}", volume[z], slope=slope, intercept=intercept,
                    position=pos, orientation=orientation, pixel_spacing=spacing[1:],
                    slice_thickness=spacing[0], series_uid=uid,
                    instance_number=int(z) + 1 if instance_numbers else None)
    return folder


def write_medmnist_npz(path: str | Path, n_per_split: Mapping[str, int] | None = None, n_classes: int = 2,
                       size: Sequence[int] = (28, 28), channels: int = 1, seed: int = 0) -> Path:
    """A MedMNIST-style .npz: ``{train,val,test}_images`` uint8 (N, *size[, C]) and ``_labels`` (N, 1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_per_split = dict(n_per_split or {"train": 12, "val": 4, "test": 6})
    arrays: dict[str, np.ndarray] = {}
    for split, n in n_per_split.items():
        labels = np.arange(n) % n_classes
        imgs = [to_dtype(synthetic_image(int(y), n_classes, size, channels, rng), "uint8") for y in labels]
        stacked = np.stack([im[0] if channels == 1 else np.moveaxis(im, 0, -1) for im in imgs])
        arrays[f"{split}_images"] = stacked
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def _check_writable(fmt: str, arr: np.ndarray) -> None:
    """Fail loudly (ValueError) on a combination a format cannot store, instead of writing garbage."""
    dt, c, sd = arr.dtype, arr.shape[0], arr.ndim - 1
    if fmt == "png" and (dt not in (np.uint8, np.uint16) or c > 4 or sd != 2):
        raise ValueError(f"PNG stores 2D uint8/uint16 with 1-4 channels, not {dt} {arr.shape}")
    if fmt in ("jpg", "jpeg", "bmp") and (dt != np.uint8 or c not in (1, 3) or sd != 2):
        raise ValueError(f"{fmt} stores 2D uint8 gray or RGB, not {dt} {arr.shape}")
    if fmt == "dcm" and (dt.kind not in "iu" or c != 1):
        raise ValueError(f"DICOM here stores one integer channel, not {dt} {arr.shape}")


def write_image(path: str | Path, arr: np.ndarray, fmt: str | None = None, **kwargs) -> Path:
    """Write (C, *spatial) ``arr`` in ``fmt`` (from the extension when None). ``dcm`` with 3D data
    writes a slice folder at ``path`` (extension dropped)."""
    path = Path(path)
    if fmt is None:
        name = path.name.lower()
        fmt = next(f for f, e in sorted(EXTENSIONS.items(), key=lambda kv: -len(kv[1])) if name.endswith(e))
    _check_writable(fmt, arr)
    if fmt == "png":
        return write_png(path, arr)
    if fmt in ("jpg", "jpeg"):
        return write_jpeg(path, arr)
    if fmt == "bmp":
        return write_bmp(path, arr)
    if fmt in ("tif", "tiff"):
        return write_tiff(path, arr)
    if fmt == "npy":
        return write_npy(path, arr, **kwargs)
    if fmt in ("nii", "nii.gz"):
        return write_nifti(path, arr, **kwargs)
    if fmt == "dcm":
        if arr.ndim == 4:
            return write_dicom_series(path.with_suffix(""), arr[0], **kwargs)
        return write_dicom(path, arr[0], **kwargs)
    raise ValueError(f"unknown fmt {fmt}")


# ------------------------------------------------------------------------------------------------
# Data sets
# ------------------------------------------------------------------------------------------------


def _name(gid: int, j: int, ext: str) -> str:
    return f"p{gid:04d}_s{j:02d}{ext}"


def _sample_path(folder: Path, gid: int, j: int, fmt: str, spatial_dims: int) -> Path:
    ext = EXTENSIONS[fmt]
    if fmt == "dcm" and spatial_dims == 3:
        return folder / _name(gid, j, "")  # a slice folder
    return folder / _name(gid, j, ext)


def make_class_folder(root: str | Path, classes: Mapping[str, int] | None = None,
                      size: Sequence[int] = (32, 32), channels: int = 1, dtype: str = "uint8",
                      fmt: str = "png", seed: int = 0, separable: bool = True,
                      images_per_group: int = 1) -> Path:
    """``root/<class>/p{gid}_s{j}.<ext>``: one sub-folder per class, ``classes[name]`` images each.

    ``size`` of length 3 gives volumes (fmt tif, npy, nii.gz, or dcm = one slice folder per volume).
    Groups (``GROUP_PATTERN``) hold ``images_per_group`` consecutive images of one class; group ids
    are unique across classes. Returns ``root``.
    """
    root = Path(root)
    classes = dict(classes or {"a": 6, "b": 6})
    rng = np.random.default_rng(seed)
    names = list(classes)
    gid = 0
    for k, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(classes[name]):
            if i % images_per_group == 0:
                gid += 1
            img = to_dtype(synthetic_image(k, len(names), size, channels, rng, separable), dtype)
            write_image(_sample_path(folder, gid, i % images_per_group, fmt, len(size)), img, fmt)
    return root


def make_image_mask_tree(root: str | Path, classes: Mapping[str, int] | None = None,
                         size: Sequence[int] = (32, 32), spatial_dims: int | None = None, channels: int = 1,
                         dtype: str = "uint8", fmt: str | None = None, mask_fmt: str | None = None,
                         seed: int = 0, images_per_group: int = 1, masks_dir: str | Path | None = None,
                         mask_value: int = 1) -> Path:
    """``root/images/<class>/<file>`` + ``root/masks/<class>/<same name>`` (the layout fewlabel detects).

    ``spatial_dims`` 3 (or a 3-long ``size``) gives volumes; default formats: png (2D) / nii.gz (3D) for
    both images and masks. ``masks_dir`` puts masks in that separate tree instead (the ``--masks DIR``
    case; images then go directly to ``root/<class>/``). ``mask_value`` 255 writes 0/255 masks.
    Returns ``root``.
    """
    root = Path(root)
    classes = dict(classes or {"a": 4, "b": 4})
    if spatial_dims is not None and len(size) != spatial_dims:
        size = tuple(size) + (size[-1],) if spatial_dims == 3 else tuple(size[-2:])
    sd = len(size)
    fmt = fmt or ("png" if sd == 2 else "nii.gz")
    mask_fmt = mask_fmt or fmt
    img_root = root if masks_dir is not None else root / "images"
    mask_root = Path(masks_dir) if masks_dir is not None else root / "masks"
    rng = np.random.default_rng(seed)
    gid = 0
    for k, name in enumerate(classes):
        for i in range(classes[name]):
            if i % images_per_group == 0:
                gid += 1
            img01, mask = blob_image_and_mask(size, channels, k, len(classes), rng)
            j = i % images_per_group
            write_image(_sample_path(img_root / name, gid, j, fmt, sd), to_dtype(img01, dtype), fmt)
            m = (mask * mask_value).astype(np.uint8)[None]
            write_image(_sample_path(mask_root / name, gid, j, mask_fmt, sd), m, mask_fmt)
    return root


def make_manifest(root: str | Path, classes: Mapping[str, int] | None = None, size: Sequence[int] = (16, 16),
                  fmt: str = "png", seed: int = 0, groups: bool = False, masks: bool = False,
                  splits: bool = False, name: str = "manifest.csv") -> Path:
    """Images under ``root/files/`` and a CSV manifest ``root/<name>`` with columns
    ``path,label[,group][,mask][,split]`` (paths relative to the CSV). Groups pair consecutive images;
    splits mark every 4th image ``test``. Returns the CSV path."""
    root = Path(root)
    classes = dict(classes or {"a": 6, "b": 6})
    rng = np.random.default_rng(seed)
    rows = []
    n = 0
    for k, label in enumerate(classes):
        for i in range(classes[label]):
            img01, mask = blob_image_and_mask(size, 1, k, len(classes), rng)
            if not masks:
                img01 = synthetic_image(k, len(classes), size, 1, rng)
            rel = f"files/{label}_{i:03d}{EXTENSIONS[fmt]}"
            write_image(root / rel, to_dtype(img01, "uint8"), fmt)
            row = {"path": rel, "label": label}
            if groups:
                row["group"] = f"{label}-g{i // 2}"
            if masks:
                mrel = f"files/{label}_{i:03d}_mask.png"
                write_png(root / mrel, mask[None])
                row["mask"] = mrel
            if splits:
                row["split"] = "test" if n % 4 == 3 else "train"
            rows.append(row)
            n += 1
    path = root / name
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_pool(root: str | Path, n: int = 10, size: Sequence[int] = (16, 16), channels: int = 1,
              fmt: str = "png", dtype: str = "uint8", seed: int = 0, nested: bool = True) -> Path:
    """An unlabelled folder of ``n`` images (half in a sub-folder when ``nested``). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = to_dtype(synthetic_image(i % 2, 2, size, channels, rng, separable=False), dtype)
        folder = root / "sub" if (nested and i % 2) else root
        write_image(folder / f"u{i:04d}_s00{EXTENSIONS[fmt]}", img, fmt)
    return root


def corrupt_file(path: str | Path, mode: str = "garbage", seed: int = 0) -> Path:
    """Damage a file in place: ``garbage`` overwrites it with random bytes (same name), ``truncate``
    keeps only its first half (a truncated download), ``empty`` leaves 0 bytes."""
    path = Path(path)
    data = path.read_bytes()
    if mode == "garbage":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, max(64, len(data)), np.uint8).tobytes())
    elif mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(mode)
    return path


def run_cli(*args: object) -> int:
    """Run ``fewlabel ARGS`` in-process; return its exit code (0 when it returns normally)."""
    from fewlabel.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def fake_imagenet_file(folder: str | Path) -> Path:
    """A torchvision-shaped MobileNetV2 ImageNet file (seeded random features, a zero 1000-class head)
    named ``mobilenet_v2-<sha8>.pth`` as the loader expects: the real file is not needed to test the
    loading path."""
    import hashlib

    import torch

    from fewlabel.models import create_encoder

    folder = Path(folder)
    torch.manual_seed(0)
    features = create_encoder("mobilenet_v2", in_channels=3).features.state_dict()
    state = {f"features.{k}": v for k, v in features.items()}
    state["classifier.1.weight"] = torch.zeros(1000, 1280)
    state["classifier.1.bias"] = torch.zeros(1000)
    tmp = folder / "w.pth"
    torch.save(state, tmp)
    path = folder / f"mobilenet_v2-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(path)
    return path
