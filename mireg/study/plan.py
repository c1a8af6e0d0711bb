"""A study file made concrete (:class:`Study`): its configurations, runs, recipes and folders, the
choice on validation, and where the study stands."""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mireg.errors import MiregError, RecipeError
from mireg.recipe import (
    TrainConfig,
    apply_override,
    dump_toml,
    read_toml,
    validate_recipe,
)
from mireg.study.runs import (
    ALL_LABELS,
    Amount,
    PlannedRun,
    RunKey,
    RunRecord,
    read_record,
    resumable,
    trained_by,
)
from mireg.study.spec import ChoicesFromSpec, StudySpec, load_study
from mireg.training.rundir import RunDir

__all__ = [
    "Borrowed",
    "Order",
    "Study",
    "duration",
    "minutes_left",
    "minutes_per_run",
    "settings_text",
    "timed_runs",
    "trained_on",
]

#: Which runs of a study train first (:meth:`Study.selection_runs`).
Order = Literal["seeds", "methods"]


@dataclass(frozen=True)
class Borrowed:
    """What a ``chosen`` method trains: a method of the ``[choices_from]`` study at the
    configuration chosen there.

    Attributes:
        method: That study's method (of those ``chosen`` lists, the one with the best score).
        config: Its configuration chosen there on validation.
        score: Its mean best-validation DSC over that study's selection seeds (NaN under
            ``--quick``, which takes the first method listed at its first configuration unread).
    """

    method: str
    config: int
    score: float


