"""The errors mireg raises for problems a user can fix.

Every user-facing failure is a :class:`MiregError`: a one-line message that names the file and the key
or value at fault, plus an optional hint. The CLI prints it without a traceback and exits 1; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class MiregError(Exception):
    """Base class of all errors a user can act on.

    Args:
        message: What is wrong, naming the file and the key or value at fault.
        hint: What to do about it (optional).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self) -> tuple[type[MiregError], tuple[str, str | None]]:
        # Errors raised in worker processes (parallel preprocessing) keep their hint on the way back.
        return (type(self), (self.message, self.hint))

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class RecipeError(MiregError):
    """A recipe file is unreadable, malformed or invalid."""


class PluginError(MiregError):
    """A plugin is unknown, broken, or registered twice."""


class DataError(MiregError):
    """Input data (raw scans, a preprocessed store, a split) is missing or wrong."""


class CheckpointError(MiregError):
    """A checkpoint or run directory is missing, corrupt or does not fit the recipe."""


class RunError(MiregError):
    """A training run cannot start or cannot go on (existing run directory, non-finite loss)."""


class RunInterrupted(RunError):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint."""


# --------------------------------------------------------------------------------------------------
# Messages of pydantic validation errors (recipes, exported model cards)


def key_path(parts: Iterable[Any]) -> str:
    """``regularizers[1].weight`` from the parts ``("regularizers", 1, "weight")``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def validation_messages(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """One ``key.path: problem`` line per error of a pydantic validation (``prefix`` leads each path)."""
    out = []
    for err in exc.errors():
        loc = key_path(prefix + tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing required key"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in ("model_type",):
                msg += f" (got {err['input']!r})"
        out.append(f"{loc}: {msg}")
    return out
