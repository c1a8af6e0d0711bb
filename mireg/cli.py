"""The ``mireg`` command line: the only module that prints, draws progress or exits.

One error boundary (:func:`main`): a :class:`~mireg.errors.MiregError` prints one readable message
to stderr and exits 1; bad usage exits 2 (Typer); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mireg import __version__, registry
from mireg.contract import DatasetConfig
from mireg.errors import MiregError
from mireg.train import Observer

app = typer.Typer(
    name="mireg",
    help="Semi-supervised medical image segmentation with mutual-information regularisation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


class _ProgressReporter:
    """Adapts ``progress(done, total, description)`` callbacks to one rich task per description."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, done: int, total: int, description: str) -> None:
        if description not in self.tasks:
            self.tasks[description] = self.bar.add_task(description, total=total, info="")
        self.bar.update(self.tasks[description], completed=done, total=total)


# --------------------------------------------------------------------------------------- tables


def dice_table(report: dict[str, Any], title: str) -> Table:
    """Per structure x (ED, ES, all): mean +- std of the 3D DSC."""
    summary = report["summary"]
    phases = list(summary["by_phase"])
    table = Table(title=title)
    table.add_column("structure")
    for phase in [*phases, "all"]:
        table.add_column(f"DSC {phase}", justify="right")
    for structure in [*report["classes"], "mean"]:
        cells = []
        for block in [*(summary["by_phase"][p] for p in phases), summary["dice"]]:
            s = block[structure]
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
        style = "bold" if structure == "mean" else None
        table.add_row(structure, *cells, style=style)
    table.caption = f"{summary['volumes']} volumes, DSC in %"
    return table


# ------------------------------------------------------------------------------------- commands


@app.command()
def plugins() -> None:
    """List installed backbones, datasets and regularisers, with their distribution and version."""
    table = Table(title="mireg plugins")
    for column in ("kind", "name", "distribution", "version", "status"):
        table.add_column(column)
    for info, error in registry.plugin_status():
        status = "[green]ok[/]" if error is None else f"[red]broken:[/] {error}"
        table.add_row(info.kind, info.name, info.distribution, info.version, status)
    console.print(table)


@app.command()
def preprocess(
    dataset: Annotated[str, typer.Argument(help="Dataset plugin that reads RAW (e.g. acdc).")],
    raw: Annotated[Path, typer.Argument(help="Folder with the raw data set.")],
    out: Annotated[Path, typer.Argument(help="Store folder to create (must not exist).")],
    spacing: Annotated[float, typer.Option(help="Target in-plane spacing in mm.")] = 1.0,
    canvas: Annotated[int, typer.Option(help="Side of the square slices (multiple of 16).")] = 384,
) -> None:
    """Turn a raw data set (e.g. the ACDC download) into a preprocessed store for training."""
    if spacing <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--spacing")
    if canvas < 16 or canvas % 16:
        raise typer.BadParameter("must be a positive multiple of 16", param_hint="--canvas")
    config = registry.load("dataset", dataset)
    assert issubclass(config, DatasetConfig)  # the registry checks each kind's base class
    if not config.can_preprocess:
        raise MiregError(f"dataset {dataset!r} has no preprocess step",
                         f"datasets that have one: {', '.join(_preprocessable())}")
    started = time.perf_counter()
    with _progress() as bar:
        store = config.preprocess(raw, out, spacing=spacing, canvas=canvas,
                                  progress=_ProgressReporter(bar))
    labeled = sum(v.labeled for v in store.volumes)
    spacings = [v.spacing for v in store.volumes]
    console.print(
        f"[green]wrote[/] {out}: {len(store.patients)} patients, {len(store.volumes)} volumes "
        f"({labeled} labelled), {store.images.shape[0]} slices of {canvas}x{canvas} at "
        f"{spacing:g} mm; classes {', '.join(store.classes)}; original spacing "
        f"{min(s[0] for s in spacings):.2f}-{max(s[0] for s in spacings):.2f} mm in-plane, "
        f"{min(s[2] for s in spacings):.1f}-{max(s[2] for s in spacings):.1f} mm between slices "
        f"({time.perf_counter() - started:.1f} s)"
    )


def _preprocessable() -> list[str]:
    names = []
    for name in registry.available("dataset"):
        try:
            config = registry.load("dataset", name)
            if issubclass(config, DatasetConfig) and config.can_preprocess:
                names.append(name)
        except MiregError:
            continue
    return names


