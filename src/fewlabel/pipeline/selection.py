"""Which unlabelled images to label next: selection rules on an embedding, no label needed.

Every rule takes ``x`` (N, F), one row per image (the pool, and labelled images outside it), the rows
already labelled (``labelled``: they count as chosen, so new picks cover what they do not, and are
never picked), rows never to pick that cover nothing (``exclude``: e.g. labelled test images), a
``budget`` and a ``seed``; it returns a ``Selection``: the picks in the order to label them, each
with the reason it was picked. The same input and seed give the same picks.

Rows are compared in cosine geometry: centred on their mean and scaled to unit length (``normalise``,
the CL2N of SimpleShot that ``training.probe.knn_proba`` uses too). Pooled ReLU features are all
positive; uncentred, their cosines crowd near 1 and distances say little.

* ``typiclust`` (Hacohen, Dekel & Weinshall 2022, "Active learning on a budget"): k-means (k-means++,
  seeded) with k = labelled + budget clusters (at most ``MAX_CLUSTERS``); an image's typicality is
  the inverse of its mean distance to its ``TYPICALITY_K`` = 20 nearest neighbours in its cluster;
  each pick is the most typical free image of the largest cluster that holds no labelled image or
  pick yet. Clusters of fewer than ``MIN_CLUSTER_SIZE`` images (outliers, which the paper drops) are
  taken only after every larger cluster holds a pick; then the larger clusters are visited again
  (fewest picks first) rather than none being proposed.
* ``probcover`` (Yehuda, Dekel, Hacohen & Weinshall 2022, "Active learning through a covering lens"):
  each image owns a ball of radius δ; greedily pick the image whose ball holds the most images not yet
  covered (labelled images' balls cover from the start); once everything is covered, the rest are
  drawn at random. The paper sets δ as the largest radius whose balls stay 95 % pure with respect to
  k-means pseudo-labels with k = the number of classes: that needs the number of classes, unknown at
  a cold start. Here δ is the pairwise-distance quantile at which the average ball holds
  ``target_degree`` other images, by default min(20, N / (labelled + budget)): the neighbourhood
  TypiClust measures typicality over (``TYPICALITY_K``), and never more than the size of each of
  the labelled + budget equal parts TypiClust cuts the pool into. Small balls on purpose: the paper's
  point is that a ball must stay within one class, and a ball as large as a cluster straddles two
  (on blobs, balls of a cluster's size put the first picks between clusters). δ, the quantile and
  the degrees are recorded in ``Selection.params``.
* ``random``: uniform, the baseline a rule has to beat.

Which rule gives the better classifier for a budget is to be measured (a learning curve with each
rule's picks as the labelled set), not assumed; ``typiclust`` is the default without such a claim.
Memory: ``probcover`` keeps its ball graph, about N × degree entries (N = 10,000 images at budget 16:
about 6 million); the other rules stay at a few N × F arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fewlabel.errors import FewlabelError

RULES = ("typiclust", "probcover", "random")
TYPICALITY_K = 20  # neighbours the typicality averages over (the paper's)
MIN_CLUSTER_SIZE = 5  # smaller clusters are outliers to TypiClust (the paper's constant)
MAX_CLUSTERS = 500  # the paper's cap: more picks than clusters visit clusters again
EXACT_PAIRS_UP_TO = 2000  # images up to which δ's quantile is taken over every pair
PAIR_SAMPLE = 2_000_000  # pairs drawn (seeded) to place δ in a larger pool
CHUNK = 1024  # rows of a distance block: bounded memory whatever N


@dataclass(frozen=True)
class Pick:
    """One proposed image: its row in ``x``, its rank (1 = label first), the cluster (typiclust) or
    ball (probcover: the rank) it stands for (-1: random), a score (typicality, or images newly
    covered) and the reason in words."""

    row: int
    rank: int
    group: int
    score: float
    why: str


@dataclass
class Selection:
    rule: str
    picks: list[Pick]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[int]:
        return [p.row for p in self.picks]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows centred on their mean and scaled to unit length (float64); a row at the mean stays 0."""
    z = np.asarray(x, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"an embedding is a matrix (N, F), not shape {z.shape}")
    z = z - z.mean(0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norms > 0, norms, 1.0)


