"""The encoder side of the pipeline: a strategy's spec, its encoder built or prepared, and the
guards that refuse an encoder which saw a test image or cannot say what it saw."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewlabel import strategies as strategy_registry
from fewlabel.errors import FewlabelError
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.pipeline.data import PreparedData


@dataclass
class StrategySpec:
    """One way of giving the encoder its first weights, plus how it is fine-tuned."""

    name: str = "scratch"
    encoder: str = "convnet"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None  # an encoder file, or (imagenet) a torchvision .pth
    semi: bool = False
    pretrain: dict[str, Any] = field(default_factory=dict)  # PretrainConfig overrides
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig overrides
    # Accept an encoder file that records nothing of the images it saw (the user vouches for it).
    trust_encoder: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StrategySpec:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FewlabelError(f"unknown strategy setting {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**d)


def default_spec(name: str, encoder: str | None = None, **overrides: Any) -> StrategySpec:
    """The registry's defaults for strategy ``name`` (``fewlabel.strategies``), with overrides."""
    entry = strategy_registry.get(name)
    spec = StrategySpec(name=name, encoder=entry.encoder, encoder_kwargs=dict(entry.encoder_kwargs),
                        semi=entry.semi, finetune=dict(entry.finetune))
    if encoder is not None and encoder != spec.encoder:
        spec.encoder, spec.encoder_kwargs = encoder, {}  # another architecture: its own defaults
    known = {f.name for f in dataclasses.fields(StrategySpec)}
    for k, v in overrides.items():
        if k not in known:
            raise FewlabelError(f"strategy {name} has no setting {k!r}; it has {', '.join(sorted(known))}")
        setattr(spec, k, v)
    return spec


def encoder_record(meta: dict[str, Any]) -> list[str] | None:
    """The content keys an encoder file says it saw, or None when it records nothing."""
    seen = meta.get("seen_files")
    return None if seen is None else [str(k) for k in seen]


def check_encoder_file(path: str | Path, meta: dict[str, Any], data: PreparedData,
                       trust: bool = False) -> None:
    """Refuse an encoder that saw a test image (or a copy of one), or one that records nothing of what
    it saw unless the user trusts it. Published weights (ImageNet) never come through here."""
    seen = encoder_record(meta)
    if seen is None:
        if trust:
            return
        raise FewlabelError(
            "this encoder file records no list of the images it was trained on, so fewlabel cannot rule "
            "out that it saw test images; make it with `fewlabel pretrain --plan`, or pass "
            "--trust-encoder if you know it never saw this data", path=path)
    overlap = set(seen) & data.test_file_keys
    if overlap:
        # the record holds a file key and a pixel key per image: count images, not keys
        images = sum(1 for i in data.test_ids if data.seen_keys_of([i]) & overlap)
        raise FewlabelError(
            f"this encoder was trained on {images} of the test images (or copies of them); pretrain "
            "again with --plan <the plan.json of this run> (or --holdout-from <this data> with the same "
            "--seed, --test-size, --count, --group-pattern) so the test images stay unseen", path=path)


def encoder_data_notes(meta: dict[str, Any], data: PreparedData, path: str | Path) -> list[str]:
    """Compare an encoder's saved preprocessing with the data it is about to be fine-tuned on.

    Incompatible intensity handling is refused (the encoder's first layer would read other units);
    another image size is adapted (convolutions and global pooling accept any size) and said."""
    saved = meta.get("preprocess")
    if not isinstance(saved, dict):
        return []
    now = data.preprocess.to_dict()
    for key in ("spatial_dims", "channels", "intensity"):
        if key in saved and key in now and saved[key] != now[key]:
            raise FewlabelError(f"encoder was pretrained with {key} {saved[key]!r}, but this data is "
                                f"prepared with {now[key]!r}; pretrain on data prepared the same way",
                                path=path)
    notes = []
    if "size" in saved and list(saved["size"]) != list(now.get("size") or []):
        size = "x".join(map(str, saved["size"]))
        notes.append(f"encoder pretrained at {size}, fine-tuned at {'x'.join(map(str, now['size']))}: "
                     "its convolutions are applied at the new size")
    return notes


