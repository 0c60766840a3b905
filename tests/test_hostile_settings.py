"""Hostile settings: values with no meaning are refused before any data are read, model folders are
checked against themselves, and predict / explain with nothing to work on (or an image unlike the
training images) write nothing. Each case asserts the exit code, ONE stderr line naming the option
or file, and that nothing was written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_hostile import PROBLEMS, USAGE, _cli, _one_line

from factory import make_class_folder, write_png

SRC = Path(__file__).resolve().parents[1] / "src"


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def data(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FEWLABEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEWLABEL_LOG_DIR", str(tmp_path.parent / f"{tmp_path.name}-logs"))
    return make_class_folder(tmp_path / "data", {"a": 6, "b": 6, "c": 6}, size=(16, 16), seed=0)


def _model(folder: Path, channels: int = 1, classes: tuple[str, ...] = ("a", "b")) -> Path:
    """A model folder as `train` writes it (untrained weights: loading is what is tested)."""
    from fewlabel.data.tensors import Preprocess
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.heads import Classifier
    from fewlabel.models.io import save_model_dir

    encoder = create_encoder("convnet", in_channels=channels, spatial_dims=2, width=4, depth=2)
    pre = Preprocess(spatial_dims=2, size=(16, 16), channels=channels, source_dtypes=("uint8",),
                     source_channels=(channels,))
    save_model_dir(folder, Classifier(encoder, len(classes)),
                   {"class_names": list(classes), "preprocess": pre.to_dict()})
    return folder


def _edit_config(model: Path, edit) -> None:
    """Change config.json as a person or a script would. Its recorded ``weights_sha256`` is the hash
    of model.safetensors, which is untouched, so the edited folder still passes the hash check."""
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config, indent=2))


# -- settings with no meaning, per command ---------------------------------------------------------

BIG = str(2**64)
CASES = [
    # (command line after the data / run folder, the option the one line must name)
    (["train", "{data}", "--out", "{out}", "--strategy", "scratch", "--seed", BIG], "--seed"),
    (["train", "{data}", "--out", "{out}", "--strategy", "scratch", "--labels-per-class", "0"],
     "--labels-per-class"),
    (["train", "{data}", "--out", "{out}", "--strategy", "scratch", "--max-epochs", "0"], "--max-epochs"),
    (["train", "{data}", "--out", "{out}", "--strategy", "scratch", "--set", "batch_size=1000000"],
     "batch_size"),
    (["train", "{data}", "--out", "{out}", "--strategy", "ssl", "--pretrain", f"seed={BIG}"], "seed"),
    (["curve", "{data}", "--out", "{out}", "--sizes", "1e23"], "--sizes"),
    (["curve", "{data}", "--out", "{out}", "--sizes", "1," + "1" + "0" * 23], "--sizes"),
    (["curve", "{data}", "--out", "{out}", "--seed", str(2**32)], "--seed"),
    (["curve", "{data}", "--out", "{out}", "--workers", "0"], "--workers"),
    (["curve", "{data}", "--out", "{out}", "--cpus-per-cell", "0"], "--cpus-per-cell"),
    (["curve", "{data}", "--out", "{out}", "--gpus-per-cell", "-1"], "--gpus-per-cell"),
    (["pretrain", "ssl", "{data}", "--out", "{out}.safetensors", "--batch-size", "0"], "--batch-size"),
    (["pretrain", "ssl", "{data}", "--out", "{out}.safetensors", "--batch-size", "1"], "--batch-size"),
    (["pretrain", "gan", "{data}", "--out", "{out}.safetensors", "--batch-size", "1"], "--batch-size"),
    (["pretrain", "ssl", "{data}", "--out", "{out}.safetensors", "--width", "0"], "--width"),
    (["pretrain", "ssl", "{data}", "--out", "{out}.safetensors", "--steps", "0"], "--steps"),
    (["pretrain", "ssl", "{data}", "--out", "{out}.safetensors", "--time-budget", "-5"], "--time-budget"),
    (["pretrain", "ssl", "{data}", "--out", "{out}.safetensors", "--seed", BIG], "--seed"),
    (["pretrain", "gan", "{data}", "--out", "{out}.safetensors", "--depth", "9", "--image-size", "32"],
     "--depth"),
    (["pretrain", "ssl", "{data}", "--out", "{out}.safetensors", "--depth", "6"], "--depth"),  # 16 px data
    (["pretrain", "segmentation", "{data}", "--out", "{out}.safetensors", "--steps", "0"], "--steps"),
    (["demo", "--out", "{out}", "--seed", "-1"], "--seed"),
    (["report", "{out}", "--examples", "0"], "--examples"),
    (["report", "{out}", "--check-images", "-1"], "--check-images"),
    (["report", "{out}", "--target", "5"], "--target"),
]


def _case_id(args: list[str]) -> str:
    command = args[:2] if args[0] == "pretrain" else args[:1]
    return " ".join([*command, *(a for a in args if not a.startswith("{") and a not in command)])[:60]


@pytest.mark.parametrize(("args", "option"), CASES, ids=[_case_id(a) for a, _ in CASES])
def test_meaningless_setting_is_refused_before_any_work(tmp_path: Path, data: Path, capfd, args: list[str],
                                                        option: str) -> None:
    before = _files(tmp_path)
    argv = [a.format(data=data, out=tmp_path / "out") for a in args]
    code, err = _cli(capfd, *argv)
    assert code == USAGE, err
    _one_line(err, option)
    assert _files(tmp_path) == before
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_seed_bound_is_exact(tmp_path: Path, data: Path, capfd) -> None:
    code, err = _cli(capfd, "train", data, "--out", tmp_path / "m", "--strategy", "scratch",
                     "--seed", str(2**32), "--max-epochs", "1", "--labels-per-class", "3")
    assert code == USAGE and "4,294,967,295" in _one_line(err, "--seed")
    assert not (tmp_path / "m").exists()
    # The largest seed trains: the seeds derived from it (draws, training, members) stay valid.
    code, err = _cli(capfd, "train", data, "--out", tmp_path / "m", "--strategy", "scratch",
                     "--seed", str(2**32 - 1), "--max-epochs", "1", "--labels-per-class", "3")
    assert code == 0, err


def test_drop_class_leaving_one_class_is_a_usage_error(tmp_path: Path, data: Path, capfd) -> None:
    before = _files(tmp_path)
    code, err = _cli(capfd, "train", data, "--out", tmp_path / "m", "--strategy", "scratch",
                     "--drop-class", "a", "--drop-class", "b")
    assert code == USAGE
    assert "--drop-class" in _one_line(err, str(data))
    assert _files(tmp_path) == before and not (tmp_path / "m").exists()


def test_huge_repeats_is_refused_not_a_hang(tmp_path: Path, data: Path) -> None:
    # A subprocess with a timeout: were the value taken, listing 10**20 cells would never finish.
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argv = ["curve", str(data), "--out", str(tmp_path / "run"), "--strategies", "scratch", "--sizes", "1",
            "--repeats", str(10**20)]
    proc = subprocess.run([sys.executable, "-m", "fewlabel", *argv], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == USAGE, proc.stderr
    _one_line(proc.stderr, "--repeats")
    assert not (tmp_path / "run").exists()


# -- model folders checked against themselves --------------------------------------------------------


@pytest.mark.parametrize("edit", ["channels", "dims"])
def test_preprocessing_that_disagrees_with_the_weights_is_refused(tmp_path: Path, capfd, edit: str) -> None:
    model = _model(tmp_path / "m", channels=1)

    def change(config: dict) -> None:
        pre = config["preprocess"]
        if edit == "channels":  # the first convolution takes 1 channel
            pre.update(channels=3, source_channels=[3])
        else:  # 2D weights
            pre.update(spatial_dims=3, size=[8, 16, 16])

    _edit_config(model, change)
    images = tmp_path / "new"
    write_png(images / "x.png", np.zeros((3 if edit == "channels" else 1, 16, 16), np.uint8))
    out = tmp_path / "p.csv"
    code, err = _cli(capfd, "predict", model, images, "--out", out)
    assert code == USAGE
    assert "preprocessing" in _one_line(err, "config.json")
    assert not out.exists()


# -- predict / explain with nothing to work on, or images unlike the training images ---------------


def test_predict_on_an_empty_folder_writes_no_csv(tmp_path: Path, capfd) -> None:
    model = _model(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "p.csv"
    code, err = _cli(capfd, "predict", model, tmp_path / "empty", "--out", out)
    assert code == PROBLEMS
    assert "no image" in _one_line(err, "empty")
    assert not out.exists()


def test_predict_with_only_unreadable_files_writes_no_csv(tmp_path: Path, capfd) -> None:
    model = _model(tmp_path / "m")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.png").write_bytes(b"not a png")
    out = tmp_path / "p.csv"
    code, err = _cli(capfd, "predict", model, junk, "--out", out)
    assert code == PROBLEMS
    assert "no image could be scored" in _one_line(err, "x.png")  # one file, one problem: one line
    assert not out.exists()
    (junk / "y.png").write_bytes(b"nor this")
    code, err = _cli(capfd, "predict", model, junk, "--out", out)
    lines = err.strip().splitlines()
    assert code == PROBLEMS and "2 file(s) could not be scored" in lines[0] and "x.png" in err
    assert "no image could be scored" in lines[-1] and not out.exists()


def test_explain_refuses_what_predict_refuses(tmp_path: Path, capfd) -> None:
    model = _model(tmp_path / "m", channels=3)
    grey = tmp_path / "grey"
    write_png(grey / "g.png", np.zeros((1, 16, 16), np.uint8))
    out = tmp_path / "maps"
    code, err = _cli(capfd, "explain", model, grey, "--out", out)
    assert code == USAGE
    line = _one_line(err, "g.png")
    assert "1 channel(s), trained on 3" in line and "--allow-mismatch" in line
    assert not out.exists()
    code, err = _cli(capfd, "predict", model, grey, "--out", tmp_path / "p.csv")
    assert "--allow-mismatch to explain it anyway" in line
    assert code == PROBLEMS and line.split(": ", 2)[2].split("; pass")[0] in err  # the same rule as predict's
    code, err = _cli(capfd, "explain", model, grey, "--out", out, "--allow-mismatch")
    assert code == 0 and "warning" in err and "g.png" in err
    assert (out / "g_saliency.png").is_file()


def test_a_model_trained_at_a_small_input_accepts_images_like_its_training_images(tmp_path: Path,
                                                                                   capfd) -> None:
    import fewlabel
    from fewlabel.training.finetune import FinetuneConfig

    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(48, 48), seed=0)
    fast = FinetuneConfig(max_epochs=1, batch_size=8, min_steps_per_epoch=1, augment="none", progress=False)
    fewlabel.train(data, tmp_path / "m", strategy="scratch", labels_per_class=3, seed=0, finetune=fast,
                   image_size=16)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["trained_sizes"] == [[48, 48], [48, 48]]
    code, err = _cli(capfd, "predict", tmp_path / "m", data, "--out", tmp_path / "p.csv")
    assert code == 0, err  # 48-px images, a 16-px input: the training images themselves
    tiny = tmp_path / "tiny"
    write_png(tiny / "t.png", np.zeros((1, 16, 16), np.uint8))
    code, err = _cli(capfd, "predict", tmp_path / "m", tiny, "--out", tmp_path / "q.csv")
    assert code == PROBLEMS and "size 16×16, the training images were 48×48" in err


def test_explain_on_an_empty_folder_writes_nothing(tmp_path: Path, capfd) -> None:
    model = _model(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    code, err = _cli(capfd, "explain", model, tmp_path / "empty", "--out", tmp_path / "maps")
    assert code == PROBLEMS
    assert "no image" in _one_line(err, "empty")
    assert not (tmp_path / "maps").exists()



@pytest.mark.parametrize("args, name", [
    (["curve", ".", "--out", "run", "--repeats", "1e20"], "--repeats"),
    (["train", ".", "--out", "m", "--seed", "2**64"], "--seed"),
    (["train"], "data"),
    (["nosuch"], "nosuch"),
])
def test_values_the_parser_cannot_read_are_one_line(tmp_path: Path, capfd, monkeypatch, args, name) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capfd, *args)
    assert code == USAGE
    line = _one_line(err, name)
    assert line.startswith("error: ") and "--help" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["class_names"].append("c"), "names 3 classes (class_names) but the weights' head has 2"),
    (lambda c: c["preprocess"].update(mean=[float("nan")], std=[1.0]), "mean [nan]"),
    (lambda c: c["preprocess"].update(mean=[0.5], std=[0.0]), "std [0.0]"),
    (lambda c: c.update(class_names=["a", "a"]), "'a' twice"),
])
def test_a_config_that_would_score_nonsense_is_refused(tmp_path: Path, capfd, edit, words) -> None:
    model = _model(tmp_path / "m")
    _edit_config(model, edit)
    images = tmp_path / "new"
    write_png(images / "x.png", np.zeros((1, 16, 16), np.uint8))
    out = tmp_path / "p.csv"
    code, err = _cli(capfd, "predict", model, images, "--out", out)
    assert code == USAGE and words in _one_line(err, "config.json")
    assert not out.exists()
