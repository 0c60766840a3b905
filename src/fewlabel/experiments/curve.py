"""Learning curves: the pipeline run over strategy × labelled-set size × repeat on one fixed test set.

    from fewlabel.experiments import run_curve
    result = run_curve("data/pbc", out="runs/pbc", strategies=["scratch", "ssl"], sizes=[2, 5, 20], repeats=3)
    print(result.table())

What a run does, in order:
  1. opens the data (``pipeline.prepare_data``): one group-aware test hold-out with the base seed,
     preprocessing fitted on the pool only;
  2. checks RUN_DIR: the same configuration resumes, another is refused (``ConfigMismatchError``
     naming what differs), a non-empty folder that is not a run is refused;
  3. draws, per repeat, one nested labelled set per size (shared by all strategies: paired) and
     saves every draw (labelled, training and validation ids) to the run's split plan ``plan.json``;
     sizes larger than a class's pool are recorded as skipped; every worker follows that plan;
  4. prepares each strategy that has cells left once (GAN, segmentation, SSL pretraining on the pool
     only, cached in ``RUN_DIR/pretrained/``);
  5. runs the remaining cells on an executor (local loop, process pool or Ray); each finished cell's
     files are put in place and then its row is inserted, and ``results.csv`` is re-exported.
A cell that raises becomes a ``failed`` row (tried again on the next run); the sweep goes on.
See ``store.py`` for the RUN_DIR layout and the row format, ``run_folder.py`` for the folder's lock,
guards and ``run.json``, ``progress.py`` for what is printed.

Why this file is long: the driver is one sequence (settings checked, data opened, draws,
preparations, cells, records) kept together so it reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewlabel import strategies as strategy_registry
from fewlabel.errors import ConfigMismatchError, DiskFullError, FewlabelError, is_disk_full
from fewlabel.experiments.cell import (
    CellOutput,
    CellTask,
    PipelineBackend,
    PretrainTask,
    base_row,
    fingerprint_of,
    prime_data,
    run_pretraining,
)
from fewlabel.experiments.executors import Executor, RayExecutor, make_executor
from fewlabel.experiments.grid import (
    Cell,
    CurveConfig,
    arm_parts,
    draw_seed,
    parse_names,
    parse_selection,
    parse_sizes,
    pretrain_seed,
    selection_seed,
    train_seed,
)
from fewlabel.experiments.progress import Log, Progress, cell_line, duration, said_if_slow
from fewlabel.experiments.run_folder import (
    check_out_dir,
    cleanup_partial,
    finish_run_json,
    open_run,
    pinned_preparation,
    run_lock,
    weights_relative,
    write_cell_files,
)
from fewlabel.experiments.stacking import map_cells
from fewlabel.experiments.store import (
    CSV_FILE,
    PLAN_FILE,
    RUN_FILE,
    ResultStore,
    atomic_write_json,
    summarise,
)
from fewlabel.fileio import check_output_dir
from fewlabel.settings import check_options

STRATEGIES = strategy_registry.NAMES
KEEP_MODELS = ("first", "all", "none")


@dataclass
class RunResult:
    """What ``run_curve`` returns: where the results are and how the run went."""

    run_dir: Path
    results_csv: Path
    config_hash: str
    rows: list[dict[str, Any]]
    counts: dict[str, int]  # rows in the store by status: ok / failed / skipped
    ran: int  # cells run by this call (ok + failed)
    resumed: int  # cells already done when this call started
    seconds: float
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no cell failed (skipped cells are not failures)."""
        return not self.failed

    def summary(self, metric: str = "roc_auc") -> list[dict[str, Any]]:
        """Median and IQR of ``metric`` per strategy × size over the repeats."""
        return summarise(self.rows, metric)

    def table(self, metrics: Sequence[str] = ("roc_auc", "accuracy")) -> str:
        """A plain-text table: one line per strategy × size, ``median [q1, q3]`` per metric."""
        return format_table(self.rows, metrics)