def _roles(n: int, labelled: Iterable[int], exclude: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """(covering rows, rows that may be picked) as boolean masks."""
    covering = np.zeros(n, bool)
    blocked = np.zeros(n, bool)
    for mask, rows in ((covering, labelled), (blocked, exclude)):
        idx = np.asarray(list(rows), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"row index out of range for an embedding of {n} rows")
        mask[idx] = True
    return covering, ~(covering | blocked)


def _check_budget(budget: int, candidates: np.ndarray) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise FewlabelError(f"--budget must be a whole number of at least 1, got {budget!r}")
    free = int(candidates.sum())
    if budget > free:
        raise FewlabelError(f"--budget {budget} asks for more images than the {free} that can be proposed")
    return int(budget)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``a`` and ``b``."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


def typicality(z: np.ndarray, k: int = TYPICALITY_K) -> np.ndarray:
    """1 / mean distance of each row to its ``k`` nearest other rows (fewer when there are fewer);
    0 for a lone row, which has no neighbourhood to be typical of."""
    n = len(z)
    if n < 2:
        return np.zeros(n)
    kk = min(int(k), n - 1)
    out = np.empty(n)
    for start in range(0, n, CHUNK):
        d = _distances(z[start:start + CHUNK], z)
        d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf  # not its own neighbour
        nearest = np.partition(d, kk - 1, axis=1)[:, :kk]
        out[start:start + len(d)] = 1.0 / np.maximum(nearest.mean(1), 1e-12)
    return out


def kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster of each row (k-means++ start, seeded), clusters numbered by size, largest first."""
    from sklearn.cluster import KMeans

    assign = KMeans(n_clusters=k, init="k-means++", n_init=3, random_state=seed).fit_predict(z)
    sizes = np.bincount(assign, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))  # by size, then by k-means' own number
    rename = np.empty(k, np.int64)
    rename[order] = np.arange(k)
    return rename[assign]


def typiclust(x: np.ndarray, labelled: Iterable[int], budget: int, seed: int = 0, *,
              exclude: Iterable[int] = ()) -> Selection:
    """TypiClust's picks (module docstring)."""
    z = normalise(x)
    covering, free = _roles(len(z), labelled, exclude)
    budget = _check_budget(budget, free)
    distinct = len(np.unique(z.round(10), axis=0))
    k = max(1, min(int(covering.sum()) + budget, MAX_CLUSTERS, distinct))
    assign = kmeans(z, k, seed)
    sizes = np.bincount(assign, minlength=k)
    held = np.bincount(assign[covering], minlength=k)  # labelled images, then picks, per cluster
    typ = np.full(len(z), np.nan)  # computed for a cluster when it is first visited
    picks: list[Pick] = []
    for rank in range(1, budget + 1):
        open_clusters = np.unique(assign[free])
        c = int(min(open_clusters, key=lambda c: (sizes[c] < MIN_CLUSTER_SIZE, held[c], -sizes[c], c)))
        if np.isnan(typ[assign == c]).any():
            members = np.flatnonzero(assign == c)
            typ[members] = typicality(z[members])
        rows = np.flatnonzero(free & (assign == c))
        row = int(rows[np.argmax(typ[rows])])
        if held[c] == 0:
            state = "none labelled or picked yet"
        else:
            state = f"{held[c]} labelled or picked already: every cluster of {MIN_CLUSTER_SIZE}+ holds one"
        small = sizes[c] < MIN_CLUSTER_SIZE
        outlier = f"; under {MIN_CLUSTER_SIZE} images, an outlier cluster" if small else ""
        why = (f"most typical free image of cluster {c} ({sizes[c]} images, {state}{outlier}; "
               f"typicality {typ[row]:.2f})")
        picks.append(Pick(row, rank, c, float(typ[row]), why))
        held[c] += 1
        free[row] = False
    params = {"clusters": k, "typicality_neighbours": TYPICALITY_K, "min_cluster_size": MIN_CLUSTER_SIZE,
              "kmeans": "k-means++, 3 starts", "seed": int(seed), "cluster_sizes": sizes.tolist()}
    return Selection("typiclust", picks, params)


def ball_radius(z: np.ndarray, target_degree: float, seed: int = 0) -> tuple[float, float]:
    """(δ, q): δ is the q-quantile of the distances between distinct rows, q = target / (N - 1), so
    the average ball holds ``target_degree`` other rows. Every pair up to ``EXACT_PAIRS_UP_TO`` rows,
    else ``PAIR_SAMPLE`` pairs drawn with ``seed``."""
    n = len(z)
    if n < 2:
        return 0.0, 0.0
    q = float(np.clip(target_degree / (n - 1), 0.0, 1.0))
    if n <= EXACT_PAIRS_UP_TO:
        parts = [_distances(z[s:s + CHUNK], z) for s in range(0, n, CHUNK)]
        d = np.concatenate(parts)[np.triu_indices(n, 1)]
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, PAIR_SAMPLE)
        j = (i + rng.integers(1, n, PAIR_SAMPLE)) % n  # never i itself
        d = np.sqrt(np.maximum(((z[i] - z[j]) ** 2).sum(1), 0.0))
    return float(np.quantile(d, q)), q


