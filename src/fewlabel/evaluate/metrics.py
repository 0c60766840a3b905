"""Classification metrics with percentile-bootstrap confidence intervals.

Every bootstrap resample is represented by a count vector (how often each test sample was drawn), so
all metrics of all resamples come out of a few vectorised numpy operations: 1000 resamples of 800
samples and 8 classes take well under a second (no Python loop over resamples).

Definitions (they match scikit-learn on the point values):
  * accuracy: fraction of argmax predictions that are right;
  * balanced_accuracy: mean recall over the classes present in ``y_true``;
  * macro_f1: mean F1 over the classes present in ``y_true`` or predicted (scikit-learn's default
    label set; a class never predicted but present gets F1 0);
  * roc_auc: binary, AUC of the positive class (column 1); multi-class, macro one-vs-rest AUC. It is
    undefined (NaN) when a class is absent from ``y_true``. Resampling is stratified by class (each
    resample holds every class as often as the test set does; with groups, a group's class is its
    most frequent one), so no resample misses a class; ``roc_auc["n_boot_used"]`` says how many
    resamples were used (resamples with an undefined AUC would be skipped).

``groups=`` switches to a cluster bootstrap: whole groups (patients) are resampled, because slices of
one patient are correlated and a per-slice bootstrap would make the intervals too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fewlabel.evaluate.resample import group_strata, stratified_counts

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
# Metrics also reported per patient (group) when a test patient has several images: ``group_metrics``.
PATIENT_METRICS = ("roc_auc", "accuracy")
# The same names, ROC-AUC (the headline) first: the column order of results.csv and of the report.
HEADLINE_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "macro_f1")


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of non-empty ``values``, bit for bit what ``np.percentile(values, [25, 50,
    75])`` gives (linear interpolation), so every summary of repeats shows the same numbers."""
    x = sorted(float(v) for v in values)
    return _quantile(x, 0.25), _quantile(x, 0.5), _quantile(x, 0.75)


def _quantile(x: list[float], q: float) -> float:
    pos = (len(x) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(x) - 1)
    t = pos - lo
    diff = x[hi] - x[lo]
    # numpy's lerp: from the nearer end, which decides the last bit of the result
    return x[hi] - diff * (1 - t) if t >= 0.5 else x[lo] + diff * t


