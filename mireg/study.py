"""``mireg study``: does a method help on my data? Every method over labelled amounts and seeds,
settings chosen on validation only, reported with intervals and paired differences.

A study file (TOML, validated like a recipe) names the methods, each a recipe with overrides and an
optional small grid of settings; the labelled amounts (ratios or patient counts); and the seeds. A
seed draws the patient split and every method of a seed trains on that split. For a method with a
grid, every configuration trains on the selection seeds (all seeds unless ``select_seeds`` says
otherwise), the one with the best mean validation DSC is chosen, per labelled amount, and only it
trains on the other seeds. The test split is read only for the report.

Each run is a ``mireg train`` subprocess on a recipe file the study writes first; a finished run
(one with a test report) is reused, an interrupted one resumed, a failed one reported with its log
and the rest of the study goes on. A killed study continues where it stopped when run again.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from mireg.errors import MiregError, RecipeError
from mireg.files import atomic_write_text
from mireg.processes import ending_with_parent
from mireg.recipe import (
    TrainConfig,
    apply_override,
    dump_toml,
    format_problems,
    read_toml,
    validate_recipe,
    validation_messages,
)
from mireg.schema import Strict
from mireg.training.rundir import RunDir

__all__ = [
    "Amount",
    "PlannedRun",
    "RunKey",
    "RunRecord",
    "Study",
    "StudySpec",
    "duration",
    "load_study",
    "minutes_left",
]


class MethodSpec(Strict):
    """``[methods.NAME]``: a recipe, overrides for every run, and an optional grid of settings."""

    recipe: Path = Field(description="recipe file, relative to the study file")
    engine: Literal["mireg", "nnunet"] = Field(
        "mireg",
        description="what trains the runs: mireg (the recipe), or nnU-Net v2 on the recipe's data, "
        "split, budget and device (mireg nnunet; the nnunet extra)",
    )
    set: list[str] = Field(default_factory=list, description="key.path=value overrides")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="key.path -> values; the configurations are all their combinations, chosen on validation",
    )

    @model_validator(mode="after")
    def _non_empty_grid(self) -> MethodSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} has no values")
        return self


class QuickSpec(Strict):
    """``[quick]``: the ``--quick`` preset, for a check that finishes in minutes."""

    seeds: int = Field(2, ge=1, description="the first N seeds")
    set: list[str] = Field(
        default_factory=lambda: ["train.epochs=2", "train.iterations_per_epoch=5"],
        description="overrides for every run",
    )
    grid: bool = Field(False, description="keep the grids (false: each method's first configuration)")


class StudySpec(Strict):
    """A study file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    methods: dict[str, MethodSpec] = Field(min_length=1)
    baseline: str = Field("partial", description="the method the others are compared with, pairwise")
    full: str | None = Field("full", description="the method with every label (top of the gap)")
    compare: list[tuple[str, str]] = Field(
        default_factory=list,
        description="[method, versus] pairs whose paired test-DSC difference is reported too",
    )
    labeled_ratios: list[float] | None = None
    labeled_patients: list[int] | None = None
    seeds: list[int] = Field(min_length=1)
    select_seeds: list[int] | None = Field(None, description="seeds the grids are chosen on")
    set: list[str] = Field(default_factory=list, description="overrides for every run")
    runs_dir: Path = Field(Path("runs/studies"), description="the study writes runs_dir/<name>/")
    quick: QuickSpec = QuickSpec()

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if (self.labeled_ratios is None) == (self.labeled_patients is None):
            raise ValueError("give labeled_ratios or labeled_patients (one of them)")
        ratios = self.labeled_ratios or []
        if any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"labeled_ratios must be in (0, 1], got {ratios}")
        if any(n < 1 for n in self.labeled_patients or []):
            raise ValueError(f"labeled_patients must be >= 1, got {self.labeled_patients}")
        labels = [f"{r * 100:g}" for r in ratios] + [str(n) for n in self.labeled_patients or []]
        if len(set(labels)) != len(labels):
            raise ValueError(f"the labelled amounts repeat: {self.labeled_ratios or self.labeled_patients}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {self.seeds}")
        if self.select_seeds is not None and not set(self.select_seeds) <= set(self.seeds):
            raise ValueError(f"select_seeds {self.select_seeds} must be among the seeds {self.seeds}")
        for role, method in (("baseline", self.baseline), ("full", self.full)):
            if method is not None and method not in self.methods:
                raise ValueError(f"{role}: {method!r} is not one of the methods {list(self.methods)}")
        for method, versus in self.compare:
            for name in (method, versus):
                if name not in self.methods:
                    raise ValueError(f"compare: {name!r} is not one of the methods {list(self.methods)}")
            if method == versus:
                raise ValueError(f"compare: {method!r} is compared with itself")
        return self


