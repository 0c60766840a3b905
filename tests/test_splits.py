"""Splits: stratified, group-aware, nested, deterministic; validation never from test; round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewlabel.data.catalog import Catalog, Sample, load_catalog
from fewlabel.data.splits import (
    MIN_GROUPS_FOR_VALIDATION,
    draw_labelled,
    holdout_test,
    nested_validation,
    predefined_test,
)
from fewlabel.errors import SplitError

from factory import make_manifest


def synthetic_catalog(per_class: dict[str, int], group_size: int = 1) -> Catalog:
    """A catalog without files (splits never read pixels): ids c/gXXX_iY, groups of ``group_size``."""
    samples = []
    for cls, n in per_class.items():
        for i in range(n):
            g = f"{cls}-g{i // group_size:03d}"
            sid = f"{cls}/{g}_i{i % group_size}.png"
            samples.append(Sample(id=sid, path=f"/nowhere/{sid}", label=cls, group=g))
    return Catalog(samples=samples, classes=sorted(per_class), root=__import__("pathlib").Path("/nowhere"))


def groups_of(cat, ids):
    return set(cat.groups(ids))


def test_holdout_stratified_group_aware_deterministic():
    cat = synthetic_catalog({"a": 30, "b": 45, "c": 12}, group_size=3)
    pool, test = holdout_test(cat, 0.2, seed=0)
    assert not set(pool) & set(test) and len(pool) + len(test) == len(cat)
    assert not groups_of(cat, pool) & groups_of(cat, test)
    labels = {cat.by_id[i].label for i in test}
    assert labels == {"a", "b", "c"}
    assert (pool, test) == holdout_test(cat, 0.2, seed=0)
    assert set(test) != set(holdout_test(cat, 0.2, seed=1)[1])
    # whole groups: the number of test images of a class is a multiple of the group size
    for cls in "abc":
        assert sum(cat.by_id[i].label == cls for i in test) % 3 == 0


def test_holdout_int_per_class_and_errors():
    cat = synthetic_catalog({"a": 10, "b": 4})
    pool, test = holdout_test(cat, 2, seed=0)
    assert sorted(cat.by_id[i].label for i in test) == ["a", "a", "b", "b"]
    with pytest.raises(SplitError, match=r"asked for 4 test images of class 'b', which has 4 image"):
        holdout_test(cat, 4, seed=0)
    tiny = synthetic_catalog({"a": 10, "b": 1})
    with pytest.raises(SplitError, match=r"class 'b' has 1 group"):
        holdout_test(tiny, 0.2, seed=0)


def test_holdout_count_groups():
    cat = synthetic_catalog({"a": 20, "b": 20}, group_size=4)  # 5 groups per class
    _, test = holdout_test(cat, 2, seed=0, count="groups")
    assert len(groups_of(cat, test)) == 4 and len(test) == 16


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n1=st.integers(1, 6), extra=st.integers(0, 6),
       group_size=st.integers(1, 3), count=st.sampled_from(["images", "groups"]))
def test_draws_are_nested(seed, n1, extra, group_size, count):
    cat = synthetic_catalog({"a": 60, "b": 57, "c": 66}, group_size=group_size)  # ≥ 14 groups in the pool
    pool, test = holdout_test(cat, 0.25, seed=7)
    n2 = n1 + extra
    small = draw_labelled(cat, pool, n1, seed=seed, count=count)
    large = draw_labelled(cat, pool, n2, seed=seed, count=count)
    assert set(small) <= set(large)
    assert not set(large) & set(test)
    # groups are never split: a drawn group comes with all its pool images
    drawn = groups_of(cat, large)
    assert {i for i in pool if cat.by_id[i].group in drawn} == set(large)
    for cls in ("a", "b", "c"):
        ids = [i for i in small if cat.by_id[i].label == cls]
        if count == "groups":
            assert len(groups_of(cat, ids)) == n1
        else:
            assert n1 <= len(ids) < n1 + group_size


def test_draw_counts_images_or_groups():
    cat = synthetic_catalog({"a": 30, "b": 30}, group_size=3)
    pool = cat.ids
    by_images = draw_labelled(cat, pool, 4, seed=0, count="images")
    by_groups = draw_labelled(cat, pool, 4, seed=0, count="groups")
    assert len(by_images) == 2 * 6  # 4 images → 2 whole groups of 3 per class
    assert len(by_groups) == 2 * 12  # 4 groups of 3 per class
    assert set(by_images) <= set(by_groups)
    assert draw_labelled(cat, pool, 4, seed=0) == by_images
    assert set(draw_labelled(cat, pool, 4, seed=1)) != set(by_images)


def test_draw_too_many_names_class_and_count():
    cat = synthetic_catalog({"basophil": 2, "neutrophil": 50})
    msg = r"class 'basophil' has 2 image\(s\) in the training pool; asked for 5"
    with pytest.raises(SplitError, match=msg):
        draw_labelled(cat, cat.ids, 5, seed=0)
    grouped = synthetic_catalog({"x": 6, "y": 9}, group_size=3)
    with pytest.raises(SplitError, match=r"class 'x' has 2 group\(s\) \(6 images\)"):
        draw_labelled(grouped, grouped.ids, 3, seed=0, count="groups")
    picked = draw_labelled(cat, cat.ids, {"basophil": 2, "neutrophil": 10}, seed=0)
    assert len(picked) == 12


def test_validation_from_labelled_only_never_test():
    cat = synthetic_catalog({"a": 40, "b": 40}, group_size=2)
    pool, test = holdout_test(cat, 0.2, seed=0)
    labelled = draw_labelled(cat, pool, 10, seed=3, count="groups")
    train, val = nested_validation(cat, pool, labelled, seed=3)
    assert set(train) | set(val) == set(labelled) and not set(train) & set(val)
    assert not set(val) & set(test)
    assert not groups_of(cat, train) & groups_of(cat, val)
    assert {cat.by_id[i].label for i in val} == {"a", "b"}
    assert len(groups_of(cat, val)) == 2 * (10 // 5)  # every 5th group of each class validates


def test_validation_nests_across_sizes():
    cat = synthetic_catalog({"a": 60, "b": 60}, group_size=2)
    pool, _ = holdout_test(cat, 0.2, seed=0)
    small = nested_validation(cat, pool, draw_labelled(cat, pool, 10, seed=4, count="groups"), seed=4)
    large = nested_validation(cat, pool, draw_labelled(cat, pool, 20, seed=4, count="groups"), seed=4)
    assert set(small[0]) <= set(large[0]) and set(small[1]) <= set(large[1])


def test_validation_too_few_groups_trains_on_everything():
    cat = synthetic_catalog({"a": 30, "b": 30}, group_size=3)
    pool, _ = holdout_test(cat, 0.2, seed=0)
    labelled = draw_labelled(cat, pool, MIN_GROUPS_FOR_VALIDATION - 1, seed=1, count="groups")
    assert nested_validation(cat, pool, labelled, seed=1) == (labelled, [])


def test_predefined_test_from_manifest(tmp_path):
    cat = load_catalog(make_manifest(tmp_path / "m", {"a": 8, "b": 8}, splits=True))
    pool, test = predefined_test(cat)
    assert len(test) == 4 and all(cat.by_id[i].split == "test" for i in test)
    assert len(pool) == 12