class Study:
    """A study file made concrete: its configurations, runs and folders.

    Args:
        spec: The validated study file.
        source: The study file (recipes are relative to its folder).
        quick: Apply the ``[quick]`` preset.
        device: ``train.device`` for every run (``None``: each recipe's own).

    Raises:
        RecipeError: ``[choices_from]`` names a study that cannot be read, that takes its own
            choices from another, or has not the methods, roles or amount named here.
        MiregError: That study's runs were planned from another version of its file.
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
        #: The study whose choices the ``chosen`` methods train (``[choices_from]``), if any.
        self.origin: Study | None = None
        #: Per ``chosen`` method, what it trains, once the other study made the choice.
        self.borrowed: dict[str, Borrowed] = {}
        #: Per ``chosen`` method whose choice the other study has not made yet: why.
        self.pending: dict[str, str] = {}
        if spec.choices_from is not None:
            self._borrow(spec.choices_from)

    # ------------------------------------------------------------------------ another study's choices

    def _borrow(self, choices: ChoicesFromSpec) -> None:
        """Read the choices the ``[choices_from]`` study made on validation (under ``--quick``:
        each ``chosen`` method's first candidate at its first configuration, nothing read)."""
        path = choices.study if choices.study.is_absolute() else self.source.parent / choices.study
        where = f"{self.source}: choices_from.study"
        if not path.is_file():
            raise RecipeError(f"{where}: {path} does not exist")
        try:
            spec = load_study(path)
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc.message}", exc.hint) from None
        if spec.choices_from is not None:  # one step: what a study chose, not what it took
            raise RecipeError(
                f"{where}: {path} takes its own choices from another study",
                f"take them from where they were made: {spec.choices_from.study}",
            )
        self.origin = origin = Study(spec, path)
        amount = origin.amount_at(choices.at, f"{self.source}: choices_from.at")
        for name, method in self.spec.methods.items():
            for candidate in method.candidates:
                if candidate not in origin.spec.methods:
                    raise RecipeError(
                        f"{self.source}: methods.{name}.chosen: {candidate!r} is not a method of {path}",
                        f"its methods: {', '.join(origin.spec.methods)}",
                    )
                if (name == self.spec.full) != (candidate == origin.spec.full):
                    raise RecipeError(
                        f"{self.source}: methods.{name}.chosen: {candidate!r} "
                        + ("is not" if name == self.spec.full else "is")
                        + f" the method with every label of {path} ({origin.spec.full}), and {name!r} "
                        + ("is" if name == self.spec.full else "is not")
                        + " this study's (full)",
                        "the method with every label takes the other study's method with every label",
                    )
        try:
            records = [] if self.quick else origin.finished_selection_records()
        except MiregError as exc:
            raise MiregError(
                f"{where}: {exc.message}",
                f"the runs in {origin.out} were planned from another version of {path}: restore "
                "that version to take their choices (the runs are kept)",
            ) from None
        for name, method in self.spec.methods.items():
            best: Borrowed | None = None
            for candidate in method.candidates:
                single = len(method.candidates) == 1 and len(origin.configs(candidate)) == 1
                if self.quick or single:  # nothing to choose (or, under --quick, nothing read)
                    best = best or Borrowed(candidate, 0, math.nan)
                    continue
                at = origin.amounts_of(candidate)[0] if candidate == origin.spec.full else amount
                made = origin.settled_choice(records, candidate, at)
                if made is None:
                    self.pending[name] = origin.unsettled(records, candidate, at)
                    best = None
                    break
                if best is None or made[1] > best.score:
                    best = Borrowed(candidate, *made)
            if best is not None:
                self.borrowed[name] = best

    def amount_at(self, at: float | None, where: str) -> Amount:
        """The labelled amount ``at`` names (a ratio, or a patient count), default the first.

        Raises:
            RecipeError: The study does not train at ``at``, naming ``where``.
        """
        if at is None:
            return self.amounts[0]
        for amount in self.amounts:
            if math.isclose(amount.value, at, rel_tol=1e-9):
                return amount
        raise RecipeError(
            f"{where}: {self.source} does not train at {at:g}",
            f"its labelled amounts: {', '.join(f'{a.value:g}' for a in self.amounts)}",
        )

    def finished_selection_records(self) -> list[RunRecord]:
        """The records of the selection runs that finished (what a choice is made from).

        Raises:
            MiregError: As :meth:`recipe_text`, when the study file changed since a run was planned.
        """
        runs = [key for key in self.selection_runs() if self.run_dir(key).finished]
        for key in runs:
            self.recipe_text(key)
        return [self.record(key, "done") for key in runs]

    def settled_choice(
        self, records: list[RunRecord], method: str, amount: Amount
    ) -> tuple[int, float] | None:
        """The configuration :meth:`choose` picks for ``method`` at ``amount`` (with a grid or
        without) and its mean best-validation DSC over the selection seeds, once every one of those
        selection runs has ended: finished, or failed when the study last ran it (a configuration
        with a failed run does not compete, as when the running study chose). None before, and
        None when no configuration has all its selection runs finished."""
        finished, failed, runs = self._selection_ended(records, method, amount)
        if finished + failed < runs:
            return None
        return self._best(records, method, amount)

    def _selection_ended(self, records: list[RunRecord], method: str, amount: Amount) -> tuple[int, int, int]:
        """Of the selection runs of ``method`` at ``amount`` on the selection seeds: how many
        finished, how many failed when the study last ran them (:meth:`failed_file`), and how many
        there are."""
        runs = [k for k in self.selection_runs() if (k.method, k.amount) == (method, amount)]
        runs = [k for k in runs if k.seed in self.select_seeds]
        done = {r.name for r in records if r.status == "done"}
        finished = sum(k.name in done for k in runs)
        failed = sum(k.name not in done and self.failed_file(k).is_file() for k in runs)
        return finished, failed, len(runs)

    def unsettled(self, records: list[RunRecord], method: str, amount: Amount) -> str:
        """Why :meth:`settled_choice` gives no choice for ``method`` at ``amount`` yet."""
        finished, failed, runs = self._selection_ended(records, method, amount)
        at = "with every label" if amount.kind == "all" else f"at {amount.text}"
        if finished + failed < runs:
            return (
                f"{self.source} has not chosen {method} {at} yet: {finished} of its {runs} "
                f"selection runs there have finished in {self.out}"
                + (f" ({failed} failed)" if failed else "")
            )
        return f"{self.source}: no configuration of {method} {at} has a validation DSC in {self.out}"

    def _borrowed(self, method: str) -> Borrowed | None:
        """What a ``chosen`` method trains (None for a method with its own recipe).

        Raises:
            MiregError: The other study has not made the choice yet.
        """
        if self.spec.methods[method].chosen is None:
            return None
        if method not in self.borrowed:
            assert self.origin is not None
            raise MiregError(
                f"{self.source}: methods.{method}.chosen: {self.pending[method]}",
                f"run that study first, from the folder its runs_dir is relative to (mireg study "
                f"{self.origin.source}); the choice is made once those runs have finished",
            )
        return self.borrowed[method]

    def ready(self, method: str) -> bool:
        """Whether the method's runs can train: it has its own recipe, or the other study has made
        the choice it trains."""
        return method not in self.pending

    def waiting_runs(self) -> list[RunKey]:
        """The runs of the ``chosen`` methods whose choice the other study has not made yet: they
        train when the study runs again after that choice."""
        return [key for key in self.selection_runs() if not self.ready(key.method)]

    def ready_total(self) -> int:
        """How many runs the study trains (or reuses) when it runs now: all but the waiting ones."""
        return self.total_runs() - len(self.waiting_runs())

    def waiting_text(self) -> str:
        """Why runs wait, one sentence per waiting method (empty when none waits)."""
        return " ".join(f"methods.{m}.chosen: {why}." for m, why in self.pending.items())

    def require_ready_methods(self) -> None:
        """Check that some method can train (before anything trains): a study whose every method
        waits for another study's choices has nothing to do yet.

        Raises:
            MiregError: Every method waits, naming the first one and why.
        """
        if self.pending and not any(self.ready(m) for m in self.spec.methods):
            self._borrowed(next(iter(self.pending)))

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
        """The run's recipe as data: the method's recipe with every override applied.

        Raises:
            MiregError: A ``chosen`` method whose choice the other study has not made yet.
        """
        return self._recipe(key, self._borrowed(key.method))

    def _base(self, method: str, config: int, borrowed: Borrowed | None) -> tuple[Path, list[str]]:
        """The recipe file a method's configuration starts from, and this study's overrides to it
        (after the other study's, for a ``chosen`` method)."""
        spec = self.spec.methods[method]
        if borrowed is not None:
            assert self.origin is not None
            path, overrides = self.origin._base(borrowed.method, borrowed.config, None)
        else:
            assert spec.recipe is not None
            path = spec.recipe if spec.recipe.is_absolute() else self.source.parent / spec.recipe
            overrides = []
        overrides += [*self.spec.set, *spec.set]
        overrides += [f"{k}={_toml_literal(v)}" for k, v in self.configs(method)[config].items()]
        return path, overrides

    def _recipe(self, key: RunKey, borrowed: Borrowed | None) -> dict[str, Any]:
        path, overrides = self._base(key.method, key.config, borrowed)
        raw = read_toml(path)
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

        The device may differ from the recipe written earlier (``--device``): where a run trains is not
        what it is, so a study begun on one machine goes on on another (a run stopped midway resumes
        on the device of its own recipe).

        Raises:
            MiregError: The study already wrote a different recipe for this run, or another engine
                trained it (the study file, or a recipe it names, changed since): finished runs must
                not be mixed with new ones.
        """
        raw = self.recipe(key)
        text = dump_toml(raw)
        written = self.recipe_file(key)
        hint = f"give the study a new name, or remove {self.out} to start it over"
        if written.is_file() and written.read_text() != text and not _same_but_device(written, raw):
            raise MiregError(f"{written}: the study file changed since this run was planned", hint)
        run, engine = self.run_dir(key), self.engine(key)
        trained = trained_by(run)
        if trained is not None and trained != engine:
            raise MiregError(
                f"{run.path}: trained by {trained}, but the study file now has {key.method} trained by "
                f"{engine} (its engine changed since this run was planned)",
                hint,
            )
        return text

    def check(self) -> None:
        """Validate every configuration's recipe (on the meta device) before anything trains.

        Raises:
            RecipeError: Naming the study file, the method and configuration, and the key at fault.
        """
        for method in self.spec.methods:
            for config, borrowed in self._variants(method):
                key = RunKey(method, config, self.amounts_of(method)[0], self.seeds[0])
                which = f"configuration {config}"
                if borrowed is not None:
                    which = f"{borrowed.method}, configuration {borrowed.config}"
                where = f"{self.source}: methods.{method} ({which})"
                try:
                    raw = self._recipe(key, borrowed)  # a missing recipe file or a malformed override
                except RecipeError as exc:
                    raise RecipeError(f"{where}: {exc.message}", exc.hint) from None
                try:
                    validate_recipe(raw, where)
                except RecipeError as exc:
                    raise RecipeError(exc.message, exc.hint) from None

    def _variants(self, method: str) -> list[tuple[int, Borrowed | None]]:
        """What :meth:`check` validates of a method: each configuration; for a ``chosen`` method,
        the one chosen in the other study or, before the choice, every one it may choose."""
        if self.spec.methods[method].chosen is None:
            return [(config, None) for config in range(len(self.configs(method)))]
        if method in self.borrowed:
            return [(0, self.borrowed[method])]
        assert self.origin is not None
        return [
            (0, Borrowed(candidate, config, math.nan))
            for candidate in self.spec.methods[method].candidates
            for config in range(len(self.origin.configs(candidate)))
        ]

    def engines(self, method: str) -> set[str]:
        """What may train the method's runs (a ``chosen`` method before the choice: any of its
        candidates' engines)."""
        spec = self.spec.methods[method]
        if spec.chosen is None:
            return {spec.engine}
        assert self.origin is not None
        named = [self.borrowed[method].method] if method in self.borrowed else spec.candidates
        return set().union(*(self.origin.engines(m) for m in named))

    def require_engines(self) -> None:
        """Check that what trains each method is installed (before any run starts).

        Raises:
            RecipeError: A method's engine is not installed, naming the study file and the method.
        """
        nnunet = [m for m in self.spec.methods if "nnunet" in self.engines(m)]
        if nnunet:
            from mireg.nnunet.workflow import nnunet_version

            if nnunet_version() is None:
                raise RecipeError(
                    f'{self.source}: methods.{nnunet[0]}: engine = "nnunet" needs nnU-Net v2, '
                    "which is not installed",
                    "pip install 'mireg[nnunet]'",
                )

    # ---------------------------------------------------------------------------------------- plan

    def selection_runs(self, order: Order = "seeds") -> list[RunKey]:
        """The first phase: every configuration of a gridded method on the selection seeds, and
        every single-configuration method on all seeds.

        Args:
            order: ``seeds``: seed by seed, every method at a seed before the next seed (early
                results span all methods); ``methods``: method by method in the study file's order,
                each method's runs together (see :func:`~mireg.study.runner.run_study`).
        """

        def runs(method: str, seed: int) -> list[RunKey]:
            n = len(self.configs(method))
            if n > 1 and seed not in self.select_seeds:
                return []
            return [RunKey(method, c, a, seed) for a in self.amounts_of(method) for c in range(n)]

        if order == "methods":
            return [key for method in self.spec.methods for seed in self.seeds for key in runs(method, seed)]
        return [key for seed in self.seeds for method in self.spec.methods for key in runs(method, seed)]

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

    def choose(self, records: list[RunRecord], settled: bool = False) -> dict[tuple[str, str], int]:
        """Per gridded method and amount, the configuration with the best mean validation DSC over
        the selection seeds (:meth:`_best`); with ``settled``, only once every one of its selection
        runs ended, finished or failed (:meth:`settled_choice`), a method and amount still selecting
        left out. The test split is never read here."""
        pick = self.settled_choice if settled else self._best
        chosen: dict[tuple[str, str], int] = {}
        for method in self.gridded_methods():
            for amount in self.amounts_of(method):
                made = pick(records, method, amount)
                if made is not None:
                    chosen[(method, amount.label)] = made[0]
        return chosen

    def _best(self, records: list[RunRecord], method: str, amount: Amount) -> tuple[int, float] | None:
        """The rule: the configuration with the highest mean best-validation DSC over the selection
        seeds, and that mean; only configurations whose selection runs all finished compete, and a
        tie goes to the one listed first (None: none competes)."""
        best, best_score = None, -math.inf
        for config in range(len(self.configs(method))):
            scores = self.validation_scores(records, method, config, amount.label)
            if len(scores) != len(self.select_seeds):
                continue
            score = sum(scores) / len(scores)
            if score > best_score:
                best, best_score = config, score
        return None if best is None else (best, best_score)

    def rule(self) -> str:
        """The selection rule, as the report states it."""
        return self._own_rule() + self.borrowed_rule()

    def borrowed_rule(self) -> str:
        """What each ``chosen`` method trains, and where that was chosen."""
        if self.origin is None:
            return ""
        where = f"{self.origin.source} (chosen there on its validation split)"
        if self.quick:
            where = f"{self.origin.source} (--quick: the first listed, at its first configuration, unread)"
        parts = []
        for method, spec in self.spec.methods.items():
            borrowed = self.borrowed.get(method)
            if borrowed is None:  # a method with its own recipe, or a choice not made yet
                continue
            settings = settings_text(self.origin.configs(borrowed.method)[borrowed.config])
            text = f"{method}: {borrowed.method}" + (f" at {settings}" if settings else "")
            if not math.isnan(borrowed.score):
                seeds = ", ".join(map(str, self.origin.select_seeds))
                text += f" (mean best-validation DSC {100 * borrowed.score:.1f} % there over seeds {seeds}"
                others = [m for m in spec.candidates if m != borrowed.method]
                text += f", the highest of {borrowed.method}, {', '.join(others)})" if others else ")"
            parts.append(text)
        return f" Taken from {where}: " + "; ".join(parts) + "." if parts else ""

    def _own_rule(self) -> str:
        if not self.gridded_methods():
            if self.origin is not None:
                return (
                    "Nothing is chosen in this study: each method trains on every seed. The test split "
                    "is read only for this report."
                )
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

    def state(self, key: RunKey) -> tuple[str, float, float]:
        """What running the study would do with the run, the share of its epochs trained so far and
        the minutes they took: ``("done", 1.0, nan)``, ``("resume", share, minutes)`` or
        ``("train", 0.0, 0.0)``. Writes nothing.

        Raises:
            MiregError: As :meth:`recipe_text`, when the study file changed since the run was planned.
        """
        self.recipe_text(key)
        run = self.run_dir(key)
        if run.finished:
            return "done", 1.0, math.nan
        if not self.resumable(key):
            return "train", 0.0, 0.0
        train = self.recipe(key).get("train", {})
        epochs = train.get("epochs", TrainConfig.model_fields["epochs"].default)
        try:
            with open(run.file(RunDir.METRICS), newline="") as fh:
                rows = list(csv.DictReader(fh))
            minutes = sum(float(r.get("seconds") or 0) for r in rows) / 60
        except (OSError, ValueError, csv.Error):  # unreadable: counted as nothing trained yet
            rows, minutes = [], 0.0
        return "resume", min(len(rows) / epochs, 1.0), minutes

    def run_dir(self, key: RunKey) -> RunDir:
        """The run's folder."""
        return RunDir(self.out / "runs" / key.name)

    def engine(self, key: RunKey) -> str:
        """What trains the run: ``mireg`` or ``nnunet``."""
        borrowed = self._borrowed(key.method)
        if borrowed is None:
            return self.spec.methods[key.method].engine
        assert self.origin is not None
        return self.origin.engine(RunKey(borrowed.method, borrowed.config, key.amount, key.seed))

    def resumable(self, key: RunKey) -> bool:
        """Whether the run started and can continue (a mireg run from its last checkpoint, an
        nnU-Net run from its last finished stage)."""
        return resumable(self.engine(key), self.run_dir(key))

    def compared(self) -> list[tuple[str, str]]:
        """The pairs whose paired test-DSC difference the report gives beyond the baseline's: the
        study file's ``compare``, then every other method against each nnU-Net method."""
        pairs = list(self.spec.compare)
        for reference in self.spec.methods:
            if "nnunet" not in self.engines(reference):
                continue
            others = [m for m in self.spec.methods if m != reference]
            pairs += [(m, reference) for m in others if (m, reference) not in pairs]
        return pairs

    def standing(self) -> tuple[list[PlannedRun], list[RunRecord]]:
        """Every run of the plan with its state, and the records of the finished ones and of those
        that failed when the study last ran them (:meth:`failed_file`). Reads the study folder and
        writes nothing. A method and amount is chosen once all its selection runs ended, finished or
        failed (as the running study chose it); until then its later seeds are listed with
        ``config=None``. A ``chosen`` method's runs wait (state ``wait``) until the other study
        made its choice (and wait again, finished or not, while that choice is unsettled: when the
        other study runs again a selection run that had failed)."""
        plan: list[PlannedRun] = []
        records: list[RunRecord] = []

        def add(phase: str, key: RunKey) -> None:
            if not self.ready(key.method):  # no recipe until the other study chose
                plan.append(PlannedRun(phase, key.method, key.amount, key.config, key.seed, "wait", 0.0, 0.0))
                return
            state, share, minutes = self.state(key)
            failed = state != "done" and self.failed_file(key).is_file()  # when the study last ran it
            plan.append(
                PlannedRun(phase, key.method, key.amount, key.config, key.seed, state, share, minutes, failed)
            )
            if state == "done":
                records.append(self.record(key, "done"))
            elif failed:
                records.append(self.record(key, "failed"))
                records[-1].log = self.failed_file(key).read_text().strip() or records[-1].log

        for key in self.selection_runs():
            add("selection", key)
        chosen = self.choose(records, settled=True)
        for key in self.evaluation_runs(chosen):
            add("evaluation", key)
        for seed in self.seeds:
            for method in self.spec.methods:
                if seed in self.select_seeds or len(self.configs(method)) == 1:
                    continue
                for amount in self.amounts_of(method):
                    if (method, amount.label) not in chosen:
                        plan.append(PlannedRun("evaluation", method, amount, None, seed, "train", 0.0, 0.0))
        return plan, records

    def log(self, key: RunKey) -> Path:
        """The run's log file."""
        return self.out / "logs" / f"{key.name}.log"

    def failed_file(self, key: RunKey) -> Path:
        """Written when the run failed the last time the study ran it (why, in one line), removed
        when the study starts it again: what lets a choice be settled, by :meth:`settled_choice`,
        as the running study made it, without a failed configuration."""
        return self.out / "logs" / f"{key.name}.failed"

    def report_files(self, interim: bool = False) -> list[Path]:
        """The report's files, ``study.md`` first, then ``.json``, ``.csv`` and ``.png``
        (``interim``: those of the interim report, ``interim.md`` first)."""
        stem = "interim" if interim else "study"
        return [self.out / f"{stem}{suffix}" for suffix in (".md", ".json", ".csv", ".png")]

    def executor_dir(self, executor: str) -> Path:
        """Where the executor named ``executor`` keeps its files for this study (``slurm/``: the
        job of each run and Slurm's own logs)."""
        return self.out / executor

    def record(self, key: RunKey, status: str) -> RunRecord:
        """The run's record (read from its folder when it finished)."""
        return read_record(key, self.run_dir(key), self.log(key), status)


