"""NIfTI through ``nibabel``: re-oriented to the closest canonical (RAS+) orientation, axes reversed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewlabel.data.readers.common import ImageMeta, Reader, to_float
from fewlabel.errors import InvalidImageError
from fewlabel.limits import check_declared_size


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


def read(address: str, mask: bool = False) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    path = Path(address)
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
    return to_float(out), meta


def read_header(path: Path) -> ImageMeta:
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


READER = Reader((".nii", ".nii.gz"), read, read_header)
