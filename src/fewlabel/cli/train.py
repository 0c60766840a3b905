"""CLI: ``fewlabel train`` and ``fewlabel predict`` — thin shells over ``fewlabel.api``."""

from __future__ import annotations

from pathlib import Path

import typer

from fewlabel import strategies as strategy_registry
from fewlabel.cli.common import allow_mismatch_option, print_metrics_table, test_size_value

MODEL_FILES = ("config.json", "model.safetensors", "metrics.json", "plan.json", "unet.safetensors")
RUN_FOLDER_FILES = ("run.json", "store.sqlite")  # a learning curve's folder: never a model folder


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("predict")(predict)


def train(
    data: Path = typer.Argument(..., help="Folder (one sub-folder per class), CSV manifest or .npz."),
    out: Path = typer.Option(..., "--out", help="Model folder to write."),
    strategy: str = typer.Option(None, help=" | ".join(strategy_registry.NAMES) + ". Default: chosen by "
                                 "the data (2D: imagenet; 3D: segmentation with masks, else scratch)."),
    encoder: str = typer.Option(None, help="Encoder name (convnet, schouten, mobilenet_v2)."),
    labels_per_class: int = typer.Option(None, help="Labelled images per class (default: all)."),
    count: str = typer.Option("images", help="With groups, N counts 'images' or 'groups' (patients)."),
    test_size: float = typer.Option(0.2, help="Test fraction (<1) or images per class (>=1)."),
    seed: int = typer.Option(0),
    max_epochs: int = typer.Option(None),
    group_pattern: str = typer.Option(None, help="Regex; its first group is the patient/source id."),
    masks: Path = typer.Option(None, help="Mask folder mirroring the image tree."),
    encoder_weights: Path = typer.Option(None, help="Encoder file from `fewlabel pretrain` (or .pth)."),
    semi: bool = typer.Option(False, "--semi", help="FixMatch with the unlabelled pool."),
    unlabelled: Path = typer.Option(None, help="Folder of unlabelled images (pretraining / --semi)."),
    image_size: str = typer.Option(None, help="Resize: one side (64) or one per axis "
                                  "(36,64,64); default: the most common size."),
    input_size: int = typer.Option(None, help="Side the encoder resizes each image to (MobileNetV2, "
                                   "ViT), e.g. 224; default: the strategy's (imagenet: 160)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    drop_class: list[str] = typer.Option(None, "--drop-class", help="Leave a class out (repeatable)."),
    test_split: str = typer.Option("auto", help="auto: the data's own test split (manifest/.npz) if "
                                   "any, else drawn | given | draw"),
    plan: Path = typer.Option(None, "--plan", help="plan.json of a run or model folder: use its test set."),
    trust_encoder: bool = typer.Option(False, "--trust-encoder", help="Accept an --encoder-weights file "
                                       "that records nothing of the images it saw."),
    pretrain_settings: list[str] = typer.Option(None, "--pretrain", help="Pretraining setting KEY=VALUE "
                                                "(repeatable), e.g. --pretrain steps=300."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
    settings: list[str] = typer.Option(None, "--set", help="Fine-tuning setting KEY=VALUE (repeatable), "
                                       "e.g. --set ensemble=5; it wins over the strategy's recipe."),
) -> None:
    """Hold out a test set, fine-tune on N labels per class, print test metrics with 95% CIs."""
    from fewlabel import api
    from fewlabel.cli.common import image_size_value, parse_settings
    from fewlabel.fileio import check_output_dir
    from fewlabel.pretrain.common import PretrainConfig
    from fewlabel.settings import check_options, validated
    from fewlabel.training.finetune import FinetuneConfig

    check_options({"--seed": seed, "--labels-per-class": labels_per_class, "--max-epochs": max_epochs,
                   "--input-size": input_size})
    pretrain = validated(PretrainConfig, parse_settings(pretrain_settings, "--pretrain"), "pretraining")
    # Before any work: an unwritable --out must not be found out after an hour of training.
    check_output_dir(out, "model folder (--out)", markers=MODEL_FILES, overwrite=overwrite,
                     inputs=(data, masks, unlabelled, plan, encoder_weights), foreign=RUN_FOLDER_FILES)

    test = test_size_value(test_size)
    given = validated(FinetuneConfig, parse_settings(settings, "--set"), "fine-tuning")
    # every --set value is the user's: the strategy's recipe does not replace it
    finetune = FinetuneConfig(**{**given, "explicit": [*given.get("explicit", ()), *given]})
    model = api.train(data, out, strategy=strategy, encoder=encoder, labels_per_class=labels_per_class,
                      count=count, test_size=test, seed=seed, max_epochs=max_epochs,
                      group_pattern=group_pattern, masks=masks, encoder_weights=encoder_weights, semi=semi,
                      unlabelled=unlabelled, image_size=image_size_value(image_size), device=device,
                      drop_classes=tuple(drop_class or ()), test_split=test_split, plan=plan,
                      trust_encoder=trust_encoder, pretrain=pretrain, input_size=input_size,
                      finetune=finetune)
    for note in model.metrics.get("notes") or []:
        typer.echo(f"note: {note}", err=True)
    print_metrics_table(model.metrics, title=f"test metrics ({model.metrics.get('n_test')} images)")
    files = "metrics.json, plan.json, model.safetensors, config.json"
    if model.unet_file is not None:
        files += ", unet.safetensors"
    typer.echo(f"model written to {out}  ({files})")


def predict(
    model_dir: Path = typer.Argument(..., help="Model folder written by `fewlabel train`."),
    paths: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="CSV to write: path, predicted, p_<class>..."),
    device: str = typer.Option("auto"),
    allow_mismatch: bool = allow_mismatch_option("Score"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Predict classes for images; unreadable or mismatched files are listed and make the exit code 1."""
    from fewlabel import api
    from fewlabel.cli import printable  # names from the data: control characters, non-UTF-8 bytes
    from fewlabel.fileio import check_output_file

    # Before the model is loaded; the model folder and the images are inputs, never overwritten.
    check_output_file(out, "prediction CSV (--out)", overwrite=overwrite, inputs=(model_dir, *paths))
    model = api.load_model(model_dir, device=device)
    result = model.predict(list(paths), allow_mismatch=allow_mismatch)
    if not result.paths and len(result.errors) == 1:  # one file, one problem: one line
        path, problem = result.errors[0]
        typer.echo(printable(f"error: {path}: {problem}; no image could be scored, {out} was not written"),
                   err=True)
        raise typer.Exit(1)
    if result.errors:
        typer.echo(f"{len(result.errors)} file(s) could not be scored:", err=True)
        for path, problem in result.errors:
            typer.echo(printable(f"  {path}: {problem}"), err=True)
    if not result.paths:  # a CSV of headers only would look like a finished job
        found = "no image could be scored" if result.errors else "no image files found"
        where = printable(", ".join(map(str, paths)))
        typer.echo(f"error: {where}: {found}; {printable(str(out))} was not written", err=True)
        raise typer.Exit(1)
    result.save_csv(out)
    typer.echo(f"{len(result.paths)} image(s) scored -> {out}")
    for path, problem in result.warnings:
        typer.echo(printable(f"warning: {path}: {problem}"), err=True)
    if result.errors:
        raise typer.Exit(1)
