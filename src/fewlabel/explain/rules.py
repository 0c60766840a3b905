"""captum LRP rules for the layers fewlabel's encoders use.

captum 0.9 only knows rules for the 2D layers (Conv2d, BatchNorm2d, Linear, pools) and treats ReLU,
Dropout and Tanh as pass-through. Every other leaf module makes ``LRP.attribute`` raise. This module
hangs an explicit ``rule`` on each such leaf, and reports which choices make the result approximate.

Why each choice:
  * 3D twins of the 2D layers (Conv3d, BatchNorm3d, pools) are linear maps in eval mode: the epsilon
    rule applies exactly as in 2D.
  * Element-wise activations (LeakyReLU, ReLU6, GELU, SiLU, ...) and identities: relevance passes
    through unchanged (IdentityRule), which is how captum itself treats ReLU.
  * Instance/Group norm depend on the input's own statistics, so no linear rule is exact; identity
    pass-through is the usual approximation and is reported as such.
  * MobileNetV2's residual sum is an ``Add`` module: the epsilon rule splits relevance between the
    two branches in proportion to their contributions (captum's own ``Addition_Module`` recipe).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule, IdentityRule, PropagationRule
from torch import nn

# Leaf modules with parameters or linear structure: epsilon (or gamma) rule.
_LINEAR = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# captum handles these itself (relevance passes through unchanged); leave them without a rule.
_CAPTUM_NONLINEAR = (nn.ReLU, nn.Dropout, nn.Tanh)
# Same treatment as captum's ReLU, but via an explicit rule because captum lacks a default.
_PASS_THROUGH = (
    nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish, nn.Hardtanh, nn.Sigmoid,
)
# Modules that return their input tensor itself in eval mode. A captum rule hooks a module's input
# and output tensors separately, which breaks when both are one tensor; ``swap_identities`` replaces
# them by ``nn.Dropout(0)``, which captum passes through by itself.
_SAME_TENSOR = (nn.Identity, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
# Pass-through, but not rule-correct: the result is an approximation.
_APPROXIMATE = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def _is_add(module: nn.Module) -> bool:
    # MobileNetV2's residual ``Add`` (fewlabel.models.mobilenet) or captum's Addition_Module.
    return type(module).__name__ in ("Add", "Addition_Module") and not list(module.parameters())


def leaf_modules(model: nn.Module) -> list[nn.Module]:
    """The modules captum's LRP walks: leaves of the module tree, in definition order."""
    return [m for m in model.modules() if not list(m.children())]


def swap_identities(model: nn.Module) -> nn.Module:
    """Replace identity-like leaves by ``nn.Dropout(0.0)`` in place (call it on a copy)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _SAME_TENSOR):
                setattr(parent, name, nn.Dropout(0.0))
    return model


def assign_rules(model: nn.Module, composite: str = "epsilon", epsilon: float = 1e-6,
                 gamma: float = 0.25) -> list[str]:
    """Set ``module.rule`` on every leaf captum lacks a default for (and on every linear leaf, so
    ``epsilon`` applies everywhere), after ``swap_identities``: call it on a copy of the model.
    Returns notes on what makes the relevances approximate.

    ``composite``: ``epsilon`` = LRP-epsilon on every layer; ``gamma`` = LRP-gamma on the first half
    of the convolutions (sharper, positive-leaning maps near the input) and LRP-epsilon above, the
    composite recommended by Montavon et al. (2019).
    """
    if composite not in ("epsilon", "gamma"):
        raise ValueError(f"unknown LRP composite {composite!r}: use epsilon or gamma")
    notes: list[str] = []
    swap_identities(model)
    leaves = leaf_modules(model)
    convs = [m for m in leaves if isinstance(m, _CONV)]
    lower = set(map(id, convs[: len(convs) // 2])) if composite == "gamma" else set()
    for m in leaves:
        rule: PropagationRule | None
        if id(m) in lower:
            rule = GammaRule(gamma=gamma)
        elif isinstance(m, _LINEAR) or _is_add(m):
            rule = EpsilonRule(epsilon=epsilon)
        elif isinstance(m, _CAPTUM_NONLINEAR):
            continue
        elif isinstance(m, _PASS_THROUGH):
            rule = IdentityRule()
        elif isinstance(m, _APPROXIMATE):
            rule = IdentityRule()
            note = f"{type(m).__name__} is passed through (no exact LRP rule)"
            if note not in notes:
                notes.append(note)
        else:
            raise TypeError(f"no LRP rule for layer type {type(m).__name__}")
        m.rule = rule
    if any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in leaves):
        notes.append("BatchNorm layers absorb part of the relevance (their shift acts as a bias)")
    if any(_is_add(m) for m in leaves):
        notes.append("residual sums split relevance by the epsilon rule")
    return notes


def clear_rules(model: nn.Module) -> None:
    """Remove every ``rule`` attribute (captum removes its own, not those left by a failed call)."""
    for m in model.modules():
        if "rule" in m.__dict__:
            del m.__dict__["rule"]


@contextmanager
def lrp_rules(model: nn.Module, composite: str = "epsilon", epsilon: float = 1e-6,
              gamma: float = 0.25) -> Iterator[list[str]]:
    """Rules set for the duration of the block; yields the approximation notes."""
    try:
        yield assign_rules(model, composite=composite, epsilon=epsilon, gamma=gamma)
    finally:
        clear_rules(model)
