"""The HTML report: curve statistics, size-to-target, paired comparisons, escaping, graceful
degradation, and a render in headless Chromium (skipped when /usr/bin/chromium is absent)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import HOSTILE, make_run, make_test_set

from fewlabel.report.curves import (
    CurvePoint,
    PowerLaw,
    bootstrap_median_ci,
    curves,
    fit_power_law,
    size_to_target,
)
from fewlabel.report.html import build_report, render, report_context
from fewlabel.report.paired import paired_table
from fewlabel.report.sections import SECTIONS, Section

CHROMIUM = Path("/usr/bin/chromium")


def _row(strategy: str, n: int, repeat: int, auc: float) -> dict:
    return {"strategy": strategy, "n_per_class": n, "repeat": repeat, "status": "ok", "roc_auc": auc}


def _values(ctx: dict, anchor: str) -> dict:
    """The values of one section of a report context."""
    return ctx["sections"][anchor]["values"]


def _points(sizes, medians) -> list[CurvePoint]:
    return [CurvePoint(n, [m], m, m, m, m, m) for n, m in zip(sizes, medians, strict=True)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run with 3 strategies × 4 sizes × 6 repeats, one failed cell, one missing size, kept models,
    a hostile class name, the synthetic marker, and its explanations computed."""
    from fewlabel.explain.run import explain_run

    root = make_run(tmp_path_factory.mktemp("report") / "run", synthetic=True)
    explain_run(root, n_per_class=1, test_set=make_test_set(["healthy", HOSTILE], n_per_class=3))
    return root


def test_median_ci_and_curves_from_rows() -> None:
    lo, hi = bootstrap_median_ci([0.7, 0.8, 0.9, 0.75, 0.85], n_boot=500, seed=0)
    assert 0.7 <= lo <= 0.8 <= hi <= 0.9
    assert bootstrap_median_ci([0.5]) == (0.5, 0.5)
    assert all(np.isnan(bootstrap_median_ci([])))
    rows = [_row("a", n, r, 0.5 + 0.01 * n + 0.001 * r) for n in (5, 2) for r in range(3)]
    rows.append({"strategy": "a", "n_per_class": 5, "repeat": 3, "status": "failed", "roc_auc": None})
    rows.append({"strategy": "b", "n_per_class": 2, "repeat": 0, "status": "failed", "roc_auc": None})
    cm = curves(rows, "roc_auc", n_boot=200)
    assert [p.n_per_class for p in cm["a"]] == [2, 5] and cm["b"] == []
    assert cm["a"][1].n_repeats == 3 and cm["a"][1].median == pytest.approx(0.551)


def test_power_law_fit_recovers_a_known_curve_and_inverts() -> None:
    true = PowerLaw(0.95, 0.5, 0.6)
    sizes = [2, 5, 10, 20, 50]
    fit = fit_power_law(_points(sizes, true(np.array(sizes))))
    assert fit is not None
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.95, 0.5, 0.6), rel=1e-3)
    n = fit.inverse(0.90)
    assert true(n) == pytest.approx(0.90, abs=1e-4)
    assert fit.inverse(0.96) is None  # above the plateau: never reached
    assert fit_power_law(_points([2, 5], [0.6, 0.7])) is None  # 3 parameters need 3 sizes


def test_size_to_target_reads_the_curve_and_marks_extrapolation() -> None:
    pts = _points([2, 8, 32], [0.70, 0.80, 0.95])
    est = size_to_target(pts, 0.90)
    # Linear in log n between 8 and 32: 2/3 of the way from log 8 to log 32 → 8 * 4**(2/3).
    assert est.how == "interpolated" and est.n == pytest.approx(8 * 4 ** (2 / 3))
    assert not est.extrapolated
    assert size_to_target(pts, 0.6).how == "reached at the smallest size"
    low = _points([2, 5, 10], [0.6, 0.7, 0.75])
    fit = fit_power_law(low)
    far = size_to_target(low, 0.9, PowerLaw(1.0, 0.5, 0.5))
    assert far.extrapolated and "EXTRAPOLATED" in far.text
    assert size_to_target(low, 0.9, None).how == "not reached"
    assert size_to_target(low, 0.99, fit).n is None or size_to_target(low, 0.99, fit).extrapolated