class _RichObserver(Observer):
    """Renders the training loop's progress with rich."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.prepare = _ProgressReporter(bar)
        self.task: TaskID | None = None

    def message(self, text: str) -> None:
        self.bar.console.print(text)

    def progress(self, done: int, total: int, description: str) -> None:
        self.prepare(done, total, description)

    def epoch_start(self, epoch: int, epochs: int, iterations: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"epoch {epoch + 1}/{epochs}", total=iterations, info="")

    def step(self, done: int, logs: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if "/" not in k)
        assert self.task is not None
        self.bar.update(self.task, completed=done, info=shown)

    def epoch_end(self, row: dict[str, Any]) -> None:
        val = row.get("val_dice/mean", float("nan"))
        best = " [green](best)[/]" if row.get("best") else ""
        self.bar.console.print(
            f"epoch {row['epoch']}: lr {row['lr']:.3g}  loss {row.get('loss/total', float('nan')):.4g}"
            f"  val DSC {100 * val:.1f}{best}  ({row['seconds']:.0f} s)"
        )


@app.command()
def train(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe TOML file.")],
    overrides: Annotated[
        Optional[list[str]],  # noqa: UP045 (Typer needs Optional here)
        typer.Option("--set", "-s", help="Override a recipe value: key.path=value (repeatable)."),
    ] = None,
    fresh: Annotated[bool, typer.Option(
        help="If the run directory exists, start a new numbered one beside it.")] = False,
) -> None:
    """Train a recipe into runs/<name>/ and report the test-set DSC."""
    from mireg.recipe import load_recipe
    from mireg.runs import prepare_run_dir
    from mireg.train import Trainer

    recipe = load_recipe(recipe_path, overrides or [])
    run_dir = prepare_run_dir(recipe.train.runs_dir, recipe.name, fresh)
    console.print(f"run directory: {run_dir}")
    started = time.perf_counter()
    with _progress() as bar:
        trainer = Trainer(recipe, run_dir, _RichObserver(bar))
        trainer.setup()
        report = trainer.fit()
    console.print(dice_table(report, f"{recipe.name}: test set, best checkpoint "
                                     f"(epoch {report['epoch']})"))
    console.print(f"done in {time.perf_counter() - started:.0f} s; report: {run_dir / 'report.json'}")


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory made by `mireg train`.")],
    split: Annotated[str, typer.Option(help="test or validation.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best, last, or a .pt file name in the run.")] = "best",
) -> None:
    """Re-evaluate a run's checkpoint on its test (or validation) split and print the DSC table."""
    from mireg.evaluate import evaluate_volumes, write_report
    from mireg.runs import load_trained, read_split
    from mireg.train import resolve_device

    if split not in ("test", "validation"):
        raise typer.BadParameter("must be test or validation", param_hint="--split")
    if not run_dir.is_dir():
        raise MiregError(f"{run_dir}: no such run directory")
    device = resolve_device("auto")
    trained = load_trained(run_dir, device, checkpoint)
    patients = getattr(read_split(run_dir), split)
    with _progress() as bar:
        store = trained.recipe.data.load(_ProgressReporter(bar))
    images, labels = store.tensors(device)
    results = evaluate_volumes(trained.model, store, images, labels, patients,
                               trained.recipe.train.eval_batch, trained.recipe.train.precision)
    name = "report.json" if (split, checkpoint) == ("test", "best") else \
        f"report_{split}_{Path(checkpoint).stem}.json"
    meta = {"run": trained.recipe.name, "split": split, "checkpoint": trained.checkpoint.name,
            "epoch": trained.state["epoch"]}
    report = write_report(run_dir / name, results, store.classes, meta)
    console.print(dice_table(report, f"{trained.recipe.name}: {split} set, {trained.checkpoint.name}"
                                     f" (epoch {trained.state['epoch']})"))
    console.print(f"report: {run_dir / name}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files or folders of them.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    checkpoint: Annotated[str, typer.Option(help="best or last (for a run directory).")] = "best",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Segment NIfTI scans; each label map keeps its input's shape and geometry."""
    from mireg.predict import collect_inputs, predict_files
    from mireg.runs import load_trained
    from mireg.train import resolve_device

    files = collect_inputs(inputs)
    trained = load_trained(run, resolve_device(device), checkpoint)
    with _progress() as bar:
        written = predict_files(trained, files, out_dir, trained.recipe.train.eval_batch,
                                _ProgressReporter(bar))
    console.print(f"[green]wrote[/] {len(written)} label maps to {out_dir}")


def _version(value: bool) -> None:
    if value:
        console.print(f"mireg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """mireg: train segmentation networks from a few labelled and many unlabelled scans."""


def main() -> None:
    """Entry point of the ``mireg`` script: the single error boundary."""
    try:
        app()
    except MiregError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err_console.print(f"[dim]hint: {exc.hint}[/]", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]; checkpoints already written are intact")
        sys.exit(130)


__all__ = ["app", "dice_table", "main"]
