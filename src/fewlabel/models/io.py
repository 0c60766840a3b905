"""Weight files: safetensors + JSON, never pickle, so loading a file from someone else runs no code.

Encoder file (one ``.safetensors``): the encoder's state dict; the safetensors header metadata key
``fewlabel`` holds JSON ``{"format": "fewlabel-encoder", "version": 1, "encoder": <config>, "meta": {...}}``.
The config rebuilds the encoder with ``create_encoder(**config)``.

Model folder: ``model.safetensors`` (the ``Classifier`` state: ``encoder.*`` + ``head.*``, with the same
kind of header, format ``fewlabel-model``) + ``config.json`` (encoder config, ``num_classes``,
``dropout``, the weights' sha256, and whatever the caller adds: class names, preprocess, seed,
metrics ...). The sha256 ties the two files together, so a config edited or paired with other weights
is caught instead of silently mis-loading. A region model (``segmentation+region``) also holds
``unet.safetensors``, the U-Net that crops its inputs, tied to ``config.json`` by ``unet_sha256``.

Tensors are saved as contiguous float32 CPU copies (bf16/fp16 training state too), each its own
storage, so tied or shared tensors save without safetensors' shared-memory error.
Every write goes to a temporary name first and is renamed into place: never half-written.

Why this file is long: every weight file fewlabel writes (encoder, model folder, segmentation U-Net)
shares one header format and one set of checks, so they are defined together rather than in three copies.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.fileio import (
    atomic_path,
    atomic_write_text,
    dangling_link_reason,
    file_sha256,
    read_json,
    special_kind,
)
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.models.heads import Classifier, Ensemble

# An ensemble's members are whole classifiers: more than this is a corrupt or tampered config.
MAX_MEMBERS = 64

ENCODER_FORMAT = "fewlabel-encoder"
MODEL_FORMAT = "fewlabel-model"
UNET_FORMAT = "fewlabel-unet"  # a whole segmentation U-Net (encoder + decoder), for region crops
VERSION = 1
HEADER_KEY = "fewlabel"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
UNET_FILE = "unet.safetensors"  # in a region model's folder: the U-Net that crops its inputs


# ---------------------------------------------------------------------------------------------- helpers
def _json_default(obj: Any) -> Any:
    # Callers pass metrics and preprocess dicts that may hold numpy scalars/arrays or paths.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, default=_json_default, indent=indent, sort_keys=indent is not None)


def _state_for_saving(module: nn.Module) -> dict[str, torch.Tensor]:
    """float32 (floating tensors), CPU, contiguous, each with its own storage."""
    out = {}
    for key, t in module.state_dict().items():
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float32)
        out[key] = t.contiguous().clone()  # clone: tied weights must not share memory in the file
    return out


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, header: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: _dumps(header)})


def read_header(path: str | Path) -> dict[str, Any]:
    """The fewlabel JSON header of a safetensors file (no tensors are read)."""
    path = Path(path)
    kind = special_kind(path)
    if kind is not None:
        raise ModelFileError(f"is {kind}, not a weights file (never opened)", path)
    if not path.is_file():
        raise ModelFileError(dangling_link_reason(path) or "file does not exist", path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # pickle files, truncated files, random bytes
        raise ModelFileError(f"not a safetensors file ({exc})", path) from exc
    if HEADER_KEY not in metadata:
        raise ModelFileError("safetensors file without a fewlabel header (not written by fewlabel)", path)
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"fewlabel header is not valid JSON ({exc})", path) from exc
    if not isinstance(header, dict) or header.get("format") not in (ENCODER_FORMAT, MODEL_FORMAT,
                                                                          UNET_FORMAT):
        raise ModelFileError("fewlabel header names no known format", path)
    if header.get("version") != VERSION:
        raise ModelFileError(
            f"file format version {header.get('version')} is not supported (need {VERSION})", path
        )
    if not isinstance(header.get("encoder"), dict) or "name" not in header["encoder"]:
        raise ModelFileError("fewlabel header holds no encoder config", path)
    return header


def _read_tensors(path: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as exc:
        raise ModelFileError(f"tensors cannot be read ({exc})", path) from exc


def _build_encoder(config: Mapping[str, Any], path: Path) -> Encoder:
    try:
        return create_encoder(**config)
    except FewlabelError as exc:
        raise ModelFileError(f"its encoder config cannot be built: {exc.problem}", path) from exc
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"its encoder config {dict(config)} cannot be built: {exc}", path) from exc


def _describe_config_difference(
    file_cfg: Mapping[str, Any], target_cfg: Mapping[str, Any], other: str = "the target's"
) -> str | None:
    """'encoder 'convnet' width 16 does not match the target's width 32', or None if the configs agree
    on everything both of them state."""
    if file_cfg.get("name") != target_cfg.get("name"):
        return (
            f"encoder {file_cfg.get('name')!r} does not match {other} encoder {target_cfg.get('name')!r}"
        )
    keys = [k for k in file_cfg if k != "name" and k in target_cfg and file_cfg[k] != target_cfg[k]]
    if not keys:
        return None
    ours = ", ".join(f"{k} {file_cfg[k]}" for k in keys)
    theirs = ", ".join(f"{k} {target_cfg[k]}" for k in keys)
    return f"encoder {file_cfg['name']!r} {ours} does not match {other} {theirs}"


def _key_report(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str | None:
    """One line on missing/unexpected keys and shape mismatches; None when they fit exactly."""
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({few(unexpected)})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches (first {k}: file {tuple(state[k].shape)} "
            f"vs target {tuple(target[k].shape)})"
        )
    return "; ".join(parts) or None


def _load_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, config_note: str | None
) -> None:
    problem = _key_report(state, module.state_dict())
    if problem is not None:
        # The config difference says why in the user's terms; the key report says what exactly.
        message = f"{config_note}; {problem}" if config_note else f"weights do not fit: {problem}"
        raise ModelFileError(message, path)
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------- encoders
def save_encoder(path: str | Path, encoder: Encoder, meta: dict[str, Any] | None = None) -> Path:
    """Write ``encoder`` to one ``.safetensors`` file; its config and ``meta`` (JSON-able) go in the
    header."""
    path = Path(path)
    header = {"format": ENCODER_FORMAT, "version": VERSION, "encoder": encoder.config, "meta": meta or {}}
    _atomic_save_file(_state_for_saving(encoder), path, header)
    # Written after the weights: a kill between the two leaves no checksum, and the file is then
    # checked by its header alone (as files from before checksums were stored).
    atomic_write_text(checksum_path(path), file_sha256(path) + "\n")
    return path


def checksum_path(path: str | Path) -> Path:
    """``<file>.sha256`` beside an encoder file: its content hash, written when it was saved."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def verify_encoder_file(path: str | Path, fix: str = "delete it to have it rebuilt") -> None:
    """Refuse an encoder file that was truncated or changed after it was saved, in one line saying what
    to do (``fix``). Checked against the stored sha256 when there is one, else by reading its header."""
    path = Path(path)
    stored = checksum_path(path)
    if stored.is_file():
        expected = stored.read_text(encoding="utf-8", errors="replace").strip()
        if file_sha256(path) != expected:
            raise ModelFileError(f"encoder file is damaged: its sha256 differs from the one stored when it "
                                 f"was saved ({stored.name}); {fix}", path)
    try:
        read_header(path)
    except ModelFileError as exc:
        raise ModelFileError(f"{exc.problem}; {fix}", path) from None


