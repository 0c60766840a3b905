"""fewlabel: medical image classifiers from tens of labels, and how far those labels go.

    import fewlabel
    model = fewlabel.train("cells/", strategy="imagenet", labels_per_class=20, out="m")
    fewlabel.load_model("m").predict(["new_cells/"]).save_csv("p.csv")
    fewlabel.suggest("pool/", budget=16, out="to_label")   # which images to label first
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "train", "load_model", "Model", "FewlabelError", "suggest", "Suggestions"]

from fewlabel.errors import FewlabelError  # noqa: E402
from fewlabel.version import __version__  # noqa: E402


def __getattr__(name: str) -> Any:
    # Lazy: `import fewlabel` must stay fast (torch, MONAI load only when used).
    if name in ("train", "load_model", "Model", "Predictions"):
        from fewlabel import api

        return getattr(api, name)
    if name in ("suggest", "Suggestions"):
        from fewlabel.pipeline import suggest

        return getattr(suggest, name)
    if name == "run_curve":
        from fewlabel.experiments import run_curve

        return run_curve
    raise AttributeError(f"module 'fewlabel' has no attribute {name!r}")
