"""Hostile input: bombs, damaged files, symlink loops, markup in names, corrupt run folders, outputs
that cannot be written. Each case asserts the exit code, ONE line naming the file, no traceback on
screen, and that nothing written earlier changed. The ``slow`` part kills train / pretrain / curve
with SIGKILL at random moments."""

from __future__ import annotations

import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewlabel.data.readers import read_image, read_meta
from fewlabel.errors import FewlabelError
from fewlabel.experiments.run_view import RunView
from fewlabel.experiments.store import ResultStore

from factory import (
    _chunk,
    make_class_folder,
    make_manifest,
    run_cli,
    write_dicom,
    write_nifti,
    write_npy,
    write_png,
    write_png16,
    write_tiff,
)

USAGE, PROBLEMS, INTERNAL = 2, 1, 3
SRC = Path(__file__).resolve().parents[1] / "src"


def _cli(capfd, *args: object) -> tuple[int, str]:
    code = run_cli(*args)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return code, err


def _one_line(err: str, name: str) -> str:
    # the line that says how training will run (before any work) is not part of the error
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("compute: ")]
    assert len(lines) == 1, lines
    assert name in lines[0], lines[0]
    return lines[0]


# -- generated hostile files ---------------------------------------------------------------------


def png16_bomb(path: Path, width: int = 12000, height: int = 8000) -> Path:
    """A few hundred bytes declaring a 16-bit RGB image of width × height."""
    import zlib

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    body = zlib.compress(b"\0" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body)
                     + _chunk(b"IEND", b""))
    return path


def png8_bomb(path: Path, side: int = 30000) -> Path:
    import zlib

    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


def nifti_bomb(path: Path, shape: tuple[int, ...] = (30000, 30000, 3000)) -> Path:
    """A 352-byte NIfTI header declaring a 2.7 × 10^12-voxel volume, and no data."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    path.write_bytes(hdr.binaryblock + b"\0" * 4)
    return path


def npz_bomb(path: Path, shape: tuple[int, ...] = (50000, 50000)) -> Path:
    """An NPZ whose member's header declares ``shape`` float64 values; almost no data behind it."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", head.getvalue() + b"\0" * 64)
    return path


def npy_bomb(path: Path) -> Path:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                                "shape": (100000, 100000)})
    path.write_bytes(head.getvalue())
    return path


