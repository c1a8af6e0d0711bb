"""The ``mireg`` command line: the only module that prints, draws progress or exits.

One error boundary (:func:`main`): a :class:`~mireg.errors.MiregError` prints one readable message
to stderr and exits 1; bad usage exits 2 (Typer); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console, Group
from rich.markup import escape
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
from rich.text import Text

from mireg import __version__, host_memory, registry
from mireg.errors import MiregError, RunInterrupted
from mireg.interrupts import interrupts_raised
from mireg.progress import Observer

if TYPE_CHECKING:
    pass

# Help, --version and `plugins` import nothing heavy: whatever pulls in torch (mireg.contract,
# mireg.training, mireg.evaluation.evaluate, the data modules) is imported by the command that uses it.

app = typer.Typer(
    name="mireg",
    help="Semi-supervised medical image segmentation with mutual-information regularisation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)


def _progress(remaining: bool = True) -> Progress:
    """A progress bar; ``remaining=False`` leaves out rich's time estimate, which needs several
    updates within half a minute (for stages whose steps take minutes, give the estimate in the
    task's ``info``)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, TextColumn("{task.fields[info]}"), console=console, transient=False)


class _ProgressReporter:
    """Adapts ``progress(done, total, description)`` callbacks to one rich task per description (shown
    as written: a folder's name may hold brackets)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, done: int, total: int, description: str) -> None:
        if description not in self.tasks:
            self.tasks[description] = self.bar.add_task(escape(description), total=total, info="")
        self.bar.update(self.tasks[description], completed=done, total=total)


# --------------------------------------------------------------------------------------- tables


# The tables' content comes from mireg.evaluation.report (cells with a line break before "(n undef.)"); these
# only draw it, compactly enough for an 80-column terminal: no vertical rules, and a value never
# wraps (only the first column, the row names, may).


def metrics_tables(report: dict[str, Any], title: str) -> Group:
    """``title``, then a report's DSC and HD95 tables (structure x phase, mean ± std), then its note."""
    from mireg.evaluation.report import summary_note, summary_tables

    parts: list[Table | Text] = [Text(title, style="bold")]
    for table in summary_tables(report, ("dice", "hd95"), sep="\n"):
        parts += [Text(), _plain_table(table.header, table.rows, table.title, bold_last=True)]
    return Group(*parts, Text(), Text(summary_note(report), style="dim"))


def _plain_table(header: list[str], rows: list[list[str]], title: str, bold_last: bool = False) -> Table:
    """Text cells drawn with rich; ``bold_last`` sets off a closing summary row (the mean)."""
    table = Table(
        title=escape(title), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1)
    )
    table.add_column(escape(header[0]), overflow="fold")
    for column in header[1:]:
        table.add_column(escape(column), justify="right", overflow="fold")
    for i, row in enumerate(rows):
        table.add_row(*map(escape, row), style="bold" if bold_last and i == len(rows) - 1 else None)
    return table


# ------------------------------------------------------------------------------------- commands


