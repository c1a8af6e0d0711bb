"""The run folder ``runs/<name>/``: its layout, and every write in it, each one atomic.

::

    recipe.toml      the resolved recipe (the run can be repeated from it)
    versions.json    mireg, torch, python and plugin versions; the machine that trains the run
    split.json       the patients of each part
    metrics.csv      one row per epoch (rewritten whole, atomically, after each epoch)
    tensorboard/     event files, when tensorboard is installed
    last.pt best.pt  checkpoints (mireg.training.state.TrainState)
    curves.png       the training curves
    report.json|csv|md, report_<split>_<checkpoint>.*   evaluation reports
    overlays_<split>/  PNG overlays of ``mireg eval --overlays``

A folder is chosen without being created (:meth:`RunDir.choose`); it comes into existence only when
training is ready to take its first step (:meth:`RunDir.start`), so a recipe or data error leaves
nothing behind, and an existing run is never overwritten.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mireg import registry
from mireg.data.splits import Split
from mireg.errors import CheckpointError, MiregError, RunError
from mireg.files import atomic_write_text
from mireg.recipe import dump_toml

if TYPE_CHECKING:
    from mireg.recipe import Recipe

__all__ = ["MetricsLog", "RunDir", "checkpoint_file", "versions"]


class RunDir:
    """One run's folder. Cheap to make: nothing is read or written until asked."""

    RECIPE = "recipe.toml"
    VERSIONS = "versions.json"
    SPLIT = "split.json"
    METRICS = "metrics.csv"
    CURVES = "curves.png"
    TENSORBOARD = "tensorboard"
    LAST = "last.pt"
    BEST = "best.pt"
    #: The test report of the run's model (``report.json``): a run that has one is finished.
    REPORT = "report.json"
    #: What a run holds before its first checkpoint (nothing worth keeping: it can start over).
    BEFORE_CHECKPOINT = frozenset({RECIPE, VERSIONS, SPLIT, METRICS, TENSORBOARD})

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ---------------------------------------------------------------------------------- choosing

    @classmethod
    def choose(cls, runs_dir: Path, name: str, fresh: bool) -> RunDir:
        """``runs_dir/name``, never a folder that already holds a run (nothing is created here).

        With ``fresh``, an existing run is left alone and the next free ``name-2``, ``name-3``... is
        taken.

        Raises:
            RunError: The folder holds a run and ``fresh`` is off.
        """
        path = runs_dir / name
        if _holds_files(path):
            if not fresh:
                raise RunError(
                    f"{path}: a run already exists there; refusing to overwrite it",
                    "pass --fresh to start a new numbered run directory beside it",
                )
            k = 2
            while (runs_dir / f"{name}-{k}").exists():
                k += 1
            path = runs_dir / f"{name}-{k}"
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run folder (one that holds its ``recipe.toml``).

        Raises:
            RunError: ``path`` is not a run folder.
        """
        run = cls(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory")
        if not run.file(cls.RECIPE).is_file():
            raise RunError(f"{path}: not a run directory (no {cls.RECIPE})")
        return run

    def start(self, recipe: Recipe, split: Split, machine: str = "") -> None:
        """Create the folder and write the run's metadata (just before the first step); ``machine``:
        what trains it (:func:`mireg.training.runtime.hardware`).

        Raises:
            RunError: Another run took the folder since it was chosen.
        """
        if _holds_files(self.path):
            raise RunError(
                f"{self.path}: a run already exists there; refusing to overwrite it",
                "pass --fresh to start a new numbered run directory beside it",
            )
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file(self.RECIPE), dump_toml(recipe.to_dict()))
        atomic_write_text(self.file(self.VERSIONS), json.dumps(versions(recipe, machine), indent=1))
        atomic_write_text(self.file(self.SPLIT), split.to_json())

    # ------------------------------------------------------------------------------------ reading

    def file(self, name: str) -> Path:
        """The path of a file of the run."""
        return self.path / name

    @property
    def finished(self) -> bool:
        """Whether the run wrote its test report."""
        return self.file(self.REPORT).is_file()

    @property
    def checkpointed(self) -> bool:
        """Whether the run wrote its last checkpoint (it can resume)."""
        return self.file(self.LAST).is_file()

    def checkpoint(self, which: str = "best") -> Path:
        """The checkpoint file ``best``, ``last`` or a ``.pt`` file name of the run.

        Raises:
            CheckpointError: The run has no such checkpoint.
        """
        path = self.file(which if which.endswith(".pt") else f"{which}.pt")
        if not path.is_file():
            raise CheckpointError(
                f"{self.path}: no checkpoint {path.name} in this run directory",
                "train first, or pass --checkpoint last",
            )
        return path

    def split(self) -> Split:
        """The patients of each part the run was trained with (``split.json``)."""
        return Split.read(self.file(self.SPLIT))

    def report_stem(self, split: str, checkpoint: str) -> str:
        """``report`` for the test split of ``best``, else ``report_<split>_<checkpoint>``."""
        name = Path(checkpoint).stem
        return Path(self.REPORT).stem if (split, name) == ("test", "best") else f"report_{split}_{name}"

    def report_file(self, split: str, checkpoint: str) -> Path:
        """The JSON report of ``checkpoint`` on ``split`` (:meth:`report_stem`), written or not."""
        return self.file(self.report_stem(split, checkpoint) + ".json")

    def overlays(self, split: str) -> Path:
        return self.file(f"overlays_{split}")

    def metrics_log(self, keep_epochs: int) -> MetricsLog:
        """The run's ``metrics.csv`` (and TensorBoard events), keeping rows of epochs <= ``keep_epochs``."""
        return MetricsLog(self.path, keep_epochs)


