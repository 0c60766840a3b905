"""Heads on frozen features: the pooled features of an encoder that is never trained, a multinomial
logistic regression on them (the linear probe), and cosine k-nearest neighbours.

The probe and kNN strategies (``pipeline.frozen``) call these on features read from the feature cache;
``finetune``'s LP-FT start (``probe_init``, ``probe_only_max_per_class``) calls ``probe_head``, which
computes the features itself. One solver serves both.

* ``fit_logistic``: features centred on the labelled images' mean and scaled to unit variance per
  dimension on average (one scale for all dimensions: a per-dimension std from a few images is
  noise), both from the labelled features alone; then ``sum_i w_i mean_v CE(W z_iv + b, y_i) +
  ||W||^2 / (2 C)`` with ``C = PROBE_C`` = 1, scikit-learn's default on standardised features. Fixed,
  never fitted to a test set; each image counts once whatever its number of views, so the penalty
  weighs less as labels grow (the rule on n). On frozen ImageNet MobileNetV2 features of PBC-8 this C
  sat on a plateau (10x less or more moved accuracy by about a point at 1-20 labels per class;
  the same C on unit-norm features, 1280x stronger, lost 4-9 points). Class weights make it
  class-balanced; W, b start at 0 and full-batch L-BFGS in float64 solves the convex problem, so
  the same features give the same head (scipy's L-BFGS-B, in the span of the labelled features when
  they are fewer than its dimensions). The centring and scale are folded into the returned
  weights: the head applies to the raw features, as a ``Classifier``'s linear layer does.
* ``knn_proba``: DINO's kNN evaluation (Caron et al. 2021): the k most cosine-similar labelled
  images vote with weight exp(similarity / T), votes normalised to probabilities; ``KNN_K`` = 20 (the
  k DINO and DinoBloom report) capped at the labelled images, ``KNN_T`` = 0.07. Features are centred
  on the labelled mean and L2-normalised first (SimpleShot's CL2N, Wang et al. 2019), and an
  image's views are averaged (normalised) into one descriptor.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from fewlabel.settings import select_device
from fewlabel.training.batches import bounded_batch_size, sequential_batches
from fewlabel.training.compute import autocast, channels_last_on, fast_layout, usable_precision
from fewlabel.training.recipe import FinetuneConfig, dihedral_views

PROBE_C = 1.0  # inverse L2 strength on features of unit variance per dimension (module docstring)
PROBE_MAX_ITER = 500  # L-BFGS iterations at most; the tolerances end it sooner
KNN_K = 20
KNN_T = 0.07


@torch.no_grad()
def frozen_features(encoder: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 64,
                    device: torch.device | None = None, views: bool = False, precision: str = "fp32",
                    channels_last: bool = False) -> torch.Tensor:
    """Pooled features in eval mode; with ``views`` the 8 flips / quarter turns are stacked view-major
    ((8 * N, F), identity first; 4 for non-square images). Batches are capped by ``INFERENCE_VOXELS``
    (whole volumes). ``precision`` and ``channels_last`` compute them as ``predict_proba`` scores a
    model trained that way, so a head on these features predicts what the saved model will."""
    device = device or next(encoder.parameters()).device
    precision = usable_precision(precision, device)
    layout = channels_last and channels_last_on(device)
    encoder.eval()
    out = []
    for xb in sequential_batches(x, None, bounded_batch_size(x.shape[1:], batch_size)):
        xb = xb.to(device)
        batches = dihedral_views(xb) if views else [xb]
        with autocast(device, precision):
            out.append(torch.stack([encoder(fast_layout(v) if layout else v).float() for v in batches]))
    feats = torch.cat(out, dim=1)  # (V, N, F)
    return feats.reshape(-1, feats.shape[-1]).cpu()


def one_blas_thread() -> contextlib.AbstractContextManager:
    """NumPy's BLAS on one thread. The head's matrices are small, and OpenBLAS threads that spin
    on a busy CPU (a curve's other cells, another run) made a one-second fit take half a minute."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - shipped with scikit-learn, a dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_logistic(feats: np.ndarray | torch.Tensor, y: np.ndarray, weights: np.ndarray | torch.Tensor,
                 num_classes: int, c: float = PROBE_C,
                 max_iter: int = PROBE_MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """The L2-regularised multinomial logistic regression of the module docstring on ``feats``
    (N, V, F): N labelled images, V views each. ``weights`` (K,) per class. Returns the head's
    ``(weight (K, F), bias (K,))`` in float32, for the raw (uncentred) features."""
    from scipy.optimize import minimize

    x = np.asarray(feats, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None]
    n, v, f = x.shape
    labels = np.asarray(y, dtype=np.int64)
    mean = x.reshape(-1, f).mean(0)
    centred = x - mean
    scale = max(float(np.sqrt((centred ** 2).sum(-1).mean() / f)), 1e-12)
    z = (centred / scale).reshape(n * v, f)
    # The optimum lies in the span of the rows (the penalty only grows outside it): with fewer rows
    # than features, solving there is the same problem, several times smaller.
    basis = None
    if len(z) < f:
        with one_blas_thread():
            _, sing, vt = np.linalg.svd(z, full_matrices=False)
        basis = vt[sing > sing[0] * 1e-10] if sing[0] > 0 else vt[:1]
        z = z @ basis.T
    d = z.shape[1]
    rows = np.repeat(labels, v)
    row_weight = np.asarray(weights, dtype=np.float64)[rows] / (v * n)
    target = np.zeros((len(rows), num_classes))
    target[np.arange(len(rows)), rows] = 1.0
    penalty = 1.0 / (float(c) * n)  # the objective over n: the same minimiser, gradients of order 1

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:num_classes * d].reshape(num_classes, d), theta[num_classes * d:]
        logits = z @ w.T + b
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        loss = -(row_weight * (log_p * target).sum(1)).sum() + 0.5 * penalty * (w ** 2).sum()
        g = (np.exp(log_p) - target) * row_weight[:, None]
        return loss, np.concatenate([(g.T @ z + penalty * w).ravel(), g.sum(0)])

    # L-BFGS from zero: deterministic; its default tolerances put the probabilities within about
    # 0.01 of the exact optimum.
    with one_blas_thread():
        theta = minimize(objective, np.zeros(num_classes * (d + 1)), jac=True, method="L-BFGS-B",
                         options={"maxiter": int(max_iter)}).x
    w, b = theta[:num_classes * d].reshape(num_classes, d), theta[num_classes * d:]
    if basis is not None:
        w = w @ basis
    weight = w / scale
    bias = b - weight @ mean
    return torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)


