"""Outputs never destroy inputs: every ``--out`` (and the API's ``out``) that is an existing file
without ``--overwrite``, a link, a device / FIFO, or a path inside the data, the pool, the masks or the
images given is refused in one line (exit 2) before any work, and the inputs stay byte-identical."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from report_fixtures import make_run

from fewlabel.errors import FewlabelError

from factory import (
    make_class_folder,
    make_image_mask_tree,
    make_manifest,
    make_pool,
    run_cli,
    write_medmnist_npz,
)

USAGE = 2
FAST = ["--max-epochs", "1"]
PRETRAIN_FAST = ["--image-size", "16", "--steps", "1", "--batch-size", "4", "--width", "4", "--depth", "2"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny trained model folder (16x16 RGB, one epoch): predict and explain really run with it."""
    import fewlabel
    from fewlabel.training.finetune import FinetuneConfig

    root = tmp_path_factory.mktemp("model")
    data = make_class_folder(root / "data", {"a": 6, "b": 6}, size=(16, 16), channels=3, seed=0)
    fast = FinetuneConfig(max_epochs=1, batch_size=8, min_steps_per_epoch=1, augment="none", progress=False)
    fewlabel.train(data, root / "m", strategy="scratch", labels_per_class=3, seed=0, finetune=fast)
    return root / "m"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), channels=3, seed=1)


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (folders as None, files with their bytes, hidden ones too)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _refused(capfd, *args: object, name: object) -> str:
    """Run the CLI; assert exit 2 within 10 s and one stderr line naming ``name``; return the line."""
    t0 = time.perf_counter()
    code = run_cli(*args)
    seconds = time.perf_counter() - t0
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == USAGE, (args, code, lines)
    assert len(lines) == 1 and str(name) in lines[0], lines
    assert seconds < 10, (args, seconds)
    return lines[0]


def _small_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", strategies=("scratch",), sizes=(2,), repeats=1, models=False,
                    probas=False, failed=(), missing=())


# -- an input image as the output ------------------------------------------------------------------


def test_predict_out_on_an_input_image_is_refused(data: Path, model: Path, capfd) -> None:
    before = _tree(data)
    victim = sorted((data / "a").iterdir())[0]
    for extra in ([], ["--overwrite"]):
        line = _refused(capfd, "predict", model, data, "--out", victim, *extra, name=victim)
        assert "input folder" in line
    assert _tree(data) == before


def test_pretrain_out_on_an_input_image_is_refused(data: Path, tmp_path: Path, capfd) -> None:
    before = _tree(data)
    victim = sorted((data / "a").iterdir())[0]
    for method in ("gan", "ssl"):
        for extra in ([], ["--overwrite"]):
            _refused(capfd, "pretrain", method, data, "--out", victim, *PRETRAIN_FAST, *extra,
                     "--cache-dir", tmp_path / "cache", name=victim)
    assert _tree(data) == before  # no img.png_files/ among the training images either


# -- outputs inside the inputs ---------------------------------------------------------------------


