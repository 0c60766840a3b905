"""Catalog: folders, images+masks, manifests, MedMNIST .npz, pools, groups; every user error is one
FewlabelError line naming the file."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fewlabel.data.catalog import load_catalog, load_pool
from fewlabel.data.readers import read_image
from fewlabel.errors import DataError, ManifestError, MaskError, UnknownFormatError

from factory import (
    GROUP_PATTERN,
    make_class_folder,
    make_image_mask_tree,
    make_manifest,
    make_pool,
    to_dtype,
    write_dicom,
    write_dicom_series,
    write_medmnist_npz,
    write_png,
    write_tiff,
)


def test_class_folder_basics(tmp_path):
    root = make_class_folder(tmp_path / "d", {"b": 3, "a": 2}, size=(8, 8))
    cat = load_catalog(root)
    assert cat.classes == ["a", "b"]
    assert len(cat) == 5 and cat.class_counts() == {"a": 2, "b": 3}
    assert all("/" in i and not i.startswith("/") for i in cat.ids)  # relative posix ids
    assert cat.groups() == cat.ids  # group defaults to the id
    s = cat.by_id["a/p0004_s00.png"]
    assert s.label == "a" and os.path.isabs(s.path) and s.mask is None
    np.testing.assert_array_equal(cat.labels(["a/p0004_s00.png", "b/p0001_s00.png"]), [0, 1])
    sub = cat.subset(["b/p0002_s00.png"])
    assert sub.classes == cat.classes and list(sub.labels()) == [1]
    assert not cat.has_masks and cat.layout == "class-folders"


def test_classes_sorted_naturally(tmp_path):
    root = make_class_folder(tmp_path / "d", {"grade_10": 1, "grade_2": 1, "grade_1": 1}, size=(4, 4))
    assert load_catalog(root).classes == ["grade_1", "grade_2", "grade_10"]


def test_docs_hidden_and_system_files(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 2, "b": 2}, size=(8, 8))
    (root / "README.md").write_text("x")
    (root / "LICENSE").write_text("x")
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / ".DS_Store").write_text("x")
    (root / "b" / "Thumbs.db").write_text("x")
    (root / ".hidden").mkdir()
    cat = load_catalog(root)
    assert len(cat) == 4
    notes = " ".join(cat.notes)
    assert "README.md" in notes and "LICENSE" in notes and "a/notes.txt" in notes
    assert ".DS_Store" not in notes


def test_unknown_extensions_are_listed_not_skipped(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 2, "b": 2}, size=(8, 8))
    for name in ("a/x.xyz", "b/y.doc", "b/z.foo"):
        (root / name).write_text("?")
    with pytest.raises(UnknownFormatError) as exc:
        load_catalog(root)
    text = str(exc.value)
    assert "3 file(s) with unknown extensions" in text and "a/x.xyz" in text and "b/y.doc" in text
    assert text.startswith(str(root)) and "\n" not in text
    lenient = load_catalog(root, strict=False)
    assert len(lenient.issues) == 3 and len(lenient) == 4


def test_empty_folder_one_class_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty folder") as exc:
        load_catalog(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(exc.value)
    root = make_class_folder(tmp_path / "one", {"only": 3}, size=(8, 8))
    with pytest.raises(DataError, match="one class only"):
        load_catalog(root)
    with pytest.raises(DataError, match="does not exist"):
        load_catalog(tmp_path / "nope")
    flat = make_pool(tmp_path / "flat", n=3, nested=False)
    with pytest.raises(DataError, match="no class sub-folders"):
        load_catalog(flat)


def test_empty_class_folder_is_an_error(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 2, "b": 2}, size=(8, 8))
    (root / "c").mkdir()
    with pytest.raises(DataError, match="class folder has no images") as exc:
        load_catalog(root)
    assert str(root / "c") in str(exc.value)


def test_images_and_masks_layout_detected(tmp_path):
    root = make_image_mask_tree(tmp_path / "seg", {"x": 3, "y": 2}, size=(12, 12))
    (root / "cases.csv").write_text("a,b\n")
    cat = load_catalog(root)
    assert cat.layout == "images+masks" and cat.has_masks and cat.classes == ["x", "y"]
    s = cat.samples[0]
    assert s.id.startswith("images/x/") and s.mask.endswith(s.id.replace("images/", "masks/"))
    assert any("cases.csv" in n for n in cat.notes)


def test_mask_with_other_extension_and_masks_dir(tmp_path):
    root = make_image_mask_tree(tmp_path / "seg", {"x": 2, "y": 2}, size=(8, 8), mask_fmt="tif")
    cat = load_catalog(root)
    assert all(s.mask.endswith(".tif") for s in cat.samples)
    root2 = make_image_mask_tree(tmp_path / "imgs", {"x": 2, "y": 2}, size=(8, 8), masks_dir=tmp_path / "m")
    cat = load_catalog(root2, masks=tmp_path / "m")
    assert cat.layout == "class-folders+masks" and all(s.mask for s in cat.samples)


def test_missing_and_orphan_masks(tmp_path):
    root = make_image_mask_tree(tmp_path / "seg", {"x": 2, "y": 2}, size=(8, 8))
    victim = next((root / "masks" / "x").iterdir())
    victim.unlink()
    with pytest.raises(MaskError, match="mask missing") as exc:
        load_catalog(root)
    assert str(root / "images" / "x" / victim.name) in str(exc.value)
    root = make_image_mask_tree(tmp_path / "seg2", {"x": 2, "y": 2}, size=(8, 8))
    write_png(root / "masks" / "y" / "stray.png", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(MaskError, match="mask has no image") as exc:
        load_catalog(root)
    assert "stray.png" in str(exc.value)
    with pytest.raises(MaskError, match="does not exist"):
        load_catalog(root, masks=tmp_path / "nowhere")


def test_dicom_series_subfolders_are_volumes(tmp_path):
    for cls in ("ct_a", "ct_b"):
        for k in range(2):
            vol = to_dtype(np.random.default_rng(k).random((4, 6, 6)), "uint16")
            write_dicom_series(tmp_path / "d" / cls / f"patient{k}", vol)
    cat = load_catalog(tmp_path / "d")
    assert len(cat) == 4 and cat.ids[0] == "ct_a/patient0"
    arr, meta = read_image(cat.samples[0].path)
    assert arr.shape == (1, 4, 6, 6)


def test_class_folders_of_2d_dicom_files(tmp_path):
    for cls in ("a", "b"):
        for k in range(2):
            write_dicom(tmp_path / "d" / cls / f"im{k}.dcm", np.full((4, 4), k, np.uint16))
    cat = load_catalog(tmp_path / "d")
    assert cat.classes == ["a", "b"] and len(cat) == 4 and cat.ids[0] == "a/im0.dcm"


def test_group_pattern(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(8, 8), images_per_group=3)
    cat = load_catalog(root, group_pattern=GROUP_PATTERN)
    assert len(set(cat.groups())) == 4
    assert cat.by_id["a/p0001_s02.png"].group == "p0001"
    whole = load_catalog(root, group_pattern=r"p\d{4}")  # no capture group: the whole match
    assert whole.by_id["b/p0004_s00.png"].group == "p0004"
    write_png(root / "a" / "odd.png", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(DataError, match="does not match --group-pattern") as exc:
        load_catalog(root, group_pattern=GROUP_PATTERN)
    assert str(root / "a" / "odd.png") in str(exc.value)
    with pytest.raises(DataError, match="invalid --group-pattern"):
        load_catalog(root, group_pattern="(unclosed")


def test_manifest(tmp_path):
    csv_path = make_manifest(tmp_path / "m", {"a": 4, "b": 4}, groups=True, masks=True, splits=True)
    cat = load_catalog(csv_path)
    assert cat.layout == "manifest" and cat.classes == ["a", "b"] and len(cat) == 8
    s = cat.by_id["files/a_000.png"]
    assert s.group == "a-g0" and s.mask.endswith("a_000_mask.png") and s.split == "train"
    assert {x.split for x in cat.samples} == {"train", "test"}
    arr, _ = read_image(s.path)
    assert arr.shape == (1, 16, 16)


def _write_csv(path, rows, header=("path", "label")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_manifest_errors(tmp_path):
    csv_path = make_manifest(tmp_path / "m", {"a": 2, "b": 2})
    rows = list(csv.reader(open(csv_path)))[1:]
    bad = _write_csv(tmp_path / "m" / "bad.csv", rows + [["files/missing.png", "a"]])
    with pytest.raises(ManifestError, match="'files/missing.png' does not exist") as exc:
        load_catalog(bad)
    assert str(bad) in str(exc.value) and "line 6" in str(exc.value)
    nocol = _write_csv(tmp_path / "m" / "nocol.csv", rows, header=("file", "label"))
    with pytest.raises(ManifestError, match="needs columns 'path' and 'label'"):
        load_catalog(nocol)
    split = _write_csv(tmp_path / "m" / "split.csv", [r + ["holdout"] for r in rows],
                       header=("path", "label", "split"))
    with pytest.raises(ManifestError, match="unknown split 'holdout'"):
        load_catalog(split)
    (tmp_path / "m" / "files" / "x.xyz").write_text("?")
    unk = _write_csv(tmp_path / "m" / "unk.csv", rows + [["files/x.xyz", "a"]])
    with pytest.raises(UnknownFormatError, match="x.xyz"):
        load_catalog(unk)


def test_medmnist_npz(tmp_path):
    path = write_medmnist_npz(tmp_path / "blood.npz", {"train": 10, "val": 4, "test": 6}, n_classes=3)
    cat = load_catalog(path)
    assert cat.layout == "npz" and cat.classes == ["0", "1", "2"] and len(cat) == 20
    assert sum(s.split == "test" for s in cat.samples) == 6
    s = cat.by_id["blood.npz::val_images/2"]
    arr, meta = read_image(s.path)
    assert arr.shape == (1, 28, 28) and s.label == "2"


def test_pool(tmp_path):
    root = make_pool(tmp_path / "u", n=6)
    pool = load_pool(root)
    assert len(pool) == 6 and pool.classes == [] and all(s.label is None for s in pool.samples)
    assert any(i.startswith("sub/") for i in pool.ids)
    with pytest.raises(DataError, match="no label"):
        pool.labels()
    (root / "sub" / "x.bin").write_text("?")
    with pytest.raises(UnknownFormatError, match="x.bin"):
        load_pool(root)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_pool(tmp_path / "none")


def test_fingerprint_stable_and_sensitive(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 2, "b": 2}, size=(8, 8))
    fp = load_catalog(root).fingerprint()
    assert fp == load_catalog(root).fingerprint() and fp.startswith("c-") and len(fp) == 18
    stat_fp = load_catalog(root).stat_fingerprint()
    assert len(stat_fp) == 16 and load_catalog(root).fingerprint_like(stat_fp) == stat_fp
    # contents, not times: a file rewritten with its own bytes leaves it alone; the older kind moves
    again = root / "a" / "p0001_s00.png"
    time.sleep(0.01)
    again.write_bytes(again.read_bytes())
    assert load_catalog(root).fingerprint() == fp and load_catalog(root).stat_fingerprint() != stat_fp
    # one byte changed, same size, mtime put back (as cp -p leaves it): still another image
    body = bytearray(again.read_bytes())
    before = again.stat()
    body[-1] ^= 0xFF
    again.write_bytes(bytes(body))
    os.utime(again, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert again.stat().st_size == before.st_size and load_catalog(root).fingerprint() != fp
    again.write_bytes(bytes(body[:-1]) + bytes([body[-1] ^ 0xFF]))
    assert load_catalog(root).fingerprint() == fp
    assert load_catalog(root, group_pattern=r"(p\d)").fingerprint() != fp
    target = root / "a" / "p0001_s00.png"
    time.sleep(0.01)
    write_tiff(root / "a" / "extra.tif", np.zeros((1, 8, 8), np.float32))
    assert load_catalog(root).fingerprint() != fp
    (root / "a" / "extra.tif").unlink()
    target.write_bytes(target.read_bytes() + b"\0")
    assert load_catalog(root).fingerprint() != fp


def test_save_manifest_round_trip(tmp_path):
    root = make_image_mask_tree(tmp_path / "seg", {"x": 2, "y": 3}, size=(8, 8), images_per_group=2)
    cat = load_catalog(root, group_pattern=GROUP_PATTERN)
    csv_path = cat.save_manifest(tmp_path / "seg" / "all.csv")
    again = load_catalog(csv_path)
    assert again.ids == cat.ids and again.groups() == cat.groups() and again.classes == cat.classes
    assert [s.mask for s in again.samples] == [s.mask for s in cat.samples]


def test_sources_registry_picks_the_first_that_detects_and_refuses_the_rest(tmp_path, monkeypatch):
    from fewlabel.data.catalog import load as load_mod
    from fewlabel.data.catalog.table import Catalog, Sample

    odd = tmp_path / "list.weird"
    odd.write_text("x")
    with pytest.raises(DataError, match="expected a folder") as exc:
        load_catalog(odd)
    assert str(odd) in str(exc.value) and "\n" not in str(exc.value)

    def from_weird(path, masks):
        samples = [Sample(id=f"{c}/{i}", path=str(path), label=c, group=f"{c}/{i}")
                   for c in "ab" for i in range(2)]
        return Catalog(samples=samples, classes=["a", "b"], root=path.parent)

    weird = load_mod.Source(lambda p: p.suffix == ".weird", from_weird)
    monkeypatch.setitem(load_mod.SOURCES, "weird", weird)
    assert load_catalog(odd).ids == ["a/0", "a/1", "b/0", "b/1"]  # one registry line made it a source


def test_fingerprint_follows_the_masks_contents(tmp_path):
    root = make_image_mask_tree(tmp_path / "seg", {"x": 2, "y": 2}, size=(8, 8), images_per_group=1)
    cat = load_catalog(root)
    fp = cat.fingerprint()
    mask = Path(next(s.mask for s in cat.samples if s.mask))
    data = bytearray(mask.read_bytes())
    data[-1] ^= 0xFF
    mask.write_bytes(bytes(data))
    assert load_catalog(root).fingerprint() != fp
