"""Settings checked up front: unknown keys and bad values are one-line errors before any work.

``validated(FinetuneConfig, {"batch_size": "abc"}, "fine-tuning")`` raises
``FewlabelError("fine-tuning setting batch_size must be an integer, got 'abc'")`` — before data are
loaded or a run folder is written — instead of a failure cell by cell minutes later (or, worse, a
typo silently ignored). Types come from the config dataclass itself; the value rules below say what
each known field may hold.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fewlabel.errors import FewlabelError

if TYPE_CHECKING:
    import torch

_Rule = tuple[Callable[[Any], bool], str]

#: Bounds of the numbers that say how much work to do. Past them a value is a typo, not a need, and
#: taking it would hang (a list of 10**20 cells), exhaust memory or fail deep inside a library.
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes no more; derived seeds stay in [0, 2**31)
MAX_REPEATS = 1_000
MAX_PER_CLASS = 1_000_000  # labelled images (or groups) per class: --sizes, --labels-per-class
MAX_WORKERS = 1_024  # processes, CPUs per cell
MAX_GPUS_PER_CELL = 64
MAX_BATCH = 65_536
MAX_STEPS = 10_000_000
MAX_EPOCHS = 100_000
MAX_WIDTH = 512  # the convnet caps every stage at 512 channels: a wider first stage is cut back anyway
MAX_DEPTH = 11  # 2**10 = 1024, the largest side an image may be resized to (limits.DEFAULT_MAX_SIDE)
MAX_EXAMPLES = 100  # test images per class in a report's explanation grids
MAX_FEATURES = 4_096  # z_dim, proj_dim: as limits.MAX_MODEL_WIDTH for a saved model


def _between(low: float, high: float) -> _Rule:
    """A rule for a number from ``low`` to ``high``, both included."""
    return (lambda v: low <= v <= high), f"be from {low:,} to {high:,}"


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _fraction(v: Any) -> bool:
    return 0 <= v < 1


def _device(v: Any) -> bool:
    return bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(v)))


RULES: dict[str, _Rule] = {
    "lr": (_positive, "be > 0"),
    "encoder_lr": (_positive, "be > 0"),
    "weight_decay": (_non_negative, "be >= 0"),
    "batch_size": _between(1, MAX_BATCH),
    "max_epochs": _between(1, MAX_EPOCHS),
    "min_steps_per_epoch": _between(1, MAX_STEPS),
    "patience": (_non_negative, "be >= 0"),
    "dropout": (_fraction, "be in [0, 1)"),
    "label_smoothing": (_fraction, "be in [0, 1)"),
    "augment": (lambda v: v in ("none", "weak", "strong", "dihedral"), "be none, weak, strong or dihedral"),
    "schedule": (lambda v: v in ("constant", "cosine"), "be constant or cosine"),
    "bn_mode": (lambda v: v in ("train", "eval"), "be train or eval"),
    "layer_decay": (lambda v: 0 < v <= 1, "be in (0, 1]"),
    "warmup_epochs": (_non_negative, "be >= 0"),
    "epochs_without_validation": (_positive, "be >= 1"),
    "ensemble": (lambda v: 1 <= v <= 32, "be from 1 to 32"),
    "pseudo_per_label": (lambda v: 0 <= v <= 100, "be from 0 to 100"),
    "pseudo_min_probability": (lambda v: 0 <= v <= 1, "be in [0, 1]"),
    "probe_only_max_per_class": (_non_negative, "be >= 0"),
    "balance": (lambda v: v in ("loss_weights", "none"), "be loss_weights or none"),
    "time_budget_s": (lambda v: 0 < v < float("inf"), "be a number of seconds > 0"),
    "device": (_device, "be auto, cpu, cuda, cuda:N or mps"),
    "precision": (lambda v: v in ("auto", "fp32", "bf16", "fp16"), "be auto, fp32, bf16 or fp16"),
    "ensemble_mode": (lambda v: v in ("auto", "independent", "snapshot"), "be auto, independent or snapshot"),
    "semi_threshold": (lambda v: 0 < v <= 1, "be in (0, 1]"),
    "semi_mu": (_positive, "be >= 1"),
    "semi_weight": (_non_negative, "be >= 0"),
    "steps": _between(1, MAX_STEPS),
    "log_every": (_positive, "be >= 1"),
    "seed": _between(0, MAX_SEED),
    "z_dim": _between(1, MAX_FEATURES),
    "gen_width": _between(1, MAX_WIDTH),
    "real_label": (lambda v: 0 < v <= 1, "be in (0, 1]"),
    "r1_gamma": (_non_negative, "be >= 0"),
    "sample_every": (_positive, "be >= 1"),
    "temperature": (_positive, "be > 0"),
    "proj_dim": _between(1, MAX_FEATURES),
    "crop_scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "be two numbers 0 < a <= b <= 1"),
    "num_classes": _between(2, 100_000),
    "val_fraction": (_fraction, "be in [0, 1)"),
    "checkpoint_every_s": (_positive, "be > 0"),
    # Command-line options only (``check_options``): how much work a command does.
    "width": _between(1, MAX_WIDTH),
    "depth": _between(1, MAX_DEPTH),
    "repeats": _between(1, MAX_REPEATS),
    "labels_per_class": _between(1, MAX_PER_CLASS),
    # MobileNetV2 halves its input five times; past 1024 px a step costs 20x a 224-px one
    "input_size": _between(32, 1024),
    "workers": _between(1, MAX_WORKERS),
    "cpus_per_cell": _between(1, MAX_WORKERS),
    "gpus_per_cell": _between(0, MAX_GPUS_PER_CELL),
    "examples": _between(1, MAX_EXAMPLES),
    "check_images": _between(0, MAX_EXAMPLES),
    "target": (lambda v: 0 < v <= 1, "be in (0, 1] (the metrics run from 0 to 1)"),
}

#: Command-line options checked by a rule of another name.
OPTION_RULES = {"--time-budget": "time_budget_s"}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "a mapping", tuple: "a list of numbers"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value converted to the field's type). None passes only where the field allows it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            return type(None) in args, None
        for arg in args:
            if arg is type(None):
                continue
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value == value and abs(value) != float("inf"), float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is tuple or tp is tuple:
        element = next((a for a in typing.get_args(tp) if a is not Ellipsis), float)
        if element is str and isinstance(value, str):  # "a,b" on a command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_coerce(v, element) for v in value]
        if all(ok for ok, _ in items):
            return True, tuple(v for _, v in items)
        return False, value
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return True, value


def validated(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` checked against the dataclass ``cls``: known keys, right types, allowed values.

    Returns the values converted to the fields' types (``1`` → ``1.0`` for a float field)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise FewlabelError(f"unknown {what} setting {', '.join(map(repr, unknown))}; known: "
                            f"{', '.join(sorted(fields))}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        tp = hints.get(key, Any)
        ok, converted = _coerce(value, tp)
        if not ok:
            base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            raise FewlabelError(f"{what} setting {key} must be {_type_name(base[0])}, got {value!r}")
        says = _broken_rule(key, converted)
        if says is not None:
            raise FewlabelError(f"{what} setting {key} must {says}, got {value!r}")
        out[key] = converted
    return out


def _broken_rule(key: str, value: Any) -> str | None:
    """What ``value`` must be when it breaks the rule of ``key`` (``RULES``), else None."""
    rule = RULES.get(key)
    if rule is None or value is None:
        return None
    check, says = rule
    try:
        good = bool(check(value))
    except (TypeError, ValueError):
        good = False
    return None if good else says


def check_options(options: dict[str, Any]) -> None:
    """Command-line values checked against ``RULES`` before any data are read: ``{"--batch-size": 0}``
    raises ``FewlabelError("--batch-size must be from 1 to 65,536, got 0")``. An option is checked by
    the rule of its name (``--cpus-per-cell`` → ``cpus_per_cell``) or of ``OPTION_RULES``; a name
    without dashes (an API argument) is checked the same way. None (left out) passes."""
    for option, value in options.items():
        key = OPTION_RULES.get(option, option.lstrip("-").replace("-", "_"))
        says = _broken_rule(key, value)
        if says is not None:
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)
            raise FewlabelError(f"{option} must {says}, got {shown}")


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU (MPS left out on purpose: several 3D ops lack it)."""
    import torch  # here, not at the top: `settings` is imported by light modules that never train

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):
        raise FewlabelError(f"unknown device {preference!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FewlabelError(f"device {preference!r} asked for, but CUDA is not available here; "
                            "use auto or cpu")
    return device


def resolve_device(device: str) -> str:
    """``auto`` made concrete (as the training loop picks it), so a run's recorded configuration
    says which device its numbers came from and a resume elsewhere is noticed."""
    return str(select_device(device))
