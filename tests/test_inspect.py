"""inspect: the report (API), its JSON, every problem kind naming the file, and CLI exit codes 0/1/2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fewlabel.cli import main
from fewlabel.data.inspect import inspect_data
from fewlabel.errors import DataError, MaskError, UnreadableFileError

from factory import (
    GROUP_PATTERN,
    corrupt_file,
    make_class_folder,
    make_image_mask_tree,
    make_manifest,
    make_pool,
    write_medmnist_npz,
    write_png,
    write_tiff,
)


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of ``fewlabel.cli.main(args)``."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def kinds(report):
    return {p.kind for p in report.problems}


def test_clean_folder(tmp_path, capsys):
    root = make_class_folder(tmp_path / "d", {"a": 4, "b": 4}, size=(8, 8), channels=3)
    rep = inspect_data(root)
    assert rep.ok and rep.n_images == 8 and rep.classes == {"a": 4, "b": 4}
    assert rep.shapes == {"8x8": 8} and rep.dtypes == {"uint8": 8} and rep.channels == {"3": 8}
    assert rep.value_range[0] >= 0 and rep.value_range[1] <= 255
    code, out, err = run_cli(["inspect", str(root)], capsys)
    assert code == 0 and "no problems found" in out and err == ""


def test_json_keys(tmp_path, capsys):
    root = make_image_mask_tree(tmp_path / "s", {"a": 3, "b": 3}, size=(8, 8), images_per_group=3)
    code, out, _ = run_cli(["inspect", str(root), "--group-pattern", GROUP_PATTERN, "--json",
                            "--min-per-class", "1"], capsys)
    data = json.loads(out)
    assert code == 0
    for key in ("n_images", "classes", "n_groups", "n_masks", "shapes", "problems", "groups", "dtypes",
                "channels", "value_range"):
        assert key in data
    assert data["n_images"] == 6 and data["classes"] == {"a": 3, "b": 3}
    assert data["n_groups"] == 2 and data["n_masks"] == 6 and data["problems"] == []
    assert data["masks"]["matched"] == 6


def test_garbage_and_cross_class_duplicate_exit_1(tmp_path, capsys):
    root = make_class_folder(tmp_path / "d", {"a": 4, "b": 4}, size=(8, 8))
    corrupt_file(root / "a" / "p0001_s00.png")
    shutil.copy(root / "a" / "p0002_s00.png", root / "b" / "copied.png")
    rep = inspect_data(root)
    assert rep.problems[0].kind == "duplicate_across_classes"  # the worst problem first
    text = json.dumps(rep.to_dict())
    assert "a/p0001_s00.png" in text and "b/copied.png" in text and "a/p0002_s00.png" in text
    dup = next(p for p in rep.problems if p.path == "b/copied.png")
    assert "same image as a/p0002_s00.png under class 'a'" in dup.problem
    code, out, _ = run_cli(["inspect", str(root), "--json"], capsys)
    assert code == 1
    paths = {p["path"] for p in json.loads(out)["problems"]}
    assert {"a/p0001_s00.png", "b/copied.png", "a/p0002_s00.png"} <= paths
    code, out, _ = run_cli(["inspect", str(root)], capsys)
    assert code == 1 and "copied.png" in out and "p0001_s00.png" in out
    with pytest.raises(DataError, match="same image as") as exc:
        rep.raise_for_problems()
    assert str(root) in str(exc.value)


def test_duplicate_within_class_and_truncated(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 4, "b": 4}, size=(16, 16))
    shutil.copy(root / "a" / "p0001_s00.png", root / "a" / "again.png")
    corrupt_file(root / "b" / "p0005_s00.png", "truncate")
    rep = inspect_data(root)
    assert {"duplicate", "unreadable"} <= kinds(rep)
    dup = next(p for p in rep.problems if p.kind == "duplicate")
    assert "exact duplicate" in dup.problem
    bad = next(p for p in rep.problems if p.kind == "unreadable")
    assert bad.path == "b/p0005_s00.png"


def test_nan_float_image(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(8, 8), dtype="float32", fmt="tif")
    img = np.ones((1, 8, 8), np.float32)
    img[0, 0, 0] = np.nan
    write_tiff(root / "a" / "nan.tif", img)
    rep = inspect_data(root)
    p = next(p for p in rep.problems if p.kind == "invalid")
    assert p.path == "a/nan.tif" and "NaN" in p.problem


def test_mask_problems(tmp_path):
    root = make_image_mask_tree(tmp_path / "s", {"a": 3, "b": 3}, size=(8, 8))
    masks = sorted((root / "masks" / "a").iterdir())
    write_png(masks[0], np.zeros((1, 6, 6), np.uint8))  # other shape
    write_tiff(masks[1].with_suffix(".tif"), np.full((1, 8, 8), 0.5, np.float32))  # not binary
    masks[1].unlink()
    (sorted((root / "masks" / "b").iterdir())[0]).unlink()  # missing
    rep = inspect_data(root)
    assert {"mask_shape", "mask_values", "mask_missing"} <= kinds(rep)
    shape = next(p for p in rep.problems if p.kind == "mask_shape")
    assert shape.path == f"masks/a/{masks[0].name}" and "6x6" in shape.problem and "8x8" in shape.problem
    assert rep.masks["missing"] == 1
    with pytest.raises(MaskError):
        rep.raise_for_problems()


def test_unknown_extension_small_class_and_group_pattern(tmp_path, capsys):
    root = make_class_folder(tmp_path / "d", {"a": 4, "b": 2}, size=(8, 8))
    (root / "a" / "weird.xyz").write_text("?")
    write_png(root / "a" / "nogroup.png", np.zeros((1, 8, 8), np.uint8))
    rep = inspect_data(root, group_pattern=GROUP_PATTERN)
    assert {"unknown_extension", "small_class", "group_pattern"} <= kinds(rep)
    assert any(p.path == "a/weird.xyz" for p in rep.problems)
    small = next(p for p in rep.problems if p.kind == "small_class")
    assert "'b' has 2 image(s)" in small.problem
    code, _, _ = run_cli(["inspect", str(root)], capsys)
    assert code == 1


def test_one_class_is_a_problem(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 4}, size=(8, 8))
    assert "one_class" in kinds(inspect_data(root))


def test_group_spanning_classes_is_a_warning(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 6, "b": 6}, size=(8, 8), images_per_group=3)
    write_png(root / "b" / "p0001_s09.png", np.full((1, 8, 8), 3, np.uint8))
    rep = inspect_data(root, group_pattern=GROUP_PATTERN, min_per_class=1)
    assert rep.ok and rep.groups["spanning_classes"] == {"p0001": ["a", "b"]}
    assert any("more than one class" in w for w in rep.warnings)


def test_input_unreadable_exit_2(tmp_path, capsys):
    code, out, err = run_cli(["inspect", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["inspect", str(tmp_path / "empty")], capsys)
    assert code == 2 and "empty folder" in err


def test_npz_manifest_pool_and_3d(tmp_path, capsys):
    npz = write_medmnist_npz(tmp_path / "m.npz", {"train": 6, "val": 3, "test": 3})
    rep = inspect_data(npz, min_per_class=1)
    assert rep.ok and rep.n_images == 12 and rep.layout == "npz"
    csv_path = make_manifest(tmp_path / "man", {"a": 4, "b": 4}, masks=True)
    rep = inspect_data(csv_path)
    assert rep.ok and rep.n_masks == 8
    rep = inspect_data(make_pool(tmp_path / "pool", n=5), pool=True)
    assert rep.ok and rep.classes == {} and rep.n_images == 5
    vol = make_image_mask_tree(tmp_path / "v", {"a": 3, "b": 3}, size=(4, 8, 8), spatial_dims=3)
    rep = inspect_data(vol)
    assert rep.sample_kind == "3D volumes" and rep.n_images == 6 and rep.masks["matched"] == 6
    code, out, _ = run_cli(["inspect", str(vol)], capsys)
    assert code == 0 and "3D volumes" in out


def test_raise_for_problems_names_file(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 4, "b": 4}, size=(8, 8))
    corrupt_file(root / "b" / "p0006_s00.png")
    with pytest.raises(UnreadableFileError) as exc:
        inspect_data(root).raise_for_problems()
    assert str(exc.value).startswith(str(root / "b" / "p0006_s00.png"))


def test_real_command_line_exit_codes(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(8, 8))
    cmd = [sys.executable, "-m", "fewlabel", "inspect", str(root), "--json"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["n_images"] == 6
    corrupt_file(root / "a" / "p0001_s00.png")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and json.loads(bad.stdout)["problems"]
    gone = subprocess.run(cmd[:-2] + [str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and gone.stderr.startswith("error: ") and "Traceback" not in gone.stderr