def test_paired_table_pairs_by_repeat_and_flags_few_pairs() -> None:
    rows = []
    for r in range(8):
        rows += [_row("scratch", 5, r, 0.6 + 0.01 * r), _row("ssl", 5, r, 0.7 + 0.01 * r)]
    for r in range(3):
        rows += [_row("scratch", 2, r, 0.5), _row("ssl", 2, r, 0.6 + 0.01 * r)]
    rows.append(_row("ssl", 2, 5, 0.9))  # no scratch partner: left out
    table = {t["n_per_class"]: t for t in paired_table(rows, n_boot=200)}
    assert table[5]["mean_diff"] == pytest.approx(0.1) and table[5]["n"] == 8 and not table[5]["few_pairs"]
    assert table[5]["p_value"] < 0.01
    assert table[2]["n"] == 3 and table[2]["few_pairs"]


def test_report_content_escaping_and_self_containment(run_dir: Path) -> None:
    path = build_report(run_dir, explain=False, n_boot=300)
    html = path.read_text()
    assert path == run_dir / "report.html"
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]  # written atomically
    # Every user string is escaped: class names, error messages, the command's file names.
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "it&#39;s &lt;here&gt;.tif" in html
    assert "<script" not in html.lower()
    # Self-contained: no external loads; figures inline.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert html.count("data:image/png;base64,") >= 2 + 11 * 2  # 2 curves + grids and t-SNE of 11 cells
    assert "SYNTHETIC DEMO DATA" in html
    assert "EXTRAPOLATED" in html and "Holm-adjusted p" in html
    # the headline metric's error bars come from test groups × repeats, accuracy's from the repeats only
    captions = html.split("<figcaption>")[1:3]
    assert "test groups × repeats" in captions[0] and "the test set fixed" in captions[1]
    for heading in ("The answer in brief", "Learning curves", "Confusion matrices", "Explanations",
                    "Exact command", "Software versions", "Seeds"):
        assert heading in html
    assert html.count("similarity after weight randomisation") >= 11  # a checks table beside every grid
    ctx = report_context(run_dir, n_boot=300)
    for e in _values(ctx, "explain")["explanations"]:
        assert [c["method"] for c in e["checks"]] == ["saliency", "lrp", "gradcam"]
        assert all(c["deletion"] != "—" and c["randomisation"] != "—" for c in e["checks"])
    summary = _values(ctx, "answer")["summary"]
    assert summary[0].startswith("With 20 labelled images per class")
    assert any("ssl has no finished result at 20" in s for s in summary)
    failed = _values(ctx, "failed")["failed"]
    assert [f["error"] for f in failed] == [f"RuntimeError: out of memory in {HOSTILE}"]
    ssl20 = next(line for t in _values(ctx, "sizes")["size_tables"] if t["n_per_class"] == 20
                 for line in t["lines"] if line["strategy"] == "ssl")
    assert ssl20["metrics"]["roc_auc"] is None  # missing size: a dash, not a crash