def encoder_state(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, info)`` of an encoder file; ``info`` is the header (``encoder`` config, ``meta``, ...).

    A model file (``model.safetensors``) works too: its ``encoder.*`` tensors are returned without the
    prefix and the head is left out, so a fine-tuned model can seed another run (an ensemble's file
    gives its first member's encoder).
    """
    path = Path(path)
    header = read_header(path)
    state = _read_tensors(path, map_location)
    if header["format"] == MODEL_FORMAT:
        prefix = "members.0.encoder." if header.get("members") else "encoder."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state, header


def load_encoder_into(encoder: Encoder, path: str | Path) -> dict[str, Any]:
    """Load an encoder file into an existing encoder (strict); returns the file's header.

    Configs that differ only in weight-free settings (e.g. activation) load; anything that changes
    keys or shapes raises ``ModelFileError`` with one line, e.g.
    ``x.safetensors: encoder 'convnet' width 16 does not match the target's width 32``.
    """
    path = Path(path)
    state, header = encoder_state(path, map_location="cpu")
    note = _describe_config_difference(header["encoder"], encoder.config)
    _load_strict(encoder, state, path, note)
    return header


def load_encoder(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild the encoder saved in ``path`` and load its weights: ``(encoder, meta)``."""
    path = Path(path)
    state, header = encoder_state(path, map_location=map_location)
    encoder = _build_encoder(header["encoder"], path).to(map_location)
    _load_strict(encoder, state, path, None)
    return encoder, header.get("meta", {})


# ---------------------------------------------------------------------------------------------- U-Nets
def save_unet(path: str | Path, unet: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write a whole ``models.unet.UNet`` (encoder and decoder) atomically; ``load_unet`` rebuilds it."""
    path = Path(path)
    header = {"format": UNET_FORMAT, "version": VERSION, "encoder": unet.encoder.config,
              "num_classes": int(unet.num_classes), "meta": meta or {}}
    _atomic_save_file(_state_for_saving(unet), path, header)
    return path


def load_unet(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The U-Net saved by ``save_unet``, in eval mode; a one-line ``ModelFileError`` otherwise."""
    from fewlabel.models.unet import UNet

    path = Path(path)
    header = read_header(path)
    if header.get("format") != UNET_FORMAT:
        raise ModelFileError(f"not a U-Net file (format {header.get('format')!r})", path)
    unet = UNet(_build_encoder(header["encoder"], path), int(header.get("num_classes", 2)))
    _load_strict(unet, _read_tensors(path, map_location), path, None)
    return unet.to(map_location).eval()


# ---------------------------------------------------------------------------------------------- models
def save_model_dir(
    directory: str | Path, classifier: Classifier | Ensemble, config: dict[str, Any] | None = None,
    unet: str | Path | None = None,
) -> Path:
    """Write ``directory/model.safetensors`` + ``directory/config.json`` atomically; return ``directory``.

    ``config`` is the caller's (class names, preprocess, data fingerprint, seed, metrics ...); fewlabel
    adds ``format``, ``version``, ``encoder``, ``num_classes``, ``dropout`` and ``weights_sha256``,
    which win over caller keys of the same name (they describe the weights actually written); for an
    ``Ensemble`` also ``members``, the number of classifiers whose probabilities it averages.
    ``unet``: a U-Net file (``save_unet``) the model crops its inputs with, copied in as ``UNET_FILE``
    and recorded as ``unet_sha256``.
    """
    directory = Path(directory)
    ensemble = isinstance(classifier, Ensemble)
    header = {
        "format": MODEL_FORMAT, "version": VERSION,
        "encoder": classifier.encoder_config if ensemble else classifier.encoder.config,
        "num_classes": classifier.num_classes, "dropout": classifier.dropout,
    }
    if ensemble:
        header["members"] = len(classifier.members)
    full = dict(config or {})
    full.pop("members", None)  # set again from the weights written
    if isinstance(full.get("provenance"), dict):
        # In the weights file too: a model.safetensors reused as an encoder carries what it saw.
        header["meta"] = full["provenance"]
    full.update(header)
    full.pop("unet_sha256", None)  # set again below only when this save writes a U-Net
    if unet is not None:
        load_unet(unet)  # a damaged or wrong file fails here, before any model file is written
    directory.parent.mkdir(parents=True, exist_ok=True)

    if not directory.exists():
        with _new_dir_atomically(directory) as tmp:
            _write_model_files(tmp, classifier, header, full, unet)
        return directory
    # Existing folder (other files of the caller may live there): replace each file atomically, the
    # weights first; a crash between them leaves a sha256 mismatch that load_model_dir reports.
    _write_model_files(directory, classifier, header, full, unet)
    return directory


@contextlib.contextmanager
def _new_dir_atomically(directory: Path) -> Iterator[Path]:
    """A folder that does not exist yet, built complete under a temporary name beside it and renamed
    into place by one ``os.replace``, so it appears whole; on an exception the temporary folder goes.
    (Folders, unlike files, cannot be renamed onto an existing non-empty one: hence "new" only.)"""
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        yield tmp
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_model_files(directory: Path, classifier: Classifier | Ensemble, header: dict, full: dict,
                       unet: str | Path | None) -> None:
    weights = directory / MODEL_FILE
    _atomic_save_file(_state_for_saving(classifier), weights, header)
    full["weights_sha256"] = file_sha256(weights)
    if unet is not None:
        target = directory / UNET_FILE
        if Path(unet).resolve() != target.resolve():  # re-saving a loaded model: already in place
            with atomic_path(target) as tmp:
                shutil.copyfile(unet, tmp)
        full["unet_sha256"] = file_sha256(target)
    atomic_write_text(directory / CONFIG_FILE, _dumps(full, indent=2) + "\n")


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a model folder, checked for the fields fewlabel needs."""
    directory = Path(directory)
    if not directory.is_dir():
        kind = special_kind(directory)
        reason = (f"is {kind}, not a model folder (never opened)" if kind is not None
                  else "is a file, not a model folder (a folder of config.json and model.safetensors)"
                  if directory.is_file() else None)
        raise ModelFileError(reason or dangling_link_reason(directory) or "model folder does not exist",
                             directory)
    cfg_path = directory / CONFIG_FILE
    kind = special_kind(cfg_path)
    if kind is not None:
        raise ModelFileError(f"is {kind}, not a model config (never opened)", cfg_path)
    if not cfg_path.is_file():
        raise ModelFileError("missing (a model folder holds config.json and model.safetensors)", cfg_path)
    try:
        config = read_json(cfg_path, "model config", fix="train the model again or restore the folder")
    except FewlabelError as exc:
        raise ModelFileError(exc.problem, cfg_path) from None
    if config.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"not a fewlabel model config (format must be {MODEL_FORMAT!r})", cfg_path)
    if config.get("version") != VERSION:
        raise ModelFileError(f"model format version {config.get('version')} is not supported", cfg_path)
    for key in ("encoder", "num_classes"):
        if key not in config:
            raise ModelFileError(f"has no {key!r}", cfg_path)
    if not isinstance(config["encoder"], dict) or "name" not in config["encoder"]:
        raise ModelFileError("'encoder' is not an encoder config", cfg_path)
    check_config_bounds(config, cfg_path)
    return config


def check_config_bounds(config: Mapping[str, Any], path: Path) -> None:
    """Refuse sizes no real model has (a width of 1e6, 1e5 classes, a 1e5-pixel input), before any
    tensor is allocated: a tampered or corrupt config must cost one line, not the machine's memory."""
    from fewlabel.limits import MAX_CLASSES, MAX_MODEL_WIDTH

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    members = config.get("members")
    if members is not None and (not isinstance(members, int) or isinstance(members, bool)
                                or not 2 <= members <= MAX_MEMBERS):
        raise ModelFileError(f"members {members!r} is not a whole number from 2 to {MAX_MEMBERS}", path)
    classes = config.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= MAX_CLASSES:
        raise ModelFileError(f"num_classes {classes!r} is not a whole number from 1 to {MAX_CLASSES}", path)
    for key, value in config["encoder"].items():
        too_big = MAX_MODEL_WIDTH if key != "width_mult" else 16
        if number(value) and not 0 <= value <= too_big:
            raise ModelFileError(f"encoder {key} {value!r} is out of range (0 to {too_big})", path)
        if key == "image_size" and isinstance(value, (list, tuple)):
            _bounded_size(value, path, "encoder image_size")
    pre = config.get("preprocess")
    if isinstance(pre, Mapping) and "size" in pre:
        size = pre["size"] if isinstance(pre["size"], (list, tuple)) else [pre["size"]]
        _bounded_size(size, path, "preprocess size")


def _bounded_size(size: Any, path: Path, what: str) -> None:
    from fewlabel.limits import check_target_size

    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in size):
        raise ModelFileError(f"{what} {size!r} is not a list of numbers", path)
    try:
        check_target_size([int(v) for v in size], what=what)
    except FewlabelError as exc:
        raise ModelFileError(exc.problem, path) from None


def load_model_dir(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Classifier | Ensemble, dict[str, Any]]:
    """Rebuild the classifier (or ensemble) of a model folder and load its weights strictly:
    ``(classifier, config)``."""
    directory = Path(directory)
    config = read_model_config(directory)
    weights = directory / MODEL_FILE
    header = read_header(weights)
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError("holds an encoder, not a model (use load_encoder)", weights)
    expected = config.get("weights_sha256")
    if expected is not None and file_sha256(weights) != expected:
        raise ModelFileError(
            f"does not match {CONFIG_FILE} (sha256 differs): the two files come from different saves", weights
        )
    note = _describe_config_difference(header["encoder"], config["encoder"], other=f"{CONFIG_FILE}'s")
    if note is not None:
        raise ModelFileError(f"weights and {CONFIG_FILE} disagree: {note}", weights)
    if header.get("num_classes") != config.get("num_classes"):
        raise ModelFileError(
            f"{CONFIG_FILE} says num_classes {config.get('num_classes')}, "
            f"the weights were saved with {header.get('num_classes')}",
            weights,
        )
    members = config.get("members")
    if header.get("members") != members:
        raise ModelFileError(f"{CONFIG_FILE} says members {members}, the weights were saved with "
                             f"{header.get('members')}", weights)
    try:
        built = [Classifier(_build_encoder(config["encoder"], directory / CONFIG_FILE),
                            int(config["num_classes"]), float(config.get("dropout", 0.0)))
                 for _ in range(members or 1)]
        classifier: Classifier | Ensemble = Ensemble(built) if members else built[0]
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"cannot build the classifier: {exc}", directory / CONFIG_FILE) from exc
    state = _read_tensors(weights)
    _load_strict(classifier, state, weights, None)
    check_config_fits_weights(classifier, config.get("class_names"), config.get("preprocess"),
                              directory / CONFIG_FILE)
    model_unet_file(directory, config)  # a region model's U-Net is part of the folder: checked too
    return classifier.to(map_location), config


