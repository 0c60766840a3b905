"""Splits: a fixed test set, nested labelled subsets, and validation from the labelled ids only.

Why it is built this way:

* **Groups stay whole.** Slices of one patient (or crops of one smear image) are near copies; a
  group in both training and test data inflates every number. Every split here moves whole groups.
  A group whose samples carry different labels (``inspect`` warns) is stratified by its majority
  label (``Catalog.group_labels``) and still kept whole.
* **Stratified at group level.** Each class is split on its own, so every class is in every part.
* **Nested draws.** For each class there is ONE seeded permutation of its groups (``seed``, class
  name); a draw of n takes a prefix of it. So for the same seed the n=10 draw contains the n=5 draw,
  and a learning curve compares labelled sets that differ only by the added labels.
* **Each random stream is independent**: ``numpy.random.default_rng([seed, purpose, class])``, so the
  test set does not move when you change the labelled-set size, and adding a class does not change the
  draws of the others.
* ``count="groups"`` counts groups (patients); ``count="images"`` counts images: whole groups are taken
  in permutation order until at least n images are reached (a group is never split, so a draw may
  exceed n by less than one group). Without groups both are the same.
* Validation comes out of the labelled ids only, never out of test, and nests across sizes like the
  draws; with fewer than ``MIN_GROUPS_FOR_VALIDATION`` labelled groups in some class everything trains
  (what is possible is returned, not an error).

The saved form of a split is ``fewlabel.data.plan.SplitPlan`` (``plan.json``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fewlabel.data.catalog import Catalog
from fewlabel.errors import SplitError

__all__ = ["holdout_test", "predefined_test", "draw_labelled", "nested_validation", "group_holdout",
           "group_table", "MIN_GROUPS_FOR_VALIDATION", "VALIDATION_EVERY"]

_COUNTS = ("images", "groups")
# With fewer labelled groups than this in some class, no validation split is drawn and training runs
# a fixed number of epochs: 4 groups cannot spare one for model selection.
MIN_GROUPS_FOR_VALIDATION = 5
# Every VALIDATION_EVERY-th group of a class's draw order validates (20 %), the rest train.
VALIDATION_EVERY = 5


def _rng(seed: int, purpose: str, cls: str) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SplitError(f"seed must be a non-negative integer (got {seed!r})")
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode()), zlib.crc32(cls.encode())])


def group_table(catalog: Catalog, ids: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """``{class: {group: [ids]}}`` for labelled ``ids``; each group under its majority class.

    Groups are listed in natural-sorted order, ids in catalog order, so the result depends only on the
    set of ids, never on the order they were passed in.
    """
    from fewlabel.data.catalog import natural_key

    id_set = set(ids)
    majority = catalog.group_labels()
    table: dict[str, dict[str, list[str]]] = {c: {} for c in catalog.classes}
    for s in catalog.samples:
        if s.id in id_set and s.label is not None:
            table[majority[s.group]].setdefault(s.group, []).append(s.id)
    return {c: dict(sorted(g.items(), key=lambda kv: natural_key(kv[0]))) for c, g in table.items()}


def _check_count(count: str) -> None:
    if count not in _COUNTS:
        raise SplitError(f"count must be 'images' or 'groups' (got {count!r})")


def _ordered(catalog: Catalog, ids: set[str]) -> list[str]:
    return [s.id for s in catalog.samples if s.id in ids]


def _take(groups: Sequence[tuple[str, list[str]]], n: float, count: str) -> int:
    """How many groups (a prefix) to take so that n groups / at least n images are covered."""
    if count == "groups":
        return int(n)
    total, k = 0, 0
    while k < len(groups) and total < n:
        total += len(groups[k][1])
        k += 1
    return k


def _describe(n_groups: int, n_images: int, count: str) -> str:
    if count == "groups":
        return f"{n_groups} group(s) ({n_images} images)"
    return f"{n_images} image(s)" + (f" in {n_groups} group(s)" if n_groups != n_images else "")


def holdout_test(catalog: Catalog, test_size: float | int = 0.2, seed: int = 0,
                 count: str = "images") -> tuple[list[str], list[str]]:
    """(pool_ids, test_ids): a stratified, group-aware test set, fixed by ``seed``.

    ``test_size`` float in (0, 1): that fraction of each class (of its images, or of its groups with
    ``count="groups"``), at least one group, and at least one group left in the pool. int ≥ 1: that
    many images (or groups) per class. Unlabelled samples are in neither list.
    """
    _check_count(count)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise SplitError(f"test_size must be a fraction in (0, 1) or a count per class (got {test_size!r})")
    fraction = isinstance(test_size, (float, np.floating)) and test_size < 1
    if fraction and test_size <= 0:
        raise SplitError(f"test_size must be > 0 (got {test_size})")
    if not fraction and not float(test_size).is_integer():
        raise SplitError(f"test_size must be a fraction below 1 or a whole count per class (got {test_size})")
    test: set[str] = set()
    pool: set[str] = set()
    for cls, gmap in group_table(catalog, catalog.ids).items():
        groups = list(gmap.items())
        n_img = sum(len(v) for _, v in groups)
        if len(groups) < 2:
            raise SplitError(
                f"class {cls!r} has {_describe(len(groups), n_img, 'groups')}: a test set needs at least 2 "
                "groups per class (one for test, one for training); drop or merge the class",
                path=catalog.root)
        order = _rng(seed, "test", cls).permutation(len(groups))
        groups = [groups[i] for i in order]
        if fraction:
            target = float(test_size) * (len(groups) if count == "groups" else n_img)
            k = _take(groups, max(1.0, round(target)), count)
        else:
            n = int(test_size)
            if n < 1:
                raise SplitError(f"test_size must be a fraction in (0, 1) or a count ≥ 1 (got {test_size})")
            have = len(groups) if count == "groups" else n_img
            if n >= have:
                raise SplitError(f"asked for {n} test {count} of class {cls!r}, which has "
                                 f"{_describe(len(groups), n_img, count)}; leave some for training",
                                 path=catalog.root)
            k = _take(groups, n, count)
        k = min(max(k, 1), len(groups) - 1)
        for _, members in groups[:k]:
            test.update(members)
        for _, members in groups[k:]:
            pool.update(members)
    return _ordered(catalog, pool), _ordered(catalog, test)


def predefined_test(catalog: Catalog) -> tuple[list[str], list[str]]:
    """(pool_ids, test_ids) from the catalog's own ``split`` column (manifest / MedMNIST .npz).

    A group found on both sides is an error: the given split would leak.
    """
    test = {s.id for s in catalog.samples if s.split == "test" and s.label is not None}
    if not test:
        raise SplitError("the data define no test split (no sample has split 'test')", path=catalog.root)
    pool = {s.id for s in catalog.samples if s.split != "test" and s.label is not None}
    leaked = set(catalog.groups(test)) & set(catalog.groups(pool))
    if leaked:
        g = sorted(leaked)[0]
        raise SplitError(f"group {g!r} is in the given test split and outside it ({len(leaked)} such "
                         "group(s)); a group must stay on one side", path=catalog.root)
    return _ordered(catalog, pool), _ordered(catalog, test)


def draw_labelled(catalog: Catalog, pool_ids: Iterable[str], n_per_class: int | Mapping[str, int], seed: int,
                  count: str = "images") -> list[str]:
    """The labelled subset: ``n_per_class`` per class from ``pool_ids``, nested in n for a fixed seed.

    ``n_per_class`` may be a dict ``{class: n}``. Asking for more than a class has is a ``SplitError``
    that names the class and how many it has.
    """
    _check_count(count)
    chosen: list[str] = []
    table = group_table(catalog, pool_ids)
    for cls, gmap in table.items():
        n = n_per_class.get(cls, 0) if isinstance(n_per_class, Mapping) else n_per_class
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise SplitError(f"labels per class must be a non-negative integer (got {n!r} for {cls!r})")
        if n == 0:
            continue
        groups = list(gmap.items())
        n_img = sum(len(v) for _, v in groups)
        have = len(groups) if count == "groups" else n_img
        if n > have:
            raise SplitError(f"class {cls!r} has {_describe(len(groups), n_img, count)} in the training "
                             f"pool; asked for {n} per class", path=catalog.root)
        order = _rng(seed, "draw", cls).permutation(len(groups))
        groups = [groups[i] for i in order]
        for _, members in groups[: _take(groups, n, count)]:
            chosen.extend(members)
    if not chosen:  # nothing to train on: say so here, not as a training loop with no batches
        raise SplitError(f"labels per class must be at least 1 (got {n_per_class!r}); no labelled image "
                         "was drawn", path=catalog.root)
    return chosen


def nested_validation(catalog: Catalog, pool_ids: Iterable[str], labelled_ids: Iterable[str],
                      seed: int) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) of a labelled draw, nested across sizes like the draws themselves.

    The groups of each class are taken in the order ``draw_labelled`` draws them (same ``seed``,
    same pool), and every ``VALIDATION_EVERY``-th of them validates. A larger draw extends a smaller
    one, so its training AND validation sets extend the smaller draw's: a learning curve changes only
    by the added labels. When some class has fewer than ``MIN_GROUPS_FOR_VALIDATION`` labelled groups,
    everything trains (val is empty).
    """
    labelled = list(labelled_ids)
    chosen = set(labelled)
    val: set[str] = set()
    per_class_groups: list[list[list[str]]] = []
    for cls, gmap in group_table(catalog, pool_ids).items():
        groups = list(gmap.values())
        order = _rng(seed, "draw", cls).permutation(len(groups))
        drawn = [[i for i in groups[j] if i in chosen] for j in order]
        drawn = [g for g in drawn if g]
        if drawn:
            per_class_groups.append(drawn)
    if not per_class_groups or min(len(g) for g in per_class_groups) < MIN_GROUPS_FOR_VALIDATION:
        return labelled, []
    for drawn in per_class_groups:
        for k, members in enumerate(drawn):
            if k % VALIDATION_EVERY == VALIDATION_EVERY - 1:
                val.update(members)
    return [i for i in labelled if i not in val], [i for i in labelled if i in val]


def group_holdout(groups: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train positions, validation positions) of samples by whole groups, ignoring labels.

    For model selection in pretraining (segmentation Dice): slices of one patient never sit on both
    sides. ``round(fraction × groups)`` groups validate, at least one when there are 2+ groups and
    ``fraction > 0``, never all of them.
    """
    names = sorted(set(groups), key=str)
    if fraction <= 0 or len(names) < 2:
        return list(range(len(groups))), []
    order = _rng(seed, "group-holdout", "all").permutation(len(names))
    k = min(max(1, round(fraction * len(names))), len(names) - 1)
    val_groups = {names[i] for i in order[:k]}
    train = [i for i, g in enumerate(groups) if g not in val_groups]
    val = [i for i, g in enumerate(groups) if g in val_groups]
    return train, val
