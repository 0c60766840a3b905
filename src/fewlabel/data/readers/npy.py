"""NPY files and NPZ members (``"file.npz::<key>/<index>"``): numeric arrays laid out channel-first."""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.readers.common import NPZ_SEP, ImageMeta, Reader, to_float
from fewlabel.errors import InvalidImageError, UnreadableFileError
from fewlabel.limits import check_declared_size


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


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an open .npy stream's header, without reading the data."""
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    if dtype.hasobject:
        raise InvalidImageError("array holds Python objects, not numbers; save it with a numeric dtype")
    return tuple(int(v) for v in shape), dtype


def read_npy(address: str, mask: bool = False) -> tuple[np.ndarray, ImageMeta]:
    path = Path(address)
    with open(path, "rb") as fh:
        shape, _ = _npy_header(fh)
    check_declared_size(shape, path)
    arr = np.load(path, allow_pickle=False)
    meta = _array_meta(path, "npy", arr.dtype, arr.shape)
    return to_float(_array_to_cf(arr)), meta


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


def read_npz(address: str, mask: bool = False) -> tuple[np.ndarray, ImageMeta]:
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
    return to_float(_array_to_cf(arr)), meta


def read_npy_header(path: Path) -> ImageMeta:
    with open(path, "rb") as fh:
        shape, dtype = _npy_header(fh)
    check_declared_size(shape, path)
    return _array_meta(path, "npy", dtype, shape)


NPY = Reader((".npy",), read_npy, read_npy_header)
NPZ = Reader((".npz",), read_npz)