def set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy a fitted head into ``linear`` (on the device it lives on)."""
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight.device))
        linear.bias.copy_(bias.to(linear.bias.device))


def head_proba(weight: torch.Tensor, bias: torch.Tensor, feats: np.ndarray | torch.Tensor) -> np.ndarray:
    """Softmax of the linear head on features (N, V, F), averaged over the V views (N, K) float32:
    what ``predict_proba`` computes from the images with test-time augmentation (V = 1: without)."""
    x = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    if x.dim() == 2:
        x = x[:, None]
    probs = torch.softmax(nn.functional.linear(x, weight.float(), bias.float()), dim=-1).mean(1)
    return probs.numpy().astype(np.float32)


def descriptors(feats: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """One unit vector per image from its views (N, V, F): each view centred on ``mean`` and
    normalised, the views averaged and normalised again (CL2N over a view-invariant mean)."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None]
    x = x - mean
    x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    d = x.mean(1)
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)


def knn_proba(bank: np.ndarray, bank_y: np.ndarray, query: np.ndarray, num_classes: int, k: int = KNN_K,
              temperature: float = KNN_T) -> np.ndarray:
    """Class probabilities (Q, K) float32 of unit ``query`` vectors from their ``k`` most similar unit
    ``bank`` vectors (labels ``bank_y``): each neighbour votes exp(cosine / temperature) for its class,
    votes normalised per row. Ties among equally similar neighbours break by bank order."""
    bank = np.asarray(bank, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    labels = np.asarray(bank_y, dtype=np.int64)
    k = max(1, min(int(k), len(bank)))
    with one_blas_thread():
        sims = query @ bank.T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(sims, nearest, axis=1)
    # shifted by each row's best: the ratio of votes is the same, exp never overflows
    votes = np.exp((top - top[:, :1]) / float(temperature))
    proba = np.zeros((len(query), num_classes), dtype=np.float64)
    np.add.at(proba, (np.repeat(np.arange(len(query)), k), labels[nearest].ravel()), votes.ravel())
    return (proba / proba.sum(1, keepdims=True)).astype(np.float32)


def probe_head(classifier: nn.Module, x_train: np.ndarray, y_train: np.ndarray, weights: torch.Tensor,
               config: FinetuneConfig, *, seed: int = 0, steps: int = PROBE_MAX_ITER) -> None:
    """Fit ``classifier``'s linear head on its frozen encoder's features (of the 8 flips / quarter
    turns when augmenting): the linear probe of LP-FT, by ``fit_logistic``. Deterministic: ``seed``
    is kept for callers, the solver starts from zero."""
    del seed
    encoder = classifier.encoder
    device = select_device(config.device)
    encoder.to(device)
    views = config.augment != "none"
    feats = frozen_features(encoder, x_train, device=device, views=views)
    n = len(y_train)
    per_view = feats.reshape(len(feats) // n, n, -1).permute(1, 0, 2)  # (N, V, F)
    linear = classifier.head[-1]
    assert isinstance(linear, nn.Linear)
    weight, bias = fit_logistic(per_view, np.asarray(y_train), weights, linear.out_features, max_iter=steps)
    set_linear(linear, weight, bias)
    linear.to(device)  # beside the encoder, whether fine-tuning follows or not