def test_report_statistics_come_from_test_groups_and_repeats(run_dir: Path, tmp_path: Path) -> None:
    ctx = report_context(run_dir, n_boot=300)
    assert ctx["bootstrap"] == {"source": "plan.json", "n_boot": 300, "n_groups": 20, "repeats": 6}
    paired, summary = _values(ctx, "paired")["paired"], _values(ctx, "answer")["summary"]
    rows = [p for p in paired if p["n_per_class"] == 10]
    assert {p["strategy"] for p in rows} == {"gan", "ssl"}
    for p in rows:
        assert p["method"].startswith("paired cluster bootstrap") and p["n"] == 6
        assert p["p_holm"] >= p["p_value"] and p["ci_low"] < p["mean_diff"] < p["ci_high"]
    # at 2 per class ssl is far better than scratch in the fixture (AUC ~0.77 vs ~0.60): it survives Holm
    assert next(p for p in paired if p["strategy"] == "ssl" and p["n_per_class"] == 2)["survives"]
    assert any("Holm correction" in s for s in summary)
    assert any("ONE pretraining run" in s and "gan, ssl" in s for s in summary)
    need = {t["strategy"]: t for t in _values(ctx, "target")["targets"]}
    assert need["ssl"]["how"] in ("measured", "extrapolated") and "interval" in need["ssl"]["text"]
    assert need["scratch"]["extrapolated"]  # not reached by 20 per class: fitted, marked, capped at 100
    assert "EXTRAPOLATED" in need["scratch"]["text"] or need["scratch"]["text"].startswith("> 100")
    # per-cell test CIs are class-stratified: every resample used, and the count is shown
    assert _values(ctx, "sizes")["size_tables"][0]["lines"][0]["test_ci"].endswith("(1000/1000)")
    per_repeat = make_run(tmp_path / "per_repeat", models=False, pretrain_per_repeat=True)
    assert not any("ONE pretraining run" in s
                   for s in _values(report_context(per_repeat, n_boot=100), "answer")["summary"])
    old = make_run(tmp_path / "old", models=False, probas=False)
    octx = report_context(old, n_boot=100)
    assert octx["bootstrap"] is None and "p_holm" in _values(octx, "paired")["paired"][0]
    assert "no per-image test results" in render(octx)


def test_report_degrades_without_models_explanations_or_results(tmp_path: Path) -> None:
    root = make_run(tmp_path / "bare", strategies=("scratch",), sizes=(2, 5), repeats=2, models=False,
                    failed=(("scratch", 5, 1),), missing=())
    html = build_report(root, explain=True, n_boot=100).read_text()
    assert "No explanations yet" in html and "SYNTHETIC" not in html
    assert "No paired comparison" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run.json").write_text('{"config": {"strategies": ["scratch"], "sizes": [2], "repeats": 1}}')
    assert "nothing to summarise" in build_report(empty, explain=False).read_text()


def test_a_section_in_the_list_is_on_the_page_and_one_left_out_is_not(tmp_path: Path) -> None:
    root = make_run(tmp_path / "run", strategies=("scratch", "ssl"), sizes=(2, 5), repeats=2, models=False,
                    failed=(), missing=())
    fragment = tmp_path / "probe.html.j2"
    fragment.write_text('<p class="probe">{{ n_finished }} cells finished; {{ note }}</p>\n')
    probe = Section(anchor="probe", title="Probe of {baseline} by {metric_label}", nav="Probe",
                    build=lambda data: {"n_finished": sum(r["status"] == "ok" for r in data.rows),
                                        "note": HOSTILE},
                    template=fragment)
    html = render(report_context(root, n_boot=50, sections=(*SECTIONS, probe)))
    assert '<h2 id="probe">Probe of scratch by ROC-AUC</h2>' in html and '<a href="#probe">Probe</a>' in html
    assert '<p class="probe">8 cells finished; &lt;script&gt;alert(1)&lt;/script&gt;</p>' in html

    # The page is SECTIONS, in order; a section whose build gives None (no unfinished cell, no selection
    # rule) is left off.
    page = render(report_context(root, n_boot=50))
    assert re.findall(r'<h2 id="(\w+)"', page) == [s.anchor for s in SECTIONS
                                                    if s.anchor not in ("failed", "selection")]
    assert "probe" not in page and "Confusion matrices" in page and 'href="#confusion"' in page
    ctx = report_context(root, n_boot=50, sections=[s for s in SECTIONS if s.anchor != "confusion"])
    without = render(ctx)
    assert "confusion" not in ctx["sections"]
    assert "Confusion matrices" not in without and 'id="confusion"' not in without
    assert 'href="#confusion"' not in without and 'class="cm"' not in without
    clash = Section(anchor="x", title="x", build=lambda data: {"baseline": "other"}, template=fragment)
    with pytest.raises(ValueError, match="redefines page values"):
        report_context(root, n_boot=50, sections=(clash,))


