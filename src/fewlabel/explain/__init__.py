"""Explanations: where a classifier looks (saliency, LRP, Grad-CAM; 2D and 3D) and what its features
separate (t-SNE), per strategy and labelled-set size of a learning curve.

    from fewlabel.explain import attribute
    maps = attribute(classifier, x, target=None, method="lrp")   # (B, *spatial)
"""

from fewlabel.explain.attributions import ALL_METHODS, METHODS, attribute
from fewlabel.explain.embedding import extract_features, tsne_embedding

__all__ = ["ALL_METHODS", "METHODS", "attribute", "explain_files", "explain_run", "extract_features",
           "tsne_embedding"]


def __getattr__(name: str) -> object:  # run.py pulls in the data layer; load it only when asked for
    if name in ("explain_run", "explain_files"):
        from fewlabel.explain import run

        return getattr(run, name)
    raise AttributeError(f"module 'fewlabel.explain' has no attribute {name!r}")
