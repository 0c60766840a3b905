"""The data layer: files → catalog (table of samples) → splits → preprocessed arrays (+ augmentation).

    from fewlabel.data import load_catalog, splits, tensors
    cat = load_catalog("cells/")                                   # folder / CSV / .npz
    pool, test = splits.holdout_test(cat, test_size=0.2, seed=0)
    labelled = splits.draw_labelled(cat, pool, n_per_class=10, seed=1)
    pre = tensors.fit_preprocess(cat, labelled)
    x, y = tensors.load_images(cat, labelled, pre), cat.labels(labelled)

Submodules: ``readers`` (one module per format), ``catalog`` (one module per source), ``splits``,
``tensors``, ``augment`` (torch, imported lazily), ``inspect`` (the report behind ``fewlabel inspect``).
"""

from __future__ import annotations

from fewlabel.data.catalog import Catalog, Sample, load_catalog, load_pool
from fewlabel.data.readers import ImageMeta, read_image, read_mask, read_meta

__all__ = ["Catalog", "Sample", "load_catalog", "load_pool", "ImageMeta", "read_image", "read_mask",
           "read_meta"]