def format_table(rows: Iterable[dict[str, Any]], metrics: Sequence[str] = ("roc_auc", "accuracy")) -> str:
    rows = list(rows)
    by_metric = {m: {(s["strategy"], s["n_per_class"]): s for s in summarise(rows, m)} for m in metrics}
    keys = sorted({k for table in by_metric.values() for k in table}, key=lambda k: (k[0], k[1]))
    width = max([14, *(len(str(k[0])) + 2 for k in keys)])  # arms such as imagenet@typiclust
    head = (f"{'strategy':<{width}}{'n':>5}{'reps':>6}"
            + "".join(f"{m + ' median [IQR]':>30}" for m in metrics))
    lines = [head, "-" * len(head)]
    for key in keys:
        first = next(t[key] for t in by_metric.values() if key in t)
        cells = []
        for m in metrics:
            s = by_metric[m].get(key)
            cells.append(f"{s['median']:.3f} [{s['q1']:.3f}, {s['q3']:.3f}]" if s else "-")
        lines.append(f"{key[0]:<{width}}{key[1]:>5}{first['n_repeats']:>6}"
                     + "".join(f"{c:>30}" for c in cells))
    return "\n".join(lines)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _make_draws(out: Path, data: Any, config: CurveConfig, backend: Any, log: Log,
                grown: bool = False) -> dict[tuple[str | None, int, int], dict[str, Any]]:
    """Every (rule, size, repeat) draw, kept in the run's plan (``plan.json``); rule None is the
    class-stratified draw. A resumed run follows the stored draws; a new run draws them once and saves
    the plan before any cell starts. The pool is embedded only when a selection draw is missing."""
    path = out / PLAN_FILE
    resumed = path.exists()
    draws: dict[tuple[str | None, int, int], dict[str, Any]] = {}
    embedded: list[Any] = []

    def embedding() -> Any:
        if not embedded:
            log("selection: embedding the training pool (never the test set) ...")
            named = config.selection_embedding
            source = {"encoder": named.get("encoder"), "weights": config.selection_weights} if named else None
            device = str(config.finetune.get("device") or "auto")
            embedded.append(backend.selection_embedding(data, device, source))
            log(f"selection: {embedded[0][1]}")
        return embedded[0]

    for r in range(config.repeats):
        for rule in (None, *config.selection):
            seed = draw_seed(config.seed, r) if rule is None else selection_seed(config.seed, r)
            for n in config.sizes:
                picked = {} if rule is None else {"selection": rule, "embedding": embedding}
                entry = backend.draw(data, n, r, seed, config.count, **picked)
                if entry.get("draw_seed") != seed:
                    raise ConfigMismatchError(f"the stored plan drew repeat {r} with another seed; use a "
                                              "new --out", path=path)
                draws[(rule, n, r)] = {"repeat": r, "n_per_class": n, "draw_seed": seed,
                                       "ids": list(entry["labelled"]), "train": list(entry["train"]),
                                       "val": list(entry["val"]), "chosen": entry.get("chosen"),
                                       **({"skipped": entry["skipped"]} if "skipped" in entry else {})}
    too_big: dict[tuple[str, int], str] = {}  # the first reason of each (rule, size) that cannot be drawn
    for (rule, n, _), d in draws.items():
        if "skipped" in d:
            too_big.setdefault((rule or "", n), d["skipped"])
    for (rule, n), reason in sorted(too_big.items()):
        by = f" by {rule}" if rule else ""
        log(f"note: n={n} per class cannot be drawn{by} ({reason}); those cells are recorded as skipped")
    if not resumed or grown or embedded:
        backend.save_plan(data, path)  # a grown run's plan gains the new draws; the old are unchanged
    return draws


def _draw_of(draws: dict[tuple[str | None, int, int], dict[str, Any]], cell: Cell) -> dict[str, Any]:
    return draws[(arm_parts(cell.strategy)[1], cell.n_per_class, cell.repeat)]


def _row_extra(cell: Cell, draw: dict[str, Any]) -> dict[str, Any]:
    """What a selection arm's row adds: its rule and how many classes its picks reached."""
    rule = arm_parts(cell.strategy)[1]
    if rule is None:
        return {}
    chosen = draw.get("chosen") or {}
    return {"selection": rule, "classes_covered": chosen.get("classes_covered"),
            "budget": chosen.get("budget")}


def _failed_output(task: CellTask, error: BaseException | str) -> CellOutput:
    row = base_row(task)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {' '.join(str(error).split())}"
    row.update(status="failed", error=text)
    return CellOutput(row=row)


