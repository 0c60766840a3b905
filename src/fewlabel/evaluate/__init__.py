"""Evaluation: classification metrics with bootstrap CIs, and comparisons over repeats."""

from fewlabel.evaluate.compare import paired_difference, summarise
from fewlabel.evaluate.metrics import classification_metrics

__all__ = ["classification_metrics", "paired_difference", "summarise"]