def test_outputs_inside_the_inputs_are_refused(data: Path, model: Path, tmp_path: Path, capfd) -> None:
    pool = make_pool(tmp_path / "pool", n=6, size=(16, 16), channels=3)
    csv = make_manifest(tmp_path / "listed", {"a": 4, "b": 4})
    masks = tmp_path / "masks"
    seg = make_image_mask_tree(tmp_path / "seg", {"a": 4, "b": 4}, size=(16, 16), masks_dir=masks)
    npz = write_medmnist_npz(tmp_path / "set.npz")
    (tmp_path / "data-link").symlink_to(data, target_is_directory=True)
    folders = {p: _tree(p) for p in (data, pool, csv.parent, seg, masks)}
    npz_bytes = npz.read_bytes()
    cases = [
        (["curve", data, "--sizes", "2", "--repeats", "1", "--strategies", "scratch", *FAST], data / "run"),
        (["train", data, "--strategy", "scratch", *FAST], data / "m"),
        (["train", data, "--strategy", "scratch", *FAST], data),
        (["train", data, "--strategy", "scratch", "--semi", "--unlabelled", pool, *FAST], pool / "m"),
        (["train", seg, "--masks", masks, "--strategy", "scratch", *FAST], masks / "m"),
        (["train", csv, "--strategy", "scratch", *FAST], csv.parent / "files" / "m"),
        (["train", csv, "--strategy", "scratch", "--overwrite", *FAST], csv),
        (["explain", model, data], data / "saliency"),
        (["explain", model, data / "a"], data / "a" / "x"),
        (["explain", model, sorted((data / "a").iterdir())[0]], data / "a"),  # overlays beside the image
        (["predict", model, data], data / "p.csv"),
        (["predict", model, tmp_path / "data-link"], data / "p.csv"),  # links resolved
        (["predict", model, data], model / "config.json"),  # the model is an input too
        (["pretrain", "ssl", pool, *PRETRAIN_FAST], pool / "enc.safetensors"),
        (["pretrain", "ssl", npz, "--overwrite", *PRETRAIN_FAST], npz),
    ]
    for args, out in cases:
        _refused(capfd, *args, "--out", out, name=out)
    assert {p: _tree(p) for p in folders} == folders
    assert npz.read_bytes() == npz_bytes
    assert not (tmp_path / "cache").exists()


# -- special files and links -----------------------------------------------------------------------