def _spec(backend: Any, name: str, pretrain: dict[str, Any] | None,
          options: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The strategy's default spec with the caller's overrides (they are part of the config hash).

    Every override is checked here, before any data are read: an unknown key or a bad value is a
    one-line error, never a silently dropped setting or a failure cell by cell later."""
    spec = dict(backend.strategy_spec(name))
    if pretrain and strategy_registry.REGISTRY.get(name, strategy_registry.REGISTRY["scratch"]).prepare:
        spec["pretrain"] = {**(spec.get("pretrain") or {}), **pretrain}
    given = (options or {}).get(name) or {}
    if given.get("encoder") not in (None, spec.get("encoder")) and "encoder_kwargs" not in given:
        spec["encoder_kwargs"] = {}  # another architecture: its own defaults (as ``default_spec``)
    for key, value in given.items():
        if key not in spec:
            raise FewlabelError(f"strategy {name} has no setting {key!r}; it has {', '.join(sorted(spec))}")
        merge = isinstance(spec[key], dict) and isinstance(value, dict)  # nested settings: update, keep rest
        spec[key] = {**spec[key], **value} if merge else value
    check = getattr(backend, "check_spec", None)
    return check(spec) if check is not None else spec


def _with_input_size(specs: dict[str, dict[str, Any]], input_size: int | None) -> dict[str, dict[str, Any]]:
    """``input_size`` on the specs whose encoder resizes (``pipeline.encoders.with_input_size``)."""
    if input_size is None or not specs:
        return specs
    from fewlabel.pipeline.encoders import with_input_size  # here: the driver stays light to import

    return with_input_size(specs, input_size)


def _weights_digests(specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """sha256 of each strategy's own ``encoder_weights`` file (a checkpoint the user named)."""
    from fewlabel.fileio import file_sha256, missing_file_reason

    out: dict[str, str] = {}
    for name, spec in specs.items():
        path = spec.get("encoder_weights")
        if path:
            reason = missing_file_reason(path)
            if reason is not None:
                raise FewlabelError(f"encoder weights of {name}: {reason}", path=path)
            out[name] = file_sha256(path)
    return out


def _say_compute(say: Log, finetune_config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    """How the cells will compute (device, precision, members: ``compute_line``), and on a CPU a note
    for each strategy whose members are trained one by one."""
    from fewlabel.training.compute import compute_line
    from fewlabel.training.recipe import recipe_over  # here: the driver stays light to import

    members = {name: int(recipe_over(finetune_config, spec.get("finetune") or {}).get("ensemble") or 1)
               for name, spec in specs.items()}
    say(compute_line(finetune_config, max(members.values())))
    if finetune_config.get("device") == "cpu" and finetune_config.get("ensemble_mode") != "snapshot":
        for name, count in members.items():
            if count > 1:
                say(strategy_registry.ensemble_note(name, count))


def _selection_source(selection: tuple[str, ...], encoder: str | None,
                      weights: str | Path | None) -> dict[str, Any] | None:
    """{"encoder", "weights" (absolute path), "sha256"} of the encoder the selection rules embed with,
    or None for the ImageNet default; refused in one line when no rule embeds or the file is unusable."""
    from fewlabel.fileio import file_sha256, missing_file_reason

    if encoder is None and weights is None:
        return None
    if not any(rule != "random" for rule in selection):
        raise FewlabelError("--selection-encoder / --selection-encoder-weights set the embedding of "
                            "typiclust and probcover; name one of them in --selection")
    if weights is None:
        raise FewlabelError("--selection-encoder needs --selection-encoder-weights (the checkpoint to embed "
                            "the pool with); without both, the ImageNet MobileNetV2 embeds it")
    reason = missing_file_reason(weights)
    if reason is not None:
        raise FewlabelError(f"selection encoder weights {reason}", path=weights)
    from fewlabel.pipeline.encoders import encoder_for_file

    return {"encoder": encoder_for_file(encoder, weights), "weights": _resolved(weights),
            "sha256": file_sha256(weights)}


def _selection_hashed(source: dict[str, Any] | None) -> dict[str, Any]:
    """What of the selection encoder changes the picks: its architecture and its file's content."""
    return {} if source is None else {"encoder": source["encoder"], "sha256": source["sha256"]}


def _resolved(path: str | Path) -> str:
    """The absolute path run.json records; a symlink loop or a dangling link is the user's to fix,
    named in one line (``Path.resolve`` would raise a bare RuntimeError on a loop)."""
    from fewlabel.fileio import dangling_link_reason

    reason = dangling_link_reason(path)
    if reason is not None:
        raise FewlabelError(reason.split(" (")[0] + ": cannot read it", path=path)
    return str(Path(path).resolve())


def run_curve(
    data: str | Path,
    out: str | Path,
    strategies: str | Sequence[str] | None = None,
    sizes: str | Sequence[int] = (1, 2, 5, 10, 20, 50),
    repeats: int = 6,
    *,
    unlabelled: str | Path | None = None,
    masks: str | Path | None = None,
    group_pattern: str | None = None,
    drop_classes: Sequence[str] = (),
    test_size: float | int = 0.2,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    count: str = "images",
    finetune: dict[str, Any] | None = None,
    pretrain: dict[str, Any] | None = None,
    strategy_options: dict[str, dict[str, Any]] | None = None,
    input_size: int | None = None,
    executor: str | Executor = "local",
    workers: int = 1,
    ray_address: str | None = None,
    cpus_per_cell: int = 1,
    gpus_per_cell: float | None = None,
    prep_cpus: int | None = None,
    keep_models: str = "first",
    pretrain_per_repeat: bool = False,
    selection: str | Sequence[str] | None = None,
    selection_encoder: str | None = None,
    selection_encoder_weights: str | Path | None = None,
    progress: bool | None = None,
    log: Log | None = _stderr,
    command: str | None = None,
    backend: Any = None,
) -> RunResult:
    """Run (or resume) a learning curve into ``out`` and return where its results are.

    ``strategies``: names from ``STRATEGIES``; None = ``scratch`` and the data's default strategy
    (``fewlabel.strategies.default_strategy``: 2D imagenet, 3D segmentation with masks);
    ``sizes``: labelled images (``count="groups"``: groups,
    e.g. patients) per class; ``test_size``: fraction, or an int = images per class. ``finetune``:
    overrides of ``FinetuneConfig``; ``pretrain``: overrides of ``PretrainConfig`` for the strategies
    that pretrain (gan, segmentation, ssl), e.g. ``{"steps": 300}``; ``strategy_options``: per
    strategy, fields of its spec, e.g. ``{"scratch": {"encoder": "schouten"}}``. ``executor``:
    ``"local"`` (``workers`` processes; 1 = this process) or ``"ray"`` (``ray_address`` joins a
    cluster). Each cell runs with ``cpus_per_cell`` torch threads and each preparation with
    ``prep_cpus`` (default: this machine's cores), on every executor, so the same seeds give the same
    numbers wherever they run. ``keep_models``: ``first``
    keeps the models of repeat 0 (what explanations use), ``all`` or ``none``. ``gpus_per_cell`` (Ray):
    None = 0.25 when the cluster has GPUs, else 0. ``backend`` replaces
    the pipeline (tests). ``pretrain_per_repeat``: each repeat prepares its own encoder (own seed),
    so the spread of gan / ssl / segmentation includes the pretraining's variance (costs one
    preparation per repeat). ``selection``: rules of ``pipeline.selection`` (``random``, ``typiclust``,
    ``probcover``) whose picks of ``n × classes`` pool images, chosen without labels, train every
    strategy beside its class-stratified draw (arms ``<strategy>@<rule>``; ``pipeline.selection_draws``).
    ``selection_encoder_weights`` (with ``selection_encoder``, its architecture as the probe's
    ``--encoder``): the encoder file typiclust / probcover embed the pool with instead of ImageNet's.
    Every setting is checked before anything is loaded or written.
    Raises ``ConfigMismatchError`` when ``out`` holds a run of another configuration.
    """
    t_start = time.perf_counter()
    out = Path(out)
    backend = backend if backend is not None else PipelineBackend()
    # None: chosen by the data once they are open (``strategies.default_strategy``), beside scratch.
    use_default = strategies is None
    strategies = () if strategies is None else parse_names(strategies)
    sizes = parse_sizes(sizes)
    # Before anything is read: 10**20 repeats would never finish listing its cells.
    check_options({"seed": seed, "repeats": repeats, "workers": workers, "cpus_per_cell": cpus_per_cell,
                   "gpus_per_cell": gpus_per_cell, "input_size": input_size})
    if keep_models not in KEEP_MODELS:
        raise ValueError(f"keep_models must be one of {KEEP_MODELS}, got {keep_models!r}")
    if count not in ("images", "groups"):
        raise ValueError(f"count must be 'images' or 'groups', got {count!r}")
    selection = parse_selection(selection)
    if selection and count != "images":
        raise ValueError("selection rules pick images (a budget of n x classes images): they cannot count "
                         "groups; leave --count at images")
    selection_source = _selection_source(selection, selection_encoder, selection_encoder_weights)
    known = getattr(backend, "strategies", strategy_registry.NAMES)
    unknown = [s for s in strategies if s not in known]
    if unknown:
        raise FewlabelError(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(known)}")
    stray = sorted(set(strategy_options or {}) - set(strategies))
    if stray and not use_default:
        raise FewlabelError(f"strategy_options name {', '.join(stray)}, which this curve does not run")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    prep_cpus = prep_cpus or os.cpu_count() or 1
    say: Log = log or (lambda line: None)
    command = command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])

    finetune_config = backend.finetune_config(dict(finetune or {}))
    strategy_specs = _with_input_size(
        {s: _spec(backend, s, pretrain, strategy_options) for s in strategies}, input_size)
    check_output_dir(out, "run folder (--out)", inputs=(data, unlabelled, masks))
    check_out_dir(out)
    data_args: dict[str, Any] = {
        "data": _resolved(data),
        "masks": _resolved(masks) if masks is not None else None,
        "group_pattern": group_pattern,
        "test_size": test_size,
        "seed": seed,
        "image_size": list(image_size) if image_size is not None else None,
        "unlabelled": _resolved(unlabelled) if unlabelled is not None else None,
        "count": count,  # an integer test size counts images or groups, as the labelled sizes do
    }
    if drop_classes:
        data_args["drop_classes"] = sorted(drop_classes)
    plan_path = out / PLAN_FILE
    # A resumed run follows its saved plan: the test set and draws are read, never drawn again.
    resumed = {"plan": str(plan_path.resolve())} if (out / RUN_FILE).exists() and plan_path.exists() else {}
    with said_if_slow(say, f"opening {data} ..."):
        prepared = backend.prepare_data(**dict(data_args), **resumed)
    for line in getattr(prepared, "reading_notes", ()):  # what the readers did: EXIF, frames, scale
        say(line)
    plan = getattr(prepared, "plan", None)
    if plan is not None:
        from fewlabel.pipeline import dropped_note

        for line in filter(None, [dropped_note(plan)]):
            say(f"unlabelled pool: {line}")
        if plan.merged:
            say(f"note: {len(plan.merged)} set(s) of identical files merged into one group each "
                "(a copy never sits on both sides of the split)")
    if use_default:
        name, reason = strategy_registry.default_strategy(int(getattr(prepared, "spatial_dims", 2)),
                                                          bool(getattr(prepared.catalog, "has_masks", False)))
        strategies = tuple(dict.fromkeys(["scratch", name]))
        stray = sorted(set(strategy_options or {}) - set(strategies))
        if stray:
            raise FewlabelError(f"strategy_options name {', '.join(stray)}, which this curve does not run")
        strategy_specs = _with_input_size(
            {s: _spec(backend, s, pretrain, strategy_options) for s in strategies}, input_size)
        say(strategy_registry.default_note(name, reason).replace("--strategy", "--strategies")
            + ("" if name == "scratch" else "; scratch runs beside it as the reference"))
    needs_masks = [s for s in strategies if s in strategy_registry.REGISTRY
                   and strategy_registry.REGISTRY[s].needs == "masks"]
    if needs_masks and not getattr(prepared.catalog, "has_masks", True):
        # Checked before anything is written: otherwise every segmentation cell would fail the same way.
        raise FewlabelError(f"strategy {needs_masks[0]} needs masks: pass --masks DIR (a tree mirroring the "
                            "images) or use the images/ + masks/ layout", path=data)
    if hasattr(backend, "check_encoder_files"):
        backend.check_encoder_files(prepared, strategy_specs)  # before run.json, as the selection's
    if any(rule != "random" for rule in selection) and hasattr(backend, "check_selection"):
        # before run.json: a refused run leaves nothing behind
        backend.check_selection(prepared, selection_source)
    config = CurveConfig(
        weights_sha256=_weights_digests(strategy_specs),
        data_fingerprint=fingerprint_of(prepared) or "",
        unlabelled_fingerprint=_unlabelled_fingerprint(prepared),
        strategies=strategies,
        strategy_specs=strategy_specs,
        sizes=sizes, repeats=int(repeats), test_size=test_size, seed=int(seed),
        image_size=tuple(image_size) if image_size is not None else None, count=count,
        finetune=finetune_config, pretrain_per_repeat=bool(pretrain_per_repeat), selection=selection,
        selection_embedding=_selection_hashed(selection_source),
        selection_weights=None if selection_source is None else selection_source["weights"],
        masks=masks is not None, group_pattern=group_pattern, drop_classes=tuple(drop_classes),
        data=data_args["data"], unlabelled=data_args["unlabelled"], masks_dir=data_args["masks"],
    )
    config_hash = config.config_hash()
    executor_info = {"kind": executor if isinstance(executor, str) else executor.name, "workers": workers,
                     "ray_address": ray_address, "cpus_per_cell": cpus_per_cell,
                     "gpus_per_cell": gpus_per_cell, "prep_cpus": prep_cpus}

    with run_lock(out):
        info = open_run(out, config, config_hash, command, backend.summary(prepared), data_args,
                         executor_info)
        # Said once every check has passed (a refused resume included): a refusal stays one line.
        _say_compute(say, finetune_config, strategy_specs)
        draws = _make_draws(out, prepared, config, backend, say, grown=bool(info.get("earlier_hashes")))
        store = ResultStore(out)
        try:
            stored_hash = store.get_meta("config_hash")
            if stored_hash is None:
                store.set_meta("config_hash", config_hash)
            elif stored_hash != config_hash and stored_hash in info.get("earlier_hashes", []):
                store.set_meta("config_hash", config_hash)  # the same results, in a larger grid
            elif stored_hash != config_hash:  # run.json was replaced by hand: the store still decides
                raise ConfigMismatchError(f"store.sqlite holds results of config {stored_hash}, "
                                          f"run.json says {config_hash}; use a new --out", path=out)
            cleanup_partial(out)
            return _run_cells(out, store, info, config, config_hash, prepared, data_args, draws, backend,
                              executor, workers=workers, ray_address=ray_address, cpus_per_cell=cpus_per_cell,
                              gpus_per_cell=gpus_per_cell, prep_cpus=prep_cpus, keep_models=keep_models,
                              progress=progress, log=log, t_start=t_start)
        finally:
            store.close()


