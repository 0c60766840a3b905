"""CLI: ``fewlabel curve`` — a learning curve over strategies × labelled-set sizes × repeats, resumable.

A thin shell over ``fewlabel.experiments.run_curve``: parses, calls, prints where the results are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from fewlabel import strategies as strategy_registry


def register(app: typer.Typer) -> None:
    app.command("curve")(curve)


def curve(
    data: Path = typer.Argument(..., help="Labelled data: folder (one sub-folder per class), CSV or .npz."),
    out: Path = typer.Option(..., "--out", help="Run folder; re-running the same command resumes it."),
    strategies: str = typer.Option(None, help="Comma-separated: " + ", ".join(strategy_registry.NAMES)
                                   + ". Default: scratch and the data's default strategy (2D: imagenet; "
                                   "3D: segmentation with masks, else scratch alone)."),
    sizes: str = typer.Option("1,2,5,10,20,50", help="Labelled images (or groups) per class, e.g. 2,5,20."),
    repeats: int = typer.Option(6, help="Labelled draws per size (each a new nested draw); 6 lets a "
                                "paired comparison reach significance."),
    unlabelled: Path = typer.Option(None, help="Folder of unlabelled images for gan / ssl / semi."),
    masks: Path = typer.Option(None, help="Mask folder mirroring the image tree (segmentation)."),
    group_pattern: str = typer.Option(None, help="Regex; its first group is the patient / source id."),
    test_size: float = typer.Option(0.2, help="Test fraction (<1) or images per class (>=1)."),
    count: str = typer.Option("images", help="Sizes count 'images' or 'groups' (e.g. patients) per class."),
    drop_class: list[str] = typer.Option(None, "--drop-class", help="Leave a class out (repeatable)."),
    seed: int = typer.Option(0, help="Base seed: test split, draws and training seeds derive from it."),
    image_size: str = typer.Option(None, help="Resize: one side (64) or one per axis "
                                  "(36,64,64); default: the most common size."),
    max_epochs: int = typer.Option(None, help="Fine-tuning epochs at most (default: FinetuneConfig's)."),
    encoder: str = typer.Option(None, help="Encoder of foundation / probe / knn (e.g. vit)."),
    encoder_weights: Path = typer.Option(None, help="Checkpoint of foundation / probe / knn (a ViT: timm, "
                                         "DINOv2 or Hugging Face)."),
    input_size: int = typer.Option(None, help="Side the strategies' resizing encoders (MobileNetV2, ViT) "
                                   "scale each image to, e.g. 224; default: each strategy's (imagenet: 160). "
                                   "The selection rules' embedding keeps its own."),
    device: str = typer.Option(None, help="auto | cpu | cuda (fine-tuning device)."),
    settings: list[str] = typer.Option(None, "--set", help="Fine-tuning setting KEY=VALUE (repeatable), "
                                       "e.g. --set batch_size=32."),
    pretrain_settings: list[str] = typer.Option(None, "--pretrain", help="Pretraining setting KEY=VALUE "
                                                "for gan / segmentation / ssl (repeatable), e.g. "
                                                "--pretrain steps=300."),
    executor: str = typer.Option("local", help="local | ray"),
    workers: int = typer.Option(1, help="Local: cells at once (processes). Ray: CPUs of a local cluster."),
    ray_address: str = typer.Option(None, help="Join this Ray cluster ('auto', 'ray://host:10001')."),
    cpus_per_cell: int = typer.Option(1, help="CPUs (torch threads) per cell; keep equal to compare runs."),
    gpus_per_cell: float = typer.Option(None, help="GPUs per Ray cell (default 0.25 on a GPU cluster: "
                                        "4 small cells per GPU; 0 = CPU only)."),
    keep_models: str = typer.Option("first", help="Keep models of repeat 0 (first), all, or none."),
    pretrain_per_repeat: bool = typer.Option(False, "--pretrain-per-repeat", help="Each repeat pretrains its "
                                             "own encoder (own seed): the spread includes pretraining."),
    selection: str = typer.Option(None, help="Selection rules beside the class-stratified random draw, "
                                  "comma-separated: random (class-agnostic), typiclust, probcover. Each "
                                  "picks n x classes pool images without labels; every strategy trains on "
                                  "them too (arms <strategy>@<rule>, the same test set: paired)."),
    selection_encoder_weights: Path = typer.Option(
        None, help="Embed the pool for typiclust / probcover with this encoder file (a `fewlabel pretrain` "
        "file, a ViT checkpoint) instead of the ImageNet MobileNetV2; refused if it saw a test image."),
    selection_encoder: str = typer.Option(None, help="Architecture of --selection-encoder-weights, as the "
                                          "probe's --encoder (convnet, schouten, vit)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-cell lines."),
) -> None:
    """Run a learning curve: one fixed test set, nested labelled draws shared by all strategies,
    one row per cell in RUN_DIR/store.sqlite and RUN_DIR/results.csv."""
    from fewlabel.cli.common import image_size_value, parse_settings, test_size_value
    from fewlabel.errors import FewlabelError
    from fewlabel.experiments import run_curve
    from fewlabel.experiments.arms import parse_selection
    from fewlabel.experiments.grid import parse_sizes
    from fewlabel.settings import check_options

    try:
        parse_sizes(sizes)  # its message starts "sizes must ...": the option named, in one line
        parse_selection(selection)
    except ValueError as exc:
        raise FewlabelError(f"--{exc}") from None
    check_options({"--seed": seed, "--repeats": repeats, "--workers": workers,
                   "--cpus-per-cell": cpus_per_cell, "--gpus-per-cell": gpus_per_cell,
                   "--max-epochs": max_epochs, "--input-size": input_size})
    # --out (a link, a special file, inside the data, unwritable) is checked by run_curve before any work
    finetune = parse_settings(settings, "--set")
    if max_epochs is not None:
        finetune["max_epochs"] = max_epochs
    if device is not None:
        finetune["device"] = device
    test: float | int = test_size_value(test_size)
    options = encoder_options(strategies, encoder, encoder_weights)
    try:
        result = run_curve(
            data, out, strategies, sizes, repeats, unlabelled=unlabelled, masks=masks,
            group_pattern=group_pattern, drop_classes=drop_class or (), test_size=test, seed=seed,
            image_size=image_size_value(image_size), count=count, finetune=finetune,
            pretrain=parse_settings(pretrain_settings, "--pretrain"), executor=executor, workers=workers,
            ray_address=ray_address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell,
            keep_models=keep_models, pretrain_per_repeat=pretrain_per_repeat, strategy_options=options,
            input_size=input_size,
            selection=selection, selection_encoder=selection_encoder,
            selection_encoder_weights=selection_encoder_weights, progress=False if quiet else None,
            log=None if quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
        )
    except KeyboardInterrupt:
        typer.echo(f"interrupted: finished cells are saved in {out}; run the same command again to resume",
                   err=True)
        raise SystemExit(130) from None
    except ValueError as exc:  # bad option values (keep_models, count ...): a usage error, one line
        raise FewlabelError(str(exc)) from None
    if result.rows:
        typer.echo(result.table())
    typer.echo(f"results: {result.results_csv}")
    typer.echo(f"next: fewlabel report {out}")
    if result.failed:
        first = result.failed[0]
        why = (f" (first: {first.get('strategy')} n={first.get('n_per_class')} r={first.get('repeat')}: "
               f"{first.get('error') or 'no reason recorded'})")
        typer.echo(f"{len(result.failed)} cell(s) failed{why}; run the same command again to retry them "
                   f"(every error: the error column of {result.results_csv})", err=True)
        # SystemExit, not typer.Exit: click (standalone_mode=False in cli.main) returns an Exit's code
        # instead of exiting, and the code would be lost.
        raise SystemExit(1)


# The strategies that start from an encoder file the user names (the others prepare or download theirs).
ENCODER_FILE_STRATEGIES = ("foundation", "probe", "knn")


def encoder_options(strategies: str | None, encoder: str | None, weights: Path | None) -> dict | None:
    """``--encoder`` / ``--encoder-weights`` as strategy options of the named strategies that take an
    encoder file; a one-line error when none of them runs (the flags would change nothing)."""
    from fewlabel.errors import FewlabelError
    from fewlabel.experiments.grid import parse_names
    from fewlabel.fileio import missing_file_reason

    if encoder is None and weights is None:
        return None
    takers = [s for s in parse_names(strategies or "") if s in ENCODER_FILE_STRATEGIES]
    if not takers:
        users = ", ".join(ENCODER_FILE_STRATEGIES)
        raise FewlabelError(f"--encoder / --encoder-weights are used by {users}; "
                            "name one of them in --strategies")
    why = None if weights is None else missing_file_reason(weights)
    if why is not None:
        raise FewlabelError(f"encoder weights {why}", path=weights)
    from fewlabel.pipeline.encoders import encoder_for_file

    encoder = encoder_for_file(encoder, weights)  # a fewlabel file names its own architecture
    given = {k: v for k, v in (("encoder", encoder), ("encoder_weights", None if weights is None
                                                        else str(weights.resolve()))) if v is not None}
    return {name: dict(given) for name in takers}
