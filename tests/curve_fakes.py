"""A fake pipeline for the curve's tests: the orchestration, the store and the executors without torch
training. Importable from test modules (``tests/`` is on ``sys.path``) and, with ``PYTHONPATH=tests``,
from subprocesses.

A fake data set is a folder with ``fake.json``: ``{"classes": {"a": 30, "b": 30}}``; images are ids only.
Behaviour switches come from the environment, so they do not change the run's configuration hash:
``FAKE_DELAY`` (seconds per cell), ``FAKE_FAIL`` (``"ssl:5,scratch:2"``: strategy:size cells raise),
``FAKE_PREP_FAIL`` (a strategy whose preparation raises), ``FAKE_PREP_SALT`` (changes the cache key).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.errors import SplitError


def make_fake_data(root: Path, classes: dict[str, int] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "fake.json").write_text(json.dumps({"classes": classes or {"a": 20, "b": 20, "c": 20}}))
    return root


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class FakeCatalog:
    def __init__(self, classes: dict[str, int], root: str) -> None:
        self.root = root
        self.classes = sorted(classes)
        self.ids = [f"{c}/{i:03d}.png" for c in self.classes for i in range(classes[c])]
        self._label = {i: self.classes.index(i.split("/")[0]) for i in self.ids}

    def labels(self, ids: list[str]) -> np.ndarray:
        return np.array([self._label[i] for i in ids], dtype=np.int64)

    def groups(self, ids: list[str]) -> list[str]:
        return list(ids)

    @property
    def has_masks(self) -> bool:
        return False


@dataclass
class FakeData:
    catalog: FakeCatalog
    pool_ids: list[str]
    test_ids: list[str]
    fp: str
    unlabelled: Any = None
    preprocess: Any = None
    draws: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.catalog.classes)

    def fingerprint(self) -> str:
        return self.fp


@dataclass
class FakeFit:
    epochs: int = 3
    best_epoch: int = 2
    stopped_because: str = "max_epochs"
    history: list[dict[str, float]] = field(default_factory=lambda: [{"epoch": 0.0, "loss": 1.0}])


@dataclass
class FakeResult:
    classifier: Any
    fit: FakeFit
    metrics: dict[str, Any]
    proba_test: np.ndarray
    train_ids: list[str]
    val_ids: list[str]
    train_seconds: float


class FakeBackend:
    """Deterministic numbers from (strategy, seed, labelled ids); AUC rises with n."""

    strategies = ("scratch", "imagenet", "gan", "segmentation", "ssl", "semi")

    def prepare_data(self, **args: Any) -> FakeData:
        args.pop("plan", None)  # the fake draws the same test set from the same arguments
        text = (Path(args["data"]) / "fake.json").read_text()
        classes = json.loads(text)["classes"]
        for name in args.get("drop_classes") or ():
            classes.pop(name)
        catalog = FakeCatalog(classes, args["data"])
        rng = np.random.default_rng(args.get("seed", 0))
        test: list[str] = []
        per_class = args.get("test_size", 0.2)
        for k in range(len(catalog.classes)):
            ids = [i for i in catalog.ids if catalog.labels([i])[0] == k]
            n_test = int(per_class) if per_class >= 1 else max(1, round(len(ids) * per_class))
            test.extend(sorted(rng.permutation(ids)[:n_test].tolist()))
        pool = [i for i in catalog.ids if i not in set(test)]
        fp = hashlib.sha256((text + repr((args.get("seed"), per_class))).encode()).hexdigest()[:16]
        return FakeData(catalog=catalog, pool_ids=pool, test_ids=test, fp=fp)

    def draw(self, data: FakeData, n: int, repeat: int, seed: int, count: str) -> dict[str, Any]:
        out: list[str] = []
        for k, c in enumerate(data.catalog.classes):
            ids = [i for i in data.pool_ids if data.catalog.labels([i])[0] == k]
            if n > len(ids):
                return {"labelled": [], "train": [], "val": [], "draw_seed": seed,
                        "skipped": SplitError(f"class {c} has {len(ids)} images in the pool; "
                                              f"asked for {n}").problem}
            order = np.random.default_rng([seed, k]).permutation(len(ids))  # nested: same order for all n
            out.extend(ids[j] for j in order[:n])
        data.draws[f"n{n}_r{repeat}"] = {"n_per_class": n, "repeat": repeat, "labelled": out}
        return {"labelled": out, "train": out, "val": [], "draw_seed": seed}

    def save_plan(self, data: FakeData, path: Path) -> None:
        path.write_text(json.dumps({"test": {"ids": data.test_ids}, "pool": data.pool_ids,
                                    "draws": data.draws}))

    def strategy_spec(self, name: str) -> dict[str, Any]:
        return {"name": name, "encoder": "fake", "encoder_weights": None, "pretrain": {"steps": 10}}

    def prepare_strategy(self, spec: dict[str, Any], data: FakeData, cache_dir: Path,
                         seed: int) -> dict[str, Any]:
        if os.environ.get("FAKE_PREP_FAIL") == spec["name"]:
            raise RuntimeError(f"{spec['name']} pretraining diverged")
        if spec["name"] not in ("gan", "segmentation", "ssl"):
            return spec
        # FAKE_PREP_SALT stands for a code change that alters the pipeline's cache key.
        salt = os.environ.get("FAKE_PREP_SALT", "")
        path = Path(cache_dir) / f"{spec['name']}-{data.fingerprint()}-{seed}{salt}.enc"
        if not path.exists():
            path.write_text("weights")
            with open(Path(cache_dir) / "computed.log", "a") as fh:
                fh.write(spec["name"] + "\n")
        return {**spec, "encoder_weights": str(path)}

    def fit_cell(self, data: FakeData, labelled_ids: list[str], spec: dict[str, Any], seed: int,
                 finetune: dict[str, Any], train_ids: list[str], val_ids: list[str]) -> FakeResult:
        delay = float(os.environ.get("FAKE_DELAY", "0"))
        if delay:
            time.sleep(delay)
        n = len(labelled_ids) // len(data.class_names)
        fails = {tuple(x.split(":")) for x in os.environ.get("FAKE_FAIL", "").split(",") if x}
        if (spec["name"], str(n)) in fails:
            raise ValueError(f"loss is NaN at epoch 2\n(strategy {spec['name']})")
        rng = np.random.default_rng(_seed(spec["name"], seed, sorted(labelled_ids)))
        y = data.catalog.labels(data.test_ids)
        k = len(data.class_names)
        strength = {"scratch": 0.5, "ssl": 1.0, "imagenet": 1.5}.get(spec["name"], 0.8) * np.log1p(n)
        logits = rng.normal(size=(len(y), k)) + strength * np.eye(k)[y]
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, proba, multi_class="ovr") if k > 2 else roc_auc_score(y, proba[:, 1]))
        acc = float((proba.argmax(1) == y).mean())
        metrics = {m: {"value": v, "ci_low": v - 0.05, "ci_high": min(1.0, v + 0.05)}
                   for m, v in (("roc_auc", auc), ("accuracy", acc), ("balanced_accuracy", acc),
                                ("macro_f1", acc))}
        cm = np.zeros((k, k), int)
        for t, p in zip(y, proba.argmax(1), strict=True):
            cm[t, p] += 1
        metrics["confusion_matrix"] = cm.tolist()
        return FakeResult(classifier=object(), fit=FakeFit(), metrics=metrics, proba_test=proba,
                          train_ids=list(labelled_ids), val_ids=[], train_seconds=0.01)

    def save_model(self, directory: Path, result: Any, data: Any, spec: dict[str, Any], seed: int) -> None:
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"fake")
        (directory / "config.json").write_text(json.dumps({"strategy": spec, "seed": seed}))

    def finetune_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return {"max_epochs": 3, **overrides}

    def summary(self, data: FakeData) -> dict[str, Any]:
        from fewlabel.experiments.run_folder import dataset_summary

        return dataset_summary(data)


def square(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * x