def _run_cells(out: Path, store: ResultStore, info: dict[str, Any], config: CurveConfig, config_hash: str,
               prepared: Any, data_args: dict[str, Any], draws: dict[tuple[int, int], dict[str, Any]],
               backend: Any, executor: str | Executor, *, workers: int, ray_address: str | None,
               cpus_per_cell: int, gpus_per_cell: float | None, prep_cpus: int, keep_models: str,
               progress: bool | None, log: Log | None, t_start: float) -> RunResult:
    say: Log = log or (lambda line: None)
    cells = config.cells()
    done = store.done_keys()
    resumed = sum(1 for c in cells if c in done)
    if resumed:
        say(f"resuming: {resumed} of {len(cells)} cells already done")
    for cell in cells:  # sizes a class cannot supply: a row that says so, once
        d = _draw_of(draws, cell)
        if "skipped" in d and cell not in done:
            store.add({"strategy": cell.strategy, "n_per_class": cell.n_per_class, "repeat": cell.repeat,
                       "seed": train_seed(config.seed, cell.repeat, cell.n_per_class),
                       "draw_seed": d["draw_seed"], "status": "skipped", "error": d["skipped"],
                       "config_hash": config_hash, **_row_extra(cell, d)})
    done = store.done_keys()
    pending = [c for c in cells if c not in done]
    ran = 0
    fingerprint = config.data_fingerprint
    # Workers open the data by the run's plan: the same test set and pool, never drawn again.
    data_args = {**data_args, "plan": str((out / PLAN_FILE).resolve())}
    threads_before = None
    if pending:
        import torch  # the in-process executor changes this process's threads; put them back after

        threads_before = torch.get_num_threads()
        ex = executor if not isinstance(executor, str) else make_executor(
            executor, workers=workers, ray_address=ray_address, cpus_per_cell=cpus_per_cell,
            gpus_per_cell=gpus_per_cell, threads=cpus_per_cell)
        prime_data(data_args, prepared)
        bar = Progress(len(cells), len(cells) - len(pending), progress, log)
        try:
            used = {prep_key(config, c.strategy, c.repeat) for c in store.keys("ok")}
            specs, prep_errors = _prepare(out, ex, config, data_args, fingerprint, backend, pending,
                                          prep_cpus, info, used, say)
            bar.restart_clock()
            tasks, ready = [], []
            for cell in pending:
                d = _draw_of(draws, cell)
                key = prep_key(config, cell.strategy, cell.repeat)
                task = CellTask(
                    cell=cell, seed=train_seed(config.seed, cell.repeat, cell.n_per_class),
                    draw_seed=d["draw_seed"], labelled_ids=tuple(d["ids"]), train_ids=tuple(d["train"]),
                    val_ids=tuple(d["val"]), spec=specs.get(key, config.spec_of(cell.strategy)),
                    finetune=config.finetune, data_args=data_args, fingerprint=fingerprint,
                    config_hash=config_hash,
                    keep_model=keep_models == "all" or (keep_models == "first" and cell.repeat == 0),
                    backend=backend, threads=cpus_per_cell, row_extra=_row_extra(cell, d))
                (tasks if key in prep_errors else ready).append(task)
            for task in tasks:  # a strategy whose preparation failed: its cells fail with that reason
                reason = prep_errors[prep_key(config, task.cell.strategy, task.cell.repeat)]
                _record(out, store, _failed_output(task, reason), bar)
                ran += 1
            ready = _share_data(ex, prepared, ready)
            for task, result in map_cells(ex, ready, device=str(config.finetune.get("device", "auto"))):
                output = result if isinstance(result, CellOutput) else _failed_output(task, result)
                _stop_if_disk_full(out, output)
                _record(out, store, output, bar)
                ran += 1
        finally:
            bar.close()
            if isinstance(executor, str):  # ours to close; an executor passed in is the caller's
                ex.close()
            if threads_before is not None:
                torch.set_num_threads(threads_before)
            store.export_csv()
            finish_run_json(out, info, store, len(cells))
    else:
        store.export_csv()
        finish_run_json(out, info, store, len(cells))
        say("nothing to do: every cell is done")

    rows = store.rows()
    failed = [r for r in rows if r["status"] == "failed"]
    counts = store.counts()
    seconds = time.perf_counter() - t_start
    say(f"{counts['ok']} cells ok, {counts['failed']} failed, {counts['skipped']} skipped "
        f"({ran} run now, {duration(seconds)})")
    for row in failed:
        say(f"failed: {row['strategy']} n={row['n_per_class']} r={row['repeat']}: {row['error']}")
    return RunResult(run_dir=out, results_csv=out / CSV_FILE, config_hash=config_hash, rows=rows,
                     counts=counts, ran=ran, resumed=resumed, seconds=seconds, failed=failed)