def load_study(path: Path) -> StudySpec:
    """Read and validate a study file; every problem is reported at once with its key path.

    Raises:
        RecipeError: Unreadable TOML or invalid keys and values.
    """
    raw = read_toml(path)
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_problems(str(path), validation_messages(exc))) from None


# --------------------------------------------------------------------------------------------------
# The plan


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


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan and where it stands."""

    phase: str  # "selection" or "evaluation"
    method: str
    amount: Amount
    config: int | None  # None: to be chosen on validation, once the selection runs finished
    seed: int
    state: str  # "done", "resume" or "train"
    share: float  # of its epochs trained


class Study:
    """A study file made concrete: its configurations, runs and folders.

    Args:
        spec: The validated study file.
        source: The study file (recipes are relative to its folder).
        quick: Apply the ``[quick]`` preset.
        device: ``train.device`` for every run (``None``: each recipe's own).
    """

    def __init__(self, spec: StudySpec, source: Path, quick: bool = False, device: str | None = None) -> None:
        self.spec, self.source, self.quick, self.device = spec, source, quick, device
        self.seeds = spec.seeds[: spec.quick.seeds] if quick else list(spec.seeds)
        select = spec.select_seeds if spec.select_seeds is not None else spec.seeds
        self.select_seeds = [s for s in select if s in self.seeds] or self.seeds[:1]
        #: The seeds nothing is chosen on: only the chosen configurations train there.
        self.held_out_seeds = [s for s in self.seeds if s not in self.select_seeds]
        self.out = spec.runs_dir / (f"{spec.name}-quick" if quick else spec.name)
        if spec.labeled_ratios is not None:
            self.amounts = [Amount("ratio", r) for r in spec.labeled_ratios]
        else:
            self.amounts = [Amount("patients", n) for n in spec.labeled_patients or []]

    # -------------------------------------------------------------------------------- configurations

    def configs(self, method: str) -> list[dict[str, Any]]:
        """Every combination of the method's grid (one empty configuration without a grid)."""
        grid = self.spec.methods[method].grid
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        return combos[:1] if self.quick and not self.spec.quick.grid else combos

    def gridded_methods(self) -> list[str]:
        """The methods with more than one configuration (chosen on validation)."""
        return [m for m in self.spec.methods if len(self.configs(m)) > 1]

    def amounts_of(self, method: str) -> list[Amount]:
        """The labelled amounts a method trains at (every label, once, for the full method)."""
        return [ALL_LABELS] if method == self.spec.full else self.amounts

    def recipe(self, key: RunKey) -> dict[str, Any]:
        """The run's recipe as data: the method's recipe with every override applied."""
        method = self.spec.methods[key.method]
        path = method.recipe if method.recipe.is_absolute() else self.source.parent / method.recipe
        raw = read_toml(path)
        overrides = [*self.spec.set, *method.set]
        overrides += [f"{k}={_toml_literal(v)}" for k, v in self.configs(key.method)[key.config].items()]
        overrides += self.spec.quick.set if self.quick else []
        overrides += [f"name={key.name}", f"seed={key.seed}", f'train.runs_dir="{self.out / "runs"}"']
        if self.device is not None:
            overrides.append(f'train.device="{self.device}"')
        for assignment in overrides:
            apply_override(raw, assignment)
        data = raw.setdefault("data", {})
        if isinstance(data, dict):
            data.pop("labeled_patients", None)
            if key.amount.kind == "all":  # every label, whatever the recipe says
                if "labeled_ratio" in data:
                    data["labeled_ratio"] = 1.0
            else:
                data.pop("labeled_ratio", None)
                if key.amount.kind == "ratio":
                    data["labeled_ratio"] = key.amount.value
                else:
                    data["labeled_patients"] = int(key.amount.value)
        return raw

    def recipe_file(self, key: RunKey) -> Path:
        """Where the study writes the run's recipe before training it."""
        return self.out / "recipes" / f"{key.name}.toml"

    def recipe_text(self, key: RunKey) -> str:
        """The run's recipe as TOML text.

        Raises:
            MiregError: The study already wrote a different recipe for this run (the study file, or
                a recipe it names, changed since): finished runs must not be mixed with new ones.
        """
        text = dump_toml(self.recipe(key))
        written = self.recipe_file(key)
        if written.is_file() and written.read_text() != text:
            raise MiregError(
                f"{written}: the study file changed since this run was planned",
                f"give the study a new name, or remove {self.out} to start it over",
            )
        return text

    def check(self) -> None:
        """Validate every configuration's recipe (on the meta device) before anything trains.

        Raises:
            RecipeError: Naming the study file, the method and configuration, and the key at fault.
        """
        for method in self.spec.methods:
            for config in range(len(self.configs(method))):
                key = RunKey(method, config, self.amounts_of(method)[0], self.seeds[0])
                where = f"{self.source}: methods.{method} (configuration {config})"
                try:
                    raw = self.recipe(key)  # a missing recipe file or a malformed override
                except RecipeError as exc:
                    raise RecipeError(f"{where}: {exc.message}", exc.hint) from None
                try:
                    validate_recipe(raw, where)
                except RecipeError as exc:
                    raise RecipeError(exc.message, exc.hint) from None

    def require_engines(self) -> None:
        """Check that what trains each method is installed (before any run starts).

        Raises:
            RecipeError: A method's engine is not installed, naming the study file and the method.
        """
        nnunet = [m for m, spec in self.spec.methods.items() if spec.engine == "nnunet"]
        if nnunet:
            from mireg.nnunet.workflow import nnunet_version

            if nnunet_version() is None:
                raise RecipeError(
                    f'{self.source}: methods.{nnunet[0]}: engine = "nnunet" needs nnU-Net v2, '
                    "which is not installed",
                    "pip install 'mireg[nnunet]'",
                )

    # ---------------------------------------------------------------------------------------- plan

    def selection_runs(self) -> list[RunKey]:
        """The first phase: every configuration of a gridded method on the selection seeds, and
        every single-configuration method on all seeds (seed by seed, so early results span all)."""
        runs = []
        for seed in self.seeds:
            for method in self.spec.methods:
                n = len(self.configs(method))
                if n > 1 and seed not in self.select_seeds:
                    continue
                runs += [RunKey(method, c, a, seed) for a in self.amounts_of(method) for c in range(n)]
        return runs

    def evaluation_runs(self, chosen: dict[tuple[str, str], int]) -> list[RunKey]:
        """The second phase: each gridded method's chosen configuration on the remaining seeds."""
        runs = []
        for seed in self.seeds:
            if seed in self.select_seeds:
                continue
            for method in self.spec.methods:
                if len(self.configs(method)) == 1:
                    continue
                for amount in self.amounts_of(method):
                    config = chosen.get((method, amount.label))
                    if config is not None:
                        runs.append(RunKey(method, config, amount, seed))
        return runs

    def total_runs(self) -> int:
        """How many runs the study trains (or reuses) in all."""
        later = len(self.held_out_seeds)
        return len(self.selection_runs()) + later * sum(
            len(self.amounts_of(m)) for m in self.gridded_methods()
        )

    def validation_scores(
        self, records: list[RunRecord], method: str, config: int, amount: str
    ) -> list[float]:
        """The best validation DSC of each finished selection run of a configuration at an amount."""
        return [
            r.val_dice
            for r in records
            if (r.method, r.config, r.amount, r.status) == (method, config, amount, "done")
            and r.seed in self.select_seeds
        ]

    def choose(self, records: list[RunRecord]) -> dict[tuple[str, str], int]:
        """Per gridded method and amount, the configuration with the best mean validation DSC over
        the selection seeds; only configurations whose selection runs all finished compete, and a
        tie goes to the one listed first. The test split is never read here."""
        chosen: dict[tuple[str, str], int] = {}
        for method in self.gridded_methods():
            for amount in self.amounts_of(method):
                best, best_score = None, -math.inf
                for config in range(len(self.configs(method))):
                    scores = self.validation_scores(records, method, config, amount.label)
                    if len(scores) != len(self.select_seeds):
                        continue
                    score = sum(scores) / len(scores)
                    if score > best_score:
                        best, best_score = config, score
                if best is not None:
                    chosen[(method, amount.label)] = best
        return chosen

    def rule(self) -> str:
        """The selection rule, as the report states it."""
        if not self.gridded_methods():
            return (
                "No method has a grid: nothing is chosen, each method trains its recipe as it is on "
                "every seed. The test split is read only for this report."
            )
        seeds = ", ".join(map(str, self.select_seeds))
        held_out = self.held_out_seeds
        text = (
            "For each method with a grid and each labelled amount, the configuration with the highest "
            f"mean best-validation DSC over seeds {seeds} (validation split only; ties to the first "
            "listed; a configuration with a selection run that did not finish does not compete) is "
            "chosen"
        )
        if not held_out:
            return text + (
                "; every seed is a selection seed, so the test numbers of a method with a grid come "
                "from the runs its configuration was chosen on. The test split is read only for this "
                "report."
            )
        return text + (
            f", then trained on seeds {', '.join(map(str, held_out))}. The test numbers of a method "
            "with a grid include its chosen configuration's runs on the selection seeds, which that "
            "choice may flatter (the more so the larger the grid); the held-out table uses only the "
            "seeds nothing was chosen on. The test split is read only for this report."
        )

    # ------------------------------------------------------------------------------ where it stands

    def state(self, key: RunKey) -> tuple[str, float]:
        """What running the study would do with the run, and the share of its epochs trained so far:
        ``("done", 1.0)``, ``("resume", share)`` or ``("train", 0.0)``. Writes nothing.

        Raises:
            MiregError: As :meth:`recipe_text`, when the study file changed since the run was planned.
        """
        self.recipe_text(key)
        run = self.run_dir(key)
        if run.finished:
            return "done", 1.0
        if not self.resumable(key):
            return "train", 0.0
        train = self.recipe(key).get("train", {})
        epochs = train.get("epochs", TrainConfig.model_fields["epochs"].default)
        try:
            with open(run.file(RunDir.METRICS), newline="") as fh:
                trained = len(list(csv.DictReader(fh)))
        except OSError:
            trained = 0
        return "resume", min(trained / epochs, 1.0)

    def run_dir(self, key: RunKey) -> RunDir:
        """The run's folder."""
        return RunDir(self.out / "runs" / key.name)

    def engine(self, key: RunKey) -> str:
        """What trains the run: ``mireg`` or ``nnunet``."""
        return self.spec.methods[key.method].engine

    def resumable(self, key: RunKey) -> bool:
        """Whether the run started and can continue (a mireg run from its last checkpoint, an
        nnU-Net run from its last finished stage)."""
        run = self.run_dir(key)
        if self.engine(key) == "nnunet":
            from mireg.nnunet.workflow import NnUNetRun

            return NnUNetRun.resumable(run.path)
        return run.checkpointed

    def compared(self) -> list[tuple[str, str]]:
        """The pairs whose paired test-DSC difference the report gives beyond the baseline's: the
        study file's ``compare``, then every other method against each nnU-Net method."""
        pairs = list(self.spec.compare)
        for reference, spec in self.spec.methods.items():
            if spec.engine != "nnunet":
                continue
            others = [m for m in self.spec.methods if m != reference]
            pairs += [(m, reference) for m in others if (m, reference) not in pairs]
        return pairs

    def standing(self) -> tuple[list[PlannedRun], list[RunRecord]]:
        """Every run of the plan with its state, and the records of the finished ones. Reads the
        study folder and writes nothing. A method and amount is chosen once all its selection runs
        finished (as a running study would choose it); until then its later seeds are listed with
        ``config=None``."""
        plan: list[PlannedRun] = []
        records: list[RunRecord] = []

        def add(phase: str, key: RunKey) -> None:
            state, share = self.state(key)
            plan.append(PlannedRun(phase, key.method, key.amount, key.config, key.seed, state, share))
            if state == "done":
                records.append(_record(self, key, "done"))

        for key in self.selection_runs():
            add("selection", key)
        open_choices = {(r.method, r.amount.label) for r in plan if r.state != "done"}
        chosen = {k: c for k, c in self.choose(records).items() if k not in open_choices}
        for key in self.evaluation_runs(chosen):
            add("evaluation", key)
        for seed in self.seeds:
            for method in self.spec.methods:
                if seed in self.select_seeds or len(self.configs(method)) == 1:
                    continue
                for amount in self.amounts_of(method):
                    if (method, amount.label) not in chosen:
                        plan.append(PlannedRun("evaluation", method, amount, None, seed, "train", 0.0))
        return plan, records

    # ------------------------------------------------------------------------------------- running

    def run(self, jobs: int = 1, progress: Callable[[int, int, str], None] | None = None) -> list[RunRecord]:
        """Train (or reuse, or resume) every run; returns their records, in plan order.

        Args:
            jobs: Runs at a time. On CUDA each running job gets its own GPU, round-robin.
            progress: ``progress(done, total, description)``.
        """
        self.require_engines()
        self.out.mkdir(parents=True, exist_ok=True)
        total = self.total_runs()
        done: list[RunRecord] = []

        def report(record: RunRecord, reused: bool) -> None:
            done.append(record)
            if progress is None:
                return
            text = f"{self.spec.name}: {record.name} {'reused' if reused else record.status}"
            if not reused and len(done) < total:
                left = minutes_left(*self.standing(), jobs)
                if left is not None:
                    text += f", about {duration(60 * left)} left"
            progress(len(done), total, text)

        if progress is not None:
            progress(0, total, f"{self.spec.name}: starting")
        first = _Runner(self, jobs).run(self.selection_runs(), report)
        second = _Runner(self, jobs).run(self.evaluation_runs(self.choose(first)), report)
        return first + second


def minutes_left(plan: list[PlannedRun], records: list[RunRecord], jobs: int) -> float | None:
    """Wall-clock minutes of training left: each unfinished run's untrained share of the mean
    minutes its method's finished runs took (every finished run's, for a method with none yet),
    shared among ``jobs`` runs at a time (and never less than the longest run left). None before
    any run has finished.

    Args:
        plan, records: :meth:`Study.standing`.
        jobs: Runs at a time.
    """
    measured = [r for r in records if r.status == "done" and not math.isnan(r.minutes)]
    if not measured:
        return None

    def mean(rs: list[RunRecord]) -> float:
        return sum(r.minutes for r in rs) / len(rs)

    overall = mean(measured)
    per_method = {m: mean([r for r in measured if r.method == m]) for m in {r.method for r in measured}}
    left = [(1 - run.share) * per_method.get(run.method, overall) for run in plan if run.state != "done"]
    return max(sum(left) / max(1, jobs), max(left, default=0.0))  # one long run is not shared


def duration(seconds: float) -> str:
    """``"3 h 05 min"`` or ``"12 min"``."""
    minutes = max(1, round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _toml_literal(value: Any) -> str:
    """A value as the right-hand side of a ``--set`` override."""
    return dump_toml({"v": value}).strip().removeprefix("v = ")


# --------------------------------------------------------------------------------------------------
# Running the runs


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class _Runner:
    """Runs ``mireg train`` subprocesses, at most ``jobs`` at a time, from one thread."""

    def __init__(self, study: Study, jobs: int) -> None:
        self.study = study
        self.jobs = max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.gpus = _gpu_count() if (study.device or "").startswith("cuda") else 0

    def _command(self, key: RunKey) -> list[str] | None:
        """The ``mireg`` arguments that train or resume the run, or None if it is finished."""
        study = self.study
        run = study.run_dir(key)
        atomic_write_text(study.recipe_file(key), study.recipe_text(key))
        command = "nnunet" if study.engine(key) == "nnunet" else "train"
        if run.finished:
            return None
        if study.resumable(key):
            return [command, "--resume", str(run)]
        if run.path.exists():  # started, killed before its first checkpoint: nothing to keep
            extra = {p.name for p in run.path.iterdir()} - RunDir.BEFORE_CHECKPOINT
            if extra:
                raise MiregError(f"{run}: holds {sorted(extra)} but no checkpoint; not touching it")
            shutil.rmtree(run.path)
        return [command, str(study.recipe_file(key))]

    def run(self, keys: list[RunKey], report: Callable[[RunRecord, bool], None]) -> list[RunRecord]:
        """Train every run not finished yet; ``report(record, reused)`` as each one ends."""
        records: dict[RunKey, RunRecord] = {}
        queue = list(keys)
        running: dict[RunKey, tuple[subprocess.Popen[bytes], int]] = {}
        free_slots = list(range(self.jobs))
        try:
            while queue or running:
                while queue and free_slots:
                    key = queue.pop(0)
                    command = self._command(key)
                    if command is None:
                        records[key] = _record(self.study, key, "done")
                        report(records[key], True)
                        continue
                    slot = free_slots.pop(0)
                    running[key] = (self._start(key, command, slot), slot)
                for key, (proc, slot) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[key]
                    free_slots.append(slot)
                    status = "done" if code == 0 else ("interrupted" if code in (130, -2, -15) else "failed")
                    records[key] = _record(self.study, key, status)
                    report(records[key], False)
                if running:
                    time.sleep(0.2)
        except BaseException:
            for proc, _ in running.values():  # they checkpoint and stop; a rerun resumes them
                proc.send_signal(signal.SIGTERM)
            for proc, _ in running.values():
                proc.wait()
            raise
        return [records[k] for k in keys]

    def _start(self, key: RunKey, command: list[str], slot: int) -> subprocess.Popen[bytes]:
        log = self.study.out / "logs" / f"{key.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "COLUMNS": "120"}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        with open(log, "ab") as fh:
            return subprocess.Popen(
                [sys.executable, "-m", "mireg", *command],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=ending_with_parent(),
            )


def _record(study: Study, key: RunKey, status: str) -> RunRecord:
    """The run's record, read from its folder when it finished."""
    run = study.run_dir(key)
    log = study.out / "logs" / f"{key.name}.log"
    record = RunRecord(key.name, key.method, key.config, key.amount.label, key.seed, status, log=str(log))
    if status != "done":
        return record
    try:
        with open(run.file(RunDir.METRICS), newline="") as fh:
            rows = list(csv.DictReader(fh))
        summary = json.loads(run.file(RunDir.REPORT).read_text())["summary"]
        record.val_dice = max(float(r["val_dice/mean"]) for r in rows if r.get("val_dice/mean"))
        record.minutes = sum(float(r["seconds"]) for r in rows) / 60
        record.test_dice = float(summary["dice"]["all"]["mean"]["mean"])
        hd95 = summary["hd95"]["all"]["mean"]["mean"]  # None where no volume had one
        record.test_hd95 = math.nan if hd95 is None else float(hd95)
        if run.file(RunDir.SPLIT).is_file():
            split = json.loads(run.file(RunDir.SPLIT).read_text())
            held = json.dumps([sorted(split["validation"]), sorted(split["test"])])
            record.split = hashlib.sha256(held.encode()).hexdigest()[:12]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        record.status = "failed"
        record.log = f"{log} ({run}: unreadable results: {exc})"
    return record


def records_to_json(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Records as plain data (NaN as null)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
        for r in records
    ]