def check_config_fits_weights(classifier: Classifier | Ensemble, class_names: Any, preprocess: Any,
                              path: Path) -> None:
    """What a model's config says of its inputs and outputs agrees with the loaded weights: as many
    class names as the head has output rows, the preprocessing's channels and dimensions those of the
    first convolution, its size the one a size-bound encoder was built for. Why: the sha256 ties the
    weights to config.json, not config.json to itself, and a hand-edited class list or preprocessing
    would otherwise predict with exit 0 (a CSV with more class columns than values) or fail mid-run.
    ``class_names`` / ``preprocess`` may be None (a curve's cell model borrows them from its run)."""
    first = classifier.members[0] if isinstance(classifier, Ensemble) else classifier
    encoder, rows = first.encoder, first.num_classes  # strict loading made both the weights' own
    if class_names is not None:
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise ModelFileError("class_names is not a list of names", path)
        if len(class_names) != rows:
            raise ModelFileError(f"names {len(class_names)} classes (class_names) but the weights' head has "
                                 f"{rows} outputs; restore config.json or train the model again", path)
        if len(set(class_names)) != len(class_names):  # a CSV with two p_<name> columns for one name
            twice = next(c for c in class_names if class_names.count(c) > 1)
            raise ModelFileError(f"names the class {twice!r} twice (class_names); restore config.json or "
                                 "train the model again", path)
    if preprocess is None:
        return
    if not isinstance(preprocess, Mapping):
        raise ModelFileError("its preprocess record is not a mapping", path)
    # The fields the record states (the rest of it is checked where it is used, data.tensors).
    channels, dims, size = (preprocess.get(k) for k in ("channels", "spatial_dims", "size"))
    problems = []
    if channels is not None and channels != encoder.in_channels:
        problems.append(f"{channels} channel(s), the weights' first layer takes {encoder.in_channels}")
    if dims is not None and dims != encoder.spatial_dims:
        problems.append(f"{dims}D images, the weights are {encoder.spatial_dims}D")
    built_for = encoder.config.get("image_size")
    if built_for is not None and size is not None and list(built_for) != list(size):
        shown = "x".join(map(str, size)) if isinstance(size, (list, tuple)) else str(size)
        problems.append(f"size {shown}, the encoder was built for {'x'.join(map(str, built_for))}")
    for key in ("mean", "std"):  # NaN would score every image NaN; a spread of 0 divides by zero
        values = preprocess.get(key)
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
            if not all(math.isfinite(v) for v in values) or (key == "std" and min(values) <= 0):
                want = "finite values above 0" if key == "std" else "finite values"
                problems.append(f"{key} {values} ({want} expected)")
    if problems:
        raise ModelFileError(f"its preprocessing gives {'; '.join(problems)}; restore config.json or train "
                             "the model again", path)


def model_unet_file(directory: str | Path, config: Mapping[str, Any]) -> Path | None:
    """The region U-Net of a model folder (``UNET_FILE``), checked against ``unet_sha256`` in its
    config; None for a model that crops nothing. Missing or changed: a one-line ``ModelFileError``."""
    expected = config.get("unet_sha256")
    if expected is None:
        return None
    path = Path(directory) / UNET_FILE
    if not path.is_file():
        raise ModelFileError(f"missing: this region model crops its inputs with it ({CONFIG_FILE} lists it); "
                             "restore the folder or train the model again", path)
    if file_sha256(path) != expected:
        raise ModelFileError(f"does not match {CONFIG_FILE} (sha256 differs): the U-Net was changed or "
                             "comes from another save", path)
    return path
