"""Files that are not what their names say, interruptions at the worst instant, a full disk.

* A FIFO, a character device (a symlink to ``/dev/zero``) or a 1 TB sparse file among the images: every
  command names it (or refuses the data in one line) within seconds, never opens a FIFO, never hashes
  for minutes. The commands run in ONE child process, each under an alarm, so a regression fails here
  instead of hanging the suite (a blocked ``open`` of a FIFO is interrupted by the alarm).
* ``kill -9`` of ``curve`` around the creation of its run folder: the same command resumes. The fast
  part builds each state a kill can leave; the ``slow`` part kills a real ``fewlabel curve``.
* A full disk is one line, exit 2, "no space left", never "corrupt" and never "delete".
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from curve_fakes import FakeBackend, make_fake_data
from test_hostile import _cli, _one_line

from fewlabel.errors import DiskFullError, FewlabelError, is_disk_full
from fewlabel.experiments import run_curve
from fewlabel.experiments.store import ResultStore

from factory import _chunk, make_class_folder, run_cli, write_dicom_series, write_png

USAGE, PROBLEMS = 2, 1
SRC = Path(__file__).resolve().parents[1] / "src"
LIMIT_S = 10  # every command, hostile file or not, answers within this

# Runs fewlabel.cli.main once per command (argv lists in a JSON file), each under an alarm; writes
# {name: {code, err, out, seconds}}. One process: torch is imported once for all commands.
_CHILD = r"""
import contextlib, io, json, signal, sys, time
from fewlabel.cli import main

class Hung(BaseException):
    pass

def _alarm(*_):
    raise Hung()

signal.signal(signal.SIGALRM, _alarm)
commands, limit, report = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
results = {}
for name, argv in commands.items():
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    signal.alarm(limit)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    except Hung:
        code = "hung"
    finally:
        signal.alarm(0)
    results[name] = {"code": code, "err": err.getvalue(), "out": out.getvalue(),
                     "seconds": time.monotonic() - t0}
with open(report, "w") as fh:
    json.dump(results, fh)
