"""Progress a log shows: off a terminal, training and curves print plain lines at a steady pace."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from fewlabel.experiments.progress import Progress
from fewlabel.training import heartbeat
from fewlabel.training.heartbeat import Heartbeat, duration, progress_mode, time_left

from factory import make_class_folder, run_cli


def test_modes_follow_the_terminal(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert progress_mode(None) == "lines"
    assert progress_mode(False) == "off"
    assert progress_mode(True) == "bar"


def test_heartbeat_is_due_only_after_its_period() -> None:
    said: list[str] = []
    beat = Heartbeat(10.0, said.append)
    t = beat.last
    assert not beat.due(t + 9.9)
    assert beat.due(t + 10.0)
    beat.beat("alive", t + 10.0)
    assert said == ["alive"] and not beat.due(t + 15.0)


def test_time_left_from_the_pace_so_far() -> None:
    assert time_left(10, 40, 60.0) == ", ~3 min 00 s left"  # 6 s a step, 30 steps to go
    assert time_left(0, 40, 60.0) == "" and time_left(5, None, 60.0) == ""
    assert duration(7325) == "2 h 02 min"


def test_fine_tuning_off_a_terminal_prints_epoch_loss_and_time_left(tmp_path: Path, capfd,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(heartbeat, "LINE_EVERY_S", 0.0)  # a line after every step
    data = make_class_folder(tmp_path / "cells", classes={"a": 8, "b": 8}, size=(16, 16), separable=True)
    code = run_cli("train", data, "--out", tmp_path / "m", "--strategy", "scratch", "--max-epochs", "2",
                   "--set", "ensemble=2", "--device", "cpu")
    err = capfd.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("fine-tune")]
    assert lines, err
    pattern = re.compile(r"^fine-tune member [12]/2: epoch [12]/2, step \d+/\d+, loss [\d.e+-]+, .*left$")
    assert all(pattern.match(line) for line in lines), lines
    assert any(line.startswith("fine-tune member 2/2") for line in lines)
    assert "\r" not in err  # no progress bar fragments in a log


def test_no_lines_when_progress_is_off(capfd, monkeypatch) -> None:
    import torch

    from fewlabel.models.encoder import create_encoder
    from fewlabel.training.finetune import FinetuneConfig, finetune

    monkeypatch.setattr(heartbeat, "LINE_EVERY_S", 0.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 16, 16)).astype(np.float32)
    y = np.array([0, 1] * 4)
    torch.manual_seed(0)
    enc = create_encoder("convnet", in_channels=1, spatial_dims=2, image_size=(16, 16))
    finetune(x, y, None, None, 2, enc, FinetuneConfig(max_epochs=1, batch_size=4, progress=False,
                                                      device="cpu"))
    assert "fine-tune" not in capfd.readouterr().err


def test_curve_heartbeat_speaks_between_cells_and_stops_when_closed(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    lines: list[str] = []
    bar = Progress(4, 1, None, lines.append, quiet_s=0.05)
    time.sleep(0.3)
    bar.update("scratch n=2 r=0: roc_auc 0.700")
    bar.close()
    time.sleep(0.15)
    count = len(lines)
    time.sleep(0.2)
    assert len(lines) == count  # closed: silent
    working = [line for line in lines if "working:" in line]
    assert working and working[0].startswith("[1/4] working:"), lines
    assert any(line.startswith("[2/4] scratch n=2 r=0") for line in lines)


@pytest.mark.parametrize("enabled, log", [(False, True), (None, False)])
def test_curve_heartbeat_stays_silent_when_quiet(monkeypatch, enabled, log) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    lines: list[str] = []
    bar = Progress(4, 0, enabled, lines.append if log else None, quiet_s=0.02)
    time.sleep(0.15)
    bar.close()
    assert not lines


def test_a_step_is_said_only_when_it_is_slow() -> None:
    from fewlabel.experiments.progress import said_if_slow

    said: list[str] = []
    with said_if_slow(said.append, "opening fast ...", after_s=0.5):
        pass
    with said_if_slow(said.append, "opening slow ...", after_s=0.05):
        time.sleep(0.3)
    time.sleep(0.6)  # the fast block's timer would have fired by now had it not been cancelled
    assert said == ["opening slow ..."]


def test_a_curve_refused_at_once_prints_one_line(tmp_path: Path, capfd) -> None:
    data = tmp_path / "d"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    (data / "a" / "1.png").write_bytes(b"not a png")
    code = run_cli("curve", data, "--out", tmp_path / "r", "--strategies", "scratch", "--sizes", "2")
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "r" / "run.json").exists()


def test_a_refused_resume_is_one_line(tmp_path: Path, capfd) -> None:
    data = make_class_folder(tmp_path / "cells", classes={"a": 6, "b": 6}, size=(16, 16), seed=0)
    out = tmp_path / "r"
    base = ["curve", data, "--out", out, "--strategies", "scratch", "--sizes", "1", "--max-epochs", "1"]
    assert run_cli(*base) == 0
    capfd.readouterr()
    code = run_cli(*base[:-2], "--max-epochs", "2")  # another configuration in the same folder
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "another configuration" in err[0], err
