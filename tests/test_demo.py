"""The SYNTHETIC quantitative-phase cell generator and the demo."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from fewlabel.demo.synthetic import (
    CLASSES,
    SYNTHETIC_MARKER,
    generate_dataset,
    is_synthetic,
    synth_cell,
    synth_sperm,
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generator_is_seeded_float32_and_labelled_synthetic(tmp_path: Path) -> None:
    import tifffile

    a = generate_dataset(tmp_path / "a", n_per_class=4, n_unlabelled=3, seed=7)
    b = generate_dataset(tmp_path / "b", n_per_class=4, n_unlabelled=3, seed=7)
    c = generate_dataset(tmp_path / "c", n_per_class=4, n_unlabelled=3, seed=8)
    assert _digest(a.root) == _digest(b.root) != _digest(c.root)
    # Nested: more images never change the first ones.
    more = generate_dataset(tmp_path / "more", n_per_class=6, n_unlabelled=3, seed=7)
    first = a.labelled / "cancer" / "SYNTHETIC_cancer_0003.tif"
    assert first.read_bytes() == (more.labelled / "cancer" / first.name).read_bytes()
    files = sorted(a.root.rglob("*.tif"))
    assert len(files) == 2 * 4 + 3
    for f in files:
        assert "SYNTHETIC" in f.name and "SYNTHETIC" in str(f.relative_to(tmp_path))
        arr = tifffile.imread(f)
        assert arr.dtype == np.float32 and arr.shape == (64, 64) and np.isfinite(arr).all()
    assert sorted(p.name for p in a.labelled.iterdir()) == sorted(CLASSES)
    assert "SYNTHETIC DATA" in (a.root / "README.txt").read_text()
    assert (a.root / SYNTHETIC_MARKER).exists() and is_synthetic(a.labelled) and is_synthetic(first)
    assert not is_synthetic(tmp_path)


def _measure(img: np.ndarray, pixel_um: float = 0.5) -> dict[str, float]:
    """What one would measure on a real OPD map: area, dry mass, texture, outline irregularity."""
    bg = np.median(np.concatenate([img[:4].ravel(), img[-4:].ravel()]))
    opd = img - bg
    mask = ndimage.binary_opening(opd > 25.0, iterations=1)
    labels, n = ndimage.label(mask)
    if n > 1:  # the cell is the largest blob
        mask = labels == (1 + np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
    area = mask.sum() * pixel_um**2
    perimeter = (mask & ~ndimage.binary_erosion(mask)).sum() * pixel_um
    fine = opd - ndimage.gaussian_filter(opd, 2.0)
    inner = ndimage.binary_erosion(mask, iterations=3)
    return {"area": area, "dry_mass": opd[mask].sum() * 1e-3 * pixel_um**2 / 0.19,
            "texture": float(fine[inner].std()) if inner.any() else 0.0,
            "non_circularity": perimeter**2 / (4 * np.pi * area)}


def _cohen_d(a: np.ndarray, b: np.ndarray) -> float:
    return float((b.mean() - a.mean()) / np.sqrt((a.var() + b.var()) / 2))


def test_classes_differ_as_healthy_and_cancer_cells_do() -> None:
    n = 120
    meas = {k: [] for k in CLASSES}
    truth = {k: [] for k in CLASSES}
    for k, name in enumerate(CLASSES):
        for i in range(n):
            img, feats = synth_cell(np.random.default_rng([0, k, i]), name)
            meas[name].append(_measure(img))
            truth[name].append(feats)

    def col(d, name, key):
        return np.array([m[key] for m in d[name]], dtype=float)

    # Measured on the images: cancer cells are larger, heavier, more textured and less round.
    for key, min_d in (("area", 0.8), ("dry_mass", 0.8), ("texture", 0.5), ("non_circularity", 0.5)):
        d = _cohen_d(col(meas, "healthy", key), col(meas, "cancer", key))
        assert d > min_d, (key, d)
    # Ground truth of what is hard to segment: nucleus-to-cytoplasm ratio and nucleoli.
    assert _cohen_d(col(truth, "healthy", "nc_ratio"), col(truth, "cancer", "nc_ratio")) > 1.0
    assert col(truth, "cancer", "n_nucleoli").mean() > col(truth, "healthy", "n_nucleoli").mean() + 1
    # ... but the classes overlap: a size threshold alone does not separate them.
    area_h, area_c = col(meas, "healthy", "area"), col(meas, "cancer", "area")
    assert (area_h > np.median(area_c)).mean() > 0.05


def test_pool_is_another_cell_type() -> None:
    sperm = [synth_sperm(np.random.default_rng([0, 2, i])) for i in range(30)]
    cells = [synth_cell(np.random.default_rng([0, 0, i]), "healthy")[0] for i in range(30)]
    area = [np.mean([_measure(x)["area"] for x in group]) for group in (sperm, cells)]
    assert area[0] < 0.5 * area[1]  # a small head with a thin tail, not a round cell
    assert all(s.dtype == np.float32 for s in sperm)


def test_features_csv_lists_every_labelled_cell(tmp_path: Path) -> None:
    ds = generate_dataset(tmp_path, n_per_class=3, n_unlabelled=1)
    rows = list(csv.DictReader(ds.features_csv.open()))
    assert len(rows) == 6 and {r["class"] for r in rows} == set(CLASSES)
    assert all((ds.root / r["file"]).exists() for r in rows)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    """The whole demo (1.5-5 minutes on 2 cores): report written, says SYNTHETIC, within budget.

    The budget is 5 minutes on 2 free cores, i.e. 600 CPU-seconds; CPU time (this process and its
    workers) is checked rather than wall time, which a busy shared machine would make flaky.
    """
    import resource

    from fewlabel.demo import run_demo

    def cpu_seconds() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    os.environ.setdefault("FEWLABEL_CACHE", str(tmp_path / "cache"))
    before = cpu_seconds()
    result = run_demo(tmp_path / "demo")
    html = result.report.read_text()
    assert "SYNTHETIC DEMO DATA" in html and "data:image/png;base64," in html
    assert "18 of 18 grid cells finished successfully" in html
    assert cpu_seconds() - before < 600, result.seconds


def test_demo_smoke_tiny(tmp_path: Path) -> None:
    """generate → curve → explanations → report on a tiny setting (the real demo is the slow test)."""
    from fewlabel.demo.run import DemoBackend, run_demo

    backend = DemoBackend(encoder_kwargs={"width": 4, "depth": 3},
                          pretrain={"steps": 8, "batch_size": 8, "log_every": 4, "sample_every": 1000})
    result = run_demo(tmp_path / "demo", strategies=("scratch", "gan"), sizes=(2,), repeats=1, n_per_class=10,
                      n_unlabelled=16, test_per_class=5, finetune={"max_epochs": 2, "time_budget_s": None},
                      backend=backend, workers=1)
    html = result.report.read_text()
    assert result.report == tmp_path / "demo" / "run" / "report.html"
    assert "SYNTHETIC DEMO DATA" in html and "fewlabel demo --out" in html
    assert "2 of 2 grid cells finished successfully" in html
    index = (result.run_dir / "explanations" / "index.json").read_text()
    assert '"gan"' in index and '"scratch"' in index


def test_regenerating_leaves_files_untouched(tmp_path: Path) -> None:
    """A second ``fewlabel demo`` must find the same data (mtimes are part of the data fingerprint)."""
    ds = generate_dataset(tmp_path, n_per_class=2, n_unlabelled=2)
    stamps = {p: p.stat().st_mtime_ns for p in ds.root.rglob("*") if p.is_file()}
    os.utime(next(iter(stamps)), ns=(1, 1))  # an old stamp would be overwritten by any rewrite
    stamps[next(iter(stamps))] = 1
    generate_dataset(tmp_path, n_per_class=2, n_unlabelled=2)
    assert {p: p.stat().st_mtime_ns for p in ds.root.rglob("*") if p.is_file()} == stamps
