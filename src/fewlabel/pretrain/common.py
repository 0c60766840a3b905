"""What every preparation shares: its config, the cache, the encoder file, and the dispatcher.

``prepare_encoder(method, images, masks, encoder_config=..., config=..., cache_dir=...)`` returns
the path of an encoder file (safetensors + JSON metadata, written by ``fewlabel.models.io``). The
file is named by a hash of (data fingerprint, method, the config fields that change the result,
encoder config), so asking twice trains once; a run that was stopped resumes from its checkpoint
beside the file, because the checkpoint carries the same name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewlabel import strategies as strategy_registry
from fewlabel.errors import DataError, FewlabelError, MaskError
from fewlabel.fileio import atomic_path, atomic_write_text
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.training.loop import FitResult, LoopConfig

# What ``prepare_encoder`` accepts: the registry's pretraining methods, plus the two starts that train
# nothing (random weights, ImageNet weights) so every strategy's encoder can be made the same way.
METHODS = ("scratch", "imagenet", *strategy_registry.PRETRAIN_METHODS)
# Bump when a change in the code makes old cached encoders stale.
CACHE_VERSION = 1


@dataclass
class PretrainConfig:
    """How an encoder is prepared. One flat config; each method reads its own fields.

    Only the fields in ``KEY_FIELDS`` (what changes the result) enter the cache key; run-time
    settings (device, progress, checkpoint cadence) do not.
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float | None = None  # None: the method's default (gan 2e-4, ssl 1e-3, segmentation 1e-3)
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 25  # steps per logged row (one "epoch" of the loop: history, checkpoint)
    time_budget_s: float | None = None  # stop cleanly after this long; the encoder is still saved
    # gan
    z_dim: int = 64
    gen_width: int | None = None  # None: the encoder's width
    real_label: float = 0.9  # one-sided label smoothing (Salimans et al. 2016)
    spectral_norm: bool = True
    diff_augment: bool = True  # translation + cutout + flips on real and fake (Zhao et al. 2020)
    minibatch_std: bool = True  # batch spread as an extra discriminator input: against mode collapse
    # R1 penalty on real images (Mescheder et al. 2018), 0 turns it off: the value at 64x64, scaled by
    # pixel count because the penalty sums over pixels (docs/gan.md: why 20).
    r1_gamma: float = 20.0
    sample_every: int = 250  # steps between PNG sample grids
    # ssl
    temperature: float = 0.2
    proj_dim: int = 64
    crop_scale: tuple[float, float] = (0.5, 1.0)
    colour_jitter: bool = False  # per-channel intensity changes: alter stain colour, opt-in
    # segmentation
    num_classes: int | None = None  # None: from the masks
    val_fraction: float = 0.2  # held out of the masked images when no validation set is given
    # run time, not part of the cache key
    device: str = "auto"
    amp: bool = True
    progress: bool | None = None
    checkpoint_every_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "crop_scale" in known:
            known["crop_scale"] = tuple(known["crop_scale"])
        return cls(**known)

    def learning_rate(self, method: str) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR.get(method, 1e-3)


DEFAULT_LR = {"gan": 2e-4, "ssl": 1e-3, "segmentation": 1e-3}
# Smallest batch that teaches anything: SimCLR tells each image apart from the others in its batch,
# and a GAN's BatchNorm and minibatch spread need two images; alone, the losses are trivially 0.
MIN_BATCH = {"gan": 2, "ssl": 2}


def batch_size_problem(method: str, batch_size: int) -> str | None:
    """What ``batch_size`` must be for ``method`` when it cannot train it, else None."""
    least = MIN_BATCH.get(method, 1)
    return None if batch_size >= least else f"must be at least {least} for {method} (got {batch_size})"


_COMMON_KEYS = ("steps", "batch_size", "lr", "weight_decay", "seed", "log_every", "time_budget_s")
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "scratch": ("seed",),
    "imagenet": (),
    "gan": _COMMON_KEYS + ("z_dim", "gen_width", "real_label", "spectral_norm", "diff_augment",
                         "minibatch_std", "r1_gamma"),
    "ssl": _COMMON_KEYS + ("temperature", "proj_dim", "crop_scale", "colour_jitter"),
    "segmentation": _COMMON_KEYS + ("num_classes", "val_fraction"),
}


def key_config(method: str, config: PretrainConfig) -> dict[str, Any]:
    """The config fields that determine ``method``'s result (lr resolved to its default)."""
    d = {k: getattr(config, k) for k in KEY_FIELDS[method]}
    if "lr" in d:
        d["lr"] = config.learning_rate(method)
    if "crop_scale" in d:
        d["crop_scale"] = list(d["crop_scale"])
    return d


