"""Executors (local loop, process pool, Ray) and the curve's safety: kill -9 at any moment loses at most
the cells in flight and never duplicates a row; Ray gives the same results as the local loop."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from curve_fakes import FakeBackend, make_fake_data, square

from fewlabel.experiments import run_curve
from fewlabel.experiments.executors import LocalExecutor, make_executor

TESTS = Path(__file__).resolve().parent
COMPARED = ("strategy", "n_per_class", "repeat", "seed", "draw_seed", "status", "roc_auc", "accuracy",
            "balanced_accuracy", "macro_f1", "roc_auc_ci_low", "roc_auc_ci_high", "n_train", "model_path")


def test_local_loop_yields_results_and_errors():
    results = dict(LocalExecutor().map(square, [1, -2, 3]))
    assert results[1] == 1 and results[3] == 9
    assert isinstance(results[-2], ValueError)


def test_process_pool():
    ex = LocalExecutor(workers=2, threads=1)
    try:
        results = dict(ex.map(square, [2, -1, 4]))
    finally:
        ex.close()
    assert results[2] == 4 and results[4] == 16 and isinstance(results[-1], ValueError)


def test_make_executor_rejects_unknown():
    with pytest.raises(ValueError, match="local' or 'ray"):
        make_executor("spark")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting costs ~4 s); workers find the fake pipeline on PYTHONPATH."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def test_ray_executor_map(local_ray):
    ex = make_executor("ray", cpus_per_cell=1)
    results = dict(ex.map(square, [3, -1]))
    ex.close()  # joined an existing Ray: leaves it running
    assert local_ray.is_initialized()
    assert results[3] == 9 and isinstance(results[-1], ValueError)


def test_ray_gives_the_same_results_as_local(local_ray, tmp_path):
    data = make_fake_data(tmp_path / "data")
    grid = {"strategies": "scratch,ssl", "sizes": [2, 5], "repeats": 2, "backend": FakeBackend(), "log": None,
            "progress": False}
    local = run_curve(data, tmp_path / "local", executor="local", **grid)
    ray_run = run_curve(data, tmp_path / "ray", executor="ray", **grid)
    assert ray_run.ok and ray_run.config_hash == local.config_hash
    assert [[r[c] for c in COMPARED] for r in ray_run.rows] == [[r[c] for c in COMPARED] for r in local.rows]
    assert {r["worker"] for r in ray_run.rows} != {r["worker"] for r in local.rows}  # it did run elsewhere
    assert (tmp_path / "ray/cells/ssl/n5_r0/config.json").exists()


_SCRIPT = """
import sys
from curve_fakes import FakeBackend
from fewlabel.experiments import run_curve
run_curve(sys.argv[1], sys.argv[2], strategies="scratch,ssl", sizes=[2, 5, 10], repeats=2,
          backend=FakeBackend(), log=None, progress=False)
"""


def _rows(store: Path) -> list[tuple]:
    if not store.exists():
        return []
    conn = sqlite3.connect(store, timeout=10)
    try:
        return conn.execute('SELECT strategy, n_per_class, "repeat", status FROM cells').fetchall()
    except sqlite3.OperationalError:  # the table is not there yet
        return []
    finally:
        conn.close()


def _run_and_kill(data: Path, out: Path, after_rows: int) -> int:
    """Start the curve in a subprocess, SIGKILL it once ``after_rows`` rows are in; rows seen then."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "FAKE_DELAY": "0.2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(data), str(out)], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(_rows(out / "store.sqlite")) < after_rows:
            assert proc.poll() is None, "the curve ended before it could be killed"
            assert time.monotonic() < deadline, "no rows appeared"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return len(_rows(out / "store.sqlite"))


