"""t-SNE of a classifier's pooled features: do the classes separate in what the encoder learned?"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def extract_features(classifier: nn.Module, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Pooled encoder features (N, F) of preprocessed images ``x`` (N, C, *spatial), eval mode, in
    batches capped by ``INFERENCE_VOXELS`` (a test set of whole volumes never runs at once)."""
    from fewlabel.training.batches import bounded_batch_size

    batch_size = bounded_batch_size(tuple(x.shape)[1:], batch_size)
    classifier.eval()
    p = next(classifier.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    feats = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.asarray(x[start:start + batch_size], dtype=np.float32), device=device)
            fb = classifier.features(xb) if hasattr(classifier, "features") else classifier(xb)
            feats.append(fb.float().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


EXACT_MAX = 300


def default_perplexity(n: int) -> float:
    """sklearn's 30 for large sets; for small test sets about n/4 (it must stay below n)."""
    return float(min(30.0, max(2.0, (n - 1) / 4)))


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """2D t-SNE (sklearn, Barnes-Hut, PCA init) of standardised features; (N, 2) float32.

    Too few points for t-SNE (N < 5) fall back to the first two principal components, so a report
    on a tiny test set still gets a picture. Constant features give all-zero coordinates.
    """
    f = np.asarray(features, dtype=np.float64)
    n = f.shape[0]
    if n == 0:
        return np.zeros((0, 2), np.float32)
    f = f.reshape(n, -1)
    std = f.std(0)
    f = (f - f.mean(0)) / np.where(std > 0, std, 1.0)  # no single feature's scale dominates distances
    if n < 5 or not np.any(std > 0):
        return _pca2(f)
    from sklearn.manifold import TSNE

    perp = default_perplexity(n) if perplexity is None else min(float(perplexity), n - 1.0)
    # Exact gradients for small test sets: several times faster there than Barnes-Hut's tree set-up.
    method = "exact" if n <= EXACT_MAX else "barnes_hut"
    emb = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed,
               method=method, n_jobs=1).fit_transform(f)
    return emb.astype(np.float32)


def _pca2(f: np.ndarray) -> np.ndarray:
    out = np.zeros((f.shape[0], 2), np.float32)
    if f.shape[0] < 2 or not np.any(f):
        return out
    _, s, vt = np.linalg.svd(f - f.mean(0), full_matrices=False)
    proj = (f - f.mean(0)) @ vt[:2].T
    out[:, : proj.shape[1]] = proj
    return out
