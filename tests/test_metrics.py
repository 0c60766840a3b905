"""Metrics against scikit-learn, bootstrap CIs (coverage, groups, seeds, speed), paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from fewlabel.evaluate import classification_metrics, paired_difference, summarise
from fewlabel.evaluate.metrics import bootstrap_counts, weighted_auc, weighted_confusion

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn's "y_pred contains classes ..."


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _multiclass(
    n: int = 120, k: int = 4, seed: int = 0, signal: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.arange(k), rng.integers(0, k, n - k)]  # every class present
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += signal
    return y, _softmax(np.round(z, 1))  # rounding makes ties, which AUC must count as 1/2


def _assert_matches_sklearn(result: dict, y: np.ndarray, proba: np.ndarray) -> None:
    pred = proba.argmax(axis=1)
    assert result["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert result["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert result["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    k = proba.shape[1]
    assert result["confusion_matrix"] == confusion_matrix(y, pred, labels=range(k)).tolist()


def test_binary_matches_sklearn() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.4, 0.2, 0.65, 0.7, 0.5, 0.55])
    proba = np.stack([1 - p1, p1], axis=1)
    r = classification_metrics(y, proba, class_names=["neg", "pos"], n_boot=200)
    _assert_matches_sklearn(r, y, proba)
    assert r["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    assert r["n"] == 12 and r["class_names"] == ["neg", "pos"]
    # (n,) scores of the positive class are accepted for binary problems and mean the same thing.
    assert classification_metrics(y, p1, n_boot=200) == classification_metrics(y, proba, n_boot=200)


def test_multiclass_matches_sklearn() -> None:
    y, proba = _multiclass(n=150, k=5)
    r = classification_metrics(y, proba, n_boot=100)
    _assert_matches_sklearn(r, y, proba)
    assert r["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)
    assert r["class_names"] == ["0", "1", "2", "3", "4"]


def test_class_never_predicted() -> None:
    y, proba = _multiclass(n=90, k=3, seed=2)
    proba[:, 2] *= 0.01  # class 2 is never the argmax
    proba /= proba.sum(axis=1, keepdims=True)
    assert 2 not in proba.argmax(axis=1)
    r = classification_metrics(y, proba, n_boot=100)
    _assert_matches_sklearn(r, y, proba)
    assert r["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)


def test_class_absent_from_y_true() -> None:
    y, proba = _multiclass(n=80, k=3, seed=3)
    keep = y != 1
    y, proba = y[keep], proba[keep]
    r = classification_metrics(y, proba, n_boot=100)
    _assert_matches_sklearn(r, y, proba)  # balanced accuracy / F1 over the present (or predicted) classes
    assert np.isnan(r["roc_auc"]["value"]) and r["roc_auc"]["n_boot_used"] == 0  # OvR AUC undefined


def test_weighted_helpers_equal_repeated_samples() -> None:
    """Count weights must mean 'this sample appears w times': compare with sklearn on np.repeat."""
    rng = np.random.default_rng(4)
    n = 60
    y = rng.integers(0, 3, n)
    score = np.round(rng.random(n), 1)
    pred = rng.integers(0, 3, n)
    w = rng.integers(0, 4, size=(5, n)).astype(float)
    aucs = weighted_auc(w, y == 1, score)
    cms = weighted_confusion(w, y, pred, 3)
    for b in range(5):
        rep = np.repeat(np.arange(n), w[b].astype(int))
        assert aucs[b] == pytest.approx(roc_auc_score(y[rep] == 1, score[rep]), abs=1e-12)
        assert cms[b].tolist() == confusion_matrix(y[rep], pred[rep], labels=range(3)).tolist()
    assert np.isnan(weighted_auc(np.ones((1, 3)), np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))[0]


def test_bootstrap_counts() -> None:
    rng = np.random.default_rng(0)
    c = bootstrap_counts(50, 30, rng)
    assert c.shape == (30, 50) and (c.sum(axis=1) == 50).all()
    groups = np.repeat(np.arange(10), 5)  # 10 groups of 5
    g = bootstrap_counts(50, 30, rng, groups)
    assert (g.sum(axis=1) == 50).all()  # equal group sizes: 10 groups drawn x 5 samples
    assert (g.reshape(30, 10, 5).std(axis=2) == 0).all()  # a group's samples always share one count


def test_ci_contains_point_and_seed_determinism() -> None:
    y, proba = _multiclass(n=200, k=3, seed=5)
    a = classification_metrics(y, proba, n_boot=500, seed=1)
    b = classification_metrics(y, proba, n_boot=500, seed=1)
    c = classification_metrics(y, proba, n_boot=500, seed=2)
    assert a == b
    assert a["accuracy"]["ci_low"] != c["accuracy"]["ci_low"]
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        m = a[name]
        assert m["ci_low"] < m["value"] < m["ci_high"], name
        assert 0 < m["ci_high"] - m["ci_low"] < 0.3, name
    assert a["roc_auc"]["n_boot_used"] == 500
    wide = classification_metrics(y, proba, n_boot=500, seed=1, ci=0.99)
    assert wide["accuracy"]["ci_low"] <= a["accuracy"]["ci_low"] <= a["accuracy"]["ci_high"]
    none = classification_metrics(y, proba, n_boot=0)
    assert np.isnan(none["accuracy"]["ci_low"]) and none["accuracy"]["value"] == a["accuracy"]["value"]


def test_auc_ci_coverage_binormal() -> None:
    """200 data sets from a binormal model with known AUC = Phi(d / sqrt 2): the 95% CI should cover it
    in about 95% of them (percentile bootstrap runs slightly low at this n)."""
    rng = np.random.default_rng(123)
    d, n_per_class = 1.0, 60
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    covered = 0
    for i in range(200):
        y = np.r_[np.zeros(n_per_class, int), np.ones(n_per_class, int)]
        score = np.r_[rng.normal(0, 1, n_per_class), rng.normal(d, 1, n_per_class)]
        p1 = stats.norm.cdf(score)
        r = classification_metrics(y, p1, n_boot=300, seed=i)
        covered += r["roc_auc"]["ci_low"] <= true_auc <= r["roc_auc"]["ci_high"]
    assert 0.88 <= covered / 200 <= 0.99, covered


def test_group_bootstrap_widens_ci_for_correlated_slices() -> None:
    """20 patients x 15 slices; slices of a patient share most of their score: the effective sample size
    is about the number of patients, and only the group bootstrap sees it."""
    rng = np.random.default_rng(7)
    patients, slices = 20, 15
    label = np.repeat(np.arange(patients) % 2, slices)
    patient_effect = np.repeat(rng.normal(0, 1, patients), slices)
    score = 0.8 * label + patient_effect + rng.normal(0, 0.2, patients * slices)
    groups = np.repeat([f"p{i:02d}" for i in range(patients)], slices)
    p1 = stats.norm.cdf(score - 0.4)
    flat = classification_metrics(label, p1, n_boot=500, seed=0)
    grouped = classification_metrics(label, p1, n_boot=500, seed=0, groups=groups)
    assert grouped["roc_auc"]["value"] == flat["roc_auc"]["value"]  # points do not depend on the bootstrap
    for name in ("accuracy", "roc_auc"):
        flat_w = flat[name]["ci_high"] - flat[name]["ci_low"]
        grouped_w = grouped[name]["ci_high"] - grouped[name]["ci_low"]
        assert grouped_w > 1.8 * flat_w, (name, flat_w, grouped_w)
    assert grouped["bootstrap"]["unit"] == "group" and grouped["bootstrap"]["n_units"] == 20
    assert flat["bootstrap"]["unit"] == "sample" and flat["bootstrap"]["n_units"] == 300


def test_all_bootstrap_resamples_are_used_when_every_class_is_present() -> None:
    # Speed is measured in benchmarks/bootstrap_speed.py, never asserted in a test.
    y, proba = _multiclass(n=800, k=8, seed=8)
    assert classification_metrics(y, proba, n_boot=1000)["roc_auc"]["n_boot_used"] == 1000


def test_input_validation() -> None:
    y, proba = _multiclass(n=20, k=3)
    with pytest.raises(ValueError, match="one label per row"):
        classification_metrics(y[:-1], proba)
    with pytest.raises(ValueError, match="outside 0..2"):
        classification_metrics(np.r_[y[:-1], 3], proba)
    with pytest.raises(ValueError, match="2 class names for 3"):
        classification_metrics(y, proba, class_names=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(y, np.where(proba > 0.5, np.nan, proba))
    with pytest.raises(ValueError, match="groups has 3 entries"):
        classification_metrics(y, proba, groups=[1, 2, 3])


# ---------------------------------------------------------------------------------------------- compare
def test_summarise() -> None:
    s = summarise([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert s == {"median": 2.5, "q1": 1.75, "q3": 3.25, "mean": 2.5, "n": 4}
    assert summarise([])["n"] == 0 and np.isnan(summarise([])["median"])


def test_paired_difference() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 15)
    better = base + 0.05 + rng.normal(0, 0.01, 15)
    r = paired_difference(better, base, n_boot=2000, seed=0)
    assert r["n"] == 15 and 0.04 < r["mean_diff"] < 0.06
    assert 0 < r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["p_value"] == pytest.approx(stats.wilcoxon(better - base).pvalue) and r["p_value"] < 0.001
    assert paired_difference(better, base, seed=0) == paired_difference(better, base, seed=0)

    same = paired_difference(base, base)
    assert same["mean_diff"] == 0 and same["p_value"] == 1.0
    noise = paired_difference(base + rng.normal(0, 0.01, 15), base, n_boot=500)
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["p_value"] > 0.05
    with_nan = paired_difference([1.0, np.nan, 3.0], [0.5, 1.0, 2.0])
    assert with_nan["n"] == 2 and with_nan["mean_diff"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1, 2], [1])


def test_stratified_bootstrap_keeps_a_rare_class_in_every_resample() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(60, int), np.ones(38, int), np.full(2, 2)]
    proba = rng.dirichlet(np.ones(3), size=len(y))
    strat = classification_metrics(y, proba, n_boot=400, seed=0)
    plain = classification_metrics(y, proba, n_boot=400, seed=0, stratify=False)
    assert strat["roc_auc"]["n_boot_used"] == 400 and strat["bootstrap"]["stratified"]
    assert plain["roc_auc"]["n_boot_used"] < 400  # about (1 - 0.98^100)^... resamples miss class 2


def test_quartiles_are_numpy_percentiles_to_the_bit() -> None:
    from fewlabel.evaluate.metrics import quartiles

    rng = np.random.default_rng(0)
    for n in range(1, 25):
        values = rng.random(n)
        assert quartiles(values) == tuple(float(q) for q in np.percentile(values, [25, 50, 75]))