def cache_key(method: str, config: PretrainConfig, encoder_config: dict[str, Any],
              data_fingerprint: str, init: str | None = None) -> str:
    """sha256 over (version, method, result-changing config, encoder config, data fingerprint, and the
    published weights the encoder starts from, if any)."""
    payload = {"v": CACHE_VERSION, "method": method, "config": key_config(method, config),
               "encoder": encoder_config, "data": data_fingerprint}
    if init is not None:
        payload["init"] = init
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def array_fingerprint(*arrays: np.ndarray | None) -> str:
    """Content hash of arrays (shape, dtype and bytes), for callers without a catalog fingerprint."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def check_images(images: np.ndarray | torch.Tensor, name: str = "images") -> torch.Tensor:
    """(N, C, *spatial) float32 tensor with finite values, else a one-line ``DataError``."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() not in (4, 5):
        raise DataError(f"{name} must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise DataError(f"no {name} to pretrain on")
    x = x.float()
    if not torch.isfinite(x).all():
        raise DataError(f"{name} contain NaN or infinite values")
    return x


def check_masks(masks: np.ndarray | torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Masks as (N, 1, *spatial) int64 of the images' size. Whole-number values only."""
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
    if m.dim() == images.dim() - 1:
        m = m.unsqueeze(1)
    if m.shape[0] != images.shape[0] or m.shape[1] != 1 or m.shape[2:] != images.shape[2:]:
        raise MaskError(f"masks of shape {tuple(m.shape)} do not match images of shape "
                        f"{tuple(images.shape)} (want N x 1 x spatial)")
    if m.is_floating_point():
        if not torch.isfinite(m).all() or not torch.equal(m, m.round()):
            raise MaskError("masks must hold whole-number labels (binary 0/1, 0/255, or class indices)")
    if (m < 0).any():
        raise MaskError("masks hold negative labels")
    return m.long()


def history_summary(result: FitResult) -> dict[str, Any]:
    """Steps, time, why it stopped, and the last logged row's losses ("final losses")."""
    last = result.history[-1] if result.history else {}
    final = {k: float(v) for k, v in last.items() if k not in ("epoch", "step")}
    return {"steps": result.steps, "seconds": round(result.seconds, 2),
            "stopped_because": result.stopped_because, "resumed": result.resumed,
            "final_losses": final, "history": result.history}


def loop_config(config: PretrainConfig, desc: str, checkpoint_path: str | Path | None,
                patience: int | None = None) -> LoopConfig:
    """A LoopConfig whose "epoch" is ``log_every`` steps (the batch streams are sized that way)."""
    epochs = -(-config.steps // max(1, config.log_every)) + 1
    return LoopConfig(
        max_epochs=max(epochs, 1), max_steps=config.steps, time_budget_s=config.time_budget_s,
        patience=patience, seed=config.seed, device=config.device, amp=config.amp,
        progress=config.progress, desc=desc,
        checkpoint_path=str(checkpoint_path) if checkpoint_path else None,
        checkpoint_every_s=config.checkpoint_every_s)


# --------------------------------------------------------------------------------------------------
# The dispatcher


_TRAINERS = {
    "gan": "fewlabel.pretrain.gan:pretrain_gan",
    "ssl": "fewlabel.pretrain.ssl:pretrain_ssl",
    "segmentation": "fewlabel.pretrain.segmentation:pretrain_segmentation",
}


def _trainer(method: str) -> Callable[..., tuple[Encoder, dict[str, Any]]]:
    # Looked up at call time: importing one method never loads the others (MONAI is slow to import).
    module, name = _TRAINERS[method].split(":")
    return getattr(importlib.import_module(module), name)


def encoder_file_name(method: str, key: str) -> str:
    return f"{method}-{key[:16]}.safetensors"


def artefact_dir(encoder_path: str | Path) -> Path:
    """Folder next to an encoder file for its PNGs and history: ``<stem>_files``."""
    p = Path(encoder_path)
    return p.with_name(p.name.removesuffix(".safetensors") + "_files")


def cached_encoder_path(method: str, encoder_config: dict[str, Any], config: PretrainConfig,
                        cache_dir: str | Path, data_fingerprint: str, init: str | None = None) -> Path:
    """Where ``prepare_encoder`` keeps (or will keep) this encoder; exists when it is cached."""
    if method not in METHODS:
        raise FewlabelError(f"unknown preparation {method!r}; choose from {', '.join(METHODS)}")
    key = cache_key(method, config, dict(encoder_config), data_fingerprint, init)
    return Path(cache_dir) / encoder_file_name(method, key)


def checkpoint_path_for(encoder_path: str | Path) -> Path:
    """The resume point of an unfinished preparation, beside its (future) encoder file."""
    p = Path(encoder_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".ckpt")


def prepare_encoder(
    method: str,
    images: np.ndarray | None,
    masks: np.ndarray | None = None,
    *,
    encoder_config: dict[str, Any],
    config: PretrainConfig | None = None,
    cache_dir: str | Path,
    data_fingerprint: str | None = None,
    val_images: np.ndarray | None = None,
    val_masks: np.ndarray | None = None,
    out: str | Path | None = None,
    extra_meta: dict[str, Any] | None = None,
    init: str | None = None,
) -> Path:
    """Prepare an encoder by ``method`` and return the path of its encoder file.

    ``images`` (N, C, *spatial) float32, already preprocessed (z-scored); ``masks`` (N, [1,] *spatial)
    integer for ``segmentation``. The file lands in ``cache_dir`` under a name derived from
    (data fingerprint, method, config, encoder config); a second call with the same inputs returns
    it without training. ``data_fingerprint`` defaults to a hash of the arrays. With ``out`` the file
    (and its ``_files`` folder) is also copied there and that path is returned. ``init="imagenet"``
    starts the encoder from the ImageNet weights instead of random ones (a ``mobilenet_v2``).
    """
    config = config or PretrainConfig()
    problem = batch_size_problem(method, config.batch_size)
    if problem is not None:
        raise FewlabelError(f"pretraining setting batch_size {problem}")
    encoder_config = dict(encoder_config)
    if data_fingerprint is None:
        data_fingerprint = (array_fingerprint(images, masks, val_images, val_masks)
                            if method not in ("scratch", "imagenet") else "none")
    path = cached_encoder_path(method, encoder_config, config, cache_dir, data_fingerprint, init)
    key = cache_key(method, config, encoder_config, data_fingerprint, init)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        from fewlabel.models.io import verify_encoder_file

        verify_encoder_file(path, fix="delete it (it is a cache) to have it rebuilt")
    else:
        _train_and_save(method, images, masks, encoder_config, config, path, key, data_fingerprint,
                        val_images, val_masks, {**(extra_meta or {}), **({"init": init} if init else {})},
                        init)
    if out is None:
        return path
    return copy_encoder_file(path, out)


def _train_and_save(method: str, images: Any, masks: Any, encoder_config: dict[str, Any],
                    config: PretrainConfig, path: Path, key: str, data_fingerprint: str,
                    val_images: Any, val_masks: Any, extra_meta: dict[str, Any],
                    init: str | None = None) -> None:
    from fewlabel.models.io import save_encoder

    files = artefact_dir(path)
    checkpoint = checkpoint_path_for(path)
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)  # the encoder's initial weights depend on the seed only
    if method == "scratch":
        encoder, info = create_encoder(**encoder_config), {"steps": 0, "final_losses": {}}
    elif method == "imagenet":
        encoder = create_encoder(**encoder_config, pretrained="imagenet")
        info = {"steps": 0, "final_losses": {}}
    else:
        encoder = create_encoder(**encoder_config, pretrained=init)
        kwargs: dict[str, Any] = {"out_dir": files, "checkpoint_path": checkpoint}
        if method == "segmentation":
            if masks is None:
                raise MaskError("segmentation pretraining needs masks")
            kwargs.update(val_images=val_images, val_masks=val_masks)
            encoder, info = _trainer(method)(images, masks, config, encoder=encoder, **kwargs)
        else:
            encoder, info = _trainer(method)(images, config, encoder=encoder, **kwargs)
    meta = {
        "method": method, "config": key_config(method, config), "encoder_config": encoder.config,
        "data_fingerprint": data_fingerprint, "cache_key": key,
        "steps": int(info.get("steps", 0)), "final_losses": info.get("final_losses", {}),
        "seconds": round(time.perf_counter() - t0, 2), **extra_meta,
    }
    for k in ("val_dice", "num_classes", "labels", "stopped_because", "resumed"):
        if k in info:
            meta[k] = info[k]
    if "history" in info:
        files.mkdir(parents=True, exist_ok=True)
        atomic_write_text(files / "history.json", json.dumps(info["history"], indent=1, default=float))
    save_encoder(path, encoder.cpu(), meta)
    checkpoint.unlink(missing_ok=True)  # the finished file replaces the resume point


def copy_encoder_file(src: str | Path, dst: str | Path) -> Path:
    """Copy an encoder file (atomically) and its ``_files`` folder next to ``dst``."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        return dst
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    if artefact_dir(src).is_dir():
        target = dst.with_name(dst.name.removesuffix(".safetensors") + "_files")
        shutil.copytree(artefact_dir(src), target, dirs_exist_ok=True)
    return dst