def test_fifo_and_symlink_outputs_are_refused_by_every_command(data: Path, model: Path, tmp_path: Path,
                                                                 capfd) -> None:
    run = _small_run(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.csv"
    target.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(target)
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    dir_link = tmp_path / "dir-link"
    dir_link.symlink_to(real_dir, target_is_directory=True)
    file_commands = [["predict", model, data], ["pretrain", "ssl", data, *PRETRAIN_FAST],
                     ["report", run, "--no-explain", "-q"]]
    folder_commands = [["train", data, "--strategy", "scratch", *FAST],
                       ["curve", data, "--sizes", "2", "--repeats", "1", "--strategies", "scratch", *FAST],
                       ["explain", model, data], ["demo", "-q"]]
    for args in file_commands:
        for out in (fifo, link):
            for extra in ([], ["--overwrite"]):
                line = _refused(capfd, *args, "--out", out, *extra, name=out)
                assert ("FIFO" in line) if out == fifo else ("symbolic link" in line)
    for args in folder_commands:
        for out in (fifo, link, dir_link):
            _refused(capfd, *args, "--out", out, name=out)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert link.is_symlink() and dir_link.is_symlink() and target.read_text() == "keep me"
    assert list(real_dir.iterdir()) == []


def test_dev_null_is_refused_and_stays_a_device() -> None:
    """Read-only: only the checks are called, nothing is written near /dev/null."""
    from fewlabel.fileio import check_output_dir, check_output_file

    checks = (lambda: check_output_file("/dev/null", overwrite=True), lambda: check_output_dir("/dev/null"))
    for check in checks:
        with pytest.raises(FewlabelError, match="character device") as exc:
            check()
        assert exc.value.path == "/dev/null" and "\n" not in str(exc.value)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_atomic_writes_never_replace_a_fifo(tmp_path: Path) -> None:
    """The API writes through fileio.atomic_*: a special file is refused there too."""
    from fewlabel.fileio import atomic_write_text

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FewlabelError, match="FIFO"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["fifo"]


# -- existing files and --overwrite ----------------------------------------------------------------


def test_an_existing_output_file_needs_overwrite(data: Path, model: Path, tmp_path: Path, capfd) -> None:
    run = _small_run(tmp_path)
    existing = {name: tmp_path / name for name in ("p.csv", "enc.safetensors", "r.html")}
    for path in existing.values():
        path.write_text("mine")
    commands = {"p.csv": ["predict", model, data],
                "enc.safetensors": ["pretrain", "ssl", data, *PRETRAIN_FAST],
                "r.html": ["report", run, "--no-explain", "-q"]}
    for name, args in commands.items():
        line = _refused(capfd, *args, "--out", existing[name], name=existing[name])
        assert "--overwrite" in line
        assert existing[name].read_text() == "mine"
    # --overwrite replaces a regular file, whole
    assert run_cli("predict", model, data, "--out", existing["p.csv"], "--overwrite") == 0
    assert existing["p.csv"].read_text().startswith("path,predicted,p_a,p_b")


def test_report_rewrites_its_own_file_and_stays_out_of_the_run(tmp_path: Path, capfd) -> None:
    run = _small_run(tmp_path)
    for _ in range(2):  # RUN_DIR/report.html is the report's own: re-running replaces it
        assert run_cli("report", run, "--no-explain", "-q") == 0
    assert run_cli("report", run, "--no-explain", "-q", "--out", run / "report.html") == 0
    assert "<html" in (run / "report.html").read_text().lower()
    capfd.readouterr()
    records = _tree(run)
    for out in (run / "other.html", run / "run.json", run / "store.sqlite"):
        _refused(capfd, "report", run, "--no-explain", "-q", "--out", out, "--overwrite", name=out)
    assert _tree(run) == records
    elsewhere = tmp_path / "r.html"
    assert run_cli("report", run, "--no-explain", "-q", "--out", elsewhere) == 0
    assert run_cli("report", run, "--no-explain", "-q", "--out", elsewhere, "--overwrite") == 0


# -- the Python API --------------------------------------------------------------------------------


def test_the_api_refuses_outputs_inside_the_inputs(data: Path, model: Path, tmp_path: Path) -> None:
    import fewlabel
    from fewlabel.experiments import run_curve
    from fewlabel.explain.run import explain_files
    from fewlabel.report import build_report

    run = _small_run(tmp_path)
    before, records = _tree(data), _tree(run)
    calls = [
        (lambda: fewlabel.train(data, data / "m", strategy="scratch", max_epochs=1), data / "m"),
        (lambda: run_curve(data, data / "run", ["scratch"], [2], 1), data / "run"),
        (lambda: explain_files(model, [data], out=data / "x"), data / "x"),
        (lambda: build_report(run, run / "run.json", explain=False), run / "run.json"),
    ]
    for call, out in calls:
        t0 = time.perf_counter()
        with pytest.raises(FewlabelError) as exc:
            call()
        assert exc.value.path == str(out) and time.perf_counter() - t0 < 10
    assert _tree(data) == before and _tree(run) == records


def test_a_model_folder_never_replaces_its_own_inputs_or_a_run(data: Path, model: Path, tmp_path: Path,
                                                               capfd) -> None:
    """``train --out M --overwrite --plan M/plan.json`` would replace the plan it follows; a curve's run
    folder is no model folder, with or without --overwrite."""
    import shutil

    mine = tmp_path / "m"
    shutil.copytree(model, mine)
    plan_bytes = (mine / "plan.json").read_bytes()
    line = _refused(capfd, "train", data, "--out", mine, "--overwrite", "--plan", mine / "plan.json", *FAST,
                    name=mine)
    assert "would replace" in line and (mine / "plan.json").read_bytes() == plan_bytes
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "plan.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        assert "another command" in _refused(capfd, "train", data, "--out", run, *extra, *FAST, name=run)
    assert (run / "plan.json").read_text() == "{}"


def test_explain_keeps_out_of_the_model_s_training_data(model: Path, tmp_path: Path, capfd,
                                                        monkeypatch) -> None:
    """Overlays in any class folder of the data the model was trained on would become training images;
    a new folder beside an image that is not training data is fine."""
    import json

    trained_on = Path(json.loads((model / "plan.json").read_text())["source"]["data"])
    image = sorted((trained_on / "a").iterdir())[0]
    before = _tree(trained_on)
    _refused(capfd, "explain", model, image, "--out", trained_on / "b", name=trained_on / "b")
    _refused(capfd, "explain", model, image, "--out", trained_on, name=trained_on)
    assert _tree(trained_on) == before
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.png").write_bytes(image.read_bytes())
    assert run_cli("explain", model, "g.png", "--out", "maps") == 0
    assert (tmp_path / "maps").is_dir()
