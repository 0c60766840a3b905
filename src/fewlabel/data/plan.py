"""The split plan: one value that says which image plays which part, saved beside every result.

A plan is computed once from (data, seed, test size, count unit, group pattern, given test split)
and then consumed: ``train``, ``curve``, ``pretrain --plan``, ``explain``, the report and every Ray
worker read the same file instead of deriving the split again from their own arguments. It holds

* ``test`` — ids, labels and groups of the fixed test set, in the row order of every
  ``proba_test.npy``;
* ``pool`` — the labelled ids outside the test set (labelled draws come from here);
* ``merged`` — sets of samples whose files have the same content (copies under other names): each
  set was made one group before splitting, so a copy never sits on both sides;
* ``draws`` — per ``(size, repeat)`` the labelled, training and validation ids (validation from the
  labelled draw only; nested across sizes like the draws); per ``(rule, size, repeat)`` the same for
  a selection rule's picks (key ``<rule>:n<size>_r<repeat>``), with how they were chosen;
* ``pretrain_pools`` — per source of pretraining images the ids kept and how many were dropped
  because their group or their content meets the test set.

Its ``fingerprint`` covers the hold-out (data, parameters, test and pool ids); the pretraining pools
follow from it (and from the unlabelled folder given). An encoder records the fingerprint of the
plan it was made under.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewlabel.errors import ConfigMismatchError, SplitError
from fewlabel.fileio import atomic_write_json, read_json

PLAN_FORMAT = "fewlabel-plan/1"
PLAN_FILE = "plan.json"


def draw_key(n_per_class: int, repeat: int, selection: str | None = None) -> str:
    """``n5_r0`` (the class-stratified draw) or ``typiclust:n5_r0`` (a selection rule's picks)."""
    key = f"n{int(n_per_class)}_r{int(repeat)}"
    return key if selection is None else f"{selection}:{key}"


@dataclass
class SplitPlan:
    """Who is test, pool, labelled, training, validation and pretraining data (ids only)."""

    params: dict[str, Any]
    data_fingerprint: str
    classes: list[str]
    test_ids: list[str]
    test_labels: list[int]
    test_groups: list[str]
    pool_ids: list[str]
    merged: list[list[str]] = field(default_factory=list)
    draws: dict[str, dict[str, Any]] = field(default_factory=dict)
    pretrain_pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where the labelled data were read from (for `pretrain --plan`); a record, not fingerprinted:
    # the same files moved elsewhere are the same plan.
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        payload = {"params": self.params, "data": self.data_fingerprint, "test": self.test_ids,
                   "pool": self.pool_ids}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def draw(self, n_per_class: int, repeat: int, selection: str | None = None) -> dict[str, Any]:
        try:
            return self.draws[draw_key(n_per_class, repeat, selection)]
        except KeyError:
            by = "" if selection is None else f" by {selection}"
            raise SplitError(f"the plan has no draw{by} of {n_per_class} per class for repeat "
                             f"{repeat}") from None

    def add_draw(self, n_per_class: int, repeat: int, draw_seed: int, *, labelled: list[str],
                 train: list[str], val: list[str], skipped: str | None = None,
                 selection: str | None = None, chosen: dict[str, Any] | None = None) -> None:
        """Record a draw; ``selection`` names the rule that picked ``labelled`` (in its order) and
        ``chosen`` says how (budget, embedding, the rule's parameters, classes covered)."""
        test = set(self.test_ids)
        if test & (set(labelled) | set(train) | set(val)):  # a bug upstream, never a user error
            raise AssertionError("a test id in a labelled draw")
        entry: dict[str, Any] = {"n_per_class": int(n_per_class), "repeat": int(repeat),
                                 "draw_seed": int(draw_seed), "labelled": list(labelled),
                                 "train": list(train), "val": list(val)}
        if selection is not None:
            entry["selection"] = selection
            entry["chosen"] = dict(chosen or {})
        if skipped is not None:
            entry["skipped"] = skipped
        self.draws[draw_key(n_per_class, repeat, selection)] = entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT, "fingerprint": self.fingerprint, "params": self.params,
            "data_fingerprint": self.data_fingerprint, "classes": self.classes,
            "test": {"ids": self.test_ids, "labels": self.test_labels, "groups": self.test_groups},
            "pool": self.pool_ids, "merged": self.merged,
            "pretrain_pools": self.pretrain_pools, "draws": self.draws, "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path | None = None) -> SplitPlan:
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise SplitError(f"not a fewlabel plan file (format must be {PLAN_FORMAT!r})", path=path)
        try:
            test = data["test"]
            plan = cls(params=dict(data["params"]), data_fingerprint=str(data["data_fingerprint"]),
                       classes=[str(c) for c in data["classes"]], test_ids=[str(i) for i in test["ids"]],
                       test_labels=[int(v) for v in test["labels"]],
                       test_groups=[str(g) for g in test["groups"]], pool_ids=[str(i) for i in data["pool"]],
                       merged=[list(map(str, m)) for m in data.get("merged", [])],
                       draws={str(k): dict(v) for k, v in (data.get("draws") or {}).items()},
                       pretrain_pools={str(k): dict(v)
                                       for k, v in (data.get("pretrain_pools") or {}).items()},
                       source=dict(data.get("source") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise SplitError(f"plan file is incomplete or malformed ({type(exc).__name__}: {exc}); delete "
                             "it to draw the split again (results made under it then no longer match)",
                             path=path) from exc
        stored = data.get("fingerprint")
        if stored is not None and stored != plan.fingerprint:
            raise SplitError(f"plan file was edited (fingerprint {stored} no longer matches its content "
                             f"{plan.fingerprint}); restore it or start a new run", path=path)
        return plan

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> SplitPlan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        if not path.exists():
            raise SplitError("plan file does not exist", path=path)
        # read_json: a FIFO or device is never opened, a huge file is refused by its size
        data = read_json(path, "plan file", fix="delete it to draw the split again")
        return cls.from_dict(data, path=path)

    def check_same_holdout(self, other: SplitPlan, path: str | Path | None = None) -> None:
        """Refuse when ``other`` (the plan computed now) holds out another test set than this one."""
        if other.test_ids != self.test_ids or other.pool_ids != self.pool_ids:
            raise ConfigMismatchError("the test set or the pool differs from the stored plan (data or "
                                      "split settings changed?); use a new --out", path=path)