def test_report_cli(run_dir: Path, tmp_path: Path, capsys) -> None:
    from fewlabel.cli import main

    out = tmp_path / "r.html"
    main(["report", str(run_dir), "--out", str(out), "--no-explain", "--quiet", "--target", "0.8"])
    assert capsys.readouterr().out.strip() == str(out)
    assert out.exists() and "ROC-AUC 0.8" in out.read_text()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "nope")])
    assert exc.value.code == 2 and "run.json is missing" in capsys.readouterr().err


# -- headless Chromium -------------------------------------------------------------------------

def _chromium(page: Path, png: Path, height: int = 3000) -> list[str]:
    """Render ``page`` to ``png``; return the page's console lines (errors, CSP violations, logs)."""
    profile = tempfile.mkdtemp(prefix="fewlabel-chromium-")
    try:
        proc = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size=1200,{height}",
             "--enable-logging=stderr", "--v=0", f"--screenshot={png}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert png.exists(), proc.stderr[-2000:]
    # Chromium logs every console message of the page as ":INFO:CONSOLE..." on stderr (dbus noise
    # and GPU warnings are the browser's own, not the page's).
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    # Control: the detector must see a broken page's errors, or passing below would prove nothing.
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><meta http-equiv='Content-Security-Policy' content=\"img-src data:\">"
                   "<p>x</p><img src='https://example.invalid/a.png'><script>notDefined()</script>")
    assert len(_chromium(bad, tmp_path / "bad.png", height=400)) >= 2

    report = build_report(run_dir, explain=False, n_boot=300)
    shot = tmp_path / "report.png"
    console = _chromium(report, shot)
    assert console == [], console
    img = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float32)
    assert img.shape == (3000, 1200)
    assert img.std() > 20  # not blank: text, tables and figures
    # The learning-curve figure is drawn (a large non-white area, not a broken-image icon).
    assert (img < 200).mean() > 0.05


def test_pretraining_note_names_every_strategy_with_a_preparation() -> None:
    from fewlabel.report.sections.answer import _pretrain_note

    note = _pretrain_note({}, ["scratch", "segmentation+region", "imagenet+ssl", "imagenet"])
    assert note is not None and "segmentation+region, imagenet+ssl rows" in note
    assert _pretrain_note({}, ["scratch", "imagenet"]) is None
    assert _pretrain_note({"pretrain_per_repeat": True}, ["gan"]) is None


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_report_fits_a_narrow_window(run_dir: Path, tmp_path: Path) -> None:
    """No table runs past the page's right edge: the page is no wider than the window (a wide table
    scrolls inside itself)."""
    report = build_report(run_dir, explain=False, n_boot=300, out=tmp_path / "r.html")
    html = re.sub(r"<meta http-equiv=.Content-Security-Policy.[^>]*>", "", report.read_text())
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", "<script>document.title = 'width ' + "
                                  "document.documentElement.scrollWidth</script></body>"))
    profile = tempfile.mkdtemp(prefix="fewlabel-chromium-")
    try:
        dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                              "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1000,800",
                              "--dump-dom",
                              probe.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    width = re.search(r"<title>width (\d+)</title>", dom)
    assert width is not None, dom[:500]
    assert int(width.group(1)) <= 1000


def test_cells_notes_reach_the_data_section() -> None:
    """A foundation model's note (pretraining data unknown) is recorded by every cell; the report says
    it once per strategy, not once per cell, and a strategy without notes adds nothing."""
    from fewlabel.models.vit import PRETRAINING_NOTE
    from fewlabel.report.sections.dataset import cell_notes

    note = f"encoder weights dinov2.safetensors: {PRETRAINING_NOTE}"
    rows = [{"strategy": "foundation", "extra": {"notes": [note]}} for _ in range(3)]
    rows += [{"strategy": "scratch", "extra": {}}, {"strategy": "scratch", "extra": {"notes": []}}]
    assert cell_notes(rows) == {"foundation": [note]}
