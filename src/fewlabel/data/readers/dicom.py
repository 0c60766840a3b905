"""DICOM through ``pydicom``: single files (multi-frame too) and folders of slices (one volume)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.readers.common import ImageMeta, Reader, is_ignored_name, split_suffix
from fewlabel.errors import DataError, InvalidImageError, UnreadableFileError
from fewlabel.limits import check_declared_size


def is_dicom_file(path: str | Path) -> bool:
    """True for a file with the DICOM preamble magic ``DICM`` at byte 128 (or a .dcm extension)."""
    path = Path(path)
    try:
        # A FIFO or a device is never opened to sniff it (a read could block forever), nor taken as
        # a slice of a series: the walk names it instead.
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        if split_suffix(path.name)[1] in (".dcm", ".dicom", ".ima"):
            return True
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


def read(address: str, mask: bool = False) -> tuple[np.ndarray, ImageMeta]:
    path = Path(address)
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


def read_header(path: Path) -> ImageMeta:
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


def read_series(folder: Path) -> tuple[np.ndarray, ImageMeta]:
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


READER = Reader((".dcm", ".dicom", ".ima"), read, read_header)
