"""fewlabel.fileio: atomic writes (never half-written, no temporary left behind) and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import pytest

from fewlabel import fileio
from fewlabel.fileio import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    temp_path,
)


class Boom(Exception):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_exception_inside_atomic_path_keeps_old_content_and_removes_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old content")
    seen = {}
    with pytest.raises(Boom), atomic_path(target) as tmp:
        seen["tmp"] = tmp
        tmp.write_bytes(b"new content, half")
        raise Boom
    assert target.read_bytes() == b"old content"
    assert not seen["tmp"].exists()
    assert _names(tmp_path) == ["model.bin"]


def test_exception_before_temp_is_created_leaves_nothing(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(Boom), atomic_path(target):
        raise Boom
    assert _names(tmp_path) == []


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and _names(tmp_path) == ["a.txt"]


def test_failing_writer_in_write_helper_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})  # not serialisable: fails before any byte is written

    def fsync_fails(fd):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"v": 2}, fsync=True)  # fails after the temp file was written
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert _names(tmp_path) == ["run.json"]


def test_clean_exit_replaces_target(tmp_path):
    target = tmp_path / "sub" / "dir" / "x.txt"  # missing parents are created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".x.txt.tmp-")
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _names(target.parent) == ["x.txt"]


def test_temp_names_are_hidden_unique_and_swept_by_curve_pattern(tmp_path):
    target = tmp_path / "run.json"
    a, b = temp_path(target), temp_path(target)
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(".run.json.tmp") and f"-{os.getpid()}-" in a.name
    a.touch()
    assert list(tmp_path.glob(".*.tmp-*")) == [a]  # experiments.run_folder sweeps leftovers with this pattern


def test_bytes_round_trip(tmp_path):
    data = bytes(range(256)) * 10
    path = atomic_write_bytes(tmp_path / "b.bin", data)
    assert path == tmp_path / "b.bin" and path.read_bytes() == data
    assert atomic_write_bytes(str(tmp_path / "b.bin"), b"", fsync=True).read_bytes() == b""
    assert _names(tmp_path) == ["b.bin"]


def test_text_round_trip_utf8_and_newlines_verbatim(tmp_path):
    text = "ümlaut, µm, 细胞\r\nsecond line\nthird\n"
    path = atomic_write_text(tmp_path / "t.txt", text)
    assert path.read_bytes() == text.encode("utf-8")
    with open(path, encoding="utf-8", newline="") as fh:
        assert fh.read() == text


def test_json_round_trip(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"nested": "µ"}, "flag": True}
    path = atomic_write_json(tmp_path / "o.json", obj)
    assert json.loads(path.read_text(encoding="utf-8")) == obj
    assert path.read_text() == json.dumps(obj, indent=2) + "\n"
    assert atomic_write_json(path, obj, indent=1, sort_keys=True).read_text() == (
        json.dumps(obj, indent=1, sort_keys=True) + "\n")
    written = atomic_write_json(path, {"p": tmp_path}, default=str)
    assert json.loads(written.read_text()) == {"p": str(tmp_path)}


def test_file_sha256_matches_hashlib_across_chunks(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, fileio.CHUNK_SIZE * 2 + 12345, dtype=np.uint8).tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(str(path), chunk_size=1000) == expected
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()


def test_np_save_with_suffix_writes_the_target(tmp_path):
    target = tmp_path / "map.npy"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    with atomic_path(target, suffix=".npy") as tmp:
        assert tmp.name.endswith(".npy")
        np.save(tmp, array)
    np.testing.assert_array_equal(np.load(target), array)
    assert _names(tmp_path) == ["map.npy"]  # np.save did not write a second, ".npy"-appended file


def test_writer_that_never_creates_the_temp_fails_loudly(tmp_path):
    target = tmp_path / "x.npy"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), atomic_path(target) as tmp:
        np.save(tmp, np.zeros(2))  # without suffix=".npy" np.save writes "<tmp>.npy" instead
    assert target.read_bytes() == b"old"
    for leftover in tmp_path.glob(".*.npy"):  # the stray file np.save made is the caller's mistake
        leftover.unlink()


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    atomic_write_bytes(target, payloads[0])
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            data = target.read_bytes()
            if data not in payloads:
                errors.append(len(data))

    def writer(i):
        for _ in range(20):
            atomic_write_bytes(target, payloads[i])

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(len(payloads))]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    r.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert _names(tmp_path) == ["shared.bin"]
