"""Attribution maps for a classifier: saliency, LRP (captum) and Grad-CAM, in 2D and 3D.

One batch API, ``attribute(classifier, x, target, method)``, returns one map per image with the
spatial shape of the input (channels folded), so figures and tests treat every method alike.

* ``saliency``: |d logit_target / d x| (Simonyan et al. 2014), maximum over channels.
* ``lrp``: layer-wise relevance propagation (captum) with the epsilon rule (epsilon =
  ``DEFAULT_EPSILON``), BatchNorm folded into the preceding convolution, and the z^B rule at the
  input layer (bounds: each channel's lowest and highest value over all images given to
  ``attribute``, so a map does not depend on how the images are batched); summed over
  channels, so the map's sum is close to the target logit. ``lrp_gamma``: gamma rule in the lower
  convolutions.
* ``gradcam``: Grad-CAM (Selvaraju et al. 2017) on the encoder's last stage map, the map every
  encoder exposes through ``forward_features``, upsampled to the input size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.explain.rules import DEFAULT_EPSILON, first_conv, fold_batchnorm, lrp_rules, zb_relevance
from fewlabel.training import batches
from fewlabel.training.batches import bounded_batch_size

METHODS = ("saliency", "lrp", "gradcam")
ALL_METHODS = ("saliency", "lrp", "lrp_gamma", "gradcam")
SIGNED = {"lrp": True, "lrp_gamma": True, "saliency": False, "gradcam": False}


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.float()
    if t.dim() not in (4, 5):
        raise ValueError(f"x must be a batch (B, C, H, W) or (B, C, D, H, W), got shape {tuple(t.shape)}")
    return t.to(device)


def _targets(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | None) -> torch.Tensor:
    """One class index per image; ``None`` means the predicted class (found in bounded batches)."""
    if target is None:
        if len(x) == 0:
            return torch.zeros(0, dtype=torch.long, device=x.device)
        step = bounded_batch_size(x.shape[1:], len(x))
        with torch.no_grad():
            return torch.cat([model(x[i:i + step]).argmax(1) for i in range(0, len(x), step)])
    t = torch.as_tensor(target, dtype=torch.long, device=x.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(x.shape[0])
    if t.numel() != x.shape[0]:
        raise ValueError(f"{t.numel()} targets for {x.shape[0]} images")
    return t.clone()


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from captum.attr import Saliency

    grads = Saliency(model).attribute(x, target=target, abs=True)
    return grads.amax(1)


def channel_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's lowest and highest value over a batch (B, C, ...): the z^B rule's bounds."""
    dims = [0, *range(2, x.dim())]
    return x.detach().amin(dim=dims, keepdim=True), x.detach().amax(dim=dims, keepdim=True)


