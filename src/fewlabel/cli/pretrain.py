"""CLI: ``fewlabel pretrain {gan,segmentation,ssl} DATA --out ENCODER_FILE`` — a thin shell over
``fewlabel.pretrain.prepare_encoder``.

What DATA is:
  * ``gan`` / ``ssl``: a folder of images, any layout, labels ignored (an unlabelled pool).
    ``--holdout-from LABELLED`` names the labelled set you will evaluate on: its test hold-out is
    drawn exactly as ``fewlabel train`` draws it (same ``--seed``, ``--test-size``, ``--count``,
    ``--group-pattern``) and every pool image of a test group is dropped (e.g. BCCD red-cell crops
    cut from a test smear), and the pool is normalised with the labelled set's statistics.
  * ``segmentation``: a labelled set with masks (``images/`` + ``masks/``, or ``--masks DIR``). The
    test hold-out of ``fewlabel train`` (same seed/test size/count) is removed first, so a later
    ``fewlabel train --encoder-weights`` evaluation has never seen a test image's mask; the best
    epoch is chosen on whole validation patients (groups). ``--no-holdout`` uses every masked image
    (masks from a set you will not evaluate on).
  * ``--plan PLAN.json`` (a run's or model's ``plan.json``) follows that plan instead of drawing:
    the encoder is made for exactly that test set and a later ``curve``/``train`` with it accepts it.

The encoder file records the content keys of every image it saw (and the plan's fingerprint):
``train`` and ``curve`` refuse it for a test set that shares any of them.

The encoder file is cached by (data, method, config): asking twice trains once. Stopping
(Ctrl-C) keeps the last checkpoint; the same command resumes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fewlabel import strategies as strategy_registry
from fewlabel.cli.common import test_size_value
from fewlabel.errors import FewlabelError


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)


METHODS = strategy_registry.PRETRAIN_METHODS


def pretrain(
    method: str = typer.Argument(..., help=" | ".join(strategy_registry.PRETRAIN_METHODS)),
    data: Path = typer.Argument(..., help="Image folder (gan/ssl: any layout) or labelled set with masks."),
    out: Path = typer.Option(..., "--out", help="Encoder file to write (.safetensors)."),
    encoder: str = typer.Option("convnet", help="Encoder name (the shared family: convnet)."),
    width: int = typer.Option(16, help="Channels of the first stage (doubles per stage)."),
    depth: int = typer.Option(4, help="Stages; each after the first halves the sides, so 2**(depth-1) "
                              "may not exceed the largest image side."),
    image_size: str = typer.Option(None, help="Resize: one side (64) or one per axis "
                                  "(36,64,64); gan: default 64, else the most common size."),
    steps: int = typer.Option(2000, help="Training steps."),
    batch_size: int = typer.Option(32),
    seed: int = typer.Option(0),
    masks: Path = typer.Option(None, help="Mask folder mirroring the image tree (segmentation)."),
    group_pattern: str = typer.Option(None, help="Regex; its first group is the patient/source image id."),
    holdout_from: Path = typer.Option(None, help="gan/ssl: labelled set whose test groups leave the pool."),
    test_size: float = typer.Option(0.2, help="Test hold-out as `fewlabel train` draws it."),
    count: str = typer.Option("images", help="As `fewlabel train --count`: the test size counts 'images' "
                              "or 'groups' (patients)."),
    no_holdout: bool = typer.Option(False, "--no-holdout", help="segmentation: use every masked image."),
    plan: Path = typer.Option(None, "--plan", help="plan.json of a run or model: hold out its test set."),
    colour_jitter: bool = typer.Option(False, "--colour-jitter", help="ssl: per-channel colour changes."),
    cache_dir: Path = typer.Option(None, help="Encoder cache (default: $FEWLABEL_CACHE/pretrained)."),
    time_budget: float = typer.Option(None, help="Stop after this many seconds (the encoder is saved)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out encoder file."),
) -> None:
    """Prepare an encoder from unlabelled images (gan, ssl) or images with masks (segmentation)."""
    from fewlabel.fileio import check_output_dir, check_output_file
    from fewlabel.pretrain import PretrainConfig, prepare_encoder
    from fewlabel.pretrain.common import artefact_dir, cached_encoder_path, checkpoint_path_for

    size = _check_settings(method, encoder=encoder, width=width, depth=depth, steps=steps,
                           batch_size=batch_size, seed=seed, time_budget=time_budget, image_size=image_size)
    # Before any work, not after the pretraining: the encoder file and its pictures folder beside it.
    inputs = (data, masks, holdout_from, plan)
    check_output_file(out, "encoder file (--out)", overwrite=overwrite, inputs=inputs)
    check_output_dir(artefact_dir(out), "pictures folder of the encoder file (--out)", inputs=inputs)

    test = test_size_value(test_size)
    loaded = _load(method, data, masks=masks, group_pattern=group_pattern, holdout_from=holdout_from,
                   test_size=test, seed=seed, image_size=size, no_holdout=no_holdout, count=count,
                   plan=plan)
    inputs, preprocess, notes, plan_fp = loaded
    images, mask_arrays, fingerprint = inputs.images, inputs.masks, inputs.fingerprint
    enc_cfg = {"name": encoder, "in_channels": int(images.shape[1]), "spatial_dims": images.ndim - 2}
    if encoder == "convnet":
        enc_cfg.update(width=width, depth=depth)
        _check_depth(depth, images.shape[2:])  # the size the data gave, before any training
    from fewlabel.models.encoder import create_encoder

    encoder_config = create_encoder(**enc_cfg, image_size=tuple(images.shape[2:])).config
    config = PretrainConfig(steps=steps, batch_size=batch_size, seed=seed, colour_jitter=colour_jitter,
                            time_budget_s=time_budget, device=device, progress=None)
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    target = cached_encoder_path(method, encoder_config, config, cache, fingerprint)
    shape = "x".join(str(s) for s in images.shape[1:])
    typer.echo(f"{method}: {len(images)} image(s) of {shape}{'' if mask_arrays is None else ' with masks'}"
               f"{notes}")
    if target.exists():
        typer.echo(f"cached: the same data and settings were prepared before ({target})")
    elif checkpoint_path_for(target).exists():
        typer.echo(f"resuming from the checkpoint {checkpoint_path_for(target)}")
    try:
        path = prepare_encoder(method, images, mask_arrays, encoder_config=encoder_config, config=config,
                               cache_dir=cache, data_fingerprint=fingerprint, out=out,
                               val_images=inputs.val_images, val_masks=inputs.val_masks,
                               extra_meta={"preprocess": preprocess, "data": str(data),
                                           # content keys of every image seen: `train` refuses this
                                           # encoder for a test set that shares any of them
                                           "seen_files": inputs.seen_files, "plan_fingerprint": plan_fp})
    except KeyboardInterrupt:
        typer.echo(f"stopped; run the same command again to resume from {checkpoint_path_for(target)}",
                   err=True)
        raise typer.Exit(130) from None
    from fewlabel.models.io import read_header

    meta = read_header(path).get("meta", {})
    losses = ", ".join(f"{k} {v:.4g}" for k, v in meta.get("final_losses", {}).items()
                       if isinstance(v, (int, float)))
    typer.echo(f"encoder written to {path}  ({meta.get('steps', 0)} steps{'; ' + losses if losses else ''})")
    files = artefact_dir(path)
    if files.is_dir():
        typer.echo(f"pictures and history in {files}/")


def _check_settings(method: str, *, encoder: str, width: int, depth: int, steps: int, batch_size: int,
                    seed: int, time_budget: float | None, image_size: str | None
                    ) -> int | tuple[int, ...] | None:
    """Settings with no meaning refused before any data are read, in one line naming the option;
    returns the resize target (``--image-size``; gan: 64 by default)."""
    from fewlabel.cli.common import image_size_value
    from fewlabel.pretrain.common import batch_size_problem
    from fewlabel.settings import check_options

    if method not in METHODS:
        raise FewlabelError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    check_options({"--width": width, "--depth": depth, "--steps": steps, "--batch-size": batch_size,
                   "--seed": seed, "--time-budget": time_budget})
    problem = batch_size_problem(method, batch_size)
    if problem is not None:
        raise FewlabelError(f"--batch-size {problem}")
    size = image_size_value(image_size)
    if method == "gan" and size is None:
        size = 64
    if size is not None and encoder == "convnet":
        _check_depth(depth, (size, size) if isinstance(size, int) else size)
    return size


def _check_depth(depth: int, sides: Any) -> None:
    from fewlabel.models.encoder import max_convnet_depth

    sides = [int(s) for s in sides]
    most = max_convnet_depth(sides)
    if depth > most:
        shown = "x".join(map(str, sides))
        raise FewlabelError(f"--depth {depth} does not fit {shown} images: each stage after the first halves "
                            f"the sides, and 2**{depth - 1} = {2 ** (depth - 1)} exceeds the largest side "
                            f"({max(sides)}); use --depth {most} or less")


def _default_cache() -> Path:
    from fewlabel.api import default_cache_dir

    return default_cache_dir() / "pretrained"


def _load(method: str, data: Path, *, masks: Path | None, group_pattern: str | None,
          holdout_from: Path | None, test_size: float | int, seed: int,
          image_size: int | tuple[int, ...] | None,
          no_holdout: bool, count: str = "images", plan: Path | None = None
          ) -> tuple[Any, dict[str, Any], str, str | None]:
    """(pretraining inputs, preprocess dict, a note for the user, the plan's fingerprint or None)."""
    from fewlabel.data import catalog as catalog_mod
    from fewlabel.data import tensors
    from fewlabel.data.plan import SplitPlan
    from fewlabel.pipeline import PreparedData, dropped_note, merge_duplicates, prepare_data

    needs = "masks" if method == "segmentation" else "pool"
    if plan is not None and no_holdout:
        raise FewlabelError("--plan and --no-holdout contradict each other: a plan holds a test set out")
    if needs == "masks" and holdout_from is not None:
        raise FewlabelError("--holdout-from is for gan/ssl pools; segmentation holds out its own test set")
    if plan is not None:
        stored = SplitPlan.load(plan)
        labelled = data if needs == "masks" else (holdout_from or stored.source.get("data"))
        if labelled is None:
            raise FewlabelError("the plan does not say where its labelled data are; add --holdout-from DIR",
                                path=plan)
        prepared = prepare_data(labelled, masks=masks or stored.source.get("masks"),
                                group_pattern=stored.params.get("group_pattern"),
                                drop_classes=stored.params.get("drop_classes") or (), image_size=image_size,
                                unlabelled=None if needs == "masks" else data, plan=plan)
        note = f" (following {plan}: its {len(prepared.test_ids)} test image(s) stay unseen"
        extra = dropped_note(prepared.plan)
        return (prepared.pretrain_inputs(needs), prepared.preprocess.to_dict(),
                note + (f"; {extra}" if extra else "") + ")", prepared.plan.fingerprint)
    if needs == "masks" and not no_holdout:
        prepared = prepare_data(data, masks=masks, group_pattern=group_pattern, test_size=test_size,
                                seed=seed, image_size=image_size, count=count)
        note = (f" (test hold-out of {len(prepared.test_ids)} image(s) left out, as `fewlabel train "
                f"--seed {seed} --test-size {test_size}` draws it)")
        return prepared.pretrain_inputs(needs), prepared.preprocess.to_dict(), note, prepared.plan.fingerprint
    if holdout_from is not None:
        prepared = prepare_data(holdout_from, group_pattern=group_pattern, test_size=test_size, seed=seed,
                                image_size=image_size, unlabelled=data, count=count)
        inputs = prepared.pretrain_inputs(needs)
        note = f" ({dropped_note(prepared.plan) or 'no pool image meets the test set'})"
        return inputs, prepared.preprocess.to_dict(), note, prepared.plan.fingerprint
    # No hold-out: every image is fair game (data you will not evaluate on). The same containers
    # as above, with an empty test set, so the record and the cache key are made the same way.
    from fewlabel.data.identity import file_key
    from fewlabel.data.plan import SplitPlan as Plan

    if needs == "masks":
        cat = catalog_mod.load_catalog(data, masks=masks, group_pattern=group_pattern, strict=False)
        cat.issues = [i for i in cat.issues if i.kind != "one_class"]  # labels play no part here
        cat.raise_issues()
        ids = [s.id for s in cat.samples if s.mask is not None]
        if not ids:
            raise FewlabelError("no image has a mask (images/ + masks/ layout or --masks DIR)", path=data)
    else:
        cat = catalog_mod.load_pool(data, group_pattern=group_pattern)
        ids = list(cat.ids)
    keys = {s.id: file_key(s.path) for s in cat.samples}
    cat, _ = merge_duplicates(cat, {i: keys[i] for i in cat.ids}) if needs == "masks" else (cat, [])
    pre = tensors.fit_preprocess(cat, ids, image_size=image_size)
    from fewlabel.pipeline import pretrain_pools

    empty = Plan(params={"seed": seed, "no_holdout": True}, data_fingerprint=cat.fingerprint(),
                 classes=list(cat.classes), test_ids=[], test_labels=[], test_groups=[], pool_ids=ids,
                 pretrain_pools=pretrain_pools(cat, ids, None, set(), set(), seed))
    prepared = PreparedData(catalog=cat, preprocess=pre, plan=empty, content_keys=keys)
    return prepared.pretrain_inputs(needs), pre.to_dict(), "", None
