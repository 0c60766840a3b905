"""The real data sets in ../shared/datasets: counts as their READMEs state, no problems, patients as
groups, and the issue's "Done when" inspect commands. Slow; skipped when ../shared is absent."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from fewlabel.cli import main
from fewlabel.data.catalog import load_catalog, load_pool
from fewlabel.data.inspect import inspect_data
from fewlabel.data.splits import draw_labelled, holdout_test, nested_validation

from factory import corrupt_file

pytestmark = pytest.mark.slow

TCGA = r"(TCGA_[A-Z0-9]+_[A-Z0-9]+)"
BCCD = r"(BloodImage_\d+)"


def dataset(shared_datasets, name):
    path = shared_datasets / name
    if not path.is_dir():
        pytest.skip(f"{name} is not present")
    return path


def run_cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().out


def test_pbc_done_when(shared_datasets, capsys):
    root = dataset(shared_datasets, "pbc_leukocytes_8class")
    code, out = run_cli(["inspect", str(root), "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["n_images"] == 1600 and len(data["classes"]) == 8
    assert set(data["classes"].values()) == {200} and data["problems"] == []
    assert data["shapes"] == {"96x96": 1600} and data["channels"] == {"3": 1600}


def test_bccd_counts_and_pool(shared_datasets):
    root = dataset(shared_datasets, "bccd_wbc_fewshot")
    cat = load_catalog(root / "labelled", group_pattern=BCCD)
    assert cat.class_counts() == {"basophil": 2, "eosinophil": 84, "lymphocyte": 33, "monocyte": 20,
                                  "neutrophil": 203}
    assert len(cat) == 342 and len(set(cat.groups())) <= 360  # ~360 smear fields in BCCD
    pool = load_pool(root / "unlabelled_rbc", group_pattern=BCCD)
    assert len(pool) == 3102 and pool.classes == []
    assert all(g.startswith("BloodImage_") for g in pool.groups())
    rep = inspect_data(root / "labelled", group_pattern=BCCD)
    assert [p.kind for p in rep.problems] == ["small_class"]  # basophil: 2 images, as the README warns
    assert "basophil" in rep.problems[0].problem


def test_lgg_2d_pairs_and_patients(shared_datasets):
    root = dataset(shared_datasets, "lgg_mri_2d")
    cat = load_catalog(root, group_pattern=TCGA)
    assert cat.layout == "images+masks" and len(cat) == 434 and all(s.mask for s in cat.samples)
    assert cat.class_counts() == {"hist_grade_1": 202, "hist_grade_2": 232}
    assert len(set(cat.groups())) == 109
    assert not cat.groups_spanning_classes()
    pool, test = holdout_test(cat, 0.2, seed=0)
    labelled = draw_labelled(cat, pool, 5, seed=1, count="groups")
    train, val = nested_validation(cat, pool, labelled, seed=1)
    assert not set(cat.groups(test)) & set(cat.groups(pool))  # no patient on both sides
    assert not set(cat.groups(train)) & set(cat.groups(val))
    assert len(set(cat.groups(labelled))) == 10


def test_lgg_3d_volumes_masks_patients(shared_datasets):
    root = dataset(shared_datasets, "lgg_mri_3d")
    cat = load_catalog(root, group_pattern=TCGA)
    assert len(cat) == 109 and sum(s.mask is not None for s in cat.samples) == 109
    assert cat.class_counts() == {"hist_grade_1": 51, "hist_grade_2": 58}
    with open(root / "cases.csv") as fh:
        patient_of = {row["case"]: row["patient"] for row in csv.DictReader(fh)}
    for s in cat.samples:
        case = s.id.rsplit("/", 1)[1].removesuffix(".nii.gz")
        assert s.group == patient_of[case]


def test_lgg_3d_done_when(shared_datasets, capsys):
    root = dataset(shared_datasets, "lgg_mri_3d")
    code, out = run_cli(["inspect", str(root), "--group-pattern", TCGA, "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["problems"] == []
    assert data["n_images"] == 109 and data["sample_kind"] == "3D volumes" and len(data["classes"]) == 2
    assert data["n_masks"] == 109 and data["masks"]["matched"] == 109 and data["masks"]["missing"] == 0
    assert data["n_groups"] == 109 and data["groups"]["pattern"] == TCGA
    code, out = run_cli(["inspect", str(root), "--group-pattern", TCGA], capsys)
    assert code == 0 and "no problems found" in out
    assert "109 3D volumes, 2 classes, 109 groups, 109 masks" in out


def _small_copy(src, dst, per_class, pattern="*"):
    """images/<class>/ + masks/<class>/ of the first ``per_class`` files of each class."""
    for cls_dir in sorted((src / "images").iterdir()):
        for f in sorted(cls_dir.glob(pattern))[:per_class]:
            for part in ("images", "masks"):
                target = dst / part / cls_dir.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / part / cls_dir.name / f.name, target)
    return dst


@pytest.mark.parametrize("name", ["lgg_mri_2d", "lgg_mri_3d"])
def test_corrupted_copy_done_when(shared_datasets, tmp_path, capsys, name):
    """One file overwritten by garbage and one image copied into the second class: both are named,
    exit code 1."""
    src = dataset(shared_datasets, name)
    root = _small_copy(src, tmp_path / name, per_class=12)
    grade1 = sorted((root / "images" / "hist_grade_1").iterdir())
    garbage = grade1[0]
    corrupt_file(garbage)
    dup_src = grade1[-1]
    dup = root / "images" / "hist_grade_2" / dup_src.name
    shutil.copy(dup_src, dup)
    masks = root / "masks"
    shutil.copy(masks / "hist_grade_1" / dup_src.name, masks / "hist_grade_2" / dup_src.name)
    code, out = run_cli(["inspect", str(root), "--group-pattern", TCGA], capsys)
    assert code == 1
    flat = " ".join(out.split())
    assert garbage.name[:20] in flat and dup.name[:20] in flat
    code, out = run_cli(["inspect", str(root), "--group-pattern", TCGA, "--json"], capsys)
    problems = json.loads(out)["problems"]
    assert code == 1
    by_path = {p["path"]: p for p in problems}
    assert by_path[f"images/hist_grade_1/{garbage.name}"]["kind"] == "unreadable"
    cross = by_path[f"images/hist_grade_2/{dup.name}"]
    assert cross["kind"] == "duplicate_across_classes"
    assert f"images/hist_grade_1/{dup_src.name}" in cross["problem"]
