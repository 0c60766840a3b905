"""Checks that an attribution map explains the model, per method, each a paired comparison per image
with a 95% bootstrap interval over images and a verdict read off it (``explain.intervals``):

* deletion / insertion (pixel perturbation): remove (or insert) the pixels in the map's order, most
  relevant first, in ``steps`` equal shares, and follow the model's probability of the explained
  class; the area under that curve is compared with its mean over ``orders`` random pixel orders of
  the same image. Removed pixels take the value 0: the training mean of z-scored inputs. A faithful
  map has a lower deletion area ("better than random" when the interval of map − random is below 0)
  and a higher insertion area. Each gets its own verdict.
* region perturbation (Samek et al. 2017): the image is cut into square (cubic) regions of side
  ``image side / 12``; the regions with the most relevance (summed) are replaced first by uniform
  noise between the image's own lowest and highest value (per channel), ``steps`` steps over the
  first half of the regions. AOPC = mean over the steps (0 included) of the drop in probability.
  The same noise serves the map's order and the random region orders, so only the order differs.
* cascading model randomisation (Adebayo et al. 2018; ``explain.cascade``): maps recomputed with the
  top block random, then the top two, ... down to every block; at each stage the Spearman correlation
  of |map| with the trained model's |map| of the same image. The reference is the trained maps' own
  similarity between different images (their shared layout): if after randomising every block an
  image's map still ranks pixels more like its trained map than another image's trained map does
  (interval of the difference above 0) the method "keeps image structure": it shows the image as
  well as what the model learned; below 0, it "depends on the weights".
* localisation, where masks exist: per image, the share of positive relevance inside the mask minus
  the mask's share of the image (what relevance spread at random would get).

``failures`` lists a sentence for each verdict against the method (worse than random, keeps image
structure, less inside the masks than their area); "not distinguishable" is reported, not failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.explain.cascade import (
    cascade,
    other_image_similarity,
    paired_similarity,
    randomisable_blocks,
    randomised_copy,
    rank_similarity,
)
from fewlabel.explain.intervals import bootstrap_mean, compare, finite_or_none
from fewlabel.training.batches import bounded_batch_size

__all__ = ["RANDOM_ORDERS", "REGIONS_PER_SIDE", "STEPS", "check_methods", "faithfulness", "mask_share",
           "random_baselines", "randomisation", "randomisable_blocks", "randomised_copy", "rank_similarity"]

STEPS = 10
RANDOM_ORDERS = 5  # random orders per image; their mean is the image's reference
REGIONS_PER_SIDE = 12  # region side = image side / 12, at least one pixel
AOPC_SHARE = 0.5  # AOPC follows the first half of the regions: the most relevant ones are its point
BETTER = ("better than random", "worse than random", "not distinguishable from random")


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
            insert: bool, ends: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(N,) area under the probability-vs-share curve for each image and its pixel order.

    One step's N perturbed images at a time: all ``steps + 1`` at once would be 11 copies of every
    volume in memory and in one forward pass. ``ends``: the probabilities of the images as they are
    and of blank images, the same for every order, so computed once by the caller."""
    n, spatial = len(x), int(np.prod(x.shape[2:]))
    flat = x.reshape(n, x.shape[1], spatial)
    curve = np.empty((steps + 1, n), dtype=np.float32)
    for k in range(steps + 1):
        if ends is not None and k in (0, steps):
            curve[k] = ends[0] if (k == steps) == insert else ends[1]
            continue
        count = int(round(k * spatial / steps))
        chosen = np.zeros((n, spatial), dtype=bool)
        np.put_along_axis(chosen, order[:, :count], True, axis=1)
        keep = chosen if insert else ~chosen
        variant = np.where(keep[:, None, :], flat, np.float32(0.0)).reshape(x.shape)
        curve[k] = _probabilities(model, variant.astype(np.float32, copy=False), target)
    return np.trapezoid(curve, dx=1.0 / steps, axis=0)


