"""Copies of one image in a labelled set: made one group, so they can never sit on both sides of a split.

Which samples are copies is decided by ``data.identity`` (here: the same decoded pixels).
"""

from __future__ import annotations

import dataclasses

from fewlabel.data.catalog import Catalog, Sample, natural_key
from fewlabel.errors import DataError


def merge_duplicates(catalog: Catalog, keys: dict[str, str]
                     ) -> tuple[Catalog, list[list[str]]]:
    """The catalog with every set of same-content samples made one group (their groups merged).

    Why: a copy of an image under another name is the same evidence twice; split apart, one copy
    would be tested on a model trained on the other. Copies that carry different labels cannot both
    be right: that is a one-line error naming both files, before anything is split.
    """
    by_key: dict[str, list[Sample]] = {}
    for s in catalog.samples:
        by_key.setdefault(keys[s.id], []).append(s)
    dup_sets = [members for members in by_key.values() if len(members) > 1]
    if not dup_sets:
        return catalog, []
    for members in dup_sets:
        labelled = [m for m in members if m.label is not None]
        if len({m.label for m in labelled}) > 1:
            a, b = next((x, y) for x in labelled for y in labelled if x.label != y.label)
            raise DataError(f"{a.id} and {b.id} hold the same image but are labelled {a.label!r} and "
                            f"{b.label!r}; fix the label or remove one copy (fewlabel inspect lists "
                            "every duplicate)", path=catalog.root)
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    for members in dup_sets:
        roots = sorted({find(m.group) for m in members}, key=natural_key)
        for r in roots[1:]:
            parent[r] = roots[0]
    samples = [dataclasses.replace(s, group=find(s.group)) if find(s.group) != s.group else s
               for s in catalog.samples]
    merged = [sorted((m.id for m in members), key=natural_key) for members in dup_sets]
    return dataclasses.replace(catalog, samples=samples), sorted(merged)
