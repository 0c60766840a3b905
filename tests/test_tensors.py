"""Preprocess: a JSON value that reproduces the same arrays; sizes, channels, intensities, masks, 2D
and 3D; statistics from training ids only; each file decoded once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fewlabel.data import readers, tensors
from fewlabel.data.catalog import load_catalog
from fewlabel.data.readers import ImageMeta, read_image
from fewlabel.data.tensors import Preprocess, fit_preprocess, load_images, load_masks
from fewlabel.errors import ConfigMismatchError, DataError, InvalidImageError, MaskError

from factory import make_class_folder, make_image_mask_tree, to_dtype, write_png, write_tiff


@pytest.fixture(autouse=True)
def _fresh_cache():
    tensors.clear_cache()
    yield
    tensors.clear_cache()


def _meta(dtype="uint8", channels=1, alpha=False, rescaled=False, spatial=(4, 4)):
    return ImageMeta(path="x", format="png", dtype=dtype, shape=spatial, spatial_dims=len(spatial),
                     channels=channels, spatial_shape=spatial, has_alpha=alpha, rescaled=rescaled)


def test_json_round_trip_exact():
    pre = Preprocess(spatial_dims=3, size=(8, 16, 16), channels=2, resize="pad_crop",
                     mean=(0.1234567890123, -3.5), std=(1e-3, 7.25), source_dtypes=("uint16",),
                     source_channels=(2,))
    again = Preprocess.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre and hash(again) == hash(pre)
    with pytest.raises(ConfigMismatchError, match="unknown preprocessing fields"):
        Preprocess.from_dict({**pre.to_dict(), "wobble": 1})
    with pytest.raises(ConfigMismatchError, match="does not fit"):
        Preprocess(spatial_dims=2, size=(4, 4, 4), channels=1)


def test_intensity_scaling_by_dtype():
    pre = Preprocess(spatial_dims=2, size=(4, 4), channels=1)
    u8 = np.full((1, 4, 4), 255, np.float32)
    np.testing.assert_allclose(pre.apply(u8, _meta("uint8")), 1.0)
    u16 = np.full((1, 4, 4), 65535, np.float32)
    np.testing.assert_allclose(pre.apply(u16, _meta("uint16")), 1.0)
    f = np.full((1, 4, 4), -7.5, np.float32)
    np.testing.assert_allclose(pre.apply(f, _meta("float32")), -7.5)  # floats kept
    hu = np.full((1, 4, 4), -1000, np.float32)
    np.testing.assert_allclose(pre.apply(hu, _meta("int16", rescaled=True)), -1000)  # physical units kept
    keep = Preprocess(spatial_dims=2, size=(4, 4), channels=1, intensity="none")
    np.testing.assert_allclose(keep.apply(u16, _meta("uint16")), 65535)


def test_channel_policy():
    pre = Preprocess(spatial_dims=2, size=(4, 4), channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    gray = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    out = pre.apply(gray, _meta("float32"))
    assert out.shape == (3, 4, 4) and np.array_equal(out[0], out[2])
    rgba = np.concatenate([np.ones((3, 4, 4)), np.zeros((1, 4, 4))]).astype(np.float32)
    out = pre.apply(rgba, _meta("float32", channels=4, alpha=True))
    assert out.shape == (3, 4, 4) and out.min() == 1.0
    to_gray = Preprocess(spatial_dims=2, size=(4, 4), channels=1)
    assert to_gray.apply(rgba[:3], _meta("float32", channels=3)).shape == (1, 4, 4)
    two = Preprocess(spatial_dims=2, size=(4, 4), channels=2)
    with pytest.raises(InvalidImageError, match="3 channel"):
        two.apply(rgba[:3], _meta("float32", channels=3))
    with pytest.raises(InvalidImageError, match="expects 2D"):
        pre.apply(np.zeros((1, 2, 4, 4), np.float32), _meta("float32"))


def test_resize_and_pad_crop_2d_and_3d():
    img = np.random.default_rng(0).random((1, 10, 14)).astype(np.float32)
    out = Preprocess(spatial_dims=2, size=(5, 7), channels=1, intensity="none").apply(img)
    assert out.shape == (1, 5, 7) and 0 <= out.min() and out.max() <= 1
    vol = np.zeros((1, 5, 6, 6), np.float32)
    vol[0, :, 2:4, 2:4] = np.arange(5).reshape(5, 1, 1) + 1  # depth 5 → pad to 9, crop in-plane to 4
    pc = Preprocess(spatial_dims=3, size=(9, 4, 4), channels=1, resize="pad_crop", intensity="none")
    out = pc.apply(vol)
    assert out.shape == (1, 9, 4, 4)
    np.testing.assert_array_equal(out[0, 2:7, 1, 1], [1, 2, 3, 4, 5])  # centred, values untouched
    assert out[0, :2].max() == 0 and out[0, 7:].max() == 0
    deep = np.ones((1, 12, 6, 6), np.float32)
    assert pc.apply(deep).shape == (1, 9, 4, 4)
    tri = Preprocess(spatial_dims=3, size=(9, 4, 4), channels=1, intensity="none").apply(vol)
    assert tri.shape == (1, 9, 4, 4)


def test_apply_mask_nearest_keeps_labels():
    m = np.zeros((1, 10, 10), np.int64)
    m[0, 2:8, 3:6] = 2
    m[0, 0, 0] = 1
    for mode in ("resize", "pad_crop"):
        pre = Preprocess(spatial_dims=2, size=(7, 13), channels=1, resize=mode)
        out = pre.apply_mask(m)
        assert out.dtype == np.int64 and out.shape == (1, 7, 13)
        assert set(np.unique(out)) <= {0, 1, 2} and 2 in out


def test_fit_uses_training_ids_only_and_most_common_size(tmp_path):
    root = tmp_path / "d"
    for i in range(4):
        write_png(root / "a" / f"a{i}.png", np.full((1, 8, 8), 50, np.uint8))
        write_png(root / "b" / f"b{i}.png", np.full((1, 8, 8), 150, np.uint8))
    write_png(root / "a" / "odd.png", np.full((1, 6, 10), 50, np.uint8))
    write_png(root / "b" / "test_bright.png", np.full((1, 8, 8), 255, np.uint8))
    cat = load_catalog(root)
    train = [i for i in cat.ids if "test_bright" not in i]
    pre = fit_preprocess(cat, train)
    assert pre.size == (8, 8) and pre.channels == 1 and pre.source_dtypes == ("uint8",)
    expected = (4 * 50 + 4 * 150 + 50) / 9 / 255
    assert pre.mean[0] == pytest.approx(expected, rel=1e-6)
    x = load_images(cat, train, pre)
    assert x.shape == (9, 1, 8, 8) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-5 and float(x.std()) == pytest.approx(1.0, rel=1e-4)
    assert fit_preprocess(cat, train, image_size=16).size == (16, 16)
    assert fit_preprocess(cat, train, image_size=(12, 12, 12)).size == (12, 12)
    with pytest.raises(DataError, match="empty training set"):
        fit_preprocess(cat, [])


def test_fit_mixed_2d_3d_is_an_error(tmp_path):
    write_tiff(tmp_path / "d" / "a" / "v.tif", np.zeros((1, 3, 4, 4), np.float32))
    write_tiff(tmp_path / "d" / "b" / "i.tif", np.zeros((1, 4, 4), np.float32))
    cat = load_catalog(tmp_path / "d")
    with pytest.raises(DataError, match="mix 2D images and 3D volumes"):
        fit_preprocess(cat, cat.ids)


def test_rgba_and_16bit_folder(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(8, 8), channels=4, dtype="uint16")
    cat = load_catalog(root)
    pre = fit_preprocess(cat, cat.ids)
    assert pre.channels == 3 and pre.source_channels == (4,) and pre.source_dtypes == ("uint16",)
    x = load_images(cat, cat.ids, pre)
    assert x.shape == (6, 3, 8, 8) and np.isfinite(x).all()


def test_predict_repeats_training_arrays(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(10, 12), channels=3)
    cat = load_catalog(root)
    pre = fit_preprocess(cat, cat.ids, image_size=8)
    x = load_images(cat, cat.ids, pre)
    saved = Preprocess.from_dict(json.loads(json.dumps(pre.to_dict())))
    arr, meta = read_image(cat.samples[2].path)
    np.testing.assert_array_equal(saved.apply(arr, meta), x[2])


def test_each_file_decoded_once_across_cells(tmp_path, monkeypatch):
    root = make_class_folder(tmp_path / "d", {"a": 4, "b": 4}, size=(8, 8))
    cat = load_catalog(root)
    calls = []
    real = readers.read_image
    monkeypatch.setattr(readers, "read_image", lambda p: calls.append(p) or real(p))
    pre1 = fit_preprocess(cat, cat.ids[:4])
    pre2 = fit_preprocess(cat, cat.ids[2:])  # another cell: other stats, same geometry
    assert pre1.mean != pre2.mean
    load_images(cat, cat.ids, pre1)
    load_images(cat, cat.ids, pre2)
    assert sorted(calls) == sorted(s.path for s in cat.samples)  # every file exactly once
    assert tensors.cache_info()["entries"] == 8


@pytest.mark.parametrize("fmt,dtype,size", [
    ("png", "uint8", (16, 16)), ("tif", "float32", (16, 16)),
    ("npy", "uint16", (6, 12, 12)), ("nii.gz", "float32", (6, 12, 12)),
])
def test_factory_classes_are_separable(tmp_path, fmt, dtype, size):
    """What training tests rely on: class means do not overlap, in 2D and 3D, in every dtype."""
    root = make_class_folder(tmp_path / "d", {"a": 5, "b": 5, "c": 5}, size=size, dtype=dtype, fmt=fmt)
    cat = load_catalog(root)
    pre = fit_preprocess(cat, cat.ids)
    x, y = load_images(cat, cat.ids, pre), cat.labels()
    means = x.reshape(len(x), -1).mean(1)
    for k in range(2):
        assert means[y == k].max() < means[y == k + 1].min()


def test_load_masks_2d_and_3d(tmp_path):
    root = make_image_mask_tree(tmp_path / "seg", {"a": 2, "b": 2}, size=(12, 12), mask_value=255)
    cat = load_catalog(root)
    pre = fit_preprocess(cat, cat.ids, image_size=8)
    m = load_masks(cat, cat.ids, pre)
    assert m.shape == (4, 1, 8, 8) and m.dtype == np.int64 and set(np.unique(m)) <= {0, 1}
    root3 = make_image_mask_tree(tmp_path / "seg3", {"a": 2, "b": 2}, size=(6, 10, 10), spatial_dims=3)
    cat3 = load_catalog(root3)
    pre3 = fit_preprocess(cat3, cat3.ids, image_size=(4, 8, 8), resize="pad_crop")
    assert load_images(cat3, cat3.ids, pre3).shape == (4, 1, 4, 8, 8)
    m3 = load_masks(cat3, cat3.ids, pre3)
    assert m3.shape == (4, 1, 4, 8, 8) and m3.max() == 1


def test_load_masks_errors(tmp_path):
    root = make_image_mask_tree(tmp_path / "seg", {"a": 2, "b": 2}, size=(8, 8))
    cat = load_catalog(root)
    victim = cat.samples[1]
    write_png(victim.mask, to_dtype(np.zeros((1, 6, 8)), "uint8"))
    pre = fit_preprocess(cat, cat.ids)
    with pytest.raises(MaskError, match=r"mask shape \(6, 8\) differs from its image's \(8, 8\)") as exc:
        load_masks(cat, cat.ids, pre)
    assert str(exc.value).startswith(victim.mask)
    plain = load_catalog(make_class_folder(tmp_path / "p", {"a": 1, "b": 1}, size=(8, 8)))
    with pytest.raises(MaskError, match="no mask"):
        load_masks(plain, plain.ids, fit_preprocess(plain, plain.ids))
