"""Readers: every format round-trips exactly (JPEG within tolerance), metadata is right, and every
failure is one FewlabelError line naming the file."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fewlabel.data.readers import discover_images, file_format, read_image, read_mask, read_meta
from fewlabel.errors import (
    DataError,
    FewlabelError,
    InvalidImageError,
    MaskError,
    UnknownFormatError,
    UnreadableFileError,
)

from factory import (
    corrupt_file,
    synthetic_image,
    to_dtype,
    write_bmp,
    write_dicom,
    write_dicom_series,
    write_jpeg,
    write_medmnist_npz,
    write_nifti,
    write_npy,
    write_png,
    write_png16,
    write_tiff,
)

RNG = np.random.default_rng(0)


def _rand(shape, dtype):
    return to_dtype(np.random.default_rng(sum(shape)).random(shape), dtype)


def _check(path, expected, dtype, tol=0.0, spatial_dims=None):
    arr, meta = read_image(path)
    assert arr.dtype == np.float32
    assert arr.shape == expected.shape
    np.testing.assert_allclose(arr, expected.astype(np.float64), atol=tol, rtol=0)
    assert meta.dtype == dtype
    assert meta.channels == expected.shape[0]
    assert meta.spatial_shape == expected.shape[1:]
    assert meta.spatial_dims == (spatial_dims or expected.ndim - 1)
    head = read_meta(path)  # header-only metadata agrees with the full read
    assert (head.spatial_shape, head.channels, head.dtype, head.spatial_dims, head.has_alpha) == (
        meta.spatial_shape, meta.channels, meta.dtype, meta.spatial_dims, meta.has_alpha)
    return arr, meta


# ------------------------------------------------------------------------------------- PNG/JPEG/BMP
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_round_trip_exact(tmp_path, channels, dtype):
    img = _rand((channels, 9, 11), dtype)
    _, meta = _check(write_png(tmp_path / "x.png", img), img, dtype)
    assert meta.has_alpha == (channels in (2, 4))
    assert meta.format == "png"


def test_png16_colour_is_not_squeezed_through_8_bits(tmp_path):
    img = np.zeros((3, 4, 5), np.uint16)
    img[0] = 65535
    img[1] = 257  # 0x0101: an 8-bit path would read 1 or 257 → both lose information
    img[2] = np.arange(20).reshape(4, 5) * 3000 + 7
    arr, meta = read_image(write_png16(tmp_path / "c.png", img))
    assert meta.dtype == "uint16"
    np.testing.assert_array_equal(arr, img.astype(np.float32))


def test_png16_every_row_filter_type(tmp_path):
    img = _rand((4, 20, 7), "uint16")
    for filters in [(0,), (1,), (2,), (3,), (4,), (4, 3, 2, 1, 0)]:
        arr, _ = read_image(write_png16(tmp_path / f"f{filters[0]}{len(filters)}.png", img, filters=filters))
        np.testing.assert_array_equal(arr, img.astype(np.float32))


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_and_bmp(tmp_path, channels):
    img = to_dtype(synthetic_image(1, 2, (16, 16), channels, np.random.default_rng(1)), "uint8")
    _check(write_jpeg(tmp_path / "x.jpg", img), img, "uint8", tol=40)
    arr, _ = read_image(tmp_path / "x.jpg")
    assert np.abs(arr - img).mean() < 10  # lossy (and the image is noisy), but close
    _check(write_bmp(tmp_path / "x.bmp", img), img, "uint8")


def test_palette_png_becomes_rgb_but_mask_keeps_indices(tmp_path):
    from PIL import Image

    idx = np.zeros((6, 6), np.uint8)
    idx[2:4, 2:4] = 1
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    im.save(tmp_path / "p.png")
    arr, meta = read_image(tmp_path / "p.png")
    assert arr.shape == (3, 6, 6) and arr[0, 2, 2] == 200
    mask, _ = read_mask(tmp_path / "p.png")
    np.testing.assert_array_equal(mask[0], idx)


# ---------------------------------------------------------------------------------------------- TIFF
@pytest.mark.parametrize("dtype", ["float32", "uint16", "int16"])
@pytest.mark.parametrize("shape", [(1, 9, 11), (3, 9, 11), (1, 5, 9, 11), (3, 4, 9, 11)])
def test_tiff_round_trip_exact(tmp_path, dtype, shape):
    img = _rand(shape, dtype)
    _check(write_tiff(tmp_path / "x.tif", img), img, dtype)


def test_tiff_float_keeps_fractional_and_negative_values(tmp_path):
    img = np.array([[[-3.25, 0.1, 1e-7], [12345.678, -0.0, 7.5]]], np.float32)
    arr, meta = read_image(write_tiff(tmp_path / "phase.tiff", img))
    assert meta.dtype == "float32"
    np.testing.assert_array_equal(arr, img)


def test_tiff_multipage_is_a_volume_and_rgba_is_flagged(tmp_path):
    vol = _rand((1, 6, 8, 8), "uint16")
    arr, meta = read_image(write_tiff(tmp_path / "stack.tif", vol))
    assert arr.shape == (1, 6, 8, 8) and meta.spatial_dims == 3
    rgba = _rand((4, 8, 8), "uint8")
    _, meta = read_image(write_tiff(tmp_path / "rgba.tif", rgba))
    assert meta.channels == 4 and meta.has_alpha


# -------------------------------------------------------------------------------------------- NPY/NPZ
@pytest.mark.parametrize("shape", [(1, 9, 11), (3, 9, 11), (1, 6, 9, 11), (2, 6, 9, 11)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_npy_layouts(tmp_path, shape, channels_last):
    img = _rand(shape, "float32")
    _check(write_npy(tmp_path / "x.npy", img, channels_last=channels_last), img, "float32")


def test_npz_member_addressing(tmp_path):
    path = write_medmnist_npz(tmp_path / "m.npz", {"train": 4, "test": 2}, channels=3)
    arr, meta = read_image(f"{path}::train_images/3")
    assert arr.shape == (3, 28, 28) and meta.format == "npz" and meta.dtype == "uint8"
    with np.load(path) as z:
        np.testing.assert_array_equal(arr, np.moveaxis(z["train_images"][3], -1, 0))
    with pytest.raises(UnreadableFileError, match="index '9'"):
        read_image(f"{path}::train_images/9")
    with pytest.raises(UnreadableFileError, match="no array 'nope'"):
        read_image(f"{path}::nope/0")
    with pytest.raises(UnreadableFileError, match="address one"):
        read_image(path)


# --------------------------------------------------------------------------------------------- NIfTI
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_nifti_3d_axes_and_spacing(tmp_path, dtype):
    vol = _rand((1, 5, 7, 9), dtype)
    for name in ("v.nii", "v.nii.gz"):
        arr, meta = _check(write_nifti(tmp_path / name, vol, spacing=(3.0, 0.5, 0.75)), vol, dtype)
        assert meta.spacing == (3.0, 0.5, 0.75)  # (D, H, W) order
        assert meta.shape == (9, 7, 5)  # stored (X, Y, Z)


def test_nifti_4d_channels_first_and_slope(tmp_path):
    vol = _rand((2, 4, 6, 8), "int16")
    _check(write_nifti(tmp_path / "c.nii.gz", vol), vol, "int16")
    arr, meta = read_image(write_nifti(tmp_path / "s.nii.gz", vol[:1], slope=0.5, inter=10.0))
    assert meta.rescaled
    np.testing.assert_allclose(arr, vol[:1] * 0.5 + 10.0)


def test_nifti_single_slice_is_2d(tmp_path):
    img = _rand((1, 6, 8), "float32")
    arr, meta = read_image(write_nifti(tmp_path / "flat.nii.gz", img))
    assert arr.shape == (1, 6, 8) and meta.spatial_dims == 2


def test_nibabel_shipped_examples():
    from nibabel.testing import data_path

    arr, meta = read_image(os.path.join(data_path, "example4d.nii.gz"))
    assert arr.shape == (2, 24, 96, 128)  # (X,Y,Z,T) = (128,96,24,2) → (C, D, H, W)
    assert meta.spatial_dims == 3 and meta.channels == 2 and meta.dtype == "int16"
    assert len(meta.spacing) == 3
    arr, meta = read_image(os.path.join(data_path, "anatomical.nii"))
    assert arr.shape == (1, 25, 41, 33) and meta.spacing == (2.0, 2.0, 2.0)


# --------------------------------------------------------------------------------------------- DICOM
def test_dicom_single_file_rescale(tmp_path):
    raw = _rand((1, 6, 7), "uint16")
    path = write_dicom(tmp_path / "a.dcm", raw[0], slope=2.0, intercept=-1024.0)
    arr, meta = _check(path, raw * 2.0 - 1024, "uint16")
    assert meta.rescaled and meta.spacing == (0.8, 0.8)


def test_dicom_without_extension_is_found(tmp_path):
    raw = _rand((1, 4, 4), "uint16")
    write_dicom(tmp_path / "IMG0001", raw[0])
    assert file_format(tmp_path / "IMG0001") == "dicom"
    arr, _ = read_image(tmp_path / "IMG0001")
    np.testing.assert_array_equal(arr, raw)


def test_dicom_series_sorted_by_position_with_rescale(tmp_path):
    vol = np.stack([np.full((5, 6), z * 10 + 3, np.uint16) for z in range(7)])  # slice z has value 10z+3
    folder = write_dicom_series(tmp_path / "ser", vol, slope=0.5, intercept=-10, spacing=(2.5, 0.7, 0.7),
                                shuffle=True, seed=3, instance_numbers=False)
    arr, meta = read_image(folder)
    assert arr.shape == (1, 7, 5, 6) and meta.spatial_dims == 3
    np.testing.assert_allclose(arr[0, :, 0, 0], vol[:, 0, 0] * 0.5 - 10)
    assert meta.spacing == (2.5, 0.7, 0.7) and meta.rescaled and meta.format == "dicom"


def test_dicom_series_oblique_orientation_sorted_along_normal(tmp_path):
    vol = np.stack([np.full((4, 4), z, np.int16) for z in range(5)])
    c, s = np.cos(0.4), np.sin(0.4)
    folder = write_dicom_series(tmp_path / "obl", vol, orientation=(c, s, 0, -s, c, 0), shuffle=True, seed=1,
                                instance_numbers=False)
    arr, _ = read_image(folder)
    np.testing.assert_array_equal(arr[0, :, 0, 0], np.arange(5))


def test_dicom_series_falls_back_to_instance_number(tmp_path):
    vol = np.stack([np.full((4, 4), z, np.uint16) for z in range(6)])
    folder = write_dicom_series(tmp_path / "inst", vol, positions=False, shuffle=True, seed=5)
    arr, meta = read_image(folder)
    np.testing.assert_array_equal(arr[0, :, 0, 0], np.arange(6))
    assert "instance_number" in meta.notes[0]


def test_dicom_folder_with_two_series_is_a_clear_error(tmp_path):
    vol = _rand((3, 4, 4), "uint16")
    write_dicom_series(tmp_path / "mix", vol, series_uid="1.2.3.1")
    write_dicom(tmp_path / "mix" / "other.dcm", vol[0], series_uid="1.2.3.2", position=(0, 0, 99))
    with pytest.raises(DataError, match="mixes 2 DICOM series") as exc:
        read_image(tmp_path / "mix")
    assert str(tmp_path / "mix") in str(exc.value)


def test_pydicom_bundled_samples():
    import pydicom
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    arr, meta = read_image(ct)
    ds = pydicom.dcmread(ct)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(arr[0], expected.astype(np.float32))
    assert meta.dtype == "int16" and meta.rescaled and arr.shape == (1, 128, 128)
    arr, meta = read_image(get_testdata_file("MR_small.dcm"))
    assert arr.shape == (1, 64, 64) and meta.spacing == (0.3125, 0.3125)
    truncated = get_testdata_file("MR_truncated.dcm")
    with pytest.raises(UnreadableFileError) as exc:
        read_image(truncated)
    assert str(exc.value).startswith(truncated) and "\n" not in str(exc.value)


# -------------------------------------------------------------------------------------------- errors
def _one_line_naming(exc: FewlabelError, path) -> None:
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(str(path))


@pytest.mark.parametrize("mode", ["garbage", "truncate", "empty"])
@pytest.mark.parametrize("ext", ["png", "tif", "nii.gz", "npy", "dcm", "jpg"])
def test_damaged_files_raise_one_line_naming_the_file(tmp_path, mode, ext):
    img = _rand((1, 16, 16), "uint8")
    writers = {"png": write_png, "tif": write_tiff, "nii.gz": write_nifti, "npy": write_npy,
               "jpg": write_jpeg, "dcm": lambda p, a: write_dicom(p, a[0])}
    path = writers[ext](tmp_path / f"x.{ext}", img)
    corrupt_file(path, mode)
    with pytest.raises(UnreadableFileError) as exc:
        read_image(path)
    _one_line_naming(exc.value, path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(UnreadableFileError, match="does not exist") as exc:
        read_image(tmp_path / "nope.png")
    _one_line_naming(exc.value, tmp_path / "nope.png")
    (tmp_path / "a.xyz").write_text("hello")
    with pytest.raises(UnknownFormatError, match=r"\.xyz") as exc:
        read_image(tmp_path / "a.xyz")
    _one_line_naming(exc.value, tmp_path / "a.xyz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", ["tif", "npy", "nii.gz"])
def test_nan_inf_in_float_image(tmp_path, bad, fmt):
    img = np.ones((1, 6, 6), np.float32)
    img[0, 2, 3] = bad
    path = {"tif": write_tiff, "npy": write_npy, "nii.gz": write_nifti}[fmt](tmp_path / f"f.{fmt}", img)
    with pytest.raises(InvalidImageError, match="NaN") as exc:
        read_image(path)
    _one_line_naming(exc.value, path)


def test_zero_size_array(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((0, 5), np.float32))
    with pytest.raises(InvalidImageError, match="zero size"):
        read_image(tmp_path / "z.npy")


# --------------------------------------------------------------------------------------------- masks
def test_mask_0_255_becomes_0_1_and_labels_are_kept(tmp_path):
    m = np.zeros((1, 6, 6), np.uint8)
    m[0, 1:3, 1:3] = 255
    mask, _ = read_mask(write_png(tmp_path / "m.png", m))
    assert mask.dtype == np.int64 and set(np.unique(mask)) == {0, 1}
    labels = np.arange(36, dtype=np.uint8).reshape(1, 6, 6) % 4
    mask, _ = read_mask(write_png(tmp_path / "l.png", labels))
    np.testing.assert_array_equal(mask, labels)
    rgb = np.repeat(m, 3, axis=0)
    mask, _ = read_mask(write_png(tmp_path / "rgb.png", rgb))
    assert mask.shape == (1, 6, 6) and mask.max() == 1


@pytest.mark.parametrize("case", ["fractional", "negative", "too_many_values", "colour"])
def test_mask_not_binary_integer(tmp_path, case):
    if case == "fractional":
        path = write_tiff(tmp_path / "m.tif", np.full((1, 4, 4), 0.5, np.float32))
    elif case == "negative":
        path = write_npy(tmp_path / "m.npy", -np.ones((1, 4, 4), np.float32))
    elif case == "too_many_values":
        path = write_png(tmp_path / "m.png", np.arange(100, dtype=np.uint8).reshape(1, 10, 10))
    else:
        path = write_png(tmp_path / "m.png", _rand((3, 6, 6), "uint8"))
    with pytest.raises(MaskError) as exc:
        read_mask(path)
    _one_line_naming(exc.value, path)
    assert "binary/integer" in str(exc.value) or "negative" in str(exc.value)


# ----------------------------------------------------------------------------------------- discovery
def test_discover_images(tmp_path):
    write_png(tmp_path / "a.png", _rand((1, 4, 4), "uint8"))
    write_png(tmp_path / "sub" / "b.png", _rand((1, 4, 4), "uint8"))
    write_dicom_series(tmp_path / "sub" / "ct", _rand((3, 4, 4), "uint16"))
    (tmp_path / ".DS_Store").write_text("x")
    (tmp_path / "Thumbs.db").write_text("x")
    (tmp_path / "notes.xyz").write_text("x")
    found, unknown = discover_images(tmp_path)
    names = sorted(p.name for p in found)
    assert names == ["a.png", "b.png", "ct"]
    assert [p.name for p in unknown] == ["notes.xyz"]