@app.command()
def plugins(
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Import every plugin and show whether it loads (slower: imports torch)."
        ),
    ] = False,
) -> None:
    """List installed backbones, datasets, regularisers and file formats: distribution, version, target.

    Listing imports no plugin; --check imports each one and adds its status (ok, or why it is broken).
    """
    table = Table(title="mireg plugins")
    for column in ("kind", "name", "distribution", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("target", overflow="fold")  # what wraps in a narrow terminal
    if not check:
        for info in registry.installed():
            table.add_row(info.kind, info.name, info.distribution, info.version, escape(info.value))
        console.print(table)
        return
    table.add_column("status")
    for info, error in registry.plugin_status():
        status = "[green]ok[/]" if error is None else f"[red]broken:[/] {escape(error)}"
        table.add_row(info.kind, info.name, info.distribution, info.version, escape(info.value), status)
    console.print(table)


@app.command()
def preprocess(
    dataset: Annotated[str, typer.Argument(help="Dataset plugin that reads RAW (acdc, acdc-png, msd).")],
    raw: Annotated[Path, typer.Argument(help="Folder with the raw data set.")],
    out: Annotated[Path, typer.Argument(help="Store folder to create (must not exist).")],
    spacing: Annotated[float, typer.Option(help="Target in-plane spacing in mm.")] = 1.0,
    canvas: Annotated[int, typer.Option(help="Side of the square slices (multiple of 16).")] = 384,
    option: Annotated[
        Optional[list[str]],
        typer.Option("--option", "-O", help="Dataset option key=value, e.g. -O channel=T2 (repeatable)."),
    ] = None,
    unlabeled: Annotated[
        Optional[list[Path]],
        typer.Option(help="A folder of NIfTI scans without labels to add as unlabelled data (repeatable)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", "-j", min=1, help="Volumes read and preprocessed in parallel processes."),
    ] = 1,
) -> None:
    """Turn a raw data set (e.g. the ACDC download) into a preprocessed store for training.

    Volumes are written to the store as they are read, so memory does not grow with the data set;
    the store appears only when complete (an error, Ctrl-C or SIGTERM leaves nothing behind).
    """
    _require_torch("mireg preprocess")
    from mireg.data.prepare import prepare_store

    options = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint="--option")
        options[key.strip()] = value.strip()
    started = time.perf_counter()
    with _progress() as bar, interrupts_raised():
        store, written = prepare_store(
            dataset, raw, out, spacing, canvas, options, unlabeled or [], _ProgressReporter(bar), workers
        )
    if not written:
        console.print(f"{out} is up to date (made from the same input with the same options)", markup=False)
        return
    seconds = time.perf_counter() - started
    console.print(f"[green]wrote[/] {escape(str(out))}: {escape(store.summary())} ({seconds:.1f} s)")