"""


def _run_commands(tmp: Path, commands: dict[str, list[str]]) -> dict[str, dict]:
    script, spec, report = tmp / "child.py", tmp / "commands.json", tmp / "results.json"
    script.write_text(_CHILD)
    spec.write_text(json.dumps({k: [str(a) for a in v] for k, v in commands.items()}))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "FEWLABEL_CACHE": str(tmp / "cache"),
           "COLUMNS": "200"}
    subprocess.run([sys.executable, str(script), str(spec), str(LIMIT_S), str(report)], env=env,
                   timeout=LIMIT_S * len(commands) + 60, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def _regular_files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every regular file's size, mtime and first MiB (special files are never read: that is the
    point; the sparse terabyte is not read whole either)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_symlink() and p.is_file():
            with open(p, "rb") as fh:
                out[str(p.relative_to(folder))] = (p.stat().st_size, p.stat().st_mtime_ns, fh.read(1 << 20))
    return out


def _sparse_png_with_huge_tail(path: Path) -> Path:
    """A valid 16×16 PNG header and image, then a 1 TB sparse tail (no disk space used)."""
    import struct
    import zlib

    raw = b"".join(b"\x00" + bytes(range(16)) for _ in range(16))
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
                     + _chunk(b"IEND", b""))
    os.truncate(path, 1 << 40)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """Data sets each holding one hostile entry, a model, and every command's result on them."""
    tmp = tmp_path_factory.mktemp("hostile_files")
    sets = {}
    for name in ("fifo_png", "fifo_noext", "dev_zero", "sparse", "sparse_tail"):
        sets[name] = make_class_folder(tmp / name, {"a": 6, "b": 6}, size=(16, 16), seed=0)
    os.mkfifo(sets["fifo_png"] / "a" / "x.png")
    os.mkfifo(sets["fifo_noext"] / "a" / "x")
    os.symlink("/dev/zero", sets["dev_zero"] / "a" / "x.png")
    with open(sets["sparse"] / "b" / "huge.png", "wb") as fh:
        fh.truncate(1 << 40)  # truncate -s 1T: a terabyte that takes no disk space
    _sparse_png_with_huge_tail(sets["sparse_tail"] / "b" / "huge.png")
    model = tmp / "model"
    assert run_cli("train", "--strategy", "scratch", make_class_folder(tmp / "clean", {"a": 6, "b": 6},
                   size=(16, 16), seed=0), "--out", model, "--max-epochs", "1") == 0
    pred = {}
    for name, fifo in (("fifo_png", "x.png"), ("fifo_noext", "x")):
        d = tmp / f"pred_{name}"
        d.mkdir()
        shutil.copy(sets[name] / "a" / "p0001_s00.png", d / "good.png")
        os.mkfifo(d / fifo)
        pred[name] = d
    plans = tmp / "plans"  # a --plan (a JSON record) that is a FIFO, /dev/zero or a sparse terabyte
    plans.mkdir()
    os.mkfifo(plans / "fifo.json")
    os.symlink("/dev/zero", plans / "zero.json")
    with open(plans / "sparse.json", "wb") as fh:
        fh.truncate(1 << 40)
    before = {name: _regular_files(folder) for name, folder in sets.items()}
    train = ["train", "--strategy", "scratch", "--max-epochs", "1", "--out"]
    plan_commands = {f"train plan {kind}": [*train, tmp / f"mp_{kind}", tmp / "clean", "--plan",
                                            plans / f"{kind}.json"] for kind in ("fifo", "zero", "sparse")}
    commands = {
        "train fifo_png": [*train, tmp / "m1", sets["fifo_png"]],
        "pretrain fifo_png": ["pretrain", "gan", sets["fifo_png"], "--out", tmp / "gan.safetensors",
                              "--steps", "1", "--batch-size", "4", "--image-size", "16"],
        "inspect fifo_png": ["inspect", "--json", sets["fifo_png"]],
        "predict fifo_png": ["predict", model, pred["fifo_png"], "--out", tmp / "p1.csv"],
        "inspect fifo_noext": ["inspect", "--json", sets["fifo_noext"]],
        "predict fifo_noext": ["predict", model, pred["fifo_noext"], "--out", tmp / "p2.csv"],
        "predict the fifo": ["predict", model, pred["fifo_noext"] / "x", "--out", tmp / "p3.csv"],
        "train dev_zero": [*train, tmp / "m2", sets["dev_zero"]],
        "train sparse": [*train, tmp / "m3", sets["sparse"]],
        "train sparse_tail": [*train, tmp / "m4", sets["sparse_tail"]],
        "inspect sparse_tail": ["inspect", "--json", sets["sparse_tail"]],
        **plan_commands,
    }
    results = _run_commands(tmp, commands)
    after = {name: _regular_files(folder) for name, folder in sets.items()}
    return {"results": results, "before": before, "after": after, "tmp": tmp}


def _result(hostile: dict, name: str) -> dict:
    res = hostile["results"][name]
    assert res["code"] != "hung", f"{name} hung (more than {LIMIT_S} s)"
    assert res["seconds"] < LIMIT_S
    assert "Traceback" not in res["err"] + res["out"]
    return res


@pytest.mark.parametrize("name, file", [("train fifo_png", "a/x.png"), ("pretrain fifo_png", "a/x.png"),
                                        ("train dev_zero", "a/x.png"), ("train sparse", "b/huge.png"),
                                        ("train sparse_tail", "b/huge.png")])
def test_training_refuses_a_special_or_huge_file_in_one_line(hostile: dict, name: str, file: str) -> None:
    res = _result(hostile, name)
    assert res["code"] == USAGE
    line = _one_line(res["err"], file)
    special = "fifo" in name or "zero" in name
    assert ("FIFO" in line or "character device" in line) if special else "bytes, over the limit" in line
    assert not any((hostile["tmp"] / m).exists() for m in ("m1", "m2", "m3", "m4", "gan.safetensors"))


@pytest.mark.parametrize("name, file", [("inspect fifo_png", "a/x.png"), ("inspect fifo_noext", "a/x"),
                                        ("inspect sparse_tail", "b/huge.png")])
def test_inspect_names_the_file_and_goes_on(hostile: dict, name: str, file: str) -> None:
    res = _result(hostile, name)
    assert res["code"] == PROBLEMS
    problems = {p["path"]: p["problem"] for p in json.loads(res["out"])["problems"]}
    assert list(problems) == [file]
    assert ("FIFO" if "fifo" in name else "bytes, over the limit") in problems[file]


