"""What identifies a study's run, and what a run gave: its record, read from its folder."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mireg.training.rundir import RunDir

__all__ = [
    "ALL_LABELS",
    "Amount",
    "PlannedRun",
    "RunKey",
    "RunRecord",
    "read_record",
    "records_to_json",
    "resumable",
    "runs_counted",
    "trained_by",
]


@dataclass(frozen=True)
class Amount:
    """A labelled amount: a ratio of the training patients, a patient count, or every label."""

    kind: str  # "ratio", "patients" or "all"
    value: float

    @property
    def label(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "ratio":
            return f"{self.value * 100:g}pct"
        return f"{int(self.value)}pat"

    @property
    def text(self) -> str:
        """As a table shows it."""
        if self.kind == "all":
            return "all"
        return f"{self.value * 100:g} %" if self.kind == "ratio" else f"{int(self.value)} patients"


ALL_LABELS = Amount("all", 1.0)


@dataclass(frozen=True)
class RunKey:
    """One training run of a study."""

    method: str
    config: int
    amount: Amount
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-c{self.config}-{self.amount.label}-s{self.seed}"


@dataclass
class RunRecord:
    """What a run gave: its status and, when done, its best validation and its test numbers."""

    name: str
    method: str
    config: int
    amount: str
    seed: int
    status: str  # "done", "failed" or "interrupted"
    val_dice: float = math.nan
    test_dice: float = math.nan
    test_hd95: float = math.nan
    minutes: float = math.nan
    log: str = ""
    split: str = ""  # fingerprint of the validation and test patients ("": not known)
    # The last epoch's validation DSC (val_dice is the best epoch's, whose checkpoint is tested).
    last_val_dice: float = math.nan
    # The last checkpoint's test DSC (report_test_last.json; an nnU-Net run tests its final
    # checkpoint only, so its test_dice). NaN for a run that did not test it.
    last_test_dice: float = math.nan
    # What trained it (versions.json's machine: the GPU, or the CPU and its threads; "": not known).
    machine: str = ""


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan and where it stands."""

    phase: str  # "selection" or "evaluation"
    method: str
    amount: Amount
    config: int | None  # None: to be chosen on validation, once the selection runs finished
    seed: int
    state: str  # "done", "resume", "train" or "wait" (for a choice another study has not made yet)
    share: float  # of its epochs trained
    minutes: float  # the training those epochs took (NaN for a finished run: see its RunRecord)
    failed: bool = False  # not finished, and failed when the study last ran it

    @property
    def to_train(self) -> bool:
        """Whether running the study now trains the run: not finished, and not waiting."""
        return self.state not in ("done", "wait")


def read_record(key: RunKey, run: RunDir, log: Path, status: str) -> RunRecord:
    """The run's record, read from its folder ``run`` when it finished (``log``: its log file)."""
    record = RunRecord(key.name, key.method, key.config, key.amount.label, key.seed, status, log=str(log))
    if status != "done":
        return record
    try:
        with open(run.file(RunDir.METRICS), newline="") as fh:
            rows = list(csv.DictReader(fh))
        report = json.loads(run.file(RunDir.REPORT).read_text())
        validated = [float(r["val_dice/mean"]) for r in rows if r.get("val_dice/mean")]
        if not validated:
            raise ValueError(f"{run.file(RunDir.METRICS).name} holds no validation DSC")
        record.val_dice, record.last_val_dice = max(validated), validated[-1]
        record.minutes = sum(float(r["seconds"]) for r in rows) / 60
        record.test_dice = _mean_dice(report)
        hd95 = report["summary"]["hd95"]["all"]["mean"]["mean"]  # None where no volume had one
        record.test_hd95 = math.nan if hd95 is None else float(hd95)
        record.last_test_dice = _last_test_dice(run, record.test_dice)
        if run.file(RunDir.SPLIT).is_file():
            split = json.loads(run.file(RunDir.SPLIT).read_text())
            held = json.dumps([sorted(split["validation"]), sorted(split["test"])])
            record.split = hashlib.sha256(held.encode()).hexdigest()[:12]
        record.machine = _machine(run)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        record.status = "failed"
        record.log = f"{log} ({run}: unreadable results: {exc})"
    return record


def _machine(run: RunDir) -> str:
    """What trained the run, from its ``versions.json`` ("" for a run trained before mireg wrote it,
    or a file that does not say)."""
    try:
        machine = json.loads(run.file(RunDir.VERSIONS).read_text()).get("machine", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return machine if isinstance(machine, str) else ""


def _last_test_dice(run: RunDir, test_dice: float) -> float:
    """The test DSC of the run's last checkpoint: its ``report_test_last.json`` (``mireg train``
    writes it beside the best checkpoint's report; ``mireg eval RUN --checkpoint last`` for a run
    trained before), an nnU-Net run's test DSC (its final checkpoint is the one it tests), or NaN.

    Raises:
        ValueError, KeyError, TypeError: The report is not one ``mireg eval`` writes.
    """
    last = run.report_file("test", "last")
    if last.is_file():
        return _mean_dice(json.loads(last.read_text()))
    return test_dice if trained_by(run) == "nnunet" else math.nan


def _mean_dice(report: dict[str, Any]) -> float:
    """A report's mean DSC over its volumes and structures."""
    return float(report["summary"]["dice"]["all"]["mean"]["mean"])


def records_to_json(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Records as plain data (NaN as null)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
        for r in records
    ]


def resumable(engine: str, run: RunDir) -> bool:
    """Whether the run in folder ``run``, trained by ``engine`` (``mireg`` or ``nnunet``), started and
    can continue: a mireg run from its last checkpoint, an nnU-Net run from its last finished stage.
    """
    if engine == "nnunet":
        from mireg.nnunet.workflow import NnUNetRun

        return NnUNetRun.resumable(run.path)
    return run.checkpointed


def trained_by(run: RunDir) -> str | None:
    """What trained the run in folder ``run``, as far as its files tell: ``nnunet`` (its nnU-Net tree,
    or the ``nnunet/`` columns of its metrics), ``mireg`` (a checkpoint, or metrics without them), or
    None (nothing trained yet, or files of both)."""
    tree = (run.path / "nnunet").is_dir()  # mireg.nnunet.workflow.NNUNET_DIR (imported lazily there)
    checkpoint = run.file(RunDir.LAST).is_file() or run.file(RunDir.BEST).is_file()
    if tree or checkpoint:
        return None if tree and checkpoint else "nnunet" if tree else "mireg"
    try:
        with open(run.file(RunDir.METRICS), newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, csv.Error):
        return None
    if not header:
        return None
    return "nnunet" if any(column.startswith("nnunet/") for column in header) else "mireg"


def runs_counted(count: int, kind: str = "") -> str:
    """``"1 run"``, ``"3 runs"``; with ``kind``: ``"1 finished run"``, ``"3 finished runs"``."""
    noun = "run" if count == 1 else "runs"
    return f"{count} {kind} {noun}" if kind else f"{count} {noun}"
