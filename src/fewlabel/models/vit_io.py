"""The ViT checkpoints users hold, read into ``vit`` encoders without timm or transformers.

Formats (``read_checkpoint``):
  * timm state dicts: ``.safetensors``, or ``.pth``/``.bin``/``.pt`` read with
    ``torch.load(weights_only=True)``; timm's names are the encoder's own (``fewlabel.models.vit``).
  * DINOv2's own files (torch hub ``dinov2_vits14`` ..., and training checkpoints such as DinoBloom's,
    whose backbone sits under ``teacher`` with a ``backbone.`` prefix): ``register_tokens`` becomes
    ``reg_token``, SwiGLU's ``mlp.w12``/``mlp.w3`` become ``mlp.fc1``/``mlp.fc2``, chunked blocks
    ``blocks.c.i`` become ``blocks.i``; ``mask_token`` and the DINO/iBOT heads are dropped.
  * Hugging Face folders: ``config.json`` (model_type ``dinov2``, ``dinov2_with_registers`` or ``vit``)
    + ``model.safetensors`` or ``pytorch_model.bin``; the separate query/key/value projections are
    fused into ``qkv``. A hub name (``facebook/dinov2-small``) is looked up in the local Hugging Face
    cache only: fewlabel never downloads.

Architecture (``vit.vit_config_from_state``): every size is read from the tensors' shapes, except the
number of attention heads, which no state dict records: Hugging Face's config.json says it; for other
files it is ``{"num_heads": N}`` in a JSON beside the file (``name.json``, or timm's ``config.json``
with ``model_args``), else embed_dim // 64 (DINOv2's and timm's ViTs all use 64 channels a head).

Integrity: the file's sha256, format, and what was dropped go in the encoder config (``weights``), with
``PRETRAINING_NOTE``: nobody lists what a foundation model saw. Loading is strict: a missing or
unexpected key, or a shape that does not fit, is one ``ModelFileError`` line naming the file and key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.fileio import dangling_link_reason, file_sha256, read_json, special_kind
from fewlabel.models.imagenet import adapt_input_conv, read_state_dict
from fewlabel.models.vit import (
    DEFAULT_INPUT_SIZE,
    HEAD_DIM,
    PRETRAINING_NOTE,
    VisionTransformerEncoder,
    vit_config_from_state,
)

# DINOv2 training checkpoints keep the EMA teacher (the model to use) beside the student.
WRAPPERS = ("teacher", "model", "state_dict")
HF_TYPES = ("dinov2", "dinov2_with_registers", "vit")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Only these may be set beside a file: the rest of the architecture is the file's.
ADAPTER_KEYS = ("input_size", "input_mean", "input_std", "pool")
_EXTRA_ROOTS = ("head", "dino_head", "ibot_head", "mask_token", "classifier", "pooler")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
_HF_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
# Hugging Face module paths inside encoder.layer.N -> ours inside blocks.N, per model_type.
_HF_LAYER = {
    "dinov2": (("norm1", "norm1"), ("norm2", "norm2"), ("attention.output.dense", "attn.proj"),
               ("layer_scale1", "ls1"), ("layer_scale2", "ls2"), ("mlp.fc1", "mlp.fc1"),
               ("mlp.fc2", "mlp.fc2"), ("mlp.weights_in", "mlp.fc1"), ("mlp.weights_out", "mlp.fc2")),
    "vit": (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
            ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2")),
}
_HF_TOP = (("embeddings.cls_token", "cls_token"), ("embeddings.register_tokens", "reg_token"),
           ("embeddings.position_embeddings", "pos_embed"),
           ("embeddings.patch_embeddings.projection", "patch_embed.proj"), ("layernorm", "norm"))


@dataclass
class Checkpoint:
    """A ViT checkpoint in the encoder's names, with what its format fixes beyond the shapes."""

    path: Path
    format: str  # "timm", "dinov2" or "hf-<model_type>"
    state: dict[str, torch.Tensor]
    sources: dict[str, str] = field(default_factory=dict)  # our key -> the file's key, where renamed
    dropped: list[str] = field(default_factory=list)  # "head.* (2 tensors)", ...
    settings: dict[str, Any] = field(default_factory=dict)  # num_heads, norm_eps, interp_* ...
    heads_from: str = ""
    model_type: str | None = None


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def _hf_snapshot(name: str) -> Path | None:
    repo = hf_cache_dir() / f"models--{name.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file() and special_kind(ref) is None:
        snap = repo / "snapshots" / ref.read_text(encoding="utf-8", errors="replace").strip()
        if snap.is_dir():
            return snap
    snaps = sorted((p for p in (repo / "snapshots").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return snaps[-1] if snaps else None


def _folder_weights(folder: Path) -> Path:
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    if (folder / "model.safetensors.index.json").is_file():
        raise ModelFileError("holds a sharded checkpoint (model.safetensors.index.json), which is not "
                             "supported; save the model as one file (save_pretrained(max_shard_size='50GB'))",
                             folder)
    raise ModelFileError(f"folder holds none of {', '.join(HF_WEIGHTS)} (a Hugging Face model folder)",
                         folder)


def resolve_weights(source: str | Path) -> Path:
    """The weights file named by ``source``: a file, a Hugging Face folder, or a hub name found in the
    local Hugging Face cache. A hub name that is not there is a one-line error saying where to put it."""
    path = Path(source).expanduser()
    kind = special_kind(path)
    if kind is not None:
        raise ModelFileError(f"is {kind}, not a weights file (never opened)", path)
    if path.is_dir():
        return _folder_weights(path)
    if path.is_file():
        return path
    text = str(source)
    if _HUB_NAME.match(text) and not text.endswith(WEIGHT_SUFFIXES):
        snapshot = _hf_snapshot(text)
        if snapshot is not None:
            return _folder_weights(snapshot)
        raise ModelFileError(
            f"is not a file or folder here, and fewlabel never downloads weights: on a machine with "
            f"internet run `hf download {text} --local-dir DIR` (or save_pretrained(DIR)), copy DIR here "
            f"and pass DIR/model.safetensors (not in the Hugging Face cache {hf_cache_dir()} either)", text)
    raise ModelFileError(dangling_link_reason(path) or "weights file does not exist", path)


def is_fewlabel_file(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file that fewlabel wrote (an encoder or model file)."""
    from safetensors import safe_open

    from fewlabel.models.io import HEADER_KEY

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file() or special_kind(path) is not None:
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            return HEADER_KEY in (fh.metadata() or {})
    except Exception:  # not readable as safetensors: the loader says so in its own words
        return False


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as float32 (bf16/fp16 files too): safetensors, else a weights-only torch.load."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if special_kind(path) is not None:
            raise ModelFileError(f"is {special_kind(path)}, not a weights file (never opened)", path)
        if is_fewlabel_file(path):
            raise ModelFileError("is a fewlabel encoder or model file, not a timm, DINOv2 or Hugging Face "
                                 "checkpoint: load it with fewlabel.models.io.load_encoder", path)
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise ModelFileError(f"cannot be read as a safetensors file: {exc}", path) from exc
    else:
        state = read_state_dict(path, wrappers=WRAPPERS)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _dropped(keys: list[str]) -> list[str]:
    """Dropped keys, summarised by their first name part: "head.* (2 tensors)", "mask_token"."""
    roots: dict[str, list[str]] = {}
    for k in keys:
        roots.setdefault(k.split(".")[0], []).append(k)
    return [ks[0] if len(ks) == 1 else f"{r}.* ({len(ks)} tensors)" for r, ks in sorted(roots.items())]


def _is_extra(key: str) -> bool:
    return key.split(".")[0] in _EXTRA_ROOTS


def _strip_prefixes(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        kept = [k for k in state if not _is_extra(k)]
        if kept and all(k.startswith(prefix) for k in kept):
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    return state


def from_timm(path: Path, state: dict[str, torch.Tensor]) -> Checkpoint:
    """A timm or DINOv2 state dict in the encoder's names (the module doc lists the renames)."""
    state = _strip_prefixes(state, ("module.", "backbone."))
    extra = sorted(k for k in state if _is_extra(k))
    dinov2 = "mask_token" in state or "register_tokens" in state
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, value in state.items():
        if key in extra:
            continue
        new = _CHUNKED.sub(r"blocks.\1.", key)
        new = new.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        new = "reg_token" if new == "register_tokens" else new
        dinov2 = dinov2 or new != key
        if new in out:
            raise ModelFileError(f"holds {key!r} and {sources.get(new, new)!r}, two tensors for one place",
                                 path)
        out[new] = value
        if new != key:
            sources[new] = key
    settings: dict[str, Any] = {"interp_offset": 0.0, "interp_antialias": True}  # timm's resample
    if dinov2:
        # DINOv2's hub models: offset 0.1 without antialiasing; its register models: neither kludge.
        regs = "reg_token" in out
        settings = {"interp_offset": 0.0 if regs else 0.1, "interp_antialias": regs}
    return Checkpoint(path, "dinov2" if dinov2 else "timm", out, sources, _dropped(extra), settings)


def _hf_rules(model_type: str) -> list[tuple[str, str]]:
    """(file's key prefix, our key prefix) pairs for Hugging Face names; layer rules use a {} for N."""
    layer = _HF_LAYER["vit" if model_type == "vit" else "dinov2"]
    return [*_HF_TOP, *((f"encoder.layer.{{}}.{a}", f"blocks.{{}}.{b}") for a, b in layer)]


def hf_name(key: str, model_type: str) -> str:
    """The Hugging Face name of one of our keys (for error messages); the key itself if none."""
    match = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    index, rest = (match.group(1), match.group(2)) if match else ("", key)
    if rest.startswith("attn.qkv."):
        return f"encoder.layer.{index}.attention.attention.query/key/value.{rest.split('.')[-1]}"
    for theirs, ours in _hf_rules(model_type):
        ours_here = ours.format(index)
        if key == ours_here or key.startswith(ours_here + "."):
            suffix = key[len(ours_here):]
            return theirs.format(index) + (".lambda1" if suffix == ".gamma" else suffix)
    return key


def from_hf(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Checkpoint:
    """A Hugging Face Dinov2Model / Dinov2WithRegistersModel / ViTModel state in the encoder's names."""
    model_type = config.get("model_type")
    if model_type not in HF_TYPES:
        raise ModelFileError(f"config.json model_type {model_type!r} is not supported (only "
                             f"{', '.join(HF_TYPES)})", path.parent / "config.json")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ModelFileError(f"config.json hidden_act {config.get('hidden_act')!r} is not supported (gelu)",
                             path.parent / "config.json")
    state = _strip_prefixes(state, (f"{model_type}.", "dinov2.", "vit."))
    extra = sorted(k for k in state if _is_extra(k) or k == "embeddings.mask_token")
    rules = _hf_rules(model_type)
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in extra:
            continue
        new = key
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        index = m.group(1) if (m := re.match(r"^encoder\.layer\.(\d+)\.", key)) else ""
        for theirs, ours in rules:
            theirs_here = theirs.format(index)
            if key.startswith(theirs_here + ".") or key == theirs_here:
                new = ours.format(index) + key[len(theirs_here):]
                new = new[: -len(".lambda1")] + ".gamma" if new.endswith(".lambda1") else new
                break
        out[new] = value
        sources[new] = key
    for (index, param), parts in sorted(qkv.items()):
        for name in ("query", "key", "value"):
            if name not in parts:
                missing = f"encoder.layer.{index}.attention.attention.{name}.{param}"
                raise ModelFileError(f"missing key {missing!r}", path)
        fused = f"blocks.{index}.attn.qkv.{param}"
        out[fused] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        sources[fused] = f"encoder.layer.{index}.attention.attention.query/key/value.{param}"
    # Hugging Face resizes positions by size; only its register model antialiases.
    eps = float(config.get("layer_norm_eps", 1e-12 if model_type == "vit" else 1e-6))
    settings = {"interp_offset": 0.0, "interp_antialias": model_type == "dinov2_with_registers",
                "norm_eps": eps}
    ckpt = Checkpoint(path, f"hf-{model_type}", out, sources, _dropped(extra), settings,
                      model_type=model_type)
    heads = config.get("num_attention_heads")
    if isinstance(heads, int) and not isinstance(heads, bool):
        ckpt.settings["num_heads"], ckpt.heads_from = heads, "config.json num_attention_heads"
    return ckpt


def _side_heads(path: Path) -> tuple[int, str] | None:
    """``num_heads`` from a JSON beside the file: ``<name>.json`` or timm's ``config.json``."""
    for side in (path.with_suffix(".json"), path.parent / "config.json"):
        if not side.is_file():
            continue
        data = read_json(side, "ViT settings", fix='it should hold {"num_heads": N}')
        for where in (data, data.get("model_args") or {}):
            for key in ("num_heads", "num_attention_heads"):
                value = where.get(key) if isinstance(where, dict) else None
                if isinstance(value, int) and not isinstance(value, bool):
                    return value, f"{side.name} {key}"
    return None


def read_checkpoint(source: str | Path) -> Checkpoint:
    """The checkpoint named by ``source`` (file, Hugging Face folder, or cached hub name), renamed."""
    path = resolve_weights(source)
    state = read_tensors(path)
    config_file = path.parent / "config.json"
    hf_config = None
    if config_file.is_file():
        data = read_json(config_file, "model config", fix="restore the model folder")
        hf_config = data if "model_type" in data else None
    hf_names = any(k.startswith(("embeddings.", "encoder.layer.")) or ".embeddings." in k for k in state)
    if hf_config is not None:
        return from_hf(path, state, hf_config)
    if hf_names:
        raise ModelFileError("holds Hugging Face names (embeddings.*, encoder.layer.*) but no config.json "
                             "with a model_type lies beside it: keep the model folder as saved", path)
    ckpt = from_timm(path, state)
    side = _side_heads(path)
    if side is not None:
        ckpt.settings["num_heads"], ckpt.heads_from = side
    return ckpt


def _check_fits(encoder: VisionTransformerEncoder, ckpt: Checkpoint) -> None:
    """One ``ModelFileError`` line for the first key that is missing, unexpected, or of another shape."""
    def name(key: str) -> str:
        if key in ckpt.sources:
            return ckpt.sources[key]
        return hf_name(key, ckpt.model_type) if ckpt.model_type else key

    target, state = encoder.state_dict(), ckpt.state
    arch = (f"{encoder.config['depth']} blocks of width {encoder.config['embed_dim']}, "
            f"{encoder.config['num_reg_tokens']} registers, layer scale {encoder.config['layer_scale']}")
    for key in target:
        if key not in state:
            raise ModelFileError(f"missing key {name(key)!r}: the ViT this file describes ({arch}) needs it",
                                 ckpt.path)
    for key in state:
        if key not in target:
            raise ModelFileError(f"unexpected key {name(key)!r}: no part of the ViT this file describes "
                                 f"({arch}) takes it", ckpt.path)
    for key, value in target.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelFileError(f"key {name(key)!r} has shape {tuple(state[key].shape)}, but the ViT this "
                                 f"file describes ({arch}) needs {tuple(value.shape)}", ckpt.path)


def load_vit_encoder(source: str | Path, in_channels: int = 3, num_heads: int | None = None,
                     **kwargs: Any) -> VisionTransformerEncoder:
    """A ``vit`` encoder built from and loaded with the checkpoint ``source`` (strict).

    ``kwargs``: the input adapter and pooling only (``ADAPTER_KEYS``); ``input_size`` defaults to
    ``DEFAULT_INPUT_SIZE`` and is rounded to whole patches. A 3-channel patch embedding is adapted to
    ``in_channels`` as MobileNetV2's first convolution is (``imagenet.adapt_input_conv``). The config's
    ``weights`` records the file, its sha256 and format, and ``PRETRAINING_NOTE``."""
    unknown = sorted(set(kwargs) - set(ADAPTER_KEYS))
    if unknown:
        raise FewlabelError(f"encoder 'vit' from a file takes only {', '.join(ADAPTER_KEYS)}; "
                            f"{', '.join(unknown)} is the file's own")
    ckpt = read_checkpoint(source)
    heads = num_heads if num_heads is not None else ckpt.settings.get("num_heads")
    heads_from = "given" if num_heads is not None else ckpt.heads_from
    config = vit_config_from_state(ckpt.state, heads, ckpt.path)
    heads_from = heads_from or f"embed_dim // {HEAD_DIM} (DINOv2's and timm's head size)"
    file_channels = config.pop("in_channels")
    first = "as is"
    if file_channels != in_channels:
        if file_channels != 3:
            raise ModelFileError(f"its patch embedding takes {file_channels} channels and the data have "
                                 f"{in_channels}; only a 3-channel one can be adapted", ckpt.path)
        proj = ckpt.state["patch_embed.proj.weight"]
        ckpt.state["patch_embed.proj.weight"] = adapt_input_conv(proj, in_channels)
        first = "sum over RGB" if in_channels == 1 else f"RGB repeated cyclically x 3/{in_channels}"
    patch = config["patch_size"]
    size = kwargs.pop("input_size", DEFAULT_INPUT_SIZE)
    if size is not None and int(size) % patch:  # refused, not rounded: the run records the size asked for
        low = max(patch, int(size) // patch * patch)
        raise FewlabelError(f"input size {size} px is not a multiple of this ViT's {patch}-px patches: use "
                            f"{low} or {low + patch} (--input-size)")
    record = {"file": os.path.abspath(ckpt.path), "sha256": file_sha256(ckpt.path), "format": ckpt.format,
              "num_heads_from": heads_from, "patch_embedding": first, "dropped": ckpt.dropped,
              "note": PRETRAINING_NOTE}
    settings = {k: v for k, v in ckpt.settings.items() if k != "num_heads"}
    try:
        encoder = VisionTransformerEncoder(in_channels=in_channels, input_size=size, weights=record,
                                           **{**config, **settings, **kwargs})
    except FewlabelError as exc:
        raise ModelFileError(exc.problem, ckpt.path) from None
    _check_fits(encoder, ckpt)
    encoder.load_state_dict(ckpt.state, strict=True)
    return encoder
