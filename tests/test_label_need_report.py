"""The labels-needed section says only what was measured: the backtest names its metric, strategy,
image size and data, and says when a report is about something it did not measure; the simulated
coverage it quotes is the stored measurement, well-specified and lagging curves apart."""

from __future__ import annotations

import html
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from report_fixtures import make_run

from fewlabel.report import label_need_coverage as coverage
from fewlabel.report.html import render, report_context
from fewlabel.report.label_need import BACKTEST
from fewlabel.report.sections import labels_needed
from fewlabel.report.sections.labels_needed import NOT_COVERED, backtest_scope, coverage_sentences


def _section_html(root: Path, metric: str = "roc_auc") -> str:
    ctx = report_context(root, metric=metric, n_boot=100, sections=(labels_needed.SECTION,))
    return render(ctx)


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


@pytest.fixture(scope="module")
def scratch_32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("scratch32"), strategies=("scratch",), sizes=(2, 5, 10),
                    repeats=3, models=False, failed=(), missing=(), image_size=32)


def test_the_backtest_names_what_it_measured() -> None:
    assert BACKTEST is not None
    scope = (BACKTEST["metric"], tuple(BACKTEST["strategies"]), BACKTEST["image_size"])
    assert scope == ("roc_auc", ("scratch",), 32)
    text = str(BACKTEST["text"])
    for named in ("ROC-AUC", "scratch", "32 px", "PBC-8", "BCCD", BACKTEST["command"]):
        assert named in text, named
    # open intervals are not counted as hits without saying so
    assert "open above the extrapolation cap" in text and "13 of the 60 were closed" in text


def test_the_measured_combination_carries_no_caveat_and_any_other_does() -> None:
    assert NOT_COVERED not in backtest_scope(BACKTEST, "roc_auc", ["scratch"], 32)
    for metric, strategies, size, named in (("accuracy", ["scratch"], 32, "accuracy"),
                                            ("roc_auc", ["scratch", "imagenet"], 32, "imagenet"),
                                            ("roc_auc", ["imagenet"], 32, "imagenet"),
                                            ("roc_auc", ["scratch"], 224, "224 px"),
                                            ("roc_auc", ["scratch"], None, "does not record")):
        scope = backtest_scope(BACKTEST, metric, strategies, size)
        assert scope.startswith(NOT_COVERED) and named in scope, scope
    assert NOT_COVERED in backtest_scope(BACKTEST, "roc_auc", ["scratch"], 32, bootstrap=False)
    assert backtest_scope(None, "accuracy", ["scratch"], 32) is None


def test_a_report_on_accuracy_or_imagenet_says_the_backtest_does_not_cover_it(scratch_32: Path,
                                                                               tmp_path: Path) -> None:
    measured = _text(_section_html(scratch_32))
    assert str(BACKTEST["text"])[:60] in measured
    assert NOT_COVERED not in measured and "the ones the backtest measured" in measured
    accuracy = _text(_section_html(scratch_32, metric="accuracy"))
    assert f"{NOT_COVERED} this report's metric, accuracy (it measured ROC-AUC)" in accuracy
    imagenet = make_run(tmp_path / "imagenet", strategies=("scratch", "imagenet"), sizes=(2, 5, 10),
                        repeats=3, models=False, failed=(), missing=(), image_size=32)
    assert f"{NOT_COVERED} the strategy imagenet (it measured scratch only)" in _text(_section_html(imagenet))
    small = make_run(tmp_path / "px16", strategies=("scratch",), sizes=(2, 5, 10), repeats=3, models=False,
                     failed=(), missing=(), image_size=16)
    assert f"{NOT_COVERED} this run's 16 px images (it measured 32 px)" in _text(_section_html(small))


def test_the_report_quotes_the_stored_coverage_for_well_specified_and_lagging_curves(
        scratch_32: Path) -> None:
    text = _text(_section_html(scratch_32))
    rows = {(r["family"], r["strength"]): r for r in coverage.ROWS}
    well = rows[("power law", 0.0)]
    pct = {k: f"{well[k] / well['cases']:.0%}" for k in ("covered", "open", "missed low", "missed high")}
    assert (f"contained the truth in {pct['covered']} of cases, was open above the cap with the truth at or "
            f"above its lower end in {pct['open']}") in text
    assert f"missed below in {pct['missed low']} and above in {pct['missed high']}" in text
    assert coverage.COMMAND in text
    late = sorted((r for (f, _), r in rows.items() if f == "late start"), key=lambda r: r["strength"])
    lows = ", ".join(f"{r['missed low'] / r['cases']:.0%}" for r in late)
    assert f"missed below in {lows}" in text and "not calibrated for such curves" in text

    # the sentences follow the stored rows, not numbers of their own
    fake = SimpleNamespace(**{k: getattr(coverage, k) for k in ("COMMAND", "SEEDS", "CASES", "RATIOS",
                                                                 "INTERVAL_LEVEL")},
                           ROWS=({"family": "power law", "strength": 0.0, "cases": 100, "covered": 11,
                                  "open": 77, "missed low": 7, "missed high": 5, "no interval": 0,
                                  "missed low, 5th percentile": 13},))
    said = " ".join(coverage_sentences(fake))
    assert "contained the truth in 11% of cases" in said and "missed below in 7% and above in 5%" in said
    assert "starts late" not in said  # no late-start rows stored: nothing said of them
