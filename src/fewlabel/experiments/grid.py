"""The learning-curve grid: its configuration (with a stable hash), its cells and their seeds.

A run is arm × labelled-set size × repeat on one fixed test set. An arm is a strategy trained on the
class-stratified random draw (the arm is named by the strategy alone), or a strategy trained on the
images a selection rule picked from the pool without labels (``imagenet@typiclust``: ``experiments.arms``).
``CurveConfig`` holds everything that changes the numbers; its ``config_hash()`` decides whether a
RUN_DIR may be resumed, and ``differences()`` names what differs when it may not.

Seeds (all derived, stable across Python versions and machines):
  * the test hold-out uses the base ``seed`` itself;
  * ``draw_seed(seed, repeat)``: the labelled draw of a repeat; the data layer's draws are nested,
    so within a repeat the n=5 draw is a subset of the n=10 draw;
  * ``train_seed(seed, repeat, n)``: fine-tuning; the same for every strategy, so strategies are
    compared on the same images with the same seed (paired).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from fewlabel.experiments.arms import arm_name, arm_parts, parse_selection
from fewlabel.jsonable import jsonable

# Fields of CurveConfig that change results: the config hash covers exactly these.
HASHED_FIELDS = (
    "data_fingerprint",
    "unlabelled_fingerprint",
    "masks",
    "group_pattern",
    "drop_classes",
    "strategies",
    "strategy_specs",
    "sizes",
    "repeats",
    "test_size",
    "seed",
    "image_size",
    "count",
    "finetune",
    "pretrain_per_repeat",
    "selection",
    "weights_sha256",
    "selection_embedding",
)

# The grid: a run may add sizes or repeats to these (``CurveConfig.grows``), never drop one.
GRID_FIELDS = ("sizes", "repeats")

# How a field is named in a mismatch message.
_FIELD_LABELS = {
    "data_fingerprint": "data",
    "unlabelled_fingerprint": "unlabelled pool",
    "masks": "masks",
    "group_pattern": "group pattern",
    "drop_classes": "dropped classes",
    "strategies": "strategies",
    "strategy_specs": "strategy",
    "sizes": "sizes",
    "repeats": "repeats",
    "test_size": "test size",
    "seed": "seed",
    "image_size": "image size",
    "count": "count",
    "finetune": "finetune",
    "pretrain_per_repeat": "pretraining per repeat",
    "selection": "selection rules",
    "weights_sha256": "encoder weights file (sha256)",
    "selection_embedding": "selection's",
}

def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) from its parts, by SHA-256: stable everywhere, unlike ``hash()``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def draw_seed(seed: int, repeat: int) -> int:
    """Seed of the labelled draws of one repeat (the same for every size: draws are nested)."""
    return derive_seed(seed, "draw", repeat)


def pretrain_seed(seed: int, repeat: int | None) -> int:
    """Seed of a strategy's preparation: the base seed when one preparation serves every repeat."""
    return seed if repeat is None else derive_seed(seed, "pretrain", repeat)


def selection_seed(seed: int, repeat: int) -> int:
    """Seed of the selection rules in one repeat (k-means start, δ's pair sample, the random picks);
    the same for every rule and size, so repeats vary the selector and rules stay paired."""
    return derive_seed(seed, "select", repeat)


def train_seed(seed: int, repeat: int, n_per_class: int) -> int:
    """Seed of fine-tuning in one (size, repeat); shared by all strategies so comparisons are paired."""
    return derive_seed(seed, "train", repeat, n_per_class)


class Cell(NamedTuple):
    """One grid cell; its key in the store."""

    strategy: str
    n_per_class: int
    repeat: int

    @property
    def dirname(self) -> str:
        """``<strategy>/n<size>_r<repeat>`` under ``RUN_DIR/cells``."""
        return f"{self.strategy}/n{self.n_per_class}_r{self.repeat}"

    def __str__(self) -> str:
        return f"{self.strategy} n={self.n_per_class} r={self.repeat}"