def ball_graph(z: np.ndarray, delta: float) -> Any:
    """The balls as a symmetric sparse matrix (CSR, int32): row i holds every row within ``delta``
    of row i, i itself included."""
    from scipy import sparse

    rows, cols = [], []
    for start in range(0, len(z), CHUNK):
        r, c = np.nonzero(_distances(z[start:start + CHUNK], z) <= delta)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = sparse.csr_matrix((np.ones(len(r), np.int32), (r, c)), shape=(len(z), len(z)))
    # rounding can put a pair at exactly δ on one side only: a ball holds j iff j's ball holds i
    graph = graph + graph.T + sparse.identity(len(z), np.int32, format="csr")
    return (graph > 0).astype(np.int32).tocsr()


def ball_coverage(x: np.ndarray, rows: Iterable[int], delta: float) -> float:
    """Share of the rows of ``x`` (compared as ``normalise`` makes them) within ``delta`` of a row of
    ``rows``: what a set of picks covers at radius δ."""
    z = normalise(x)
    picked = np.asarray(list(rows), dtype=np.int64)
    if not picked.size:
        return 0.0
    near = np.zeros(len(z), bool)
    for start in range(0, len(z), CHUNK):
        near[start:start + CHUNK] = (_distances(z[start:start + CHUNK], z[picked]) <= delta).any(1)
    return float(near.mean())


def probcover(x: np.ndarray, labelled: Iterable[int], budget: int, seed: int = 0, *,
              exclude: Iterable[int] = (), target_degree: float | None = None) -> Selection:
    """ProbCover's greedy picks at the δ of ``ball_radius`` (module docstring)."""
    z = normalise(x)
    n = len(z)
    covering, free = _roles(n, labelled, exclude)
    budget = _check_budget(budget, free)
    n_cover = int(covering.sum())
    target = (float(target_degree) if target_degree is not None
              else min(float(TYPICALITY_K), n / (n_cover + budget)))
    delta, q = ball_radius(z, target, seed)
    graph = ball_graph(z, delta)
    covered = np.zeros(n, bool)
    for r in np.flatnonzero(covering):
        covered[graph.indices[graph.indptr[r]:graph.indptr[r + 1]]] = True
    gain = np.asarray(graph @ (~covered).astype(np.int32)).ravel()  # uncovered images in each ball
    rng = np.random.default_rng(seed)
    picks: list[Pick] = []
    for rank in range(1, budget + 1):
        rows = np.flatnonzero(free)
        best = int(gain[rows].max())
        if best > 0:
            row = int(rows[np.argmax(gain[rows])])
            ball = graph.indices[graph.indptr[row]:graph.indptr[row + 1]]
            newly = ball[~covered[ball]]
            covered[newly] = True
            gain -= np.asarray(graph[newly].sum(axis=0)).ravel().astype(gain.dtype)
            why = (f"centre of ball {rank}: {best} images within δ={delta:.3f} not yet covered; "
                   f"{covered.mean():.0%} of the images covered with it")
            picks.append(Pick(row, rank, rank, float(best), why))
        else:
            row = int(rng.choice(rows))
            why = (f"every image is already within δ={delta:.3f} of a labelled image or a pick: "
                   f"drawn at random (seed {seed})")
            picks.append(Pick(row, rank, -1, 0.0, why))
        free[row] = False
    degree = (np.diff(graph.indptr) - 1).mean()
    params = {"delta": delta, "delta_quantile": q, "target_degree": target, "mean_degree": float(degree),
              "delta_rule": "quantile of pairwise distances at which the average ball holds "
                            "target_degree other images; target_degree = min(20, N / (labelled + budget)) "
                            "unless given", "coverage": float(covered.mean()), "seed": int(seed)}
    return Selection("probcover", picks, params)


def random_picks(x: np.ndarray, labelled: Iterable[int], budget: int, seed: int = 0, *,
                 exclude: Iterable[int] = ()) -> Selection:
    """``budget`` free rows drawn uniformly at random (seeded)."""
    _, free = _roles(len(x), labelled, exclude)
    budget = _check_budget(budget, free)
    rows = np.random.default_rng(seed).choice(np.flatnonzero(free), budget, replace=False)
    picks = [Pick(int(r), k + 1, -1, 0.0, f"drawn uniformly at random (seed {seed})")
             for k, r in enumerate(rows)]
    return Selection("random", picks, {"seed": int(seed)})


_RULE_FUNCTIONS: dict[str, Callable[..., Selection]] = {
    "typiclust": typiclust, "probcover": probcover, "random": random_picks}


def select(rule: str, x: np.ndarray, labelled: Iterable[int], budget: int, seed: int = 0, *,
           exclude: Iterable[int] = ()) -> Selection:
    """The picks of ``rule`` (one of ``RULES``)."""
    if rule not in _RULE_FUNCTIONS:
        raise FewlabelError(f"unknown selection rule {rule!r}; choose one of {', '.join(RULES)}")
    return _RULE_FUNCTIONS[rule](x, labelled, budget, seed, exclude=exclude)