@pytest.mark.parametrize("name", ["predict fifo_png", "predict fifo_noext"])
def test_predict_skips_a_fifo_and_scores_the_rest(hostile: dict, name: str) -> None:
    res = _result(hostile, name)
    assert res["code"] == PROBLEMS
    named = [line for line in res["err"].splitlines() if "FIFO" in line]
    assert len(named) == 1 and "/x" in named[0]
    assert (hostile["tmp"] / ("p1.csv" if "png" in name else "p2.csv")).read_text().count("good.png") == 1


def test_predict_on_a_fifo_itself_is_named(hostile: dict) -> None:
    res = _result(hostile, "predict the fifo")
    assert res["code"] == PROBLEMS and "FIFO" in res["err"] and not (hostile["tmp"] / "p3.csv").exists()


@pytest.mark.parametrize("kind", ["fifo", "zero", "sparse"])
def test_a_plan_that_is_a_fifo_a_device_or_huge_is_refused_unread(hostile: dict, kind: str) -> None:
    res = _result(hostile, f"train plan {kind}")
    assert res["code"] == 2, res
    lines = [line for line in res["err"].splitlines() if line.strip()]
    assert len(lines) == 1 and f"{kind}.json" in lines[0] and "Traceback" not in res["err"], lines
    assert not (hostile["tmp"] / f"mp_{kind}").exists()


def test_the_data_folders_are_unchanged(hostile: dict) -> None:
    assert hostile["after"] == hostile["before"]


# -- each reader and walk, in-process (fast) ----------------------------------------------------------


