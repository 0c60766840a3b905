"""Frozen-encoder features on disk, one small file per image, so every cell of a curve (in this
process, another process or a Ray worker on the same disk) computes an image's features once.

Layout: ``<cache>/features/<space>/<kk>/<content key>.npy``, a float32 array (V, F): the encoder's
pooled features of the image's V views (the 8 flips / quarter turns, identity first; 4 for a
non-square image; 1 without views). ``<cache>`` is ``$FEWLABEL_CACHE`` (``~/.cache/fewlabel``), as for
pretrained encoders.

``<space>`` is a hash of everything the numbers depend on besides the image: the encoder's weights
(a hash of its state, whatever file or registry they came from), its config (architecture, input
size), the data's preprocessing (size, channels, the pool's z-score), the views, and the device kind
and precision they are computed in. The file name is the image's content key (``data.identity``: a
hash of its bytes), never its name: a changed image gets new features, a copy shares them.

The cache holds test images' features beside the labelled ones'. That is not a leak: features come
from a frozen encoder that no image of this data set trained, each image's features depend on that
image alone, and the heads (``pipeline.frozen``) are fitted on the labelled images' features only;
the test features are read for scoring.

Files are written atomically (``fileio.atomic_path``); a lock file per space (``flock``) makes a second
process wait for the first one's extraction instead of repeating it. An unreadable or misshapen file
is computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.fileio import atomic_path, atomic_write_text
from fewlabel.training.compute import usable_precision
from fewlabel.training.probe import frozen_features

CACHE_VERSION = 1  # bump when a change in the code makes cached features stale
FEATURES_DIR = "features"
CHUNK = 256  # images decoded and encoded between writes: bounded memory, a stopped pass resumes


def default_feature_dir() -> Path:
    """``<cache>/features``: ``$FEWLABEL_CACHE`` or ``~/.cache/fewlabel``, the rule of
    ``api.default_cache_dir`` (a layer above this one), where pretrained encoders are cached too."""
    return Path(os.environ.get("FEWLABEL_CACHE", Path.home() / ".cache" / "fewlabel")) / FEATURES_DIR


def state_digest(module: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and bytes of every tensor)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def view_count(image_size: tuple[int, ...], views: bool) -> int:
    """How many views ``dihedral_views`` makes of an image of ``image_size`` (1 without views)."""
    if not views:
        return 1
    return 8 if image_size[-1] == image_size[-2] else 4


@dataclass
class FeatureStats:
    """What one ``FeatureCache.features`` call did: images computed, images read, seconds."""

    computed: int = 0
    cached: int = 0
    seconds: float = 0.0

    def add(self, other: FeatureStats) -> None:
        self.computed += other.computed
        self.cached += other.cached
        self.seconds += other.seconds


class FeatureCache:
    """The features of one encoder, preprocessing, view set and compute kind (module docstring)."""

    def __init__(self, encoder: nn.Module, preprocess: dict[str, Any], image_size: tuple[int, ...], *,
                 views: bool, device: torch.device, precision: str, channels_last: bool = False,
                 root: str | Path | None = None, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.device = device
        self.precision = usable_precision(precision, device)
        self.channels_last = bool(channels_last)
        self.views = bool(views)
        self.n_views = view_count(tuple(image_size), views)
        self.batch_size = int(batch_size)
        self.identity = {
            "version": CACHE_VERSION, "encoder": getattr(encoder, "config", type(encoder).__name__),
            "state_sha256": state_digest(encoder), "preprocess": preprocess,
            "image_size": list(image_size), "views": self.n_views, "device": device.type,
            "precision": self.precision,
        }
        text = json.dumps(self.identity, sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()
        self.dir = Path(root) if root is not None else default_feature_dir()
        self.dir = self.dir / self.key[:32]

    def path(self, content_key: str) -> Path:
        return self.dir / content_key[:2] / f"{content_key}.npy"

    def _read(self, content_key: str) -> np.ndarray | None:
        path = self.path(content_key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.ndim != 2 or arr.shape[0] != self.n_views or arr.dtype != np.float32:
            return None
        return arr

    def features(self, data: Any, ids: list[str]) -> tuple[np.ndarray, FeatureStats]:
        """Features (N, V, F) float32 of samples ``ids`` of ``data`` (a ``PreparedData``), read from the
        cache or computed (and written) for the images it lacks; with what was done."""
        t0 = time.perf_counter()
        keys = [data.content_keys[i] for i in ids]
        found: dict[str, np.ndarray] = {}
        first: dict[str, str] = {}  # content key -> one sample id with it
        for i, k in zip(ids, keys, strict=True):
            first.setdefault(k, i)
        missing = [k for k in first if not self._keep(k, found)]
        stats = FeatureStats(cached=len(first) - len(missing))
        if missing:
            with self._lock():
                # another process may have written them while this one waited for the lock
                still = [k for k in missing if not self._keep(k, found)]
                stats.cached += len(missing) - len(still)
                if still:
                    self._describe()
                for start in range(0, len(still), CHUNK):
                    chunk = still[start:start + CHUNK]
                    for k, feats in zip(chunk, self._compute(data, [first[k] for k in chunk]), strict=True):
                        self._write(k, feats)
                        found[k] = feats
                stats.computed += len(still)
        stats.seconds = time.perf_counter() - t0
        if not keys:
            width = int(getattr(self.encoder, "out_features", 0))
            return np.zeros((0, self.n_views, width), np.float32), stats
        return np.stack([found[k] for k in keys]), stats

    def _keep(self, content_key: str, found: dict[str, np.ndarray]) -> bool:
        arr = self._read(content_key)
        if arr is not None:
            found[content_key] = arr
        return arr is not None

    def _compute(self, data: Any, ids: list[str]) -> np.ndarray:
        """(N, V, F) features of ``ids``, on the cache's device, in batches ``bounded_batch_size`` caps."""
        x, _ = data.arrays(ids)
        self.encoder.to(self.device)
        feats = frozen_features(self.encoder, x, batch_size=self.batch_size, device=self.device,
                                views=self.views, precision=self.precision, channels_last=self.channels_last)
        per_view = feats.reshape(self.n_views, len(ids), -1).permute(1, 0, 2)
        return np.ascontiguousarray(per_view.numpy(), dtype=np.float32)

    def _write(self, content_key: str, feats: np.ndarray) -> None:
        with atomic_path(self.path(content_key), suffix=".npy") as tmp:
            np.save(tmp, np.ascontiguousarray(feats, dtype=np.float32), allow_pickle=False)

    def _describe(self) -> None:
        """``space.json`` beside the files: what they are the features of, for a reader of the cache."""
        path = self.dir / "space.json"
        if not path.exists():
            atomic_write_text(path, json.dumps(self.identity, indent=1, sort_keys=True, default=str) + "\n")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One extraction per space at a time across processes; released by the OS even after kill -9."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, two processes may both compute
            yield
            return
        with open(self.dir / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
