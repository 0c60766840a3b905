"""Figures for explanations: attribution overlays (2D), orthogonal mid-slices (3D), t-SNE scatter.

Matplotlib's object API only (``Figure``, no pyplot): no global state, no GUI backend, safe in worker
processes. Every figure comes back as PNG bytes; ``save_png`` writes one atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fewlabel.explain.attributions import SIGNED
from fewlabel.figures import plain_text, to_png
from fewlabel.fileio import atomic_write_bytes

METHOD_TITLES = {"saliency": "saliency", "lrp": "LRP-ε", "lrp_gamma": "LRP-γ/ε", "gradcam": "Grad-CAM"}
PLANES = ("axial", "coronal", "sagittal")


def save_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes to a temporary name beside ``path`` and rename: never a half-written file."""
    return atomic_write_bytes(path, data)


def display_image(image: np.ndarray) -> np.ndarray:
    """(C, *spatial) → grey (*spatial) or RGB (*spatial, 3), robustly scaled to [0, 1] per image."""
    img = np.asarray(image, dtype=np.float32)
    if img.shape[0] == 3:
        out = np.moveaxis(img, 0, -1)
    else:
        out = img[0]
    lo, hi = np.percentile(out, [1, 99]) if out.size else (0.0, 1.0)
    return np.clip((out - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(out)


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The three orthogonal mid-slices of a (D, H, W[, 3]) volume: axial, coronal, sagittal."""
    d, h, w = volume.shape[:3]
    return [volume[d // 2], volume[:, h // 2], volume[:, :, w // 2]]


def _overlay(ax, base: np.ndarray, heat: np.ndarray | None, signed: bool, scale: float) -> None:
    ax.imshow(base, cmap=None if base.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
    if heat is not None:
        if signed:
            v = np.clip(heat / scale, -1, 1)
            ax.imshow(v, cmap="bwr", vmin=-1, vmax=1, alpha=np.clip(np.abs(v) * 0.9, 0, 1),
                      interpolation="bilinear")
        else:
            v = np.clip(heat / scale, 0, 1)
            ax.imshow(v, cmap="inferno", vmin=0, vmax=1, alpha=np.clip(v * 0.85, 0, 1),
                      interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _scale(m: np.ndarray, signed: bool) -> float:
    # 99.5th percentile, not the max: one extreme pixel would otherwise wash the map out.
    ref = np.abs(m) if signed else np.clip(m, 0, None)
    s = float(np.percentile(ref, 99.5)) if ref.size else 0.0
    return s if s > 0 else 1.0


def attribution_grid(images: np.ndarray, maps: Mapping[str, np.ndarray], row_labels: Sequence[str],
                     title: str | None = None, dpi: int = 100) -> bytes:
    """PNG: one row per image (2D) or per image × plane (3D); columns = the image, then one overlay per
    method. Each map is scaled on its own (per image and method), so the figure shows *where* a method
    looks, not how strongly it does compared with another image."""
    images = np.asarray(images)
    n = images.shape[0]
    three_d = images.ndim == 5
    methods = list(maps)
    cols = 1 + len(methods)
    rows = n * (3 if three_d else 1)
    fig = Figure(figsize=(1.7 * cols + 0.6, 1.7 * rows + (0.5 if title else 0.2)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(n):
        base = display_image(images[i])
        heats = {m: np.asarray(maps[m][i], dtype=np.float32) for m in methods}
        scales = {m: _scale(heats[m], SIGNED.get(m, False)) for m in methods}
        bases = mid_slices(base) if three_d else [base]
        heat_slices = {m: (mid_slices(h) if three_d else [h]) for m, h in heats.items()}
        for p, b in enumerate(bases):
            r = i * len(bases) + p
            _overlay(axes[r, 0], b, None, False, 1.0)
            label = plain_text(row_labels[i], limit=36) if i < len(row_labels) else ""
            axes[r, 0].set_ylabel(f"{label}\n{PLANES[p]}" if three_d else label, fontsize=7)
            for c, m in enumerate(methods, start=1):
                _overlay(axes[r, c], b, heat_slices[m][p], SIGNED.get(m, False), scales[m])
    for c, name in enumerate(["image", *[METHOD_TITLES.get(m, m) for m in methods]]):
        axes[0, c].set_title(name, fontsize=9)
    if title:
        fig.suptitle(plain_text(title), fontsize=10)
    fig.tight_layout()
    return to_png(fig, dpi=dpi)


def tsne_scatter(embedding: np.ndarray, labels: Sequence[int], class_names: Sequence[str],
                 title: str | None = None, dpi: int = 100) -> bytes:
    """PNG: the 2D embedding coloured by true class, with a legend of (escaped) class names."""
    emb = np.asarray(embedding, dtype=np.float32)
    labels = np.asarray(labels, dtype=int)
    fig = Figure(figsize=(3.6, 3.2))
    ax = fig.subplots()
    colors = [f"C{k % 10}" for k in range(len(class_names))]
    markers = "os^Dv<>Ph*"
    for k, name in enumerate(class_names):
        sel = labels == k
        if sel.any():
            ax.scatter(emb[sel, 0], emb[sel, 1], s=14, c=colors[k], marker=markers[k % len(markers)],
                       label=plain_text(name, limit=30), alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1", fontsize=8)
    ax.set_ylabel("t-SNE 2", fontsize=8)
    if title:
        ax.set_title(plain_text(title), fontsize=9)
    if len(class_names) <= 12:
        ax.legend(fontsize=7, loc="best", frameon=False, markerscale=1.2)
    fig.tight_layout()
    return to_png(fig, dpi=dpi)
