"""The study file: its schema and its reading (:func:`load_study`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from mireg.errors import RecipeError
from mireg.recipe import (
    format_problems,
    read_toml,
    validation_messages,
)
from mireg.schema import Strict

__all__ = ["ChoicesFromSpec", "MethodSpec", "QuickSpec", "StudySpec", "load_study"]


class MethodSpec(Strict):
    """``[methods.NAME]``: a recipe (or a method chosen in another study), overrides for every run,
    and an optional grid of settings."""

    recipe: Path | None = Field(None, description="recipe file, relative to the study file")
    chosen: str | list[str] | None = Field(
        None,
        description="instead of a recipe: the method of the [choices_from] study whose configuration "
        "chosen there on validation this method trains (its recipe, engine, overrides and setting); "
        "a list: the one of them whose chosen configuration has the highest mean best-validation DSC "
        "there (ties to the first listed)",
    )
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
    def _one_source(self) -> MethodSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} has no values")
        if (self.recipe is None) == (self.chosen is None):
            raise ValueError("give recipe or chosen (one of them)")
        if self.chosen is not None:
            names = self.candidates
            if not names or len(set(names)) != len(names):
                raise ValueError(f"chosen must name one method or several different ones, got {self.chosen}")
            if self.grid:
                raise ValueError("a chosen method has no grid: its setting was chosen in the other study")
            if "engine" in self.model_fields_set:
                raise ValueError("a chosen method trains with the other study's engine: leave engine out")
        return self

    @property
    def candidates(self) -> list[str]:
        """The other study's methods named by ``chosen`` (empty for a method with a recipe)."""
        if self.chosen is None:
            return []
        return [self.chosen] if isinstance(self.chosen, str) else list(self.chosen)


class ChoicesFromSpec(Strict):
    """``[choices_from]``: the study whose choices on validation the ``chosen`` methods train."""

    study: Path = Field(description="study file, relative to this one")
    at: float | None = Field(
        None,
        description="the labelled amount there whose choices are taken: a ratio (0.05) where that "
        "study gives labeled_ratios, a patient count (3) where it gives labeled_patients (default: its "
        "first; its full-label method's choice is made with every label)",
    )


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
    labeled_ratios: list[float] | None = Field(None, min_length=1)
    labeled_patients: list[int] | None = Field(None, min_length=1)
    seeds: list[int] = Field(min_length=1)
    select_seeds: list[int] | None = Field(None, description="seeds the grids are chosen on")
    set: list[str] = Field(default_factory=list, description="overrides for every run")
    runs_dir: Path = Field(Path("runs/studies"), description="the study writes runs_dir/<name>/")
    choices_from: ChoicesFromSpec | None = None
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
        chosen = [name for name, method in self.methods.items() if method.chosen is not None]
        if chosen and self.choices_from is None:
            raise ValueError(f"methods.{chosen[0]}.chosen needs [choices_from] (the study that chose)")
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
