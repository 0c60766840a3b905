"""A small, plausible learning-curve run folder built by hand, for the explain and report tests.

It follows the RUN_DIR layout of ``fewlabel.experiments.store`` (run.json, store.sqlite via
``ResultStore``, cells/<strategy>/n<size>_r<repeat>/ model dirs) with made-up numbers, so the report
can be tested without running a curve.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HOSTILE = "<script>alert(1)</script>"
# plateau, scale, exponent of a - b n^-c per strategy: ssl best, scratch worst
CURVES = {"scratch": (0.93, 0.45, 0.45), "gan": (0.96, 0.35, 0.5), "ssl": (0.97, 0.30, 0.6)}


def make_test_set(classes: Sequence[str], n_per_class: int = 6, size: int = 16, seed: int = 0,
                  spatial_dims: int = 2):
    """A tiny test set where class k has a bright blob in a different place (2D or 3D)."""
    from fewlabel.experiments.run_view import TestSet

    rng = np.random.default_rng(seed)
    xs, ys, ids = [], [], []
    for k, name in enumerate(classes):
        for i in range(n_per_class):
            img = rng.normal(0, 0.3, (1, *(size,) * spatial_dims)).astype(np.float32)
            r = 3 + 8 * (k % 2)
            img[(0, *(slice(r, r + 3),) * spatial_dims)] += 3.0
            xs.append(img)
            ys.append(k)
            ids.append(f"{name}/img_{i:02d}.tif")
    return TestSet(x=np.stack(xs), y=np.array(ys), ids=ids, class_names=list(classes))


def make_run(root: Path, strategies: Sequence[str] = ("scratch", "gan", "ssl"),
             sizes: Sequence[int] = (2, 5, 10, 20), repeats: int = 6,
             classes: Sequence[str] = ("healthy", HOSTILE), models: bool = True,
             failed: Sequence[tuple[str, int, int]] = (("gan", 20, 3),),
             missing: Sequence[tuple[str, int]] = (("ssl", 20),), synthetic: bool = False,
             image_size: int = 16, seed: int = 0, spatial_dims: int = 2, probas: bool = True,
             pretrain_per_repeat: bool | None = None) -> Path:
    """Write run.json + store.sqlite (+ repeat-0 model dirs) under ``root``; return ``root``. With
    ``probas``: plan.json (test labels and groups) and each ok cell's proba_test.npy, with scores whose
    AUC is near the row's."""
    from scipy import stats

    from fewlabel.experiments.store import ResultStore
    from fewlabel.models.encoder import create_encoder
    from fewlabel.models.heads import Classifier
    from fewlabel.models.io import save_model_dir

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_test = 40
    k = len(classes)
    dataset = {"root": str(root / "data"), "classes": list(classes),
               "counts": {c: 60 for c in classes}, "pool_counts": {c: 40 for c in classes},
               "test_counts": {c: 20 for c in classes}, "n_pool": 40 * k, "n_test": n_test, "groups": 60 * k,
               "test_groups": n_test, "image_size": [image_size] * spatial_dims,
               "channels": 1, "spatial_dims": spatial_dims, "n_unlabelled": 300}
    if synthetic:
        (root / "data").mkdir(exist_ok=True)
        (root / "data" / "SYNTHETIC_DATA.json").write_text('{"synthetic": true}')
    run = {"config": {"strategies": list(strategies), "sizes": list(sizes), "repeats": repeats, "seed": seed,
                      "data": str(root / "data")},
           "command": f"fewlabel curve {root / 'data'} --out {root} --sizes {','.join(map(str, sizes))} "
                      "--note it's <here>.tif",
           "dataset": dataset, "versions": {"fewlabel": "0.1.0", "torch": "2.13.0"}}
    if pretrain_per_repeat is not None:
        run["config"]["pretrain_per_repeat"] = pretrain_per_repeat
    (root / "run.json").write_text(json.dumps(run, indent=1))
    test_groups = [f"patient_{i // 2:02d}" for i in range(n_test)]  # 2 images per patient, one class
    test_labels = np.array([int(i // 2) % k for i in range(n_test)])
    if probas:
        plan = {"test": {"ids": [f"t{i}.png" for i in range(n_test)], "labels": test_labels.tolist(),
                         "groups": test_groups}}
        (root / "plan.json").write_text(json.dumps(plan))
    store = ResultStore(root)
    for s in strategies:
        a, b, c = CURVES.get(s, (0.9, 0.4, 0.5))
        for n in sizes:
            if (s, n) in missing:
                continue
            for r in range(repeats):
                base = {"strategy": s, "n_per_class": n, "repeat": r, "seed": 1000 + 10 * r + n,
                        "draw_seed": 500 + r}
                if (s, n, r) in failed:
                    store.add({**base, "status": "failed",
                               "error": f"RuntimeError: out of memory in {HOSTILE}"})
                    continue
                auc = float(np.clip(a - b * n ** -c + rng.normal(0, 0.03), 0.3, 1.0))
                acc = float(np.clip(auc - 0.08 + rng.normal(0, 0.02), 0.3, 1.0))
                correct = int(round(acc * n_test / k))
                cm = [[correct if i == j else (n_test // k - correct) // max(1, k - 1) for j in range(k)]
                      for i in range(k)]
                row = {**base, "status": "ok", "roc_auc": auc, "roc_auc_ci_low": auc - 0.07,
                       "roc_auc_ci_high": min(1.0, auc + 0.05), "accuracy": acc,
                       "accuracy_ci_low": acc - 0.08,
                       "accuracy_ci_high": min(1.0, acc + 0.07), "balanced_accuracy": acc,
                       "macro_f1": acc - 0.01, "train_seconds": 1.5, "n_test": n_test, "confusion_matrix": cm,
                       "model_path": ""}
                if models and r == 0:
                    enc = create_encoder("convnet", 1, spatial_dims, width=4, depth=3)
                    clf = Classifier(enc, k)
                    rel = f"cells/{s}/n{n}_r{r}"
                    save_model_dir(root / rel, clf, {"class_names": list(classes), "strategy": s})
                    row["model_path"] = rel
                if probas:
                    d = np.sqrt(2) * stats.norm.ppf(min(auc, 0.995))
                    logits = d * np.eye(k)[test_labels] + rng.normal(0, 1, (n_test, k))
                    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
                    cell = root / f"cells/{s}/n{n}_r{r}"
                    cell.mkdir(parents=True, exist_ok=True)
                    np.save(cell / "proba_test.npy", p.astype(np.float32))
                store.add(row)
    store.export_csv()
    store.close()
    return root