def _record(out: Path, store: ResultStore, output: CellOutput, bar: Progress) -> None:
    """Files first, then the row (one transaction), then the CSV: a kill in between loses this cell only."""
    row = output.row
    if row["status"] == "ok":
        write_cell_files(out, Cell(row["strategy"], row["n_per_class"], row["repeat"]), output.files)
    store.add(row)
    store.export_csv()
    bar.update(cell_line(row))


def _stop_if_disk_full(out: Path, output: CellOutput) -> None:
    """A cell that failed for a full disk stops the sweep, its cell left pending: every later cell
    would fail the same way, and the same command resumes once space is freed."""
    row = output.row
    if row["status"] == "failed" and is_disk_full(RuntimeError(row.get("error") or "")):
        raise DiskFullError(path=out)


def _share_data(ex: Executor, prepared: Any, tasks: list[CellTask]) -> list[CellTask]:
    """On Ray: decode the images the cells need once in the driver and hand every worker the prepared
    data through the object store, instead of each worker re-opening and re-decoding the data set."""
    if not isinstance(ex, RayExecutor) or not tasks or not hasattr(prepared, "share_arrays"):
        return tasks
    ids = list(prepared.test_ids) + [i for t in tasks for i in (*t.train_ids, *t.val_ids)]
    prepared.share_arrays(ids)
    if any(_trains_on_pool(t) for t in tasks):
        prepared.unlabelled_arrays()  # built once here, shipped with the rest
    ref = ex.share(prepared)
    return [dataclasses.replace(t, shared_data=ref) for t in tasks]