def minutes_left(
    plan: list[PlannedRun], records: list[RunRecord], jobs: int, machine: str = ""
) -> float | None:
    """Wall-clock minutes of training left: each unfinished run's untrained share of the median
    minutes its method's finished runs took (a run waiting for another study's choice not counted),
    shared among ``jobs`` runs at a time (and never less than the longest run left). A method with
    no finished run is counted from the epochs its stopped runs trained (see
    :func:`minutes_per_run`). None before any run has finished.

    Args:
        plan, records: :meth:`Study.standing`.
        jobs: Runs at a time.
        machine: Where the runs left will train (:func:`mireg.training.runtime.hardware`; "": not
            known): the finished runs trained there count first.
    """
    per_run = minutes_per_run(plan, records, machine)
    if per_run is None:
        return None
    per_method, overall = per_run
    left = [(1 - run.share) * per_method.get(run.method, overall) for run in plan if run.to_train]
    return max(sum(left) / max(1, jobs), max(left, default=0.0))  # one long run is not shared


def minutes_per_run(
    plan: list[PlannedRun], records: list[RunRecord], machine: str = ""
) -> tuple[dict[str, float], float] | None:
    """The minutes a whole run of each method takes, and the median over every finished run (for
    a method with nothing measured). A method's finished runs give the median minutes they took
    (a run slowed down by other work on the machine does not stand for the rest); a method with
    none, the minutes its stopped runs trained over the share of epochs they trained (a run at a
    quarter of its epochs after 15 minutes: 60). None before any run has finished.

    With ``machine`` (where the runs left will train), the finished runs trained there stand for
    their method, and for the median, wherever there are any: two CPUs of one size differ by up to
    two times, a GPU by far more. Runs trained elsewhere count where none was trained there.
    """
    measured = timed_runs(records)
    if not measured:
        return None

    def here(runs: list[RunRecord]) -> list[RunRecord]:
        return trained_on(runs, machine) or runs

    per_method: dict[str, float] = {}
    for method in {r.method for r in measured}:
        runs = here([r for r in measured if r.method == method])
        per_method[method] = statistics.median(r.minutes for r in runs)
    stopped = [r for r in plan if r.state == "resume" and r.share > 0 and r.method not in per_method]
    for method in {r.method for r in stopped}:
        mine = [r for r in stopped if r.method == method]
        per_method[method] = sum(r.minutes for r in mine) / sum(r.share for r in mine)
    return per_method, statistics.median(r.minutes for r in here(measured))