def build_encoder(spec: StrategySpec, data: PreparedData, seed: int = 0,
                  notes: list[str] | None = None) -> tuple[Encoder, list[str]]:
    """A fresh encoder with the strategy's first weights and the content keys of the images those
    weights saw. A random start depends on ``seed`` only."""
    import torch

    torch.manual_seed(seed)
    entry = strategy_registry.get(spec.name)
    # A ViT starts from a checkpoint the user holds (DINOv2, timm, Hugging Face), read by the encoder's
    # own loader; a fewlabel file (an earlier fine-tune) goes the fewlabel way below.
    foundation = entry.pretrained_weights and spec.encoder == "vit"
    ours = _fewlabel_file(spec.encoder_weights)
    if foundation and not ours:
        return foundation_encoder(spec, data, notes), []
    if spec.encoder_weights and (not entry.pretrained_weights or foundation or ours):
        from fewlabel.models.io import load_encoder

        encoder_for_file(spec.encoder, spec.encoder_weights)  # the file builds its own architecture
        encoder, meta = load_encoder(spec.encoder_weights)
        check_encoder_file(spec.encoder_weights, meta, data, trust=spec.trust_encoder)
        if encoder.in_channels != data.channels or encoder.spatial_dims != data.spatial_dims:
            raise FewlabelError(
                f"encoder has {encoder.in_channels} channel(s), {encoder.spatial_dims}D, but the data "
                f"has {data.channels} channel(s), {data.spatial_dims}D", path=spec.encoder_weights)
        if notes is not None:
            notes.extend(encoder_data_notes(meta, data, spec.encoder_weights))
        return encoder, encoder_record(meta) or []
    if entry.init == "imagenet" and data.spatial_dims != 2:
        raise FewlabelError("ImageNet weights exist for 2D images only; use scratch, segmentation or "
                            "ssl for 3D volumes")
    if spec.encoder_weights and str(spec.encoder_weights).endswith(".safetensors"):
        _refuse_unreadable_safetensors(spec.encoder_weights)  # not a torchvision .pth: say what it is
    # Published weights come through the encoder registry: fetched into the torch hub cache when
    # online; offline, a one-line error that says where to put the file.
    encoder = create_encoder(spec.encoder, in_channels=data.channels, spatial_dims=data.spatial_dims,
                             image_size=data.image_size, pretrained=entry.init,
                             weights_path=spec.encoder_weights if entry.init else None, **spec.encoder_kwargs)
    return encoder, []


def settled_by_file(spec: StrategySpec) -> StrategySpec:
    """``spec`` with no encoder settings of its own when its encoder file is one fewlabel wrote: the
    file rebuilds the encoder it recorded (its input size included), so the record must not claim
    the strategy's defaults."""
    if spec.encoder_kwargs and _fewlabel_file(spec.encoder_weights):
        return dataclasses.replace(spec, encoder_kwargs={})
    return spec


def with_input_size(specs: dict[str, dict[str, Any]], input_size: int | None) -> dict[str, dict[str, Any]]:
    """``strategies.with_input_size``, refusing first an encoder file fewlabel wrote: it rebuilds the
    encoder it recorded, at the size it was trained at, whatever the run would record."""
    for spec in specs.values() if input_size is not None else ():
        weights = spec.get("encoder_weights")
        if spec.get("encoder") in strategy_registry.RESIZING_ENCODERS and _fewlabel_file(weights):
            raise FewlabelError("--input-size cannot change an encoder file fewlabel wrote: it computes at "
                                "the size it was trained at; leave --input-size out", path=weights)
    return strategy_registry.with_input_size(specs, input_size)


