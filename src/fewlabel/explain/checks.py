"""Checks that an attribution map explains the model, per method (Samek et al. 2017; Adebayo et al.
2018; the definitions follow Quantus):

* faithfulness — deletion / insertion: remove (or insert) the pixels in the map's order, most
  relevant first, in ``steps`` equal shares, and follow the model's probability of the explained
  class. A faithful map makes it fall faster (deletion, lower area under the curve) and rise faster
  (insertion, higher area) than a random pixel order does. Removed pixels take the value 0: the
  training mean of z-scored inputs, i.e. "no information".
* model randomisation — the maps of the same images after every trained weight is replaced by a
  random initialisation. A map that explains the model must change; its Spearman rank correlation
  with the trained model's map (of |map|) is reported, and a method whose maps stay similar
  (correlation >= ``RANDOMISATION_LIMIT``) fails the check.
* localisation — where masks exist: the share of positive relevance inside the mask, next to the
  mask's share of the image (what a map spread at random would get).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from fewlabel.training.batches import bounded_batch_size

RANDOMISATION_LIMIT = 0.5
STEPS = 10
RANDOMISATION_SEED_OFFSET = 7_919_000


def _probabilities(model: nn.Module, x: np.ndarray, target: np.ndarray, batch: int = 64) -> np.ndarray:
    p = next(model.parameters())
    batch = bounded_batch_size(x.shape[1:], batch)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(x[i:i + batch], dtype=torch.float32, device=p.device)
            prob = torch.softmax(model(xb).float(), dim=1).cpu().numpy()
            out.append(prob[np.arange(len(xb)), target[i:i + batch]])
    return np.concatenate(out)


def _curves(model: nn.Module, x: np.ndarray, order: np.ndarray, target: np.ndarray, steps: int,
            insert: bool) -> np.ndarray:
    """(N,) area under the probability-vs-share curve for each image and its pixel order.

    One step's N perturbed images at a time: all ``steps + 1`` at once would be 11 copies of every
    volume in memory and in one forward pass."""
    n, spatial = len(x), int(np.prod(x.shape[2:]))
    flat = x.reshape(n, x.shape[1], spatial)
    curve = np.empty((steps + 1, n), dtype=np.float32)
    for k in range(steps + 1):
        count = int(round(k * spatial / steps))
        chosen = np.zeros((n, spatial), dtype=bool)
        np.put_along_axis(chosen, order[:, :count], True, axis=1)
        keep = chosen if insert else ~chosen
        variant = np.where(keep[:, None, :], flat, np.float32(0.0)).reshape(x.shape)
        curve[k] = _probabilities(model, variant.astype(np.float32, copy=False), target)
    return np.trapezoid(curve, dx=1.0 / steps, axis=0)


def faithfulness(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray, steps: int = STEPS,
                 seed: int = 0) -> dict[str, float]:
    """Mean deletion and insertion AUC of the map's pixel order and of a random order (same images)."""
    n = len(x)
    flat = maps.reshape(n, -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    rng = np.random.default_rng(seed)
    rand = np.stack([rng.permutation(flat.shape[1]) for _ in range(n)])
    target = np.asarray(target, dtype=np.int64)
    return {
        "deletion": float(_curves(model, x, order, target, steps, insert=False).mean()),
        "deletion_random": float(_curves(model, x, rand, target, steps, insert=False).mean()),
        "insertion": float(_curves(model, x, order, target, steps, insert=True).mean()),
        "insertion_random": float(_curves(model, x, rand, target, steps, insert=True).mean()),
    }


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy with every trained weight replaced by a fresh random initialisation (running BatchNorm
    statistics reset too): the "model randomisation" of Adebayo et al."""
    work = copy.deepcopy(model)
    # own RNG stream, far from the small seeds models are built with, and the caller's left untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOMISATION_SEED_OFFSET + seed)
        for m in work.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    return work.eval()


def rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Spearman correlation of |a| and |b| (NaN-free: constant maps count 0)."""
    out = []
    for u, v in zip(np.abs(a).reshape(len(a), -1), np.abs(b).reshape(len(b), -1), strict=True):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            out.append(0.0)
            continue
        out.append(float(stats.spearmanr(u, v).statistic))
    return float(np.mean(out)) if out else float("nan")


def mask_share(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Share of positive relevance inside the masks, and the masks' share of the image."""
    pos = np.clip(maps, 0, None).reshape(len(maps), -1)
    inside = (masks.reshape(len(masks), -1) > 0)
    total = pos.sum(axis=1)
    ok = total > 0
    share = (pos * inside).sum(axis=1)[ok] / total[ok]
    return {"inside": float(share.mean()) if ok.any() else float("nan"), "area": float(inside.mean())}


def check_methods(model: nn.Module, x: np.ndarray, maps: dict[str, np.ndarray], target: np.ndarray,
                  attribute_fn: Callable[..., np.ndarray], masks: np.ndarray | None = None, seed: int = 0
                  ) -> dict[str, dict[str, Any]]:
    """Per method: faithfulness figures, randomisation similarity, mask share (when ``masks``), and
    ``failures``: plain sentences for each check the method fails."""
    random_model = randomised_copy(model, seed=seed)
    out: dict[str, dict[str, Any]] = {}
    for method, m in maps.items():
        entry: dict[str, Any] = faithfulness(model, x, m, target, seed=seed)
        entry["randomisation_similarity"] = rank_similarity(
            m, attribute_fn(random_model, x, target=[int(t) for t in target], method=method))
        if masks is not None:
            share = mask_share(m, masks)
            entry["mask_inside"], entry["mask_area"] = share["inside"], share["area"]
        failures = []
        if entry["deletion"] >= entry["deletion_random"] and entry["insertion"] <= entry["insertion_random"]:
            failures.append(f"{method} fails faithfulness: removing or inserting its most relevant pixels "
                            "first changes the prediction no faster than a random order")
        if entry["randomisation_similarity"] >= RANDOMISATION_LIMIT:
            failures.append(f"{method} fails the randomisation check: its maps stay similar when "
                            f"the trained weights are replaced by random ones (rank correlation "
                            f"{entry['randomisation_similarity']:.2f}, limit {RANDOMISATION_LIMIT:g}), "
                            "so they show the image as much as what the model learned")
        inside = entry.get("mask_inside", float("nan"))
        if masks is not None and np.isfinite(inside) and inside <= entry["mask_area"]:
            failures.append(f"{method} puts no more relevance inside the masks than a map spread at random")
        entry["failures"] = failures
        out[method] = entry
    return out
