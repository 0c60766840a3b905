"""Class-stratified resampling draws, shared by ``metrics`` (one model's CIs) and ``cluster_bootstrap``
(the run-wide plan): each stratum keeps its size in every resample, so no resample loses a class."""

from __future__ import annotations

import numpy as np


def group_strata(groups: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group index per sample, stratum per group): a group's stratum is its most frequent class."""
    _, gidx = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(gidx.max()) + 1
    counts = np.zeros((n_groups, int(labels.max()) + 1))
    np.add.at(counts, (gidx, labels), 1)
    return gidx, counts.argmax(axis=1)


def stratified_counts(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, U) counts: within each stratum its units are drawn with replacement, as many as it has."""
    units = len(strata)
    counts = np.zeros((n_boot, units))
    rows = np.arange(n_boot)[:, None]
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(counts, (np.broadcast_to(rows, draws.shape), draws), 1)
    return counts