def checkpoint_file(path: Path, which: str = "best") -> Path:
    """A checkpoint: ``path`` itself, or the ``which`` checkpoint of the run folder ``path``.

    Raises:
        CheckpointError: No such file, run folder, or checkpoint in it.
    """
    if path.is_dir():
        return RunDir(path).checkpoint(which)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    return path


def _holds_files(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def versions(recipe: Recipe, machine: str = "") -> dict[str, Any]:
    """The run's ``versions.json``: mireg, torch, python, each plugin the recipe names with its
    distribution and version, and the machine that trains it (where known)."""
    import torch

    import mireg

    used = [("dataset", recipe.data.name), ("backbone", recipe.backbone.name)]
    used += [("regularizer", r.name) for r in recipe.regularizers]
    plugins = {}
    for kind, name in used:
        info = registry.discover(kind)[name][0]
        plugins[f"{kind}:{name}"] = {"distribution": info.distribution, "version": info.version}
    return {
        "mireg": mireg.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plugins": plugins,
    } | ({"machine": machine} if machine else {})


class MetricsLog:
    """``metrics.csv`` (always) and TensorBoard event files (when tensorboard is installed).

    The CSV is rewritten whole after each row, atomically: a kill leaves the previous file intact.
    """

    def __init__(self, run_dir: Path, keep_epochs: int = 0) -> None:
        self.path = run_dir / RunDir.METRICS
        self.fields: list[str] = []
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():  # resuming: keep the rows up to the checkpoint's epoch
            try:
                with open(self.path, newline="") as fh:
                    reader = csv.DictReader(fh)
                    self.rows = [r for r in reader if int(r["epoch"]) <= keep_epochs]
                    self.fields = list(reader.fieldnames or [])
            except (OSError, ValueError, KeyError, csv.Error) as exc:
                raise MiregError(f"{self.path}: cannot read the run's metrics ({exc})") from exc
            self._write()
        self._board: Any = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(str(run_dir / RunDir.TENSORBOARD))

    def _write(self) -> None:
        buffer = io.StringIO()
        if self.fields:
            writer = csv.DictWriter(buffer, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())

    def write(self, row: dict[str, Any]) -> None:
        """Append one epoch's row."""
        if not self.fields:
            self.fields = list(row)
        self.rows.append(row)
        self._write()
        if self._board is not None:
            for key, value in row.items():
                if key not in ("epoch", "step", "best"):
                    self._board.add_scalar(key, value, row["epoch"])
            self._board.flush()

    def amend_last(self, values: dict[str, Any]) -> None:
        """Add ``values`` to the last row (new columns are appended; other rows leave them empty)."""
        if not self.rows:
            raise MiregError(f"{self.path}: no epoch row to add {sorted(values)} to")
        self.fields += [k for k in values if k not in self.fields]
        self.rows[-1].update(values)
        self._write()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._board is not None:
            self._board.close()