def timed_runs(records: list[RunRecord]) -> list[RunRecord]:
    """The finished runs whose minutes are known: what the time left is counted from."""
    return [r for r in records if r.status == "done" and not math.isnan(r.minutes)]


def trained_on(runs: list[RunRecord], machine: str) -> list[RunRecord]:
    """Those of ``runs`` trained on ``machine`` (none where ``machine`` is not known)."""
    return [r for r in runs if machine and r.machine == machine]


def _same_but_device(written: Path, planned: dict[str, Any]) -> bool:
    """Whether the recipe file ``written`` is the recipe ``planned`` but for ``train.device``."""
    try:
        old = read_toml(written)
    except RecipeError:
        return False

    def without_device(raw: dict[str, Any]) -> str:
        train = raw.get("train")
        if isinstance(train, dict):
            raw = {**raw, "train": {k: v for k, v in train.items() if k != "device"}}
        return dump_toml(raw)

    return without_device(old) == without_device(planned)


def settings_text(settings: dict[str, Any]) -> str:
    """A configuration's settings as ``key = value, ...`` (empty for none)."""
    return ", ".join(f"{k} = {v}" for k, v in settings.items())


def duration(seconds: float) -> str:
    """``"3 h 05 min"`` or ``"12 min"``."""
    minutes = max(1, round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _toml_literal(value: Any) -> str:
    """A value as the right-hand side of a ``--set`` override."""
    return dump_toml({"v": value}).strip().removeprefix("v = ")