def _ends(model: nn.Module, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the images and of blank (all 0) images: every curve's first or last point."""
    return _probabilities(model, x, target), _probabilities(model, np.zeros_like(x), target)


def _regions(spatial: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """(flat region index of every pixel, number of regions) for a grid of cubes of side
    ``min(spatial) / REGIONS_PER_SIDE`` (edge regions may be smaller)."""
    side = max(1, int(round(min(spatial) / REGIONS_PER_SIDE)))
    cells = tuple(-(-s // side) for s in spatial)
    coords = np.meshgrid(*[np.arange(s) // side for s in spatial], indexing="ij")
    return np.ravel_multi_index(tuple(coords), cells).ravel(), int(np.prod(cells))


def _region_noise(x: np.ndarray, seed: int) -> np.ndarray:
    """Uniform noise between each image's lowest and highest value per channel, shape of ``x``."""
    axes = tuple(range(2, x.ndim))
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    return (lo + u * (hi - lo)).astype(np.float32)


def _aopc(model: nn.Module, x: np.ndarray, region_order: np.ndarray, target: np.ndarray, steps: int,
          seed: int, ends: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(N,) AOPC of each image's region order (most relevant first), ``steps`` steps over the first
    ``AOPC_SHARE`` of the regions, perturbed regions replaced by ``_region_noise``."""
    n, spatial = len(x), int(np.prod(x.shape[2:]))
    region_of, count_regions = _regions(tuple(x.shape[2:]))
    flat = x.reshape(n, x.shape[1], spatial)
    noise = _region_noise(x, seed).reshape(flat.shape)
    curve = np.empty((steps + 1, n), dtype=np.float64)
    for k in range(steps + 1):
        if k == 0 and ends is not None:
            curve[0] = ends[0]
            continue
        count = int(round(k * count_regions * AOPC_SHARE / steps))
        chosen = np.zeros((n, count_regions), dtype=bool)
        np.put_along_axis(chosen, region_order[:, :count], True, axis=1)
        variant = np.where(chosen[:, region_of][:, None, :], noise, flat).reshape(x.shape)
        curve[k] = _probabilities(model, variant.astype(np.float32, copy=False), target)
    return (curve[0][None] - curve).mean(axis=0)


def _order(values: np.ndarray, seed: int) -> np.ndarray:
    """Per row, indices from the highest value to the lowest, ties in random order: a map that is 0
    over most of the image (Grad-CAM, a blank region) must not hand that part to the index order,
    which would remove the image row by row from the top."""
    rng = np.random.default_rng(seed)
    perm = np.stack([rng.permutation(values.shape[1]) for _ in range(len(values))])
    shuffled = np.take_along_axis(values, perm, axis=1)
    return np.take_along_axis(perm, np.argsort(-shuffled, axis=1, kind="stable"), axis=1)


def _region_order(maps: np.ndarray, seed: int) -> np.ndarray:
    region_of, count_regions = _regions(tuple(maps.shape[1:]))
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    relevance = np.stack([np.bincount(region_of, weights=m, minlength=count_regions) for m in flat])
    return _order(relevance, seed)


def random_baselines(model: nn.Module, x: np.ndarray, target: np.ndarray, steps: int = STEPS, seed: int = 0,
                     orders: int = RANDOM_ORDERS, ends: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> dict[str, np.ndarray]:
    """Per image, the mean over ``orders`` random orders of the deletion and insertion areas (random
    pixel orders) and of the AOPC (random region orders). They do not depend on the map, so every
    method is compared with the same reference."""
    n, spatial = len(x), int(np.prod(x.shape[2:]))
    _, count_regions = _regions(tuple(x.shape[2:]))
    target = np.asarray(target, dtype=np.int64)
    ends = ends if ends is not None else _ends(model, x, target)
    rng = np.random.default_rng(seed)
    out = {"deletion": np.zeros(n), "insertion": np.zeros(n), "aopc": np.zeros(n)}
    for _ in range(orders):
        pixels = np.stack([rng.permutation(spatial) for _ in range(n)])
        regions = np.stack([rng.permutation(count_regions) for _ in range(n)])
        out["deletion"] += _curves(model, x, pixels, target, steps, insert=False, ends=ends) / orders
        out["insertion"] += _curves(model, x, pixels, target, steps, insert=True, ends=ends) / orders
        out["aopc"] += _aopc(model, x, regions, target, steps, seed, ends) / orders
    return out


def faithfulness(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray, steps: int = STEPS,
                 seed: int = 0, orders: int = RANDOM_ORDERS,
                 baseline: dict[str, np.ndarray] | None = None,
                 ends: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
    """``{"deletion", "insertion", "aopc"}``, each ``intervals.compare`` of the map's order against
    the mean of ``orders`` random orders per image: ``method`` / ``reference`` (mean areas or AOPC),
    ``delta`` (map − random) with ``low``/``high``, ``n`` and ``verdict``. ``baseline``: the
    ``random_baselines`` of the same images, model, steps and seed, when already computed; ``ends``:
    the probabilities of the images and of blank images, likewise."""
    target = np.asarray(target, dtype=np.int64)
    ends = ends if ends is not None else _ends(model, x, target)
    if baseline is None:
        baseline = random_baselines(model, x, target, steps, seed, orders, ends)
    # ties broken by a stream of their own, apart from the random orders of the baseline
    order = _order(maps.reshape(len(x), -1).astype(np.float64), seed + 1)
    own = {"deletion": _curves(model, x, order, target, steps, insert=False, ends=ends),
           "insertion": _curves(model, x, order, target, steps, insert=True, ends=ends),
           "aopc": _aopc(model, x, _region_order(maps, seed + 2), target, steps, seed, ends)}
    # deletion: a faithful order loses the class sooner (smaller area); insertion, AOPC: larger
    good = {"deletion": "below", "insertion": "above", "aopc": "above"}
    return {k: compare(own[k], baseline[k], good[k], BETTER, seed=seed) for k in own}


def randomisation(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray, method: str,
                  attribute_fn: Callable[..., np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Cascading randomisation of one method's maps: ``stages`` (per stage the block randomised and
    the similarity to the trained maps, mean with its interval), ``other_image`` (trained maps of
    different images), ``difference`` (last stage − other image, per image) and ``verdict``."""
    targets = [int(t) for t in target]
    stages, last = [], np.full(len(x), np.nan)
    for name, random_model in cascade(model, seed=seed):
        last = paired_similarity(maps, attribute_fn(random_model, x, target=targets, method=method))
        stages.append({"randomised": name, **bootstrap_mean(last, seed=seed)})
    other = other_image_similarity(maps)
    diff = compare(last, other, "below", ("depends on the weights", "keeps image structure",
                                          "not distinguishable from another image's map"), seed=seed)
    return {"stages": stages, "other_image": bootstrap_mean(other, seed=seed), "difference": diff,
            "verdict": diff["verdict"]}


def mask_share(maps: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """Share of positive relevance inside the masks and the masks' share of the image (means over the
    images with any positive relevance), and the per-image difference with its interval."""
    pos = np.clip(maps, 0, None).reshape(len(maps), -1).astype(np.float64)
    inside = masks.reshape(len(masks), -1) > 0
    total = pos.sum(axis=1)
    share = np.divide((pos * inside).sum(axis=1), total, out=np.full(len(pos), np.nan), where=total > 0)
    area = inside.mean(axis=1)
    diff = compare(share, area, "above", ("more inside the masks than their area",
                                          "less inside the masks than their area",
                                          "not distinguishable from the masks' area"))
    return {"inside": diff["method"], "area": finite_or_none(area.mean()), "difference": diff}


def _failures(method: str, entry: dict[str, Any]) -> list[str]:
    out = []
    for key, what in (("deletion", "removing its most relevant pixels first lowers the prediction"),
                      ("insertion", "inserting its most relevant pixels first raises the prediction"),
                      ("aopc", "replacing its most relevant regions by noise first lowers the prediction")):
        c = entry[key]
        if c["verdict"] == BETTER[1]:
            out.append(f"{method} is worse than random order in {key}: {what} more slowly than a random "
                       f"order does (difference {c['delta']:+.3g}, 95% interval {c['low']:+.3g} to "
                       f"{c['high']:+.3g}, {c['n']} images)")
    r = entry["randomisation"]
    if r["verdict"] == "keeps image structure":
        d = r["difference"]
        out.append(f"{method} keeps image structure when the weights are random: with every block "
                   f"randomised its maps rank pixels more like the trained maps of the same images "
                   f"({d['method']:.2f}) than the trained maps of other images do ({d['reference']:.2f}; "
                   f"difference 95% interval {d['low']:+.2f} to {d['high']:+.2f}), so they show the image "
                   "as well as what the model learned")
    mask = entry.get("mask")
    if mask and mask["difference"]["verdict"] == "less inside the masks than their area":
        out.append(f"{method} puts less relevance inside the masks than a map spread at random would")
    return out


def check_methods(model: nn.Module, x: np.ndarray, maps: dict[str, np.ndarray], target: np.ndarray,
                  attribute_fn: Callable[..., np.ndarray], masks: np.ndarray | None = None, seed: int = 0,
                  steps: int = STEPS, orders: int = RANDOM_ORDERS) -> dict[str, dict[str, Any]]:
    """Per method: ``deletion``, ``insertion``, ``aopc`` (``faithfulness``), ``randomisation``
    (``randomisation``), ``mask`` (``mask_share``, with ``masks``), ``n_images``,
    ``randomisation_similarity`` (mean similarity with every block random) and ``failures``."""
    target = np.asarray(target, dtype=np.int64)
    ends = _ends(model, x, target)
    baseline = random_baselines(model, x, target, steps, seed, orders, ends)
    out: dict[str, dict[str, Any]] = {}
    for method, m in maps.items():
        entry: dict[str, Any] = {"n_images": len(x), "random_orders": orders,
                                 **faithfulness(model, x, m, target, steps, seed, orders, baseline, ends)}
        entry["randomisation"] = randomisation(model, x, m, target, method, attribute_fn, seed=seed)
        entry["randomisation_similarity"] = entry["randomisation"]["stages"][-1]["mean"] \
            if entry["randomisation"]["stages"] else None
        if masks is not None:
            entry["mask"] = mask_share(m, masks)
            entry["mask_inside"], entry["mask_area"] = entry["mask"]["inside"], entry["mask"]["area"]
        entry["failures"] = _failures(method, entry)
        out[method] = entry
    return out