def test_kill_9_loses_only_cells_in_flight(tmp_path):
    data = make_fake_data(tmp_path / "data")
    out = tmp_path / "run"
    n1 = _run_and_kill(data, out, after_rows=2)
    conn = sqlite3.connect(out / "store.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    n2 = _run_and_kill(data, out, after_rows=n1 + 3)  # killed again, later
    assert 2 <= n1 < n2 < 12

    result = run_curve(data, out, strategies="scratch,ssl", sizes=[2, 5, 10], repeats=2,
                       backend=FakeBackend(), log=None, progress=False)
    rows = _rows(out / "store.sqlite")
    keys = [r[:3] for r in rows]
    assert len(rows) == 12 and len(set(keys)) == 12  # exactly one row per cell
    assert {r[3] for r in rows} == {"ok"}
    assert result.resumed >= n2 and result.ran == 12 - result.resumed
    assert not list(out.rglob(".*tmp*"))  # partial files of the killed runs are gone
    assert len(list((out / "cells").glob("*/n*_r*"))) == 12
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 13


def _tiny_folder(root: Path) -> Path:
    from factory import make_class_folder

    # Not separable: the probabilities are far from 0/1, so any difference between runs shows.
    return make_class_folder(root, classes={"a": 12, "b": 12}, size=(16, 16), separable=False)


def test_ray_matches_local_bit_for_bit_on_the_real_pipeline(local_ray, tmp_path):
    pytest.importorskip("fewlabel.data.catalog")
    data = _tiny_folder(tmp_path / "data")
    grid = {"strategies": "scratch", "sizes": [2, 5], "repeats": 1, "test_size": 4,
            "finetune": {"max_epochs": 2}, "log": None, "progress": False}
    local = run_curve(data, tmp_path / "local", **grid)
    ray_run = run_curve(data, tmp_path / "ray", executor="ray", **grid)
    assert local.ok and ray_run.ok
    assert [[r[c] for c in COMPARED] for r in ray_run.rows] == [[r[c] for c in COMPARED] for r in local.rows]
    for row in local.rows:
        a, b = (tmp_path / name / row["proba_path"] for name in ("local", "ray"))
        assert a.read_bytes() == b.read_bytes()


def test_cli_kill_9_then_rerun_on_the_real_pipeline(tmp_path):
    pytest.importorskip("fewlabel.data.catalog")
    data = _tiny_folder(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fewlabel", "curve", str(data), "--out", str(out), "--strategies", "scratch",
           "--sizes", "2,3,4,5", "--repeats", "2", "--test-size", "4", "--max-epochs", "2", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_rows(out / "store.sqlite")) < 2:
            assert proc.poll() is None, "the curve ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(_rows(out / "store.sqlite")) < 8
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _rows(out / "store.sqlite")
    assert len(rows) == 8 and len({r[:3] for r in rows}) == 8 and {r[3] for r in rows} == {"ok"}
    assert len((out / "results.csv").read_text().splitlines()) == 9


_SCRIPT_CTRL_C = """
import sys
from curve_fakes import FakeBackend
from fewlabel.experiments import run_curve
try:
    run_curve(sys.argv[1], sys.argv[2], strategies="scratch,ssl", sizes=[2, 5, 10], repeats=2,
              backend=FakeBackend(), log=None, progress=False)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path):
    data = make_fake_data(tmp_path / "data")
    out = tmp_path / "run"
    # 3 s a cell (36 s in all): a heavily loaded machine, whose polling here may stall for seconds,
    # must still find the run mid-way when the signal arrives
    env = {**os.environ, "PYTHONPATH": str(TESTS), "FAKE_DELAY": "3.0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT_CTRL_C, str(data), str(out)], env=env)
    try:
        while len(_rows(out / "store.sqlite")) < 2:
            assert proc.poll() is None
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    n = len(_rows(out / "store.sqlite"))
    assert 2 <= n < 12
    # the interrupted run still exported what it had and left no lock or temporary files behind
    assert len((out / "results.csv").read_text().splitlines()) == n + 1
    assert not list(out.rglob(".*tmp*"))
    result = run_curve(data, out, strategies="scratch,ssl", sizes=[2, 5, 10], repeats=2,
                       backend=FakeBackend(), log=None, progress=False)
    assert result.resumed == n and len(result.rows) == 12