def test_every_entry_point_refuses_a_fifo_without_opening_it(tmp_path: Path) -> None:
    from fewlabel.data.catalog import load_catalog, load_pool
    from fewlabel.data.identity import file_key
    from fewlabel.data.readers import collect_image_paths, file_format, read_image, read_meta

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    bare = tmp_path / "IM0001"
    os.mkfifo(bare)
    def hung(*_):
        raise TimeoutError(f"hung for {LIMIT_S} s")

    # an open() of a FIFO blocks: the alarm turns a regression into a failure, not a hung suite
    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(LIMIT_S)
    try:
        assert file_format(bare) is None  # the DICOM sniff does not open it
        for fn in (read_image, read_meta, file_key):
            with pytest.raises(FewlabelError, match="FIFO"):
                fn(str(fifo))
        with pytest.raises(FewlabelError, match="FIFO"):
            load_catalog(fifo)
        paths, errors = collect_image_paths([tmp_path])
        assert paths == [] and {Path(p).name for p, _ in errors} == {"x.png", "IM0001"}
        assert all("FIFO" in why for _, why in errors)
        write_png(tmp_path / "ok.png", np.zeros((1, 8, 8)))
        pool = load_pool(tmp_path, strict=False)
        assert [s.id for s in pool.samples] == ["ok.png"]
        assert sorted(i.path for i in pool.issues) == ["IM0001", "x.png"]
        assert all("FIFO" in i.problem for i in pool.issues)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def test_a_manifest_row_naming_a_fifo_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    from fewlabel.data.catalog import load_catalog

    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(8, 8), seed=0)
    os.mkfifo(root / "a" / "fifo.png")
    rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    (root / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    cat = load_catalog(root / "m.csv", strict=False)
    assert [(i.path, i.kind) for i in cat.issues] == [("a/fifo.png", "unreadable")]
    assert "FIFO" in cat.issues[0].problem


def test_content_keys_check_the_header_and_the_size_first(tmp_path: Path, monkeypatch) -> None:
    from test_hostile import nifti_bomb, png8_bomb, png16_bomb

    from fewlabel.data import identity
    from fewlabel.limits import max_file_bytes

    hashed = []
    monkeypatch.setattr(identity.hashlib, "blake2b", lambda **kw: hashed.append(1))
    for bomb in (png16_bomb(tmp_path / "b16.png"), png8_bomb(tmp_path / "b8.png"),
                 nifti_bomb(tmp_path / "b.nii")):
        with pytest.raises(FewlabelError, match="limit"):
            identity.file_key(str(bomb))
    big = tmp_path / "big.npy"
    with open(big, "wb") as fh:
        fh.truncate(max_file_bytes() + 1)
    with pytest.raises(FewlabelError, match="bytes, over the limit"):
        identity.file_key(str(big))
    assert hashed == []  # refused before a byte was hashed


# -- kill -9 around the creation of a run folder -----------------------------------------------------


GRID = {"strategies": "scratch", "sizes": [2, 3], "repeats": 2}


def _fake_curve(data: Path, out: Path):
    return run_curve(data, out, **GRID, backend=FakeBackend(), log=None, progress=False, command="test")


def _rows(out: Path) -> dict:
    with ResultStore(out, create=False) as store:
        rows = store.rows()
    return {(r["strategy"], r["n_per_class"], r["repeat"]): (r["status"], r["roc_auc"]) for r in rows}


def _state(name: str, out: Path, ref: Path) -> None:
    """What ``kill -9`` at one instant of a first ``curve`` leaves in ``out`` (``ref``: a finished run of
    the same command, for the files a kill keeps whole)."""
    out.mkdir()
    (out / ".lock").write_text("12345")
    if name == "lock only":
        return
    if name == "half-written run.json":
        (out / ".run.json.tmp-1-abcd").write_text('{"fewlabel_r')
        return
    shutil.copy(ref / "run.json", out / "run.json")
    if name == "run.json only":
        return
    shutil.copy(ref / "plan.json", out / "plan.json")
    store = out / "store.sqlite"
    if name == "0-byte store":  # what fewlabel before atomic creation left: sqlite opened, nothing written
        store.write_bytes(b"")
    elif name == "store without tables":
        conn = sqlite3.connect(store)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    elif name == "half-made temporary store":
        (out / ".store.sqlite.tmp-1-abcd").write_bytes(b"SQLite format 3\x00" + bytes(100))
        (out / ".store.sqlite.tmp-1-abcd-wal").write_bytes(bytes(32))
    elif name == "store without meta":
        ResultStore(out).close()


STATES = ["lock only", "half-written run.json", "run.json only", "plan without store", "0-byte store",
          "store without tables", "half-made temporary store", "store without meta"]


def test_every_state_a_kill_at_creation_leaves_resumes(tmp_path: Path) -> None:
    data = make_fake_data(tmp_path / "data", {"a": 12, "b": 12})
    ref = tmp_path / "ref"
    assert _fake_curve(data, ref).ok
    want = _rows(ref)
    for k, name in enumerate(STATES):
        out = tmp_path / f"run{k}"
        _state(name, out, ref)
        result = _fake_curve(data, out)
        assert result.ok and _rows(out) == want, name
        assert not list(out.glob(".*.tmp-*")), name  # leftovers swept


def test_a_store_emptied_beside_finished_cells_is_still_refused(tmp_path: Path) -> None:
    data = make_fake_data(tmp_path / "data", {"a": 12, "b": 12})
    out = tmp_path / "run"
    assert _fake_curve(data, out).ok
    for side in ("-wal", "-shm"):
        Path(f"{out / 'store.sqlite'}{side}").unlink(missing_ok=True)
    (out / "store.sqlite").write_bytes(b"")
    with pytest.raises(FewlabelError, match="empty"):
        _fake_curve(data, out)
    assert (out / "store.sqlite").read_bytes() == b""


def test_a_half_made_store_reads_as_no_rows_not_corrupt(tmp_path: Path) -> None:
    from fewlabel.experiments.run_view import RunView

    data = make_fake_data(tmp_path / "data", {"a": 12, "b": 12})
    ref, out = tmp_path / "ref", tmp_path / "run"
    _fake_curve(data, ref)
    _state("0-byte store", out, ref)
    assert RunView(out).rows() == []
    assert (out / "store.sqlite").read_bytes() == b""  # a reader never removes it


def _curve_cli(data: Path, run: Path) -> list[str]:
    return ["curve", str(data), "--out", str(run), "--strategies", "scratch", "--sizes", "2",
            "--repeats", "1", "--max-epochs", "1", "--quiet"]


def _popen(args: list[str], tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "FEWLABEL_CACHE": str(tmp / "cache")}
    return subprocess.Popen([sys.executable, "-m", "fewlabel", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_around_creation(data: Path, run: Path, tmp: Path, delay: float) -> None:
    """Start ``curve``, wait for its run folder to appear, kill -9 ``delay`` seconds later."""
    proc = _popen(_curve_cli(data, run), tmp)
    deadline = time.monotonic() + 60
    while not run.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_at_random_instants_of_run_folder_creation_then_resume(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(8, 8), seed=0)
    rng = random.Random(0)
    for k in range(20):
        run = tmp_path / f"run{k}"
        # run.json, plan.json and the store appear within ~20 ms of the folder: half the kills aim there
        _kill_around_creation(data, run, tmp_path, rng.uniform(0.0, 0.02 if k % 2 else 1.5))
        left = sorted(p.name for p in run.iterdir()) if run.exists() else []
        proc = _popen(_curve_cli(data, run), tmp_path)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (k, left, err.decode())
        assert _rows(run) and all(status == "ok" for status, _ in _rows(run).values())


# -- a full disk ----------------------------------------------------------------------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write reports it: no file named


class _FullDiskConnection:
    """An SQLite connection whose writes fail as they do on a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        object.__setattr__(self, "_conn", conn)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._conn, name, value)

    def execute(self, sql: str, *args):
        if sql.lstrip().upper().startswith(("BEGIN", "INSERT", "CREATE", "PRAGMA JOURNAL_MODE")):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)


def _disk_full_line(err: str, name: str) -> str:
    line = _one_line(err, name)
    assert "no space left" in line and "corrupt" not in line and "delete" not in line
    return line


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("full_disk")
    data = make_class_folder(tmp / "data", {"a": 6, "b": 6}, size=(8, 8), seed=0)
    model, run = tmp / "model", tmp / "run"
    assert run_cli("train", "--strategy", "scratch", data, "--out", model, "--max-epochs", "1") == 0
    assert run_cli(*_curve_cli(data, run)) == 0
    return {"tmp": tmp, "data": data, "model": model, "run": run}


def test_report_on_a_full_disk_is_not_called_corrupt(small_run: dict, capfd, monkeypatch) -> None:
    run = small_run["run"]
    store = (run / "store.sqlite").read_bytes()
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: _FullDiskConnection(connect(*a, **k)))
    code, err = _cli(capfd, "report", run, "--no-explain", "--quiet")
    assert code == USAGE
    _disk_full_line(err, "store.sqlite")
    monkeypatch.undo()
    assert (run / "store.sqlite").read_bytes() == store
    with ResultStore(run, create=False) as s:  # the store was fine all along
        assert s.rows()


def test_curve_on_a_full_disk(small_run: dict, capfd, monkeypatch) -> None:
    data, tmp = small_run["data"], small_run["tmp"]
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: _FullDiskConnection(connect(*a, **k)))
    code, err = _cli(capfd, *_curve_cli(data, tmp / "run_full"))
    assert code == USAGE
    _disk_full_line(err, "store.sqlite")
    monkeypatch.undo()
    assert run_cli(*_curve_cli(data, tmp / "run_full")) == 0  # space freed: the same command goes on
    monkeypatch.setattr(os, "replace", _no_space)  # every atomic write (run.json first) fails
    code, err = _cli(capfd, *_curve_cli(data, tmp / "run_full2"))
    assert code == USAGE
    _disk_full_line(err, "run.json")


def test_curve_cell_files_on_a_full_disk(small_run: dict, capfd, monkeypatch) -> None:
    from fewlabel.experiments import run_folder

    class Full:  # a cell file whose write fails as on a full disk
        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        write = _no_space

    def full_open(path, mode="r", *args, **kwargs):
        return Full() if "cells" in Path(path).parts else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(run_folder, "open", full_open, raising=False)
    run = small_run["tmp"] / "run_cells"
    code, err = _cli(capfd, *_curve_cli(small_run["data"], run))
    assert code == USAGE
    _disk_full_line(err, "n2_r0")
    assert not list((run / "cells").rglob("*.npy"))


def test_train_and_predict_on_a_full_disk(small_run: dict, capfd, monkeypatch) -> None:
    tmp = small_run["tmp"]
    monkeypatch.setattr(os, "replace", _no_space)
    code, err = _cli(capfd, "train", "--strategy", "scratch", small_run["data"], "--out", tmp / "m_full",
                     "--max-epochs", "1")
    assert code == USAGE
    _disk_full_line(err, "m_full")
    code, err = _cli(capfd, "predict", small_run["model"], small_run["data"] / "a", "--out", tmp / "p.csv")
    assert code == USAGE
    _disk_full_line(err, "p.csv")
    assert not (tmp / "p.csv").exists()


def test_disk_full_is_recognised_in_every_library_s_words() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                     'message: "No space left on device" })'))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("PytorchStreamWriter failed writing file") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert isinstance(DiskFullError(path="x"), FewlabelError)


def test_only_a_damaged_store_is_called_corrupt(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    ResultStore(run).close()
    connect = sqlite3.connect

    class Locked(_FullDiskConnection):
        def execute(self, sql: str, *args):
            if sql.lstrip().upper().startswith("BEGIN"):
                raise sqlite3.OperationalError("database is locked")
            return self._conn.execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: Locked(connect(*a, **k)))
    with pytest.raises(FewlabelError) as exc:
        ResultStore(run)
    assert "locked" in str(exc.value) and "corrupt" not in str(exc.value) and "delete" not in str(exc.value)
    monkeypatch.undo()
    (run / "store.sqlite").write_bytes(os.urandom(4096))
    for side in ("-wal", "-shm"):
        Path(f"{run / 'store.sqlite'}{side}").unlink(missing_ok=True)
    with pytest.raises(FewlabelError, match="corrupt"):
        ResultStore(run)


def test_a_fifo_among_dicom_slices_is_named_not_read_as_a_slice(tmp_path: Path) -> None:
    from fewlabel.data.catalog import load_catalog

    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(8, 8), seed=0)
    series = root / "a" / "series"
    write_dicom_series(series, np.zeros((3, 8, 8), np.uint16))
    os.mkfifo(series / "x.dcm")
    cat = load_catalog(root, strict=False)
    assert [(i.path, "FIFO" in i.problem) for i in cat.issues] == [("a/series/x.dcm", True)]
    with pytest.raises(FewlabelError, match="x.dcm: a FIFO"):
        load_catalog(root)


def test_a_cell_failing_for_a_full_disk_stops_the_sweep(tmp_path: Path, monkeypatch) -> None:
    data = make_fake_data(tmp_path / "data", {"a": 12, "b": 12})
    out = tmp_path / "run"
    monkeypatch.setattr(FakeBackend, "fit_cell", _no_space)
    with pytest.raises(DiskFullError, match="no space left"):
        _fake_curve(data, out)
    assert _rows(out) == {}  # no cell recorded as failed: all are pending
    monkeypatch.undo()
    assert _fake_curve(data, out).ok  # space freed: the same command runs them


def test_an_io_error_on_a_full_device_is_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    from fewlabel.experiments import store as store_mod

    run = tmp_path / "run"
    ResultStore(run).close()
    connect = sqlite3.connect

    class IOFailure(_FullDiskConnection):
        def execute(self, sql: str, *args):
            if sql.lstrip().upper().startswith("PRAGMA JOURNAL_MODE"):
                raise sqlite3.OperationalError("disk I/O error")
            return self._conn.execute(sql, *args)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: IOFailure(connect(*a, **k)))
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 0))
    with pytest.raises(DiskFullError):
        ResultStore(run)
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: usage(10 << 30, 0, 10 << 30))
    with pytest.raises(FewlabelError, match="I/O error") as exc:
        ResultStore(run)
    assert "corrupt" not in str(exc.value)


def test_weight_files_that_are_fifos_are_never_opened(tmp_path: Path) -> None:
    """A FIFO where a model's or an encoder's weights should be: refused by its stat, never opened
    (an open for reading would wait for a writer forever)."""
    from fewlabel.errors import FewlabelError
    from fewlabel.fileio import file_sha256
    from fewlabel.models.imagenet import read_state_dict
    from fewlabel.models.io import read_header

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    for read in (file_sha256, read_header, read_state_dict):
        with pytest.raises(FewlabelError, match="FIFO"):
            read(fifo)


def test_a_report_of_a_run_whose_store_is_gone_is_refused(tmp_path: Path, capfd) -> None:
    """Finished cells without their store: the report says so in one line, not "0 cells finished"."""
    from report_fixtures import make_run

    run = make_run(tmp_path / "run", models=False)
    (run / "store.sqlite").unlink()
    code = run_cli("report", run, "--no-explain")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "store is missing" in lines[0], lines
    assert not (run / "report.html").exists()
