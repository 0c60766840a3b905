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
  * BatchNorm right after a convolution is folded into it first (``fold_batchnorm``): in eval mode
    the pair is one affine map, and a separate epsilon step through BatchNorm would let its shift
    swallow relevance.
  * The input layer gets the z^B rule (``zb_relevance``), made for bounded real-valued inputs such as
    z-scored pixels, which can be negative; the epsilon or gamma rule there assumes inputs >= 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule, IdentityRule, PropagationRule
from torch import nn

# LRP-epsilon's stabiliser: absorbs weak and contradicting contributions (relevance of a unit whose
# total input is within ~epsilon of 0 is damped), so maps are less noisy than LRP-0 (epsilon -> 0).
DEFAULT_EPSILON = 0.1

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


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution inside an ``nn.Sequential`` into that
    convolution (eval statistics), in place, and put ``nn.Dropout(0)`` where the BatchNorm was.
    Returns how many were folded. Call it on a copy in eval mode."""
    folded = 0
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[first], parent._modules[second]
            is_bn = isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
            if not (isinstance(conv, _CONV) and is_bn):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                    1.0 / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias if bn.affine else torch.zeros_like(scale)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
            parent._modules[second] = nn.Dropout(0.0)
            folded += 1
    return folded


def first_conv(model: nn.Module) -> nn.Module | None:
    """The first convolution in definition order (the input layer of every fewlabel encoder)."""
    return next((m for m in leaf_modules(model) if isinstance(m, _CONV)), None)


def zb_relevance(conv: nn.Module, x: torch.Tensor, relevance_out: torch.Tensor,
                 low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Relevance of the input pixels by the z^B rule (Montavon et al. 2017) through the input
    convolution, given the relevance of its outputs; ``low``/``high`` bound each pixel (broadcast to
    ``x``). Conserves the output relevance: the bias receives none."""
    x = x.detach()
    with torch.enable_grad():
        xx = x.clone().requires_grad_(True)
        ll = low.expand_as(x).clone().requires_grad_(True)
        hh = high.expand_as(x).clone().requires_grad_(True)
        w = conv.weight.detach()
        z = (conv._conv_forward(xx, w, None) - conv._conv_forward(ll, w.clamp(min=0), None)
             - conv._conv_forward(hh, w.clamp(max=0), None))
        stab = torch.where(z >= 0, torch.full_like(z, 1e-9), torch.full_like(z, -1e-9))
        s = (relevance_out / (z + stab)).detach()
        gx, gl, gh = torch.autograd.grad((z * s).sum(), (xx, ll, hh))
    return (xx * gx + ll * gl + hh * gh).detach()


def assign_rules(model: nn.Module, composite: str = "epsilon", epsilon: float = DEFAULT_EPSILON,
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
def lrp_rules(model: nn.Module, composite: str = "epsilon", epsilon: float = DEFAULT_EPSILON,
              gamma: float = 0.25) -> Iterator[list[str]]:
    """Rules set for the duration of the block; yields the approximation notes."""
    try:
        yield assign_rules(model, composite=composite, epsilon=epsilon, gamma=gamma)
    finally:
        clear_rules(model)
