"""The classifier: any registered encoder + a linear head.

No normalisation hides in here: inputs arrive z-scored by ``data.tensors.Preprocess``, which is saved
with the model, so the same array gives the same logits wherever the model is loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from fewlabel.models.encoder import Encoder


class Classifier(nn.Module):
    """``encoder`` (pooled features) -> ``head`` = Dropout -> Linear(out_features, num_classes).

    Keys in the state dict are ``encoder.*`` and ``head.1.*``, so the encoder part of a fine-tuned
    model is an ordinary encoder state again.
    """

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, not {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        # Dropout kept as a module even at p=0: same module tree (and LRP layer list) for every model.
        self.head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(encoder.out_features, self.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features (B, encoder.out_features): what t-SNE and linear probes look at."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes); softmax is the caller's (the loss wants logits)."""
        return self.head(self.encoder(x))