def lrp(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite: str = "epsilon",
        epsilon: float = DEFAULT_EPSILON, gamma: float = 0.25, input_rule: str = "zb",
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Relevance summed over channels, and notes on what makes it approximate for this model.

    ``input_rule``: ``zb`` (z^B at the first convolution) or ``same`` (the composite's rule there).
    ``bounds``: the z^B rule's per-channel (low, high); None = those of ``x``."""
    from captum.attr import LRP, LayerLRP

    # captum rewrites weights and hangs hooks/attributes on the modules while it runs: work on a
    # copy so a failure half-way can never leave the caller's model altered.
    work = copy.deepcopy(model).eval()
    fold_batchnorm(work)
    first = first_conv(work) if input_rule == "zb" else None
    with lrp_rules(work, composite=composite, epsilon=epsilon, gamma=gamma) as notes:
        if first is None:
            relevance = LRP(work).attribute(x, target=target)
        else:
            out_rel = LayerLRP(work, first).attribute(x, target=target, attribute_to_layer_input=False)
            low, high = bounds if bounds is not None else channel_bounds(x)
            relevance = zb_relevance(first, x, out_rel, low, high)
    return relevance.sum(1), notes


@contextmanager
def _last_stage_map(encoder: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Keep the encoder's last stage map (and its gradient) during a forward/backward pass.

    Wrapping ``forward_features`` on the instance works for every registered encoder, whatever its
    pooling (global average, or flatten + dense for ``schouten``), because ``Encoder.forward`` always
    goes through it.
    """
    store: dict[str, torch.Tensor] = {}
    original = encoder.forward_features

    def wrapped(x: torch.Tensor) -> list[torch.Tensor]:
        maps = original(x)
        maps[-1].retain_grad()
        store["map"] = maps[-1]
        return maps

    encoder.forward_features = wrapped  # instance attribute shadows the method
    try:
        yield store
    finally:
        del encoder.forward_features


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "forward_features"):
        raise ValueError("Grad-CAM needs a fewlabel Classifier (an .encoder with forward_features)")
    with _last_stage_map(encoder) as store, torch.enable_grad():
        logits = model(x)
        model.zero_grad(set_to_none=True)
        logits.gather(1, target[:, None]).sum().backward()
        fmap, grad = store["map"].detach(), store["map"].grad
    spatial = tuple(range(2, fmap.dim()))
    weights = grad.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * fmap).sum(1, keepdim=True))
    mode = "bilinear" if cam.dim() == 4 else "trilinear"
    cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    return cam[:, 0]


def attribute(classifier: nn.Module, x: np.ndarray | torch.Tensor, target: int | Sequence[int] | None = None,
              method: str = "saliency", batch_size: int = 16, **options: Any) -> np.ndarray:
    """Attribution maps (B, *spatial) float32 for a batch ``x`` (B, C, *spatial) of preprocessed images.

    ``target``: class index (one for all, or one per image); ``None`` = each image's predicted class.
    ``options`` go to the method (``epsilon``, ``gamma`` for LRP). The classifier is put in eval mode
    and its weights are left untouched. Batches are capped by ``GRADIENT_VOXELS``: every method keeps
    the activations of its batch for the backward pass, so whole volumes are explained one at a time.
    """
    if method not in ALL_METHODS:
        raise ValueError(f"unknown attribution method {method!r}: use {', '.join(ALL_METHODS)}")
    classifier.eval()
    device = _device(classifier)
    xt = _as_tensor(x, device)
    targets = _targets(classifier, xt, target)
    members = getattr(classifier, "members", None)
    if members is not None:
        # An ensemble's map is its members' mean map for the class the ensemble predicts: each
        # method then runs on an ordinary classifier, whose layers its rules know.
        return np.mean([attribute(m, xt, targets.tolist(), method, batch_size, **options) for m in members],
                       axis=0).astype(np.float32)
    batch_size = bounded_batch_size(xt.shape[1:], batch_size, batches.GRADIENT_VOXELS)
    zb_input = method.startswith("lrp") and options.get("input_rule", "zb") == "zb"
    if zb_input and len(xt) and "bounds" not in options:  # one set of bounds, however x is batched
        options = {**options, "bounds": channel_bounds(xt)}
    out: list[np.ndarray] = []
    for start in range(0, xt.shape[0], batch_size):
        xb = xt[start:start + batch_size].detach().clone().requires_grad_(True)
        tb = targets[start:start + batch_size]
        if method == "saliency":
            maps = saliency(classifier, xb, tb)
        elif method == "gradcam":
            maps = gradcam(classifier, xb, tb)
        else:
            composite = "gamma" if method == "lrp_gamma" else "epsilon"
            maps, _ = lrp(classifier, xb, tb, composite=composite, **options)
        out.append(maps.detach().cpu().numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, *xt.shape[2:]), np.float32)


def unsupported(classifier: nn.Module, method: str) -> str | None:
    """Why ``method`` cannot explain this model, or None: LRP needs a rule for every layer, and
    attention (a ViT's) has none here; saliency and Grad-CAM explain any model."""
    if not method.startswith("lrp"):
        return None
    try:
        lrp_notes(classifier)
    except TypeError as exc:
        return f"LRP has no rule for this model's layers ({exc}); saliency and Grad-CAM explain it"
    return None


def lrp_notes(classifier: nn.Module) -> list[str]:
    """How LRP runs on this model (epsilon, input rule, folded BatchNorms) and what makes it
    approximate (for the report), without running it."""
    from fewlabel.explain.rules import assign_rules, clear_rules

    members = getattr(classifier, "members", None)
    if members is not None:  # every member has the same layers, so the same rules
        return [f"each of the {len(members)} ensemble members explained, maps averaged",
                *lrp_notes(members[0])]
    work = copy.deepcopy(classifier).eval()
    folded = fold_batchnorm(work)
    try:
        notes = assign_rules(work)
        head = [f"ε = {DEFAULT_EPSILON:g}", "z^B rule at the input layer"]
        if folded:
            head.append(f"BatchNorm folded into {folded} convolution{'s' if folded != 1 else ''}")
        return head + notes
    finally:
        clear_rules(work)
