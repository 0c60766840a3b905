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


class Ensemble(nn.Module):
    """Classifiers of one architecture whose class probabilities are averaged.

    ``forward`` returns the log of the mean softmax: a logit vector whose softmax is the members'
    mean probability, so prediction, test-time augmentation and gradients treat an ensemble like one
    classifier. Keys in the state dict are ``members.<k>.encoder.*`` and ``members.<k>.head.1.*``.
    """

    def __init__(self, members: list[Classifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, not {len(members)}")
        first = members[0]
        for member in members[1:]:
            if (member.encoder.config != first.encoder.config or member.num_classes != first.num_classes
                    or member.dropout != first.dropout):
                raise ValueError("ensemble members must share encoder, classes and dropout")
        self.members = nn.ModuleList(members)
        self.num_classes = first.num_classes
        self.dropout = first.dropout
        self.tta = bool(getattr(first, "tta", False))
        # How the members were trained, for prediction (``finetune.predict_proba``).
        self.precision = getattr(first, "precision", None)
        self.channels_last = getattr(first, "channels_last", None)

    @property
    def encoder_config(self) -> dict:
        return self.members[0].encoder.config

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' pooled features side by side (B, members * out_features)."""
        return torch.cat([m.features(x) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