class _RichObserver(Observer):
    """Renders the training loop's progress with rich."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.prepare = _ProgressReporter(bar)
        self.task: TaskID | None = None

    def message(self, text: str) -> None:
        self.bar.console.print(text, markup=False)

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

    def stopping(self, signal_name: str) -> None:
        err_console.print(
            f"[yellow]{signal_name}: saving a checkpoint after this step (Ctrl-C again to stop at once)[/]"
        )


# Parameters that `train` and `nnunet` share.
_RecipeArgument = Annotated[
    Optional[Path], typer.Argument(metavar="[RECIPE]", help="Recipe TOML file (not with --resume).")
]
_Overrides = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe value: key.path=value (repeatable)."),
]
_Fresh = Annotated[
    bool, typer.Option(help="If the run directory exists, start a new numbered one beside it.")
]


def _recipe_or_resume(
    recipe_path: Optional[Path], overrides: Optional[list[str]], fresh: bool, resume: Optional[Path]
) -> None:
    """A recipe (with overrides, --fresh) or --resume RUN_DIR alone.

    Raises:
        typer.BadParameter: Both, or neither.
    """
    if resume is not None and (recipe_path is not None or overrides or fresh):
        raise typer.BadParameter(
            "--resume takes the run directory only: its recipe is used as is", param_hint="--resume"
        )
    if resume is None and recipe_path is None:
        raise typer.BadParameter("give a recipe file, or --resume RUN_DIR", param_hint="RECIPE")


@app.command()
def train(
    recipe_path: _RecipeArgument = None,
    overrides: _Overrides = None,
    fresh: _Fresh = False,
    resume: Annotated[
        Optional[Path],
        typer.Option(metavar="RUN_DIR", help="Continue an interrupted run from its last checkpoint."),
    ] = None,
) -> None:
    """Train a recipe into runs/<name>/ and report the test-set metrics.

    Under torchrun (torchrun --nproc-per-node N -m mireg train RECIPE) the N processes train one run
    with data-parallel DDP; rank 0 writes the run directory and prints.
    """
    _require_torch("mireg train")
    from mireg.recipe import load_recipe
    from mireg.training.workflow import train as train_run

    _recipe_or_resume(recipe_path, overrides, fresh, resume)
    recipe = None if recipe_path is None else load_recipe(recipe_path, overrides or [])
    console.quiet = _rank() != 0  # in a torchrun job only rank 0 prints
    started = time.perf_counter()
    with _progress() as bar:
        trained = train_run(recipe, resume, fresh, _RichObserver(bar))
    if not trained.is_main:
        return
    report, run = trained.report, trained.run
    console.print(
        metrics_tables(report, f"{trained.recipe.name}: test set, best checkpoint (epoch {report['epoch']})")
    )
    last = run.report_file("test", "last")
    also = f" (the last checkpoint's: {last.name})" if last.is_file() else ""
    console.print(
        f"done in {time.perf_counter() - started:.0f} s; report: {run.file(run.REPORT)}{also}", markup=False
    )


@app.command()
def nnunet(
    recipe_path: _RecipeArgument = None,
    overrides: _Overrides = None,
    fresh: _Fresh = False,
    resume: Annotated[
        Optional[Path],
        typer.Option(metavar="RUN_DIR", help="Continue a stopped nnU-Net run where it stopped."),
    ] = None,
) -> None:
    """Train nnU-Net v2 (2d) on a recipe's labelled patients and budget; score it like a mireg run.

    The recipe gives the data, the split, epochs x iterations, the device and the test-time flips;
    nnU-Net plans, preprocesses and trains as it does (needs: pip install 'mireg\\[nnunet]').
    """
    _require_torch("mireg nnunet")
    from mireg.nnunet.workflow import train_nnunet
    from mireg.recipe import load_recipe

    _recipe_or_resume(recipe_path, overrides, fresh, resume)
    recipe = None if recipe_path is None else load_recipe(recipe_path, overrides or [])
    started = time.perf_counter()
    with _progress() as bar:
        run, report = train_nnunet(recipe, resume, fresh, _RichObserver(bar))
    console.print(metrics_tables(report, f"{run.path.name}: test set, nnU-Net (checkpoint_final)"))
    console.print(
        f"done in {time.perf_counter() - started:.0f} s; report: {run.file(run.REPORT)}", markup=False
    )


@app.command("eval")
def evaluate(
    runs: Annotated[
        Optional[list[Path]],
        typer.Argument(metavar="[RUN_DIR]...", help="Run directory (or several, with --compare)."),
    ] = None,
    split: Annotated[str, typer.Option(help="test or validation.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best, last, or a .pt file name in the run.")] = "best",
    overlays: Annotated[bool, typer.Option(help="Also write a PNG overlay per volume.")] = False,
    pred: Annotated[
        Optional[Path],
        typer.Option(help="Folder of predicted NIfTI label maps (with --gt)."),
    ] = None,
    gt: Annotated[
        Optional[Path],
        typer.Option(help="Folder of ground-truth NIfTI label maps with the same file names."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(help="Output file: JSON for --pred/--gt, Markdown for --compare."),
    ] = None,
    compare: Annotated[
        bool, typer.Option(help="Side-by-side table of the test reports of the runs given, in that order.")
    ] = False,
    tta: Annotated[
        Optional[bool],
        typer.Option(
            "--tta/--no-tta", help="Flip test-time augmentation (default: the recipe's \\[inference])."
        ),
    ] = None,
    keep_largest: Annotated[
        Optional[bool],
        typer.Option(
            "--keep-largest/--no-keep-largest",
            help="Keep the largest 3D component of each structure (default: the recipe's \\[inference]).",
        ),
    ] = None,
) -> None:
    """Evaluate a run (3D DSC, HD95, HD, ASSD), a folder of predictions, or compare runs.

    With --tta or --keep-largest other than the recipe's defaults, the report of a run is named after
    them (report_test_best_tta.json), beside the training report.
    """
    if (pred is None) != (gt is None):
        raise typer.BadParameter("--pred and --gt go together", param_hint="--pred/--gt")
    if pred is not None and gt is not None:
        if runs or compare:
            raise typer.BadParameter("--pred/--gt take no run directories", param_hint="--pred/--gt")
        _eval_folders(pred, gt, out)
    elif compare:
        if not runs:
            raise typer.BadParameter("give the run directories to compare", param_hint="RUN_DIR")
        _compare(runs, out or Path("comparison.md"))
    else:
        if not runs or len(runs) != 1:
            raise typer.BadParameter(
                "give one run directory (or --compare, or --pred/--gt)", param_hint="RUN_DIR"
            )
        if split not in ("test", "validation"):
            raise typer.BadParameter("must be test or validation", param_hint="--split")
        _require_torch("mireg eval RUN_DIR")
        _eval_run(runs[0], split, checkpoint, overlays, tta, keep_largest)
        return
    if tta is not None or keep_largest is not None:
        raise typer.BadParameter("--tta and --keep-largest evaluate a run directory", param_hint="--tta")


def _require_torch(what: str) -> None:
    """A clear error, instead of a ``ModuleNotFoundError`` traceback, where torch is not installed
    (the torch-free runtime install, which predicts with exported models only)."""
    try:
        import torch  # noqa: F401 (the command imports it next anyway)
    except ImportError:
        from mireg.errors import MiregError

        raise MiregError(
            f"{what} needs torch, which is not installed (this is the runtime install, which "
            "predicts with exported models only)",
            "install the full mireg (pip install mireg) for training, evaluation and export",
        ) from None


def _eval_run(
    run_dir: Path, split: str, checkpoint: str, overlays: bool, tta: bool | None, keep_largest: bool | None
) -> None:
    from mireg.plots import save_overlay
    from mireg.training.evaluation import evaluate_run
    from mireg.training.rundir import RunDir

    run = RunDir.open(run_dir)
    with _progress() as bar:

        def on_volume(volume: Any, image: Any, prediction: Any, truth: Any) -> None:
            save_overlay(run.overlays(split) / f"{volume.id}.png", image, prediction, truth, volume.id)

        report, paths = evaluate_run(
            run,
            split,
            checkpoint,
            progress=_ProgressReporter(bar),
            on_volume=on_volume if overlays else None,
            tta=tta,
            keep_largest=keep_largest,
        )
    used = [name for name, on in report["inference"].items() if on]
    console.print(
        metrics_tables(
            report,
            f"{report['run']}: {split} set, {report['checkpoint']} (epoch {report['epoch']})"
            + (f", {' + '.join(used)}" if used else ""),
        )
    )
    console.print(f"reports: {', '.join(str(p) for p in paths)}", markup=False)
    if overlays:
        console.print(f"overlays: {run.overlays(split)}", markup=False)


def _eval_folders(pred: Path, gt: Path, out: Path | None) -> None:
    import json

    from mireg.evaluation.evaluate import evaluate_folders
    from mireg.evaluation.report import folder_rows
    from mireg.files import atomic_write_text

    with _progress() as bar:
        result = evaluate_folders(pred, gt, progress=_ProgressReporter(bar))
    header, rows = folder_rows(result, sep="\n")
    console.print(_plain_table(header, rows, f"{len(result['cases'])} cases: {pred} vs {gt}"))
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
        console.print(f"report: {out}", markup=False)


def _compare(runs: list[Path], out: Path) -> None:
    from mireg.evaluation.report import comparison_rows, markdown_table
    from mireg.files import atomic_write_text
    from mireg.training.evaluation import read_run_report

    reports = [(run.name, read_run_report(run)) for run in runs]
    header, rows = comparison_rows(reports, sep="\n")
    console.print(_plain_table(header, rows, "test set, all phases (mean ± std over volumes)"))
    atomic_write_text(out, markdown_table(header, rows))
    console.print(f"table: {out}", markup=False)


@app.command()
def predict(
    run: Annotated[
        Path, typer.Argument(help="Run directory, checkpoint file, or exported model (model.onnx).")
    ],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="NIfTI files, folders of them, or folders of DICOM series (and formats plugins add)."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    checkpoint: Annotated[str, typer.Option(help="best or last (for a run directory).")] = "best",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (an ONNX model runs on the CPU).")] = "auto",
    output_format: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            help="nifti or seg (DICOM Segmentation), or a writer a plugin adds; default: seg for DICOM, "
            "nifti otherwise.",
        ),
    ] = None,
    series: Annotated[
        Optional[str],
        typer.Option(metavar="UID", help="The SeriesInstanceUID to segment in folders holding several."),
    ] = None,
    tta: Annotated[
        Optional[bool],
        typer.Option("--tta/--no-tta", help="Flip test-time augmentation (default: the model's)."),
    ] = None,
    keep_largest: Annotated[
        Optional[bool],
        typer.Option(
            "--keep-largest/--no-keep-largest",
            help="Keep the largest 3D component of each structure (default: the model's).",
        ),
    ] = None,
    save_probabilities: Annotated[
        bool, typer.Option(help="Also write the class probabilities (NAME_probabilities.nii.gz).")
    ] = False,
    overlay: Annotated[bool, typer.Option(help="Also write PNG overlays to OUT_DIR/overlays/.")] = False,
    frames: Annotated[
        Optional[str],
        typer.Option(help="Cine scans: the frames to segment, from 1 (e.g. 1,12 or 1-5); default: all."),
    ] = None,
    ed: Annotated[
        Optional[int], typer.Option(min=1, help="Cine scans: the end-diastole frame (for the EF).")
    ] = None,
    es: Annotated[Optional[int], typer.Option(min=1, help="Cine scans: the end-systole frame.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace output files that exist already (inputs are never written).")
    ] = False,
) -> None:
    """Segment NIfTI scans or DICOM series; each label map keeps its input's grid and geometry.

    DICOM series give DICOM Segmentation objects that reference them (or NIfTI with --format nifti).
    Cine scans (4D NIfTI, DICOM with several frames per position) are segmented frame by frame.
    OUT_DIR/volumes.csv gets each structure's volume (ml). An exported ONNX model (mireg export)
    runs through ONNX Runtime, without torch.
    """
    from mireg.io.cine import parse_frames
    from mireg.predict import FrameChoice, collect_inputs, load_predictor, predict_scans

    writers = registry.available("writer")
    if output_format is not None and output_format not in writers:
        raise typer.BadParameter(f"must be one of {', '.join(writers)}", param_hint="--format")
    choice = FrameChoice(tuple(parse_frames(frames)) if frames is not None else None, ed, es)
    scans = collect_inputs(inputs, series)
    predictor = load_predictor(run, checkpoint, device)
    options = predictor.options.overridden(tta, keep_largest)
    with _progress() as bar:
        written = predict_scans(
            predictor,
            scans,
            out_dir,
            output_format,
            options,
            save_probabilities,
            overlay,
            _ProgressReporter(bar),
            choice,
            overwrite,
        )
    console.print(f"[green]wrote[/] {len(written)} label maps and volumes.csv to {escape(str(out_dir))}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Network file to write (model.onnx).")],
    checkpoint: Annotated[str, typer.Option(help="best or last (for a run directory).")] = "best",
    export_format: Annotated[
        str, typer.Option("--format", help="onnx or torchscript, or an exporter a plugin adds.")
    ] = "onnx",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export at OUT and its card.")] = False,
) -> None:
    """Export a trained network (ONNX or TorchScript) and its model card (OUT with .json).

    The card holds what prediction needs besides the network: spacing, canvas, intensity
    normalisation, classes, default inference options, versions and checksums. `mireg predict
    model.onnx SCANS -o OUT` then runs it without torch.
    """
    _require_torch("mireg export")
    from mireg.export.exporters import export_run

    exporters = registry.available("exporter")
    if export_format not in exporters:
        raise typer.BadParameter(f"must be one of {', '.join(exporters)}", param_hint="--format")
    written = export_run(run, out, export_format, checkpoint, overwrite)
    console.print(f"[green]wrote[/] {escape(', '.join(str(p) for p in written))}")


_SLURM = "Slurm (with --executor slurm)"


class _Executor(str, Enum):
    local = "local"
    slurm = "slurm"


class _Order(str, Enum):
    seeds = "seeds"
    methods = "methods"


@app.command()
def study(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY", help="Study file (TOML).")],
    jobs: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Runs at a time (local default: 1, with --device cuda one per GPU; slurm: jobs queued "
            "or running at once, default all).",
        ),
    ] = None,
    device: Annotated[
        Optional[str], typer.Option(help="train.device for every run, e.g. cpu or cuda.")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="The study's \\[quick] preset: fewer seeds and epochs, minutes not hours.")
    ] = False,
    show_plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Train nothing: show the runs finished, to resume and to train, the choices made on "
            "validation so far and the time left (with --executor slurm, the study's jobs in the queue).",
        ),
    ] = False,
    interim: Annotated[
        bool,
        typer.Option(
            "--interim",
            help="Train nothing: write the report of the runs finished so far (interim.md, .json, "
            ".csv, .png); a method with a grid has test numbers once its configuration is chosen.",
        ),
    ] = False,
    archive: Annotated[
        Optional[Path],
        typer.Option(
            metavar="DIR",
            help="Train nothing: copy the finished runs without their checkpoints (and the report, "
            "if written) into DIR/NAME, to keep or to carry; a study started from that folder reuses them.",
        ),
    ] = None,
    order: Annotated[
        Optional[_Order],
        typer.Option(
            help="Which runs train first (default: seeds). seeds: every method at a seed, then the next "
            "seed (early results span all methods); methods: one method's runs, then the next's, in "
            "the study file's order (the first method's result complete first). Either way a method's "
            "chosen configuration at an amount goes ahead of the runs waiting once its selection runs "
            "ended.",
        ),
    ] = None,
    executor: Annotated[
        _Executor, typer.Option(help="Where the runs train: subprocesses here, or one Slurm job per run.")
    ] = _Executor.local,
    partition: Annotated[Optional[str], typer.Option(help="Slurm partition.", rich_help_panel=_SLURM)] = None,
    account: Annotated[Optional[str], typer.Option(help="Slurm account.", rich_help_panel=_SLURM)] = None,
    qos: Annotated[Optional[str], typer.Option(help="Slurm QOS.", rich_help_panel=_SLURM)] = None,
    time_limit: Annotated[
        Optional[str],
        typer.Option(
            "--time",
            help="Time limit of each job (240, 4:00:00, 1-00:00:00; default one day); a longer run is "
            "requeued at the limit and resumes from its checkpoint.",
            rich_help_panel=_SLURM,
        ),
    ] = None,
    gpus_per_run: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="GPUs per run (default: 1 with --device cuda, else 0); more than one trains the run "
            "under torchrun.",
            rich_help_panel=_SLURM,
        ),
    ] = None,
    cpus_per_run: Annotated[
        Optional[int], typer.Option(min=1, help="CPU cores per run (default 4).", rich_help_panel=_SLURM)
    ] = None,
    mem_per_run: Annotated[
        Optional[str], typer.Option(help="Memory per run, e.g. 32G.", rich_help_panel=_SLURM)
    ] = None,
    sbatch: Annotated[
        Optional[list[str]],
        typer.Option(
            metavar="--NAME=VALUE",
            help="Another sbatch option for every job, e.g. --sbatch=--constraint=a100 (repeatable).",
            rich_help_panel=_SLURM,
        ),
    ] = None,
) -> None:
    """Compare methods over labelled amounts and seeds, settings chosen on validation only.

    Writes study.md, study.json, study.csv and study.png. Finished runs are reused and interrupted
    ones resumed, so a stopped study continues where it stopped when run again; --interim reports
    the runs finished so far. With --executor slurm each run is a Slurm job; run again, the study
    follows the jobs still queued instead of submitting them twice.
    """
    _require_torch("mireg study")
    from mireg.study.executors import Executor
    from mireg.study.report import overview, standing, write_interim_report
    from mireg.study.runs import runs_counted
    from mireg.study.workflow import conduct, local_executor, open_study, slurm_executor

    given = {"--plan": show_plan, "--interim": interim, "--archive": archive is not None}
    alone = [name for name, on in given.items() if on]
    if len(alone) > 1:
        raise typer.BadParameter(f"{' and '.join(alone)} each train nothing: give one", param_hint=alone[-1])
    # What only training uses, given with an option that trains nothing, is named, not ignored.
    unused = {"--order": order is not None, "--executor": executor is not _Executor.local}
    unused["--jobs"] = jobs is not None and not show_plan  # --plan counts the time left at --jobs
    unused["--executor"] &= not show_plan  # --plan lists the Slurm queue
    for name, given_too in unused.items():
        if alone and given_too:
            raise typer.BadParameter(f"has no effect with {alone[0]}: it trains nothing", param_hint=name)
    cluster = {  # the Slurm options, given: without --executor slurm the study would train here
        "--partition": partition,
        "--account": account,
        "--qos": qos,
        "--time": time_limit,
        "--gpus-per-run": gpus_per_run,
        "--cpus-per-run": cpus_per_run,
        "--mem-per-run": mem_per_run,
        "--sbatch": sbatch,
    }
    for name, value in cluster.items():
        if value is not None and executor is not _Executor.slurm:
            raise typer.BadParameter("is an option of --executor slurm, which was not given", param_hint=name)
    plan = open_study(study_file, quick, device)
    spec = plan.spec
    if interim:
        made = write_interim_report(plan)
        if not made.paths:
            console.print(f"no run of {spec.name} has finished yet: no interim report", markup=False)
            return
        header, table = overview(plan, made.rows)
        title = f"study {spec.name}, {made.finished} of {made.total} runs finished: test set (in interim.md)"
        console.print(_plain_table(header, table, title))
        console.print(f"interim report: {', '.join(str(p) for p in made.paths)}", markup=False)
        return
    if archive is not None:
        from mireg.study.archive import archive_study

        archived = archive_study(plan, archive)
        left = f"; {runs_counted(archived.left_out)} not finished left out" if archived.left_out else ""
        if not archived.runs:
            console.print(f"no run of {spec.name} has finished yet: nothing archived{left}", markup=False)
            return
        console.print(
            f"archived {runs_counted(len(archived.runs), 'finished')} of {spec.name} into {archived.folder} "
            f"(checkpoints left out{left})",
            markup=False,
        )
        return
    if executor is _Executor.slurm:
        from mireg.study.executors.slurm import SlurmOptions, parse_time

        options = SlurmOptions(
            partition,
            account,
            qos,
            SlurmOptions.time if time_limit is None else parse_time(time_limit),
            gpus_per_run,
            SlurmOptions.cpus if cpus_per_run is None else cpus_per_run,
            mem_per_run,
            tuple(sbatch or ()),
        )
        slurm = slurm_executor(plan, options, jobs)
        runner: Executor = slurm
        where = f"as Slurm jobs, {runner.capacity} at most in the queue"
    else:
        slurm = None
        runner = local_executor(device, jobs)
        where = f"{runner.capacity} at a time"
    if show_plan:
        tables, time_left = standing(plan, runner.capacity, runner.machine)
        for title, header, cells in tables:
            console.print(_plain_table(header, cells, title))
            console.print()
        if slurm is not None:
            rows = slurm.queue()
            header = ["run", "job", "state", "reason"]
            console.print(_plain_table(header, rows, f"Slurm jobs of the study ({len(rows)})"))
            console.print()
        console.print(time_left, markup=False)
        return
    plan.require_ready_methods()
    waiting, ready = len(plan.waiting_runs()), plan.ready_total()
    console.print(f"study {spec.name}: {runs_counted(ready)}, {where}, into {plan.out}", markup=False)
    if waiting:
        verb = "waits" if waiting == 1 else "wait"
        console.print(f"{waiting} more {verb} for choices not made yet: {plan.waiting_text()}", markup=False)
    # SIGTERM stops the study as Ctrl+C does: local runs checkpoint, Slurm jobs stay queued, and the
    # study says so before it ends.
    with _progress(remaining=False) as bar, interrupts_raised():
        task = bar.add_task(f"study {spec.name}", total=ready, info="")

        def progress(done: int, total: int, description: str) -> None:
            bar.update(task, completed=done, total=total, info=escape(description))
            if not console.is_terminal:  # a log file gets one line per finished run instead of a bar
                elapsed = bar.tasks[task].elapsed or 0.0
                console.print(f"[{done}/{total}] {escape(description)} ({elapsed / 60:.0f} min elapsed)")

        outcome = conduct(plan, runner, progress, (order or _Order.seeds).value)
    if outcome.paths:
        header, table = overview(plan, outcome.rows)
        details = outcome.paths[0].name
        console.print(_plain_table(header, table, f"study {spec.name}: test set (details in {details})"))
        report = "interim report" if outcome.waiting else "report"
        console.print(f"{report}: {', '.join(str(p) for p in outcome.paths)}", markup=False)
    if outcome.waiting:
        assert plan.origin is not None
        raise MiregError(
            f"{runs_counted(outcome.waiting)} of {spec.name} {'waits' if outcome.waiting == 1 else 'wait'} "
            f"for choices not made yet: {plan.waiting_text()}",
            f"run that study (mireg study {plan.origin.source}), then this one again: the runs "
            f"finished here are reused"
            + (
                f"; {runs_counted(len(outcome.failed))} did not finish, to be retried then: "
                + ", ".join(r.name for r in outcome.failed)
                if outcome.failed
                else ""
            ),
        )
    if outcome.failed:
        names = ", ".join(r.name for r in outcome.failed)
        raise MiregError(
            f"{len(outcome.failed)} of {len(outcome.records)} runs did not finish: {names}",
            f"their logs are listed in {outcome.paths[0]}; run the study again to retry them",
        )


def _version(value: bool) -> None:
    if value:
        console.print(f"mireg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """mireg: train segmentation networks from a few labelled and many unlabelled scans."""


def _rank() -> int:
    """This process's rank in a torchrun job (its ``RANK`` variable), 0 outside one."""
    return int(os.environ.get("RANK", "0"))


