"""The strategy registry: every way fewlabel gives an encoder its first weights, in one place.

A strategy says which encoder it builds, what (if anything) prepares that encoder before
fine-tuning, which data the preparation needs, and the fine-tuning defaults that suit it. The CLI,
``train``, ``curve``, ``pretrain``, the report and the docs all read this table; adding a strategy is
one entry here (plus, for a new pretraining method, one module in ``fewlabel.pretrain``).

Strategies compose: ``imagenet+ssl`` starts SimCLR from the ImageNet weights (domain-adaptive
self-supervision on the unlabelled pool), ``imagenet+semi`` fine-tunes the ImageNet weights with
FixMatch. A composed name is one entry like any other, usable in ``train`` and ``curve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fewlabel.errors import FewlabelError


@dataclass(frozen=True)
class Strategy:
    """One row of the registry."""

    name: str
    summary: str
    encoder: str = "convnet"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    # The pretraining method run before fine-tuning (a module of ``fewlabel.pretrain``), or None.
    prepare: str | None = None
    # What that preparation reads: "pool" (unlabelled images: the --unlabelled folder, else the
    # labelled pool with its labels ignored) or "masks" (labelled-pool images with masks).
    needs: str | None = None
    # Published weights the encoder starts from ("imagenet"), before any preparation: a known file,
    # never trained on the user's images; "file": a checkpoint the user names (--encoder-weights).
    init: str | None = None
    semi: bool = False  # fine-tunes with FixMatch on the unlabelled pool
    finetune: dict[str, Any] = field(default_factory=dict)
    # What the classifier sees: "image" (the whole image) or "region" (the crop around what the
    # preparation's U-Net segments in that image, ``fewlabel.pipeline.region``; needs="masks" only).
    input: str = "image"

    @property
    def pretrained_weights(self) -> bool:
        """Starts from published weights and prepares nothing else: no file records what it saw."""
        return self.init is not None and self.prepare is None


# Pretrained features: a smaller step for the encoder keeps what pretraining taught it.
_PRETRAINED_FINETUNE = {"lr": 1e-3, "encoder_lr": 3e-4}
# The plain fine-tune that tied or beat the 96-px recipe on the same draws (benchmarks/vs_plain.py):
# one rate for all layers, the 8 flips / quarter turns, an epoch = one pass over the labels; then
# three members averaged and the 8 flips / turns at test time, and every drawn label training for a
# fixed schedule (no fifth held out to pick an epoch by one image per class), which put it above that
# plain fine-tune at every size measured where one model only tied it (README). 20 epochs a member,
# not 30: three independent members of 20 epochs were non-inferior to the 30-epoch fp32 224-px
# default on two blood-cell sets at 5-7x less time, and members of 30 epochs (1.4x the cost) were no
# better (benchmarks/cpu_speed.py). The whole ImageNet family shares it, so their differences stay
# the effect of what prepared the encoder.
_IMAGENET_FINETUNE = {"lr": 1e-4, "encoder_lr": 1e-4, "weight_decay": 0.0, "augment": "dihedral",
                      "min_steps_per_epoch": 1, "ensemble": 3, "tta": True, "hold_out": False,
                      "max_epochs": 20}
# The encoder resizes its input, the data stay native. 160 px, not ImageNet's 224: a step costs
# about half (a third in bf16 on a CPU), and tens of labelled images rarely carry detail that only
# 224 px would keep (benchmarks/cpu_speed.py measures what it costs, beside 224).
_IMAGENET_INPUT = {"input_size": 160}
# Encoders that resize each image inside ``forward`` to an ``input_size`` setting (their input adapter),
# so the side they compute at is chosen apart from the images' own size.
RESIZING_ENCODERS = ("mobilenet_v2", "vit")
# ViTs at 224 px, a multiple of the patch sizes 8, 14 and 16 (DINOv2 files hold a 518-px grid, resized).
_FOUNDATION_INPUT = {"input_size": 224}
# A head on frozen features (``pipeline.frozen``): views to learn from and to score over, one head,
# every drawn label fitting it (a fixed regularisation leaves nothing for a held-out fifth to choose).
_FROZEN_FINETUNE = {"freeze_encoder": True, "augment": "dihedral", "tta": True, "hold_out": False,
                    "ensemble": 1, "dropout": 0.0}

REGISTRY: dict[str, Strategy] = {s.name: s for s in (
    Strategy("scratch", "random initial weights, the shared convnet"),
    Strategy("imagenet", "ImageNet MobileNetV2 weights (2D only)", encoder="mobilenet_v2", init="imagenet",
             encoder_kwargs=_IMAGENET_INPUT, finetune=_IMAGENET_FINETUNE),
    # The fair scratch row: imagenet's architecture and recipe from random weights, so
    # "imagenet - scratch_mobilenet" is the effect of pretraining alone.
    Strategy("scratch_mobilenet", "imagenet's MobileNetV2 and recipe from random weights",
             encoder="mobilenet_v2", encoder_kwargs=_IMAGENET_INPUT, finetune=_IMAGENET_FINETUNE),
    Strategy("gan", "DCGAN on the unlabelled pool; its discriminator becomes the encoder",
             prepare="gan", needs="pool", finetune=_PRETRAINED_FINETUNE),
    Strategy("segmentation", "U-Net on images with masks lends its encoder", prepare="segmentation",
             needs="masks", finetune=_PRETRAINED_FINETUNE),
    # Wong et al.'s point taken further: the masks teach WHERE to look, so the classifier sees only
    # the region the U-Net finds in each image (train, validation and test alike; never a mask).
    Strategy("segmentation+region", "segmentation's U-Net crops each image to the region it segments; "
             "its encoder classifies the crop", prepare="segmentation", needs="masks", input="region",
             finetune=_PRETRAINED_FINETUNE),
    Strategy("ssl", "SimCLR on the unlabelled pool", prepare="ssl", needs="pool",
             finetune=_PRETRAINED_FINETUNE),
    Strategy("semi", "FixMatch: fine-tuning uses the unlabelled pool too", semi=True),
    Strategy("imagenet+ssl", "ImageNet weights continued by SimCLR on the unlabelled pool (2D only)",
             encoder="mobilenet_v2", init="imagenet", prepare="ssl", needs="pool",
             encoder_kwargs=_IMAGENET_INPUT, finetune=_IMAGENET_FINETUNE),
    Strategy("imagenet+semi", "ImageNet weights fine-tuned with FixMatch on the unlabelled pool (2D only)",
             encoder="mobilenet_v2", init="imagenet", semi=True, encoder_kwargs=_IMAGENET_INPUT,
             finetune=_IMAGENET_FINETUNE),
    # Self-training costs two fine-tunes and one pass over the pool: cheap beside FixMatch, whose
    # every step also runs the pool's weak and strong views.
    Strategy("imagenet+pseudo", "ImageNet weights; self-training: the fine-tuned model labels the "
             "unlabelled pool, its most confident images per class join the labels (2D only)",
             encoder="mobilenet_v2", init="imagenet", encoder_kwargs=_IMAGENET_INPUT,
             finetune={**_IMAGENET_FINETUNE, "pseudo_per_label": 1.0}),
    # The encoder is never trained: its features of every image (and of its 8 flips / quarter turns)
    # are computed once and cached by content (``pipeline.feature_cache``), so a curve's cells cost
    # seconds. Another encoder: --encoder (and --encoder-weights).
    Strategy("probe", "frozen ImageNet MobileNetV2 features (or --encoder's), cached; a class-balanced "
             "L2 logistic regression on them, the 8 flips / turns averaged at test time (2D only)",
             encoder="mobilenet_v2", init="imagenet", encoder_kwargs=_IMAGENET_INPUT,
             finetune=_FROZEN_FINETUNE),
    Strategy("knn", "the probe's cached features; cosine k-nearest labelled images vote (k=20, T=0.07). "
             "Curve only: no model folder", encoder="mobilenet_v2", init="imagenet",
             encoder_kwargs=_IMAGENET_INPUT, finetune=_FROZEN_FINETUNE),
    # A foundation model the user holds (DINOv2, DinoBloom, a timm or Hugging Face ViT): like ImageNet
    # weights, nobody lists its training images; imagenet's recipe, so the rows compare the weights.
    Strategy("foundation", "a ViT checkpoint you hold (DINOv2, DinoBloom; timm, DINOv2 or Hugging Face "
             "files, --encoder-weights), fine-tuned with imagenet's recipe (2D only)", encoder="vit",
             init="file", encoder_kwargs=_FOUNDATION_INPUT, finetune=_IMAGENET_FINETUNE),
)}

NAMES: tuple[str, ...] = tuple(REGISTRY)
PREPARED: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.prepare)
# Methods ``fewlabel pretrain`` and ``prepare_encoder`` accept.
PRETRAIN_METHODS: tuple[str, ...] = tuple(dict.fromkeys(s.prepare for s in REGISTRY.values() if s.prepare))


def default_strategy(spatial_dims: int, has_masks: bool) -> tuple[str, str]:
    """The strategy used when none is named, and why, from what the data offer.

    2D: ``imagenet`` (on PBC-8 at 2/5/10 labels per class it ties a plain ImageNet fine-tune and
    beats training from scratch: README). 3D has no ImageNet weights: ``segmentation`` when masks
    exist (Wong et al.: the masks teach the encoder), else ``scratch``.
    """
    if spatial_dims == 2:
        return "imagenet", "2D images: ImageNet weights beat training from scratch with few labels"
    if has_masks:
        return "segmentation", "3D volumes with masks: no ImageNet weights in 3D, the masks pretrain a U-Net"
    return "scratch", "3D volumes without masks: no ImageNet weights in 3D and nothing to pretrain on"


def ensemble_note(name: str, members: int) -> str:
    """The one line that says, on a CPU, what an ensemble costs and how to train one model instead."""
    return (f"note: {name} trains {members} models per fine-tune and averages them ({members}x one "
            f"model's time on this CPU); --set ensemble=1 trains one")


def default_note(name: str, reason: str) -> str:
    """The one line that says which strategy was chosen for the user and why."""
    return f"strategy: {name} (default for this data: {reason}; choose another with --strategy)"


def get(name: str) -> Strategy:
    """The registry entry, or a one-line error listing the names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise FewlabelError(f"unknown strategy {name!r}; choose from {', '.join(NAMES)}") from None


def with_input_size(specs: dict[str, dict[str, Any]], input_size: int | None) -> dict[str, dict[str, Any]]:
    """``specs`` (strategy name -> spec dict) with ``input_size`` set on every strategy whose encoder
    resizes its input (``RESIZING_ENCODERS``); the others keep the images' own size. A one-line error
    when none of them resizes: the setting would change nothing. Its range is checked by the callers
    (``settings.check_options``), before any data are read."""
    if input_size is None or not specs:  # no specs yet: the data choose the strategies, checked then
        return specs
    takers = [name for name, spec in specs.items() if spec.get("encoder") in RESIZING_ENCODERS]
    if not takers:
        raise FewlabelError(f"--input-size is the side a resizing encoder ({', '.join(RESIZING_ENCODERS)}) "
                            f"scales each image to; {', '.join(specs)} "
                            f"compute{'s' if len(specs) == 1 else ''} at the images' own size "
                            "(resize the images with --image-size)")
    sized = {"input_size": int(input_size)}
    return {name: {**spec, "encoder_kwargs": {**(spec.get("encoder_kwargs") or {}), **sized}}
            if name in takers else spec for name, spec in specs.items()}
