"""The near-copy part of ``inspect``'s report: pairs of 2-D images whose perceptual hashes
(``data.near_copies``) are close, as warnings that name both files, those a given split puts on
both sides of the test set first. Nothing here changes the data or the split."""

from __future__ import annotations

from typing import Any

import numpy as np

from fewlabel.data.catalog import Catalog, natural_key
from fewlabel.data.near_copies import DEFAULT_MAX_DISTANCE, find_near_copies

#: Near-copy pairs named in a warning line; ``--json`` lists up to ``NEAR_COPIES_LISTED`` with details.
NEAR_COPIES_SHOWN = 5
NEAR_COPIES_LISTED = 200
#: Above this many 2-D images near-copies are not looked for: every pair is compared, so the time
#: grows with the square of the count (about 16 s for 20,000 images on one core).
NEAR_COPIES_MAX_IMAGES = 20_000


def near_copy_warnings(catalog: Catalog, phashes: dict[str, np.ndarray], pixel_digest: dict[str, str],
                       n_volumes: int, rep: Any, max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
    """Warn about pairs of 2-D images whose perceptual hashes are within ``max_distance`` bits.

    Why a warning and not a problem: the hash also brings together some distinct images that look
    alike, so only the user can tell; the data and the split are left as they are either way. Pairs
    with the same pixels are left out: they are exact duplicates, listed above and merged anyway."""
    if n_volumes:
        rep.notes.append(f"near-copies are looked for among 2-D images only: {n_volumes} 3-D volume(s) "
                         "not compared")
    ids = list(phashes)
    rep.near_copies = {"max_distance": max_distance, "n_compared": len(ids), "n_pairs": 0,
                       "n_straddling_split": 0, "n_within_group": 0, "n_not_compared": n_volumes,
                       "pairs": []}
    if len(ids) > NEAR_COPIES_MAX_IMAGES:
        rep.near_copies.update(n_compared=0, n_pairs=None, n_not_compared=n_volumes + len(ids))
        rep.notes.append(f"near-copies not looked for: {len(ids)} 2-D images are more than the "
                         f"{NEAR_COPIES_MAX_IMAGES} compared pair by pair")
        return
    found = find_near_copies(ids, np.stack([phashes[i] for i in ids])) if len(ids) > 1 else []
    found = [p for p in found if pixel_digest[p.a] != pixel_digest[p.b]]
    by_id = catalog.by_id
    has_split = any(s.split for s in catalog.samples)
    rows = []
    for p in found:
        a, b = by_id[p.a], by_id[p.b]
        rows.append({"a": p.a, "b": p.b, "distance": p.distance, "labels": [a.label, b.label],
                     "splits": [a.split, b.split], "same_group": a.group == b.group,
                     # one side in the given test set, the other in training or validation
                     "straddles_split": has_split and (a.split == "test") != (b.split == "test")})
    # the pairs that leak into a given test set first, pairs kept together by their group last
    rows.sort(key=lambda r: (not r["straddles_split"], r["same_group"], r["distance"],
                             natural_key(r["a"]), natural_key(r["b"])))
    straddling = [r for r in rows if r["straddles_split"]]
    within_group = sum(r["same_group"] for r in rows)
    rep.near_copies.update(n_pairs=len(rows), n_straddling_split=len(straddling),
                           n_within_group=within_group, pairs=rows[:NEAR_COPIES_LISTED])
    if not rows:
        return
    grouped = (f"; {within_group} of them within one group, so on one side of any split"
               if within_group else "")
    rep.warnings.append(
        f"{len(rows)} near-copy pair(s) (perceptual hash within {max_distance} bits; a resized, "
        f"re-compressed or slightly edited copy is not merged before splitting){grouped}: "
        f"{_pair_list(rows)}")
    if straddling:
        rep.warnings.append(
            f"{len(straddling)} near-copy pair(s) straddle the given split (one image in test, the "
            f"other outside it): {_pair_list(straddling, splits=True)}")


def _pair_list(rows: list[dict[str, Any]], splits: bool = False) -> str:
    """``a ↔ b (4 bits), …``: the first ``NEAR_COPIES_SHOWN`` pairs, and how many more."""
    shown = []
    for r in rows[:NEAR_COPIES_SHOWN]:
        names = [r["a"], r["b"]]
        if splits:
            names = [f"{n} ({split or 'no split'})" for n, split in zip(names, r["splits"], strict=True)]
        la, lb = r["labels"]
        extra = f"; classes {la!r} and {lb!r}" if la != lb else ""
        shown.append(f"{names[0]} ↔ {names[1]} ({r['distance']} bits{extra})")
    more = len(rows) - len(shown)
    return ", ".join(shown) + (f", and {more} more (--json lists up to {NEAR_COPIES_LISTED})" if more else "")