#: Commands that run the network over and over: they keep freed host memory mapped, so that CPU
#: steps reuse freed pages instead of faulting in new ones. Others (preprocess) keep malloc's
#: defaults, which hand each volume's memory back: their peak stays that of one volume.
_KEEPING_FREED_MEMORY = {"train", "eval", "predict"}


def main() -> None:
    """Entry point of the ``mireg`` script: the single error boundary."""
    if sys.argv[1:2] and sys.argv[1] in _KEEPING_FREED_MEMORY:
        host_memory.keep_freed_memory()
    try:
        app()
    except RunInterrupted as exc:
        if _rank() == 0:
            err_console.print(f"[bold yellow]interrupted:[/] {escape(exc.message)}", highlight=False)
            err_console.print(f"[dim]{escape(exc.hint or '')}[/]", highlight=False)
        sys.exit(130)
    except MiregError as exc:
        rank = _rank()
        where = "" if rank == 0 else f"(rank {rank}) "
        err_console.print(f"[bold red]error:[/] {where}{escape(exc.message)}", highlight=False)
        if exc.hint:
            err_console.print(f"[dim]hint: {escape(exc.hint)}[/]", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]; checkpoints already written are intact")
        sys.exit(130)


__all__ = ["app", "main", "metrics_tables"]
