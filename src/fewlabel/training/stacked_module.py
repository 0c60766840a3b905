"""K classifiers of one architecture as ONE module: their parameters and buffers stacked
(``torch.func.stack_module_state``) and one forward over all of them (``functional_call`` under
``vmap``); prediction with it. ``stacked`` trains such a module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fewlabel.models.heads import Classifier
from fewlabel.settings import select_device
from fewlabel.training.batches import INFERENCE_VOXELS, bounded_batch_size
from fewlabel.training.recipe import dihedral_views


class StackedModule:
    """Stacked parameters/buffers and the vmapped forward of K classifiers built alike."""

    def __init__(self, classifiers: Sequence[Classifier], device: torch.device) -> None:
        for c in classifiers:
            c.to(device)
        params, buffers = stack_module_state(list(classifiers))
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        template = copy.deepcopy(classifiers[0]).to("meta")
        self.encoder = template.encoder
        self.enc_params = [n for n in params if n.startswith("encoder.")]
        self.enc_buffers = [n for n in buffers if n.startswith("encoder.")]
        self.head_params = [n for n in params if n.startswith("head.")]

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor,
                noise: torch.Tensor | None) -> torch.Tensor:
            feats = functional_call(self.encoder, ({n[8:]: p[n] for n in self.enc_params},
                                                   {n[8:]: b[n] for n in self.enc_buffers}), (x,))
            if noise is not None:  # dropout with a mask drawn from this model's own stream
                feats = feats * noise
            return F.linear(feats, p["head.1.weight"], p["head.1.bias"])

        self._train = vmap(one, in_dims=(0, 0, 0, 0))
        self._train_nodrop = vmap(lambda p, b, x: one(p, b, x, None), in_dims=(0, 0, 0))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None, train: bool) -> torch.Tensor:
        """Logits (K, B, C) for inputs (K, B, ...)."""
        self.encoder.train(train)
        if noise is None:
            return self._train_nodrop(self.params, self.buffers, x)
        return self._train(self.params, self.buffers, x, noise)

    def member_state(self, k: int, source: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        src = source if source is not None else {**self.params, **self.buffers}
        return {n: t[k].detach().to("cpu", copy=True) for n, t in src.items()}


@torch.no_grad()
def predict_proba_stacked(classifiers: Sequence[nn.Module], x: np.ndarray | torch.Tensor,
                          batch_size: int = 64, device: str | torch.device = "auto",
                          tta: bool = False) -> list[np.ndarray]:
    """Softmax probabilities (N, K) of each classifier on the same images, all models per batch
    (eval mode, float32, on CPU); equals ``finetune.predict_proba`` per model (with ``tta``, the
    mean over the 8 flips / quarter turns, as there)."""
    dev = select_device(device) if isinstance(device, str) else device
    stack = StackedModule([c.eval() for c in classifiers], dev)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if dev.type == "cuda":
        xt = xt.pin_memory()
    # K models see every batch: the voxel cap of one model's prediction is shared among them
    batch_size = bounded_batch_size(xt.shape[1:], batch_size, max(1, INFERENCE_VOXELS // len(classifiers)))
    out = []
    for i in range(0, len(xt), batch_size):
        xb = xt[i:i + batch_size].to(dev, non_blocking=True)
        probs = []
        for view in dihedral_views(xb) if tta else [xb]:
            logits = stack.forward(view.unsqueeze(0).expand((len(classifiers),) + tuple(view.shape)), None,
                                   train=False)
            probs.append(torch.softmax(logits.float(), dim=-1))
        out.append(torch.stack(probs).mean(0).cpu())
    if not out:
        return [np.zeros((0, 0), dtype=np.float32) for _ in classifiers]
    probs = torch.cat(out, dim=1).numpy().astype(np.float32)
    return [probs[k] for k in range(len(classifiers))]