def dicom_bomb(path: Path) -> Path:
    """A 16×16 DICOM whose header then claims 100 frames of 60000 × 60000."""
    import pydicom

    write_dicom(path, np.zeros((16, 16), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 100
    ds.save_as(path)
    return path


def tiff_bomb(path: Path) -> Path:
    """A 16×16 TIFF whose ImageWidth / ImageLength tags are patched to 60000 × 60000."""
    import struct

    write_tiff(path, np.zeros((1, 16, 16), np.uint8))
    raw = bytearray(path.read_bytes())
    assert raw[:2] == b"II"
    ifd = struct.unpack_from("<I", raw, 4)[0]
    for k in range(struct.unpack_from("<H", raw, ifd)[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", raw, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            struct.pack_into("<H" if kind == 3 else "<I", raw, entry + 8, 60000)
    path.write_bytes(bytes(raw))
    return path


def _valid_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = (rng.random((1, 24, 24)) * 200).astype(np.uint8)
    rgb16 = (rng.random((3, 24, 24)) * 60000).astype(np.uint16)
    return [
        write_png(folder / "a.png", img),
        write_png16(folder / "b.png", rgb16),
        write_tiff(folder / "c.tif", img),
        write_nifti(folder / "d.nii.gz", (rng.random((1, 6, 12, 12)) * 100).astype(np.int16)),
        write_dicom(folder / "e.dcm", (rng.random((16, 16)) * 1000).astype(np.uint16)),
        write_npy(folder / "f.npy", rng.random((1, 16, 16)).astype(np.float32)),
    ]


# -- readers: limits before allocation ----------------------------------------------------------


@pytest.mark.parametrize("make", [png16_bomb, png8_bomb, nifti_bomb, npz_bomb, npy_bomb, dicom_bomb,
                                  tiff_bomb])
def test_bomb_refused_from_its_header(tmp_path: Path, make) -> None:
    suffix = {"png16_bomb": ".png", "png8_bomb": ".png", "nifti_bomb": ".nii", "npz_bomb": ".npz",
              "npy_bomb": ".npy", "dicom_bomb": ".dcm", "tiff_bomb": ".tif"}[make.__name__]
    path = make(tmp_path / f"bomb{suffix}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for fn in (read_image, read_meta):
        with pytest.raises(FewlabelError) as exc:
            fn(path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"{grown_mb:.0f} MB"


def test_limit_is_configurable_and_covers_every_format(tmp_path: Path, monkeypatch) -> None:
    files = _valid_files(tmp_path / "ok")
    for f in files:
        read_image(f)  # under the default limit: read
    monkeypatch.setenv("FEWLABEL_MAX_IMAGE_VALUES", "100")
    for f in files:
        with pytest.raises(FewlabelError, match="over the limit of 100"):
            read_image(f)
    monkeypatch.setenv("FEWLABEL_MAX_IMAGE_VALUES", str(24 * 24))  # a.png is 24 × 24 × 1: at the limit
    assert read_image(files[0])[0].shape == (1, 24, 24)
    monkeypatch.setenv("FEWLABEL_MAX_IMAGE_VALUES", str(24 * 24 - 1))
    with pytest.raises(FewlabelError, match="24×24×1 = 576 values"):
        read_image(files[0])


def test_bombs_cost_under_1_gb_in_the_cli(tmp_path: Path) -> None:
    """Every bomb in one class folder, inspected by a real ``fewlabel`` process: problems (exit 1),
    every bomb named, and the process never held 1 GB."""
    data = make_class_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(16, 16), seed=0)
    png16_bomb(data / "a" / "bomb16.png")
    png8_bomb(data / "a" / "bomb8.png")
    nifti_bomb(data / "b" / "bomb.nii")
    npy_bomb(data / "b" / "bomb.npy")
    dicom_bomb(data / "b" / "bomb.dcm")
    tiff_bomb(data / "a" / "bomb.tif")
    # Peak RSS of this process's own memory (VmHWM): ru_maxrss would carry over the forking pytest
    # worker's peak across exec on Linux and measure the test runner instead of fewlabel.
    script = ("import resource, sys\nfrom fewlabel.cli import main\n"
              "def peak():\n"
              "    try:\n"
              "        lines = open('/proc/self/status').read().splitlines()\n"
              "        return int(next(x for x in lines if x.startswith('VmHWM')).split()[1])\n"
              "    except (OSError, StopIteration):\n"
              "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    main(sys.argv[1:])\n"
              "finally:\n    print('maxrss_kb', peak(), file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", script, "inspect", str(data)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == PROBLEMS, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for name in ("bomb16.png", "bomb8.png", "bomb.nii", "bomb.npy", "bomb.dcm", "bomb.tif"):
        assert name in proc.stdout
    rss_kb = int(proc.stderr.split("maxrss_kb")[-1].split()[0])
    assert rss_kb < 1024 * 1024, f"{rss_kb / 1024:.0f} MB"


# -- readers: damaged files never escape as another exception -----------------------------------


def test_truncated_and_bit_flipped_files_fail_as_one_line(tmp_path: Path) -> None:
    rng = random.Random(0)
    damaged = 0
    for src in _valid_files(tmp_path / "ok"):
        data = src.read_bytes()
        variants = [data[: len(data) // 2], data[: len(data) // 5], data[:7]]
        for _ in range(12):
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            variants.append(bytes(flipped))
        for k, content in enumerate(variants):
            path = tmp_path / "bad" / f"{k}_{src.name}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
            try:
                arr, _ = read_image(path)
                assert arr.dtype == np.float32  # a flip in pixel data can decode: still a valid image
            except FewlabelError as exc:
                damaged += 1
                assert str(path) in str(exc) and "\n" not in str(exc)
    assert damaged >= 18  # at least every truncation was refused


def test_corrupt_tiff_is_one_line_without_stray_log(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(16, 16), seed=0)
    tif = write_tiff(data / "a" / "x.tif", np.zeros((1, 16, 16), np.uint8))
    raw = bytearray(tif.read_bytes())
    raw[4:8] = (len(raw) + 1000).to_bytes(4, "little")  # first IFD offset past the end
    tif.write_bytes(bytes(raw))
    code, err = _cli(capfd, "inspect", data)
    assert code == PROBLEMS
    assert "tifffile" not in err


def test_object_array_npz_is_refused(tmp_path: Path, capfd) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(FewlabelError, match="obj.npz"):
        read_image(f"{path}::x/0")
    code, err = _cli(capfd, "inspect", path)
    assert code == USAGE
    _one_line(err, "obj.npz")


# -- names from the data are text --------------------------------------------------------------


def test_symlink_loops_are_named_not_followed(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), seed=0)
    (data / "a" / "loop.png").symlink_to("loop.png")
    (data / "b" / "up").symlink_to("..", target_is_directory=True)
    code, _ = _cli(capfd, "inspect", data)
    assert code == PROBLEMS
    code, err = _cli(capfd, "inspect", data / "a" / "loop.png")
    assert code == USAGE
    assert "symlink loop" in _one_line(err, "loop.png")
    out_csv = tmp_path / "p.csv"
    code, _ = _cli(capfd, "inspect", "--pool", data)
    assert code in (0, 1)
    assert not out_csv.exists()


@pytest.mark.parametrize("command", ["curve", "train", "pretrain"])
def test_a_data_path_that_loops_is_one_line_not_a_crash(tmp_path: Path, capfd, command: str) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    args = {"curve": ["curve", loop, "--out", tmp_path / "r", "--strategies", "scratch", "--sizes", "2"],
            "train": ["train", loop, "--strategy", "scratch", "--out", tmp_path / "m"],
            "pretrain": ["pretrain", "ssl", loop, "--out", tmp_path / "e.safetensors", "--steps", "1"]}
    code, err = _cli(capfd, *args[command])
    assert code == USAGE
    assert "symlink loop" in _one_line(err, "loop")


@pytest.mark.parametrize("command", ["curve", "train", "predict", "explain"])
def test_weights_or_a_model_folder_that_loops_is_named_as_a_loop(tmp_path: Path, capfd, command: str) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), seed=0)
    loop = tmp_path / "w.safetensors"
    loop.symlink_to("w.safetensors")
    (tmp_path / "model").symlink_to("model")
    args = {"curve": ["curve", data, "--out", tmp_path / "r", "--strategies", "probe", "--sizes", "2",
                      "--encoder-weights", loop],
            "train": ["train", data, "--strategy", "convnet", "--encoder-weights", loop,
                      "--out", tmp_path / "m"],
            "predict": ["predict", tmp_path / "model", data, "--out", tmp_path / "p.csv"],
            "explain": ["explain", tmp_path / "model", data, "--out", tmp_path / "maps"]}
    code, err = _cli(capfd, *args[command])
    assert code == USAGE
    assert "symlink loop" in _one_line(err, "model" if command in ("predict", "explain") else "w.safetensors")


def test_a_model_folder_that_is_a_file_is_named_as_one(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), seed=0)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    code, err = _cli(capfd, "predict", tmp_path / "model.safetensors", data, "--out", tmp_path / "p.csv")
    assert code == USAGE
    assert "is a file, not a model folder" in _one_line(err, "model.safetensors")


def test_a_weights_folder_is_named_as_a_folder(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), seed=0)
    (tmp_path / "weights").mkdir()
    code, err = _cli(capfd, "curve", data, "--out", tmp_path / "r", "--strategies", "probe", "--sizes", "2",
                     "--encoder", "vit", "--encoder-weights", tmp_path / "weights")
    assert code == USAGE
    assert "is a folder, not a file" in _one_line(err, "weights")


def test_markup_and_control_characters_in_class_names(tmp_path: Path, capfd) -> None:
    files = tmp_path / "files"
    lines = ["path,label"]
    for k in range(6):
        write_png(files / f"[red]{k}.png", np.full((1, 16, 16), k * 20, np.uint8))
        lines.append(f"files/[red]{k}.png,{'[/]' if k % 2 else 'b[bold]' + chr(27) + '[31m'}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "fewlabel", "inspect", str(manifest)], capture_output=True,
                          text=True, env=env, timeout=120)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode in (0, 1) and "Traceback" not in out + err
    assert "[/]" in out and "b[bold]" in out and "\\x1b" in out and chr(27) + "[31m" not in out


# -- output folders ------------------------------------------------------------------------------


def test_unwritable_out_is_refused_before_any_work(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "model"):
        t0 = time.perf_counter()
        code, err = _cli(capfd, "train", "--strategy", "scratch", data, "--out", out, "--max-epochs", "1")
        assert code == USAGE and time.perf_counter() - t0 < 20
        _one_line(err, str(out))
    assert a_file.read_text() == "keep me"
    code, err = _cli(capfd, "predict", tmp_path / "no-model", data, "--out", a_file / "p.csv")
    assert code == USAGE
    _one_line(err, "file.txt")
    for args in (["curve", data, "--out", a_file, "--sizes", "2"],
                 ["pretrain", "ssl", data, "--out", a_file / "enc.safetensors"]):
        t0 = time.perf_counter()
        code, err = _cli(capfd, *args)
        assert code == USAGE and time.perf_counter() - t0 < 20
        _one_line(err, "file.txt")
    assert a_file.read_text() == "keep me"


def test_control_characters_in_an_error_line_are_escaped(tmp_path: Path, capfd) -> None:
    hostile = tmp_path / "data\x1b[2J\nsecond line"
    code, err = _cli(capfd, "train", "--strategy", "scratch", hostile, "--out", tmp_path / "m")
    assert code == USAGE
    line = _one_line(err, "\\x1b[2J\\nsecond line")
    assert "\x1b" not in line


def test_existing_model_folder_needs_overwrite(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text('{"kept": true}')
    code, err = _cli(capfd, "train", "--strategy", "scratch", data, "--out", out, "--max-epochs", "1")
    assert code == USAGE and "--overwrite" in _one_line(err, str(out))
    assert json.loads((out / "config.json").read_text()) == {"kept": True}


# -- run folders ---------------------------------------------------------------------------------


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"fewlabel_run": 1, "config_hash": "x"}))
    with ResultStore(run) as store:
        store.add({"strategy": "scratch", "n_per_class": 2, "repeat": 0, "status": "ok", "roc_auc": 0.9})
    (run / "cells" / "scratch" / "n2_r0").mkdir(parents=True)
    return run


@pytest.mark.parametrize("damage", ["garbage", "empty", "other-db", "deleted"])
def test_damaged_store_is_refused_not_recomputed(tmp_path: Path, damage: str) -> None:
    import sqlite3

    run = _run_dir(tmp_path)
    store = run / "store.sqlite"
    for side in ("-wal", "-shm"):
        Path(f"{store}{side}").unlink(missing_ok=True)
    if damage == "garbage":
        store.write_bytes(os.urandom(4096))
    elif damage == "empty":
        store.write_bytes(b"")
    elif damage == "other-db":
        store.unlink()
        sqlite3.connect(store).execute("CREATE TABLE t (x)").connection.close()
    else:
        store.unlink()
    before = store.read_bytes() if store.exists() else None
    with pytest.raises(FewlabelError, match="store") as exc:
        ResultStore(run)
    assert "\n" not in str(exc.value) and ("delete" in str(exc.value) or "restore" in str(exc.value))
    assert (store.read_bytes() if store.exists() else None) == before


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "\xff\xfe"])
def test_corrupt_run_json_names_the_file(tmp_path: Path, capfd, content: str) -> None:
    run = _run_dir(tmp_path)
    (run / "run.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(FewlabelError, match="run.json"):
        RunView(run).check()
    code, err = _cli(capfd, "report", run)
    assert code == USAGE
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "run.json" in last and "delete" in last


def test_corrupt_model_folder_and_tampered_sizes(tmp_path: Path, capfd) -> None:
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.heads import Classifier
    from fewlabel.models.io import read_model_config, save_model_dir

    model = tmp_path / "m"
    enc = create_encoder(name="convnet", in_channels=1, spatial_dims=2, width=4, depth=2)
    save_model_dir(model, Classifier(enc, 2), {"class_names": ["a", "b"]})
    cfg = json.loads((model / "config.json").read_text())
    for key, value in (("width", 1_000_000), ("depth", 10**9)):
        bad = {**cfg, "encoder": {**cfg["encoder"], key: value}}
        (model / "config.json").write_text(json.dumps(bad))
        with pytest.raises(FewlabelError, match="out of range"):
            read_model_config(model)
    (model / "config.json").write_text(json.dumps({**cfg, "preprocess": {"size": [100000, 100000]}}))
    with pytest.raises(FewlabelError, match="too large"):
        read_model_config(model)
    (model / "config.json").write_text("{trunc")
    code, err = _cli(capfd, "predict", model, tmp_path / "images", "--out", tmp_path / "p.csv")
    assert code == USAGE
    _one_line(err, "config.json")


def test_damaged_cached_encoder_is_not_trusted(tmp_path: Path) -> None:
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.io import save_encoder, verify_encoder_file

    path = save_encoder(tmp_path / "enc.safetensors", create_encoder(name="convnet", in_channels=1,
                                                                      spatial_dims=2, width=4, depth=2))
    verify_encoder_file(path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a flipped bit in the weights: the header still reads
    path.write_bytes(bytes(raw))
    with pytest.raises(FewlabelError, match="sha256 differs.*delete"):
        verify_encoder_file(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    Path(f"{path}.sha256").unlink()
    with pytest.raises(FewlabelError, match="delete"):
        verify_encoder_file(path)


def test_image_size_is_bounded(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    code, err = _cli(capfd, "train", "--strategy", "scratch", data, "--out", tmp_path / "m",
                     "--image-size", "100000")
    assert code == USAGE
    assert "too large" in _one_line(err, "100000")


def test_image_size_per_axis_keeps_a_volume_s_depth(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(6, 16, 16), fmt="npy", seed=0)
    code, err = _cli(capfd, "train", "--strategy", "scratch", data, "--out", tmp_path / "m",
                     "--image-size", "6,8,8", "--max-epochs", "1")
    assert code == 0, err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["preprocess"]["size"] == [6, 8, 8]
    code, err = _cli(capfd, "train", "--strategy", "scratch", data, "--out", tmp_path / "m2",
                     "--image-size", "6,eight,8")
    assert code == USAGE and "--image-size" in err and "Traceback" not in err
    code, err = _cli(capfd, "train", "--strategy", "scratch", data, "--out", tmp_path / "m3",
                     "--image-size", "8,16")
    assert code != 0
    assert "does not fit 3D data" in _one_line(err, "image_size")


# -- inspect notes -------------------------------------------------------------------------------


def test_inspect_notes_odd_size_and_paths_leaving_the_manifest(tmp_path: Path) -> None:
    from fewlabel.data.inspect import inspect_data

    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), seed=0)
    write_png(data / "a" / "odd.png", np.zeros((1, 40, 30), np.uint8))
    notes = " ".join(inspect_data(data).notes)
    assert "odd.png" in notes and "40x30" in notes and "16x16" in notes
    csv_path = make_manifest(tmp_path / "man", {"a": 4, "b": 4}, size=(16, 16))
    outside = tmp_path / "outside.png"
    write_png(outside, np.zeros((1, 16, 16), np.uint8))
    with open(csv_path, "a") as fh:
        fh.write(f"../outside.png,a\n{outside},b\n")
    text = csv_path.read_text().replace("../outside.png,a", "../outside.png,a")
    csv_path.write_text(text)
    notes = " ".join(inspect_data(csv_path).notes)
    assert "2 manifest path(s) lead outside" in notes


# -- exit codes ----------------------------------------------------------------------------------


def test_internal_error_is_one_line_exit_3_and_a_log(tmp_path: Path, capfd, monkeypatch) -> None:
    import fewlabel.data.inspect as inspect_module

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(inspect_module, "inspect_data", broken)
    monkeypatch.setenv("FEWLABEL_LOG_DIR", str(tmp_path / "logs"))
    code, err = _cli(capfd, "inspect", tmp_path)
    assert code == INTERNAL
    line = _one_line(err, "internal error")
    log = next((tmp_path / "logs").glob("crash-*.log"))
    assert str(log) in line and "Traceback" in log.read_text() and "RuntimeError" in log.read_text()


def test_predict_refuses_images_unlike_the_training_images(tmp_path: Path, capfd) -> None:
    import fewlabel
    from fewlabel.training.finetune import FinetuneConfig

    data = make_class_folder(tmp_path / "data", {"a": 8, "b": 8}, size=(16, 16), channels=3, seed=0)
    fast = FinetuneConfig(max_epochs=1, batch_size=8, min_steps_per_epoch=1, augment="none", progress=False)
    fewlabel.train(data, tmp_path / "m", strategy="scratch", labels_per_class=4, seed=0, finetune=fast)
    new = tmp_path / "new"
    new.mkdir()
    write_tiff(new / "grey_float.tif", np.random.default_rng(0).random((1, 16, 16)).astype(np.float32))
    write_png(new / "ok.png", np.zeros((3, 16, 16), np.uint8))
    out = tmp_path / "p.csv"
    code, err = _cli(capfd, "predict", tmp_path / "m", new, "--out", out)
    assert code == PROBLEMS and "grey_float.tif" in err and "--allow-mismatch" in err
    assert "grey_float" not in out.read_text() and "ok.png" in out.read_text()
    code, err = _cli(capfd, "predict", tmp_path / "m", new, "--out", out, "--allow-mismatch", "--overwrite")
    assert code == 0 and "warning" in err and "grey_float" in out.read_text()


# -- kill -9 (slow) ------------------------------------------------------------------------------


def _start(args: list[str | Path], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
           "FEWLABEL_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-m", "fewlabel", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(proc: subprocess.Popen, seconds: float) -> None:
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_of_train_keeps_every_file_whole(tmp_path: Path, seed: int) -> None:
    import fewlabel

    rng = random.Random(seed)
    data = make_class_folder(tmp_path / "data", {"a": 10, "b": 10}, size=(16, 16), seed=0)
    other, model = tmp_path / "other", tmp_path / "m"
    for out in (other, model):
        assert run_cli("train", "--strategy", "scratch", data, "--out", out, "--max-epochs", "2",
                       "--seed", "0") == 0
    kept_other = _snapshot(other)
    _kill_after(_start(["train", "--strategy", "scratch", data, "--out", model, "--overwrite",
                        "--max-epochs", "40", "--seed", "1"],
                       tmp_path), rng.uniform(1.0, 12.0))
    assert _snapshot(other) == kept_other  # another model folder: untouched
    for name in ("config.json", "metrics.json", "plan.json"):
        json.loads((model / name).read_text())  # each file whole: old or new, never half
    try:
        fewlabel.load_model(model)  # old weights + old config, or new + new; a mix is named, not loaded
    except FewlabelError as exc:
        assert "config.json" in str(exc) and "\n" not in str(exc)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_of_pretrain_leaves_earlier_encoders(tmp_path: Path, seed: int) -> None:
    from fewlabel.models.io import verify_encoder_file

    rng = random.Random(seed)
    pool = make_class_folder(tmp_path / "pool", {"a": 12, "b": 12}, size=(16, 16), seed=0)
    first = tmp_path / "first.safetensors"
    assert run_cli("pretrain", "ssl", pool, "--out", first, "--steps", "3", "--batch-size", "8",
                   "--depth", "3", "--width", "4", "--cache-dir", tmp_path / "cache") == 0
    kept = first.read_bytes()
    second = tmp_path / "second.safetensors"
    _kill_after(_start(["pretrain", "ssl", pool, "--out", second, "--steps", "400", "--batch-size", "8",
                        "--depth", "3", "--width", "4", "--seed", "1", "--cache-dir", tmp_path / "cache"],
                       tmp_path), rng.uniform(1.0, 10.0))
    assert first.read_bytes() == kept
    verify_encoder_file(first)
    for f in [*tmp_path.glob("*.safetensors"), *(tmp_path / "cache").rglob("*.safetensors")]:
        verify_encoder_file(f)  # whatever exists is whole


@pytest.mark.slow
def test_kill_9_of_curve_keeps_finished_cells(tmp_path: Path) -> None:
    import sqlite3

    data = make_class_folder(tmp_path / "data", {"a": 12, "b": 12}, size=(16, 16), seed=0)
    run = tmp_path / "run"
    args = ["curve", data, "--out", run, "--strategies", "scratch", "--sizes", "2,3,4", "--repeats", "3",
            "--max-epochs", "2", "--quiet"]

    def rows() -> dict[tuple, tuple]:
        if not (run / "store.sqlite").exists():
            return {}
        conn = sqlite3.connect(run / "store.sqlite")
        try:
            got = conn.execute('SELECT strategy, n_per_class, "repeat", status, roc_auc, accuracy '
                               "FROM cells").fetchall()
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()
        return {r[:3]: r[3:] for r in got}

    rng = random.Random(0)
    seen: dict[tuple, tuple] = {}
    for _ in range(3):
        _kill_after(_start(args, tmp_path), rng.uniform(3.0, 15.0))
        now = rows()
        assert all(now[k] == v for k, v in seen.items())  # no finished cell changed or vanished
        seen = now
    assert run_cli(*args) == 0
    final = rows()
    assert len(final) == 9 and all(final[k] == v for k, v in seen.items())


def test_an_encoder_file_a_curve_cannot_use_is_refused_before_the_run_starts(tmp_path: Path, capfd) -> None:
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.io import save_encoder

    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), seed=0)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    convnet = save_encoder(tmp_path / "own.safetensors", create_encoder(name="convnet", in_channels=1,
                                                                         spatial_dims=2, width=4, depth=2),
                           {"seen_files": []})
    for weights, encoder, problem in ((garbage, "convnet", "not a safetensors file"),
                                      (convnet, "vit", "holds a convnet encoder, not vit")):
        out = tmp_path / f"run_{weights.stem}"
        code, err = _cli(capfd, "curve", data, "--out", out, "--strategies", "probe", "--sizes", "2",
                         "--encoder", encoder, "--encoder-weights", weights, "-q")
        assert code == USAGE
        assert problem in _one_line(err, weights.name)
        assert not (out / "run.json").exists()  # refused before anything is written, not cell by cell


def test_a_fewlabel_encoder_file_names_its_own_architecture(tmp_path: Path, capfd) -> None:
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.io import save_encoder

    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), seed=0)
    own = save_encoder(tmp_path / "own.safetensors", create_encoder(name="convnet", in_channels=1,
                                                                     spatial_dims=2, width=4, depth=2),
                       {"seen_files": []})
    code, err = _cli(capfd, "train", data, "--strategy", "probe", "--encoder-weights", own, "--out",
                     tmp_path / "m", "--max-epochs", "1")
    assert code == 0, err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["strategy"]["encoder"] == "convnet"  # not the probe's MobileNetV2 it never built


def test_a_damaged_safetensors_file_for_the_imagenet_encoder_says_what_is_wrong(tmp_path: Path,
                                                                                 capfd) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(16, 16), seed=0)
    damaged = tmp_path / "enc.safetensors"
    damaged.write_bytes(b"\x00" * 64)
    code, err = _cli(capfd, "train", data, "--strategy", "probe", "--encoder-weights", damaged,
                     "--out", tmp_path / "m")
    assert code == USAGE
    line = _one_line(err, "enc.safetensors")
    assert "not a safetensors file" in line and "sha256 prefix" not in line
