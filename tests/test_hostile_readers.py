"""Readers say what they did: data the readers used to take silently (or crash on) is named.

String labels in an .npz, file and class names that are not UTF-8, class names that print alike,
EXIF-rotated JPEGs, files with frames beyond the first, and one image whose scale dominates the
normalisation. Each case asserts the exit code and the one line naming the file(s).
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps
from test_hostile import PROBLEMS, USAGE, _cli, _one_line

from fewlabel.data.catalog import load_catalog
from fewlabel.data.readers import read_image, read_meta

from factory import make_class_folder, run_cli, write_png, write_tiff

FAST = ["--strategy", "scratch", "--max-epochs", "1", "--device", "cpu", "--set", "augment=none",
        "--set", "min_steps_per_epoch=1", "--set", "batch_size=8"]


def _tree(folder: Path) -> dict[bytes, bytes]:
    """Every file under ``folder`` with its bytes (names as bytes: some are not UTF-8)."""
    out = {}
    for base, _, files in os.walk(os.fsencode(folder)):
        for f in files:
            p = os.path.join(base, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


def _json_report(capfd, data: Path) -> tuple[int, dict]:
    code = run_cli("inspect", data, "--json")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return code, json.loads(out)


def _lines(err: str, needle: str) -> list[str]:
    return [line for line in err.splitlines() if needle in line]


# -- .npz with string labels -----------------------------------------------------------------------


def test_npz_string_labels_are_class_names(tmp_path: Path, capfd) -> None:
    rng = np.random.default_rng(0)
    names = np.array(["neutrophil", "eosinophil", "monocyte"] * 6)  # dtype <U10
    path = tmp_path / "cells.npz"
    np.savez(path, train_images=rng.integers(0, 255, (18, 16, 16), dtype=np.uint8), train_labels=names,
             test_images=rng.integers(0, 255, (6, 16, 16), dtype=np.uint8), test_labels=names[:6].astype("S"))
    before = path.read_bytes()
    code, report = _json_report(capfd, path)
    assert code == 0, report["problems"]
    # sorted like folder names, as numeric labels are
    assert report["classes"] == {"eosinophil": 8, "monocyte": 8, "neutrophil": 8}
    cat = load_catalog(path)
    assert cat.classes == ["eosinophil", "monocyte", "neutrophil"]
    assert cat.labels(cat.ids[:3]).tolist() == [2, 0, 1]
    assert path.read_bytes() == before
    # objects stay refused (allow_pickle=False): one line naming the file
    objects = tmp_path / "obj.npz"
    np.savez(objects, train_images=np.zeros((12, 8, 8), np.uint8),
             train_labels=np.array(["a", "b", None] * 4, dtype=object))
    code, err = _cli(capfd, "inspect", objects)
    assert code == USAGE and "objects" in _one_line(err, str(objects))


# -- names that are not UTF-8 ----------------------------------------------------------------------


def _bad_name_data(tmp_path: Path) -> tuple[Path, bytes]:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    bad = os.fsencode(data / "a") + b"/bad\xff.png"
    os.rename(data / "a" / "p0001_s00.png", bad)
    return data, bad


def test_file_name_not_utf8_is_named_and_refused_everywhere(tmp_path: Path, capfd) -> None:
    data, bad = _bad_name_data(tmp_path)
    before = _tree(data)
    code, out_err = run_cli("inspect", data), capfd.readouterr()
    assert code == PROBLEMS
    assert "bad\\xff.png" in out_err.out and "not valid UTF-8" in out_err.out
    for command in (["train", data, "--out", tmp_path / "m", *FAST],
                    ["curve", data, "--out", tmp_path / "run", "--strategies", "scratch", "--sizes", "1",
                     "--repeats", "1", "--max-epochs", "1", "-q"],
                    ["pretrain", "ssl", data, "--out", tmp_path / "enc.safetensors", "--steps", "1"]):
        code, err = _cli(capfd, *command)
        assert code == USAGE, command[0]
        assert "not valid UTF-8" in _one_line(err, "a/bad\\xff.png"), command[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "enc.safetensors").exists()
    assert _tree(data) == before


def test_class_folder_name_not_utf8_is_refused(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    os.rename(data / "a", os.fsencode(data) + b"/a\xff")
    code, report = _json_report(capfd, data)
    assert code == PROBLEMS
    assert any("not valid UTF-8" in p["problem"] for p in report["problems"])
    code, err = _cli(capfd, "train", data, "--out", tmp_path / "m", *FAST)
    assert code == USAGE and "not valid UTF-8" in _one_line(err, "data/a\\xff")
    assert not (tmp_path / "m").exists()


def test_predict_names_a_file_whose_name_is_not_utf8(tmp_path: Path, capfd) -> None:
    """The file is not scored (exit 1) and named escaped; the CSV holds the other files."""
    import fewlabel
    from fewlabel.training.finetune import FinetuneConfig

    train_data = make_class_folder(tmp_path / "train", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    fast = FinetuneConfig(max_epochs=1, batch_size=8, min_steps_per_epoch=1, augment="none", progress=False)
    fewlabel.train(train_data, tmp_path / "m", strategy="scratch", labels_per_class=3, seed=0, finetune=fast)
    capfd.readouterr()
    data, _ = _bad_name_data(tmp_path)
    code, err = _cli(capfd, "predict", tmp_path / "m", data / "a", "--out", tmp_path / "p.csv",
                     "--device", "cpu")
    assert code == PROBLEMS
    named = _lines(err, "bad\\xff.png")
    assert len(named) == 1 and "not valid UTF-8" in named[0]
    rows = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 5 and not any("bad" in r for r in rows)


# -- class names that print alike ------------------------------------------------------------------


@pytest.mark.parametrize("twin", ["neutrophil ", "caf\u00e9"], ids=["trailing-space", "nfc-nfd"])
def test_classes_that_print_alike_are_refused(tmp_path: Path, capfd, twin: str) -> None:
    first = "neutrophil" if twin.startswith("neutrophil") else unicodedata.normalize("NFD", twin)
    data = make_class_folder(tmp_path / "data", {first: 4, twin: 4, "other": 4}, size=(16, 16), seed=0)
    assert len([p for p in data.iterdir() if p.is_dir()]) == 3  # two folders that print alike
    code, report = _json_report(capfd, data)
    assert code == PROBLEMS
    problem = next(p for p in report["problems"] if p["kind"] == "lookalike_classes")["problem"]
    assert ascii(first) in problem and ascii(twin) in problem
    for command in (["train", data, "--out", tmp_path / "m", *FAST],
                    ["curve", data, "--out", tmp_path / "run", "--strategies", "scratch", "--sizes", "1",
                     "--repeats", "1", "--max-epochs", "1", "-q"]):
        code, err = _cli(capfd, *command)
        assert code == USAGE, command[0]
        line = _one_line(err, "print alike")
        assert ascii(first) in line and ascii(twin) in line
    assert not (tmp_path / "m").exists()


# -- EXIF orientation ------------------------------------------------------------------------------


def test_exif_rotated_jpeg_is_read_as_shown(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), fmt="jpg", seed=0)
    stored = np.zeros((16, 24), np.uint8)
    stored[:4, :] = 255  # a bright band along the top edge as stored: along a side once turned
    path = data / "a" / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    arr, meta = read_image(path)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    assert shown.shape == (24, 16) and arr.shape == (1, 24, 16)
    np.testing.assert_array_equal(arr[0], shown)  # the viewer's pixels, not the stored ones
    assert meta.orientation == 6 and read_meta(path).spatial_shape == (24, 16)
    code, report = _json_report(capfd, data)
    assert code == 0, report["problems"]
    notes = [n for n in report["notes"] if "EXIF" in n]
    assert len(notes) == 1 and "1 file(s)" in notes[0] and "a/turned.jpg" in notes[0]


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    stored = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5) * 10
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "x.png"  # lossless, so the comparison is exact
    Image.fromarray(stored).save(path, exif=exif)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    arr, _ = read_image(path)
    np.testing.assert_array_equal(arr[0], shown)
    assert read_meta(path).spatial_shape == shown.shape


# -- frames beyond the first -----------------------------------------------------------------------


def _frames_data(tmp_path: Path) -> Path:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    one = np.full((16, 16), 40, np.uint8)
    frames = [Image.fromarray(one), Image.fromarray(255 - one), Image.fromarray(one // 2)]
    frames[0].save(data / "a" / "anim.png", save_all=True, append_images=frames[1:], format="PNG")
    tiff = data / "b" / "pages.tif"
    tifffile.imwrite(tiff, one + 50)
    tifffile.imwrite(tiff, np.ones((8, 12), np.uint8), append=True)  # a page unlike the first
    return data


def test_files_with_unread_frames_are_named(tmp_path: Path, capfd) -> None:
    data = _frames_data(tmp_path)
    assert read_image(data / "a" / "anim.png")[1].unread_frames == 2
    assert read_meta(data / "b" / "pages.tif").unread_frames == 1
    code, report = _json_report(capfd, data)
    assert code == 0, report["problems"]
    said = [w for w in report["warnings"] if "not read" in w]
    assert len(said) == 1 and "2 file(s)" in said[0]
    assert "a/anim.png (2 unread)" in said[0] and "b/pages.tif (1 unread)" in said[0]
    code, err = _cli(capfd, "train", data, "--out", tmp_path / "m", *FAST)
    assert code == 0
    said = _lines(err, "not read")
    assert len(said) == 1 and said[0].startswith("warning: 2 file(s)") and "a/anim.png" in said[0]


def test_tiff_volume_of_same_sized_pages_stays_a_volume(tmp_path: Path, capfd) -> None:
    vol = np.stack([np.full((8, 8), z, np.uint16) for z in range(5)])[None]  # (1, D, H, W)
    data = tmp_path / "vols"
    for k, cls in enumerate(("a", "b")):
        for i in range(4):
            write_tiff(data / cls / f"v{i}.tif", vol + k)
    arr, meta = read_image(data / "a" / "v0.tif")
    assert arr.shape == (1, 5, 8, 8) and meta.unread_frames == 0
    code, report = _json_report(capfd, data)
    assert not [w for w in report["warnings"] if "not read" in w]
    assert report["spatial_dims"] == {"3D": 8}


# -- one image whose scale dominates the normalisation ---------------------------------------------


def test_scale_outlier_is_named_by_inspect_and_train(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    huge = np.full((1, 16, 16), 1e6, np.float32)
    huge[0, :8] = 0.0
    write_tiff(data / "a" / "p0003_s00.tif", huge)
    (data / "a" / "p0003_s00.png").unlink()
    write_png(data / "b" / "extra.png", np.full((1, 16, 16), 255, np.uint8))  # bright, not an outlier
    code, report = _json_report(capfd, data)
    assert code == 0, report["problems"]
    said = [w for w in report["warnings"] if "dominate" in w]
    assert len(said) == 1 and "1 image(s)" in said[0] and "a/p0003_s00.tif" in said[0]
    code, err = _cli(capfd, "train", data, "--out", tmp_path / "m", *FAST)
    assert code == 0
    said = _lines(err, "dominate")
    assert len(said) == 1 and said[0].startswith("warning: 1 image(s)") and "a/p0003_s00.tif" in said[0]


def test_a_data_set_level_problem_names_the_data_folder_once(tmp_path: Path, capfd, monkeypatch) -> None:
    make_class_folder(tmp_path / "data", {"caf\u00e9": 4, unicodedata.normalize("NFD", "caf\u00e9"): 4},
                      size=(16, 16), seed=0)
    monkeypatch.chdir(tmp_path)  # a relative data path, as typed
    code, err = _cli(capfd, "train", "data", "--out", "m", *FAST)
    assert code == USAGE and _one_line(err, "print alike").startswith("error: data: classes")