@dataclass
class CurveConfig:
    """Everything that defines a learning-curve run. Paths are kept for the record but not hashed:
    the same data moved elsewhere is the same run; the fingerprints decide."""

    data_fingerprint: str
    strategies: tuple[str, ...]
    strategy_specs: dict[str, dict[str, Any]]
    sizes: tuple[int, ...]
    repeats: int
    test_size: float | int = 0.2
    seed: int = 0
    image_size: tuple[int, ...] | int | None = None
    count: str = "images"
    finetune: dict[str, Any] = field(default_factory=dict)
    unlabelled_fingerprint: str | None = None
    masks: bool = False
    group_pattern: str | None = None
    drop_classes: tuple[str, ...] = ()
    # Each repeat prepares its own encoder (own pretraining seed): the spread of pretrained
    # strategies then includes the pretraining's own variance, not only the labelled draw's.
    pretrain_per_repeat: bool = False
    # Selection rules whose picks train each strategy beside its class-stratified draw (arms).
    selection: tuple[str, ...] = ()
    # Per strategy, the content of the ``encoder_weights`` file it was given: the path alone is in its
    # spec, and the same path holding another checkpoint must not resume the run.
    weights_sha256: dict[str, str] = field(default_factory=dict)
    # The encoder the selection rules embed the pool with, when not the ImageNet default: its name
    # (None: the probe's) and the content of its weights file (the path is informational, below).
    selection_embedding: dict[str, Any] = field(default_factory=dict)
    # Informational only (not hashed).
    data: str = ""
    unlabelled: str | None = None
    masks_dir: str | None = None
    selection_weights: str | None = None

    def __post_init__(self) -> None:
        self.strategies = tuple(self.strategies)
        self.sizes = tuple(sorted({int(n) for n in self.sizes}))
        self.drop_classes = tuple(sorted(self.drop_classes))
        self.selection = parse_selection(self.selection)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        if not self.strategies:
            raise ValueError("a curve needs at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies repeat a name: {','.join(self.strategies)}")
        self.sizes = parse_sizes(self.sizes)
        from fewlabel.settings import MAX_REPEATS

        if not 1 <= self.repeats <= MAX_REPEATS:
            raise ValueError(f"repeats must be from 1 to {MAX_REPEATS:,}, got {self.repeats}")

    def hashed(self) -> dict[str, Any]:
        """The part of the configuration that changes results, in canonical JSON-able form."""
        return _hashed_form({name: getattr(self, name) for name in HASHED_FIELDS})

    def config_hash(self) -> str:
        """16 hex digits of SHA-256 over ``hashed()``; equal hashes may resume each other."""
        blob = json.dumps(self.hashed(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return canonical(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurveConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def arms(self) -> tuple[str, ...]:
        """Each strategy on the class-stratified draw, then on each selection rule's picks."""
        return tuple(arm_name(s, rule) for s in self.strategies for rule in (None, *self.selection))

    def spec_of(self, arm: str) -> dict[str, Any]:
        """The strategy spec an arm trains with (the selection rule changes the images, not the spec)."""
        return self.strategy_specs[arm_parts(arm)[0]]

    def cells(self) -> list[Cell]:
        """Every cell, repeat-major then size then arm: a stopped run has whole repeats first."""
        return [Cell(a, n, r) for r in range(self.repeats) for n in self.sizes for a in self.arms]

    def extends(self, stored: Mapping[str, Any]) -> bool:
        """Whether this configuration is the stored one (``to_dict()`` of a run), perhaps with sizes
        and/or repeats added, and nothing else changed: the run may go on (and grow) under this
        configuration's hash. Draws depend only on the seed, the repeat and the size, so finished
        cells stay valid and only new ones run. (Equal with another hash: a run written before a
        fine-tuning setting was added, which then held its default.)"""
        mine = self.hashed()
        theirs = _hashed_form({name: stored.get(name) for name in HASHED_FIELDS})
        if any(mine.get(n) != theirs.get(n) for n in _compared(stored) if n not in GRID_FIELDS):
            return False
        return all(_grows(theirs, mine, name) for name in GRID_FIELDS)

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        """What differs between a stored config (``to_dict()`` of another run) and this one, as
        ``"<field> <stored> vs <this>"`` phrases, e.g. ``"sizes 2,5,20 vs 2,5"``."""
        mine = self.hashed()
        theirs = _hashed_form({name: stored.get(name) for name in HASHED_FIELDS})
        out: list[str] = []
        for name in _compared(stored):
            grows = name in GRID_FIELDS and _grows(theirs, mine, name)
            if mine.get(name) != theirs.get(name) and not grows:
                out.extend(_describe(_FIELD_LABELS[name], theirs.get(name), mine.get(name)))
        named = set(self.finetune.get("explicit") or ())
        if any(line.startswith("finetune ") and line.split()[1] in named and " (default) vs " in line
               for line in out):
            out.append("(a setting you give now wins over the strategy's recipe even at its default value; "
                       "leave it out to resume)")
        return out


# Recorded only since a later version: a run written before it has no value to compare, and resumes
# (its configuration is then rewritten with the value, under ``earlier_hashes``).
_RECORDED_LATER = ("weights_sha256",)


def _grows(theirs: Mapping[str, Any], mine: Mapping[str, Any], name: str) -> bool:
    """Whether ``mine`` only adds to the stored grid field (sizes added, repeats raised): how a run may
    grow (``extends``), so never named among the differences that block a resume."""
    try:
        if name == "sizes":
            return {int(v) for v in theirs.get(name) or ()} <= {int(v) for v in mine.get(name) or ()}
        return int(theirs.get(name) or 0) <= int(mine.get(name) or 0)
    except (TypeError, ValueError):
        return False


def _compared(stored: Mapping[str, Any]) -> tuple[str, ...]:
    """The hashed fields a stored configuration can be compared on."""
    return tuple(n for n in HASHED_FIELDS if n not in _RECORDED_LATER or n in stored)


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(_fmt(v) for v in value) or "none"
    digits = value.removeprefix("c-") if isinstance(value, str) else ""
    if len(digits) > 12 and all(c in "0123456789abcdef" for c in digits):
        return value[:len(value) - len(digits) + 8]  # a fingerprint: its first digits tell them apart
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, sub in value.items():
            flat.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _describe(label: str, old: Any, new: Any) -> list[str]:
    """Dicts are compared key by key so the message names the setting that changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        a, b = _flatten(old), _flatten(new)
        def shown(flat: dict[str, Any], key: str) -> str:
            return _fmt(flat[key]) if key in flat else "(default)"  # the hashed form leaves defaults out

        return [f"{label} {key} {shown(a, key)} vs {shown(b, key)}"
                for key in sorted(set(a) | set(b)) if (key in a, a.get(key)) != (key in b, b.get(key))]
    return [f"{label} {_fmt(old)} vs {_fmt(new)}"]


def parse_sizes(text: str | Iterable[int]) -> tuple[int, ...]:
    """``"1,2,5"`` → (1, 2, 5); a clear ValueError on anything else, and on a size past
    ``settings.MAX_PER_CLASS`` (a typo that would fail only when the run is written)."""
    from fewlabel.settings import MAX_PER_CLASS

    try:
        parts = text.split(",") if isinstance(text, str) else list(text)
        sizes = tuple(_whole(part) for part in parts if str(part).strip())
    except (TypeError, ValueError):
        raise ValueError(f"sizes must be comma-separated whole numbers, got {text!r}") from None
    if not sizes or not all(1 <= n <= MAX_PER_CLASS for n in sizes):
        shown = text if isinstance(text, str) else ",".join(map(str, sizes))
        raise ValueError(f"sizes must be whole numbers from 1 to {MAX_PER_CLASS:,}, got {shown!r}")
    return sizes


def _whole(value: Any) -> int:
    """``5``, ``"5"`` or ``5.0`` → 5; ``"1e23"``, ``2.5`` or ``True`` raise ValueError."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value.strip()) if isinstance(value, str) else int(value)


def parse_names(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"scratch, ssl"`` → ("scratch", "ssl")."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    return tuple(p.strip() for p in parts if p.strip())


def _hashed_form(fields: dict[str, Any]) -> dict[str, Any]:
    """``canonical`` of the hashed fields, with fine-tuning settings at their defaults left out: a
    setting added to ``FinetuneConfig`` later (at a default that keeps the old behaviour) leaves the
    configuration of earlier runs as it was, while a changed default still shows as a difference."""
    out = canonical(fields)
    for optional in ("selection", "weights_sha256", "selection_embedding"):
        if not out.get(optional):
            out.pop(optional, None)  # a run without them hashes as before they existed
    from fewlabel.training.recipe import FinetuneConfig  # here: grid stays light to import

    defaults = canonical(FinetuneConfig().to_dict())

    def sparse(settings: Any, neutral: dict[str, Any], keep: set[str] = frozenset()) -> Any:
        if not isinstance(settings, dict):
            return settings
        return {k: v for k, v in settings.items() if k in keep
                or ((k not in defaults or v != defaults[k]) and (k not in neutral or v != neutral[k]))}

    # A strategy's recipe value equal to the default is no recipe at all (the base's value stands),
    # nor is one equal to what an unset setting means (one model, no TTA).
    for spec in (out.get("strategy_specs") or {}).values():
        if isinstance(spec, dict) and "finetune" in spec:
            spec["finetune"] = sparse(spec["finetune"], FinetuneConfig.UNSET_MEANS)
    base = out.get("finetune")
    keep: set[str] = set()
    if isinstance(base, dict):
        # A setting the user named counts even at its default where some strategy's recipe sets it
        # to another value (the user's value then wins: other numbers); the list is not a setting.
        named = base.get("explicit") or ()
        base = {k: v for k, v in base.items() if k != "explicit"}
        recipe_keys = {k for spec in (out.get("strategy_specs") or {}).values() if isinstance(spec, dict)
                       for k in (spec.get("finetune") or {})}
        keep = set(named) & recipe_keys
    if isinstance(base, dict) and "ensemble" not in base and base.get("tta") is False:
        # Written before ensemble / tta could be left to the recipe: tta false was then the default,
        # which meant what unset means now.
        base = {k: v for k, v in base.items() if k != "tta"}
    out["finetune"] = sparse(base, _BEFORE_COMPUTE_SETTINGS, keep)
    if isinstance(out["finetune"], dict):
        out["finetune"].pop("channels_last", None)  # a memory layout: the same numbers up to rounding
        if not _has_ensemble(base, out.get("strategy_specs")):
            out["finetune"].pop("ensemble_mode", None)  # how members are made, with no members
    for spec in (out.get("strategy_specs") or {}).values():
        if isinstance(spec, dict) and isinstance(spec.get("finetune"), dict):
            spec["finetune"].pop("channels_last", None)
    return out


# What a run written before precision and ensemble_mode existed computed with: the same numbers.
_BEFORE_COMPUTE_SETTINGS = {"precision": "fp32", "ensemble_mode": "independent"}


def _has_ensemble(base: Any, specs: Any) -> bool:
    """Whether any strategy of the run trains more than one member (base setting or recipe)."""
    found = [base.get("ensemble")] if isinstance(base, dict) else []
    found += [(s.get("finetune") or {}).get("ensemble") for s in (specs or {}).values()
              if isinstance(s, dict)]
    return any(isinstance(v, int) and v > 1 for v in found)


def canonical(value: Any) -> Any:
    """Canonical JSON-able form (sorted keys): what the configuration hash is taken over."""
    return jsonable(value, sort_keys=True)
