"""No leakage from the test set into preparation.

Two rules, enforced here and tested on generated data:
  * the unlabelled pool loses every image whose group is a test group: e.g. BCCD red-cell crops
    ``BloodImage_00012_r3.png`` cut from a smear whose white cell ``BloodImage_00012.png`` is a test
    image (both get group ``BloodImage_00012`` from ``--group-pattern 'BloodImage_\\d+'``);
  * segmentation pretraining sees masks of training images only: never a test image's mask, nor
    one of an image sharing a group (patient) with a test image.

Catalog-like arguments need only ``.ids``, ``.groups(ids)``, ``.subset(ids)`` and ``.by_id[id].mask``
(the contract of ``fewlabel.data.catalog.Catalog``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fewlabel.errors import SplitError


def leak_free_ids(ids: Sequence[str], groups: Sequence[str], test_groups: Iterable[str]) -> list[str]:
    """The ``ids`` whose group is not among ``test_groups`` (order kept)."""
    banned = set(test_groups)
    return [i for i, g in zip(ids, groups, strict=True) if g not in banned]


def exclude_groups(pool: Any, test_groups: Iterable[str]) -> Any:
    """The pool catalog without the images of any test group."""
    ids = list(pool.ids)
    return pool.subset(leak_free_ids(ids, list(pool.groups(ids)), test_groups))


def check_disjoint(pool_groups: Iterable[str], test_groups: Iterable[str],
                   what: str = "pretraining pool") -> None:
    """Raise ``SplitError`` naming up to 3 shared groups if ``pool_groups`` meets ``test_groups``."""
    shared = sorted(set(pool_groups) & set(test_groups))
    if shared:
        raise SplitError(f"{what} shares {len(shared)} group(s) with the test set "
                         f"(e.g. {', '.join(shared[:3])}); pretraining must not see them")


def training_mask_ids(catalog: Any, train_ids: Sequence[str], test_ids: Sequence[str]) -> list[str]:
    """Ids among ``train_ids`` that have a mask and share no group with ``test_ids``.

    Raises ``SplitError`` when ``train_ids`` contains a test id (a bug upstream, said loudly)."""
    overlap = set(train_ids) & set(test_ids)
    if overlap:
        raise SplitError(f"{len(overlap)} test image(s) among the images for segmentation pretraining "
                         f"(e.g. {sorted(overlap)[0]})")
    test_groups = set(catalog.groups(list(test_ids))) if len(test_ids) else set()
    keep = leak_free_ids(list(train_ids), list(catalog.groups(list(train_ids))), test_groups)
    return [i for i in keep if catalog.by_id[i].mask is not None]
