"""Cascading model randomisation (Adebayo et al. 2018) and the rank similarity of maps.

The model is cut into blocks in forward order: each element of a plain ``nn.Sequential`` /
``nn.ModuleList`` (an encoder stage, a MobileNet block, the head's linear layer), or a leaf layer
with weights outside such a container. Randomisation starts at the top (the head) and goes down one
block at a time, each block re-initialised the way its layers initialise themselves (running
BatchNorm statistics reset too), and the blocks above it staying random: stage k has the top k blocks
random. More than ``MAX_STAGES`` blocks are grouped into that many stages (the top block alone, the
rest in consecutive groups), so a deep model (MobileNetV2: 20 blocks) costs no more than a small one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from scipy import stats
from torch import nn

MAX_STAGES = 8
# Own RNG stream per block, far from the small seeds models are built with; the caller's is untouched.
SEED_OFFSET = 7_919_000
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _blocks_of(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    # Exact types: a Sequential subclass (MobileNet's ConvBNReLU6) is one block, not a container.
    if type(module) in _CONTAINERS:
        return [(f"{prefix}{name}", child) for name, child in module.named_children() if _has_params(child)]
    own = any(True for _ in module.parameters(recurse=False))
    if own or not list(module.children()):
        return [(prefix.rstrip(".") or type(module).__name__, module)] if _has_params(module) else []
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        out += _blocks_of(child, f"{prefix}{name}.")
    return out


def randomisable_blocks(model: nn.Module, max_stages: int = MAX_STAGES) -> list[tuple[str, list[nn.Module]]]:
    """The cascade's stages, top (output) first: (name, modules randomised at that stage). An
    ensemble's stage holds the same block of every member."""
    members = getattr(model, "members", None)
    if members is not None:
        named = [(name, [m.get_submodule(name) for m in members]) for name, _ in _blocks_of(members[0])]
    else:
        named = [(name, [mod]) for name, mod in _blocks_of(model)]
    named.reverse()
    if len(named) > max_stages > 1:
        # The top block stays a stage of its own (the head: the first thing the cascade asks about);
        # the others are split into max_stages - 1 consecutive groups of near-equal size.
        rest = [list(g) for g in np.array_split(np.arange(1, len(named)), max_stages - 1)]
        groups = [[named[0]]] + [[named[i] for i in g] for g in rest]
        named = [(g[0][0] if len(g) == 1 else f"{g[0][0]} … {g[-1][0]}", [m for _, ms in g for m in ms])
                 for g in groups]
    elif len(named) > max_stages:  # one stage: every block at once
        named = [(f"{named[0][0]} … {named[-1][0]}", [m for _, ms in named for m in ms])]
    return named


def reinitialise(module: nn.Module) -> None:
    """Fresh weights for every layer in ``module``, in place: its own ``reset_parameters`` where it
    has one, else a normal draw at each parameter's own spread (so the scale stays plausible)."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            with torch.no_grad():
                for p in m.parameters(recurse=False):
                    p.normal_(0.0, float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02)
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()


def cascade(model: nn.Module, seed: int = 0, max_stages: int = MAX_STAGES) -> Iterator[tuple[str, nn.Module]]:
    """Yields (block name, model with this block and all above it random), top block first. One copy is
    randomised further at each step: use the yielded model before asking for the next."""
    work = copy.deepcopy(model).eval()
    for k, (name, modules) in enumerate(randomisable_blocks(work, max_stages)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED_OFFSET + 1000 * seed + k)
            for mod in modules:
                reinitialise(mod)
        yield name, work


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy with every weight randomised (all blocks at once): the cascade's last stage."""
    ((_, randomised),) = cascade(model, seed=seed, max_stages=1)
    return randomised


def _rank_rows(maps: np.ndarray) -> np.ndarray:
    """Rows of standardised ranks of |map| (mean 0, norm sqrt(P)); a constant map gives zeros."""
    flat = np.abs(np.asarray(maps, dtype=np.float64)).reshape(len(maps), -1)
    r = stats.rankdata(flat, axis=1)
    r -= r.mean(axis=1, keepdims=True)
    sd = r.std(axis=1, keepdims=True)
    return np.divide(r, sd, out=np.zeros_like(r), where=sd > 0)


def paired_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Spearman correlation of |a_i| and |b_i| per image; a constant map counts as 0 (it ranks
    nothing, so it shares no order with any map)."""
    return (_rank_rows(a) * _rank_rows(b)).mean(axis=1)


def other_image_similarity(maps: np.ndarray) -> np.ndarray:
    """(N,) for each image, the mean Spearman correlation of its |map| with the |maps| of the other
    images: how alike two unrelated maps of this method are (a shared layout, not the image)."""
    n = len(maps)
    if n < 2:
        return np.full(n, np.nan)
    r = _rank_rows(maps)
    corr = r @ r.T / r.shape[1]
    return (corr.sum(axis=1) - np.diag(corr)) / (n - 1)


def rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Spearman correlation of |a| and |b| (constant maps count 0)."""
    return float(paired_similarity(a, b).mean()) if len(a) else float("nan")