def bootstrap_counts(
    n: int, n_boot: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> np.ndarray:
    """(n_boot, n) float array: how many times each sample is drawn in each resample.

    With ``groups`` (integer group index per sample), groups are drawn with replacement and every
    sample inherits its group's count.
    """
    if groups is None:
        draws, units, per_unit = rng.integers(0, n, size=(n_boot, n)), n, None
    else:
        units = int(groups.max()) + 1
        draws, per_unit = rng.integers(0, units, size=(n_boot, units)), groups
    flat = (draws + np.arange(n_boot)[:, None] * units).ravel()
    counts = np.bincount(flat, minlength=n_boot * units).reshape(n_boot, units).astype(np.float64)
    return counts if per_unit is None else counts[:, per_unit]


BOOT_CELLS = 2**22  # resample x sample weights held at once (32 MB of float64), whatever n_boot and n


def _chunked_bootstrap(n: int, n_boot: int, draw: Callable[[int], np.ndarray], y: np.ndarray,
                       proba: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """``_all_metrics`` of ``n_boot`` resamples (``draw(k)`` gives k rows of counts), drawn and scored
    in chunks so memory stays bounded on large test sets; one generator stream, a fixed chunk size:
    the same seed gives the same numbers."""
    chunk = max(1, BOOT_CELLS // max(n, 1))
    parts = [_all_metrics(draw(min(chunk, n_boot - start)), y, proba, y_pred)
             for start in range(0, n_boot, chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def weighted_auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rank-based (Mann-Whitney) AUC for every row of ``weights`` (B, n) at once; ties count 1/2.

    AUC = sum over (pos i, neg j) of w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j]) / (W_pos W_neg). Samples
    are sorted by score once; per-score-value weight sums (``reduceat`` over runs of equal scores)
    and a cumulative sum give, for each positive, the weight of negatives below it. NaN where a row
    has no positives or no negatives.
    """
    order = np.argsort(score, kind="mergesort")
    s, pos = score[order], positive[order].astype(bool)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    w_pos = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    w_neg = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    pairs = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = pairs / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def weighted_confusion(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(B, k, k) confusion matrices (rows = true class) for every row of ``weights`` (B, n)."""
    cell = y_true * k + y_pred
    order = np.argsort(cell, kind="mergesort")
    cell_sorted = cell[order]
    starts = np.flatnonzero(np.r_[True, cell_sorted[1:] != cell_sorted[:-1]])
    sums = np.add.reduceat(weights[:, order], starts, axis=1)
    out = np.zeros((weights.shape[0], k * k))
    out[:, cell_sorted[starts]] = sums
    return out.reshape(-1, k, k)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, balanced accuracy, macro F1 of (B, k, k) confusion matrices."""
    diag = np.diagonal(cm, axis1=1, axis2=2)
    true_tot, pred_tot = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = diag.sum(axis=1) / cm.sum(axis=(1, 2))
        present = true_tot > 0
        recall = np.where(present, diag / true_tot, 0.0)
        balanced = recall.sum(axis=1) / present.sum(axis=1)
        # F1 = 2 TP / (2 TP + FP + FN) = 2 diag / (true_tot + pred_tot); labels = present or predicted.
        labelled = (true_tot + pred_tot) > 0
        f1 = np.where(labelled, 2 * diag / (true_tot + pred_tot), 0.0)
        macro_f1 = f1.sum(axis=1) / labelled.sum(axis=1)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": macro_f1}


def auc_from_weights(weights: np.ndarray, y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    k = proba.shape[1]
    if k == 2:
        return weighted_auc(weights, y_true == 1, proba[:, 1])
    per_class = np.stack([weighted_auc(weights, y_true == c, proba[:, c]) for c in range(k)], axis=1)
    return per_class.mean(axis=1)  # NaN when any class is missing: such resamples are skipped


def _all_metrics(weights: np.ndarray, y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray) -> dict:
    out = metrics_from_confusion(weighted_confusion(weights, y_true, y_pred, proba.shape[1]))
    out["roc_auc"] = auc_from_weights(weights, y_true, proba)
    return out


def _check(y_true: Any, proba: Any, class_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1:  # binary scores of the positive class
        proba = np.stack([1.0 - proba, proba], axis=1)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"proba must be (n, classes) with >= 2 classes, got shape {proba.shape}")
    if not np.all(np.isfinite(proba)):
        raise ValueError("proba contains NaN or infinite values")
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) != len(proba):
        raise ValueError(f"y_true must be 1-D with one label per row of proba ({len(proba)}), got {y.shape}")
    if len(y) == 0:
        raise ValueError("no samples to evaluate")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= proba.shape[1]:
        raise ValueError(f"y_true holds class indices outside 0..{proba.shape[1] - 1}")
    if class_names is not None and len(class_names) != proba.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {proba.shape[1]} probability columns")
    return y.astype(np.int64), proba


def classification_metrics(
    y_true: Any,
    proba: Any,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    groups: Sequence[Any] | None = None,
    stratify: bool = True,
) -> dict[str, Any]:
    """Point values and percentile-bootstrap CIs of accuracy, balanced accuracy, macro F1 and ROC-AUC.

    ``y_true`` (n,) class indices; ``proba`` (n, k) class probabilities (or (n,) P(class 1) when
    binary); ``groups`` (n,) group ids for a cluster bootstrap. Returns ``{metric: {"value",
    "ci_low", "ci_high"}, "confusion_matrix": rows = true class, "n", "class_names", "bootstrap": {...}}``;
    ``roc_auc`` also has ``n_boot_used``. ``stratify`` resamples within each class (default). Same
    seed, same numbers.
    """
    y, proba = _check(y_true, proba, class_names)
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), not {ci}")
    n, k = proba.shape
    y_pred = proba.argmax(axis=1)
    names = [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(k)]

    point = _all_metrics(np.ones((1, n)), y, proba, y_pred)
    group_index = None
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} samples")
        _, group_index = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    boot = None
    if n_boot > 0:
        if stratify:
            unit_index, strata = group_strata(group_index if group_index is not None else np.arange(n), y)

            def draw(k: int) -> np.ndarray:
                return stratified_counts(strata, k, rng)[:, unit_index]
        else:
            def draw(k: int) -> np.ndarray:
                return bootstrap_counts(n, k, rng, group_index)
        boot = _chunked_bootstrap(n, n_boot, draw, y, proba, y_pred)

    alpha = (1.0 - ci) / 2.0
    result: dict[str, Any] = {}
    for name in METRICS:
        nan = float("nan")
        entry: dict[str, Any] = {"value": float(point[name][0]), "ci_low": nan, "ci_high": nan}
        if boot is not None:
            values = boot[name][np.isfinite(boot[name])]
            if len(values):
                low, high = np.quantile(values, [alpha, 1 - alpha])
                entry["ci_low"], entry["ci_high"] = float(low), float(high)
            if name == "roc_auc":
                entry["n_boot_used"] = int(len(values))
        result[name] = entry
    cm = weighted_confusion(np.ones((1, n)), y, y_pred, k)[0]
    result["confusion_matrix"] = cm.astype(int).tolist()
    result["n"] = int(n)
    result["class_names"] = names
    result["bootstrap"] = {
        "n_boot": int(n_boot), "ci": float(ci), "seed": int(seed), "stratified": bool(stratify),
        "unit": "group" if group_index is not None else "sample",
        "n_units": int(group_index.max() + 1) if group_index is not None else int(n),
    }
    return result


def pool_by_group(y_true: Any, proba: Any, groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One row per group (patient): the MEAN of its images' class probabilities, and its label (the
    most frequent label among its images; ties to the lower class index). Groups in sorted order.

    Why the mean: it weighs every image alike and keeps probabilities (so ROC-AUC stays defined), while
    a majority vote of argmaxes would throw the scores away.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    names, gidx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = len(names)
    sums = np.zeros((n_groups, p.shape[1]))
    np.add.at(sums, gidx, p)
    sizes = np.bincount(gidx, minlength=n_groups).astype(np.float64)
    votes = np.zeros((n_groups, p.shape[1]))
    np.add.at(votes, (gidx, y), 1)
    return votes.argmax(axis=1), sums / sizes[:, None], [str(n) for n in names]


def group_metrics(y_true: Any, proba: Any, groups: Sequence[Any] | None,
                  class_names: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Patient-level metrics: ``classification_metrics`` of the per-group mean probabilities
    (``pool_by_group``), its bootstrap resampling patients stratified by class, or None when no group
    holds more than one image (then the image-level metrics already are per patient).

    Returns ``{metric: {"value", "ci_low", "ci_high"}}`` for ``PATIENT_METRICS`` plus ``n_groups`` and
    ``rule`` ("mean of image probabilities").
    """
    if groups is None:
        return None
    y, p = _check(y_true, proba, class_names)
    groups = np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} samples")
    if len(np.unique(groups.astype(str))) == len(groups):
        return None
    yg, pg, names = pool_by_group(y, p, groups)
    full = classification_metrics(yg, pg, class_names=class_names, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {m: full[m] for m in PATIENT_METRICS}
    out.update(n_groups=len(names), rule="mean of image probabilities")
    return out