def encoder_for_file(given: str | None, weights: str | Path | None) -> str | None:
    """The architecture to name for ``weights``: a fewlabel file's own (it rebuilds what it recorded),
    else ``given``. A name that differs from the file's is refused in one line: the run would record
    one architecture and train another."""
    if not weights or not _fewlabel_file(str(weights)):
        return given
    from fewlabel.models.io import read_header

    recorded = str(read_header(weights)["encoder"]["name"])
    if given is not None and given != recorded:
        raise FewlabelError(f"this fewlabel file holds a {recorded} encoder, not {given}: pass --encoder "
                            f"{recorded} (or leave --encoder out)", path=weights)
    return recorded


def _refuse_unreadable_safetensors(path: str) -> None:
    """A ``.safetensors`` file given where published (torchvision ``.pth``) weights load is a fewlabel
    file that cannot be read, or a checkpoint of another kind: its own problem, in one line."""
    from fewlabel.models.io import read_header

    try:
        read_header(path)
    except FewlabelError as exc:
        foreign = "without a fewlabel header" in exc.problem  # readable, but not ours: a ViT's, perhaps
        hint = "; a ViT checkpoint needs --encoder vit" if foreign else ""
        raise FewlabelError(exc.problem + hint, path=path) from None


def _fewlabel_file(path: str | None) -> bool:
    from fewlabel.models.vit_io import is_fewlabel_file

    return bool(path) and is_fewlabel_file(str(path))


def foundation_encoder(spec: StrategySpec, data: PreparedData, notes: list[str] | None = None) -> Encoder:
    """The ``vit`` encoder of a foundation-model checkpoint (``--encoder-weights``). Like ImageNet
    weights it records no list of what it saw (nobody published one), and ``notes`` says so."""
    from fewlabel.models.vit import describe
    from fewlabel.models.vit_io import load_vit_encoder

    if not spec.encoder_weights:
        raise FewlabelError(f"strategy {spec.name} with encoder 'vit' starts from a checkpoint you hold: "
                            "pass --encoder-weights (a timm or DINOv2 .pth/.safetensors, or the "
                            "model.safetensors of a Hugging Face folder)")
    if data.spatial_dims != 2:
        raise FewlabelError("ViT checkpoints exist for 2D images only; use scratch, segmentation or ssl for "
                            "3D volumes")
    encoder = load_vit_encoder(spec.encoder_weights, in_channels=data.channels, **spec.encoder_kwargs)
    if notes is not None:
        notes.append(describe(encoder))
    return encoder


def prepare_strategy(spec: StrategySpec, data: PreparedData, cache_dir: str | Path, seed: int = 0,
                     progress: bool | None = None) -> StrategySpec:
    """Run (or fetch from the cache) the strategy's pretraining; returns the spec with its weights.

    The encoder file records the content keys of every image it saw and the plan it was made under,
    so it can be refused later for a test set it has seen. Its cache key depends on the pretraining
    inputs only: changing a test image leaves it (and the pool arrays) untouched."""
    entry = strategy_registry.get(spec.name)
    if entry.prepare is None or spec.encoder_weights:
        return spec
    from fewlabel.pretrain import prepare_encoder
    from fewlabel.pretrain.common import PretrainConfig

    if entry.init == "imagenet" and data.spatial_dims != 2:
        raise FewlabelError(f"{spec.name} starts from ImageNet weights, which exist for 2D images only")
    encoder = create_encoder(spec.encoder, in_channels=data.channels, spatial_dims=data.spatial_dims,
                             image_size=data.image_size, **spec.encoder_kwargs)
    inputs = data.pretrain_inputs(entry.needs or "pool")
    config = PretrainConfig.from_dict({"seed": seed, **spec.pretrain})
    if progress is not None:
        config.progress = progress
    path = prepare_encoder(entry.prepare, inputs.images, inputs.masks, encoder_config=encoder.config,
                           config=config, cache_dir=cache_dir, data_fingerprint=inputs.fingerprint,
                           val_images=inputs.val_images, val_masks=inputs.val_masks, init=entry.init,
                           extra_meta={"seen_files": inputs.seen_files,
                                       "plan_fingerprint": data.plan.fingerprint,
                                       "preprocess": data.preprocess.to_dict()})
    return dataclasses.replace(spec, encoder_weights=str(path))