def _unlabelled_fingerprint(prepared: Any) -> str | None:
    """The pool's fingerprint as the prepared data gives it (in its plan's kind), else the pool's own."""
    own = getattr(prepared, "unlabelled_fingerprint", None)
    return own() if callable(own) else fingerprint_of(getattr(prepared, "unlabelled", None))


def _trains_on_pool(task: CellTask) -> bool:
    """FixMatch or self-training: the cell's fine-tuning reads the unlabelled pool."""
    from fewlabel.training.recipe import recipe_over

    per_label = recipe_over(task.finetune, task.spec.get("finetune") or {}).get("pseudo_per_label") or 0
    return bool(task.spec.get("semi")) or float(per_label) > 0


def prep_key(config: CurveConfig, arm: str, repeat: int) -> str:
    """Which preparation a cell uses: one per strategy, or one per strategy and repeat (the arms of a
    strategy share it: a selection rule changes the labelled images, not the encoder)."""
    strategy = arm_parts(arm)[0]
    entry = strategy_registry.REGISTRY.get(strategy)
    if config.pretrain_per_repeat and entry is not None and entry.prepare:
        return f"{strategy}@r{repeat}"
    return strategy


def _prepare(out: Path, ex: Executor, config: CurveConfig, data_args: dict[str, Any], fingerprint: str,
             backend: Any, pending: list[Cell], prep_cpus: int, info: dict[str, Any], used: set[str],
             say: Log) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Prepare every strategy (or strategy and repeat) that has cells left, once per run; returns the
    prepared specs and errors, keyed by ``prep_key``."""
    keys: dict[str, tuple[str, int | None]] = {}
    for c in sorted(pending, key=lambda c: (config.strategies.index(arm_parts(c.strategy)[0]), c.repeat)):
        key = prep_key(config, c.strategy, c.repeat)
        strategy = arm_parts(c.strategy)[0]
        keys.setdefault(key, (strategy, c.repeat if key != strategy else None))
    cache_dir = out / "pretrained"
    cache_dir.mkdir(parents=True, exist_ok=True)
    specs: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for key in keys:
        pinned = pinned_preparation(out, info, key, used)
        if pinned is not None:
            specs[key] = pinned
    tasks = [PretrainTask(strategy=key, spec=config.strategy_specs[name], cache_dir=str(cache_dir.resolve()),
                      seed=pretrain_seed(config.seed, repeat), data_args=data_args, fingerprint=fingerprint,
                      backend=backend, threads=prep_cpus)
             for key, (name, repeat) in keys.items() if key not in specs]
    if not tasks:
        return specs, errors
    heavy = [t.strategy for t in tasks if strategy_registry.REGISTRY.get(t.spec.get("name", ""))
             and strategy_registry.REGISTRY[t.spec["name"]].prepare]
    if heavy:
        say(f"preparing {', '.join(heavy)} (cached in {cache_dir}) ...")
    if isinstance(ex, RayExecutor):
        # Pretraining is the heavy part: on a cluster it runs as tasks too, with a whole GPU if cells use one.
        cpus = min(prep_cpus, ex.cluster_cpus())
        tasks = [PretrainTask(**{**t.__dict__, "threads": cpus}) for t in tasks]
        results = ex.map(run_pretraining, tasks, num_cpus=cpus, num_gpus=1.0 if ex.gpus_per_task else 0.0)
    else:
        results = _in_process(run_pretraining, tasks)
    for task, result in results:
        if isinstance(result, BaseException):
            reason = f"{type(result).__name__}: " + " ".join(str(result).split())
            errors[task.strategy] = f"preparation of {task.strategy} failed: {reason}"
            say(errors[task.strategy])
            continue
        specs[task.strategy] = result["spec"]
        info.setdefault("preparations", {})[task.strategy] = {"spec": weights_relative(result["spec"], out),
                                                              "seconds": round(result["seconds"], 2)}
        if result["spec"] != task.spec:  # scratch / imagenet come back unchanged: nothing to say
            say(f"prepared {task.strategy} in {result['seconds']:.1f} s")
        atomic_write_json(out / RUN_FILE, info)  # pinned at once: a kill later cannot lose it
    return specs, errors


def _in_process(fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    for task in tasks:
        try:
            yield task, fn(task)
        except Exception as exc:
            yield task, exc


class Curve:
    """The same as ``run_curve``, configured once and run on data (scikit-learn style)::

        curve = Curve(strategies=["scratch", "ssl"], sizes=[2, 5, 20], repeats=3)
        result = curve.run("data/pbc", out="runs/pbc")
        print(result.table())
    """

    def __init__(self, strategies: str | Sequence[str] | None = None,
                 sizes: str | Sequence[int] = (1, 2, 5, 10, 20, 50), repeats: int = 6,
                 **options: Any) -> None:
        self.strategies = strategies
        self.sizes = sizes
        self.repeats = repeats
        self.options = options
        self.result_: RunResult | None = None

    def run(self, data: str | Path, out: str | Path, **overrides: Any) -> RunResult:
        self.result_ = run_curve(data, out, self.strategies, self.sizes, self.repeats,
                                 **{**self.options, **overrides})
        return self.result_
