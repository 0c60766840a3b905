"""Arms of a learning curve: a strategy on the class-stratified draw (named by the strategy alone), or a
strategy on the images a selection rule picked from the pool without labels (``imagenet@typiclust``)."""

from __future__ import annotations

from collections.abc import Iterable

# Selection rules a curve can run beside the class-stratified draw (``pipeline.selection``): each
# picks ``n × classes`` images of the pool from an embedding, blind to labels.
SELECTION_RULES = ("random", "typiclust", "probcover")
# Also the separator of a per-repeat preparation key (``ssl@r0``, ``curve.prep_key``); no rule is named
# r<digits>, and preparation keys are never read back as arms.
ARM_SEPARATOR = "@"


def arm_name(strategy: str, rule: str | None) -> str:
    """``imagenet`` (the class-stratified draw) or ``imagenet@typiclust`` (a selection rule's picks)."""
    return strategy if rule is None else f"{strategy}{ARM_SEPARATOR}{rule}"


def arm_parts(arm: str) -> tuple[str, str | None]:
    """(strategy, selection rule or None) of an arm name."""
    strategy, _, rule = arm.partition(ARM_SEPARATOR)
    return strategy, rule or None


def parse_selection(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"random,typiclust"`` → ("random", "typiclust"); a clear ValueError on an unknown rule."""
    parts = text.split(",") if isinstance(text, str) else list(text or ())
    names = tuple(p.strip() for p in parts if p.strip())
    unknown = [n for n in names if n not in SELECTION_RULES]
    if unknown:
        raise ValueError(f"selection rule {', '.join(unknown)} is unknown; choose from "
                         f"{', '.join(SELECTION_RULES)} (the class-stratified random draw always runs as "
                         "the reference)")
    if len(set(names)) != len(names):
        raise ValueError(f"selection rules repeat a name: {','.join(names)}")
    return tuple(r for r in SELECTION_RULES if r in names)  # one order: the same rules, the same run
