"""Run directories: creating them without ever overwriting one, and loading a trained model back."""

from __future__ import annotations

import json
from pathlib import Path

from mireg.data.splits import Split
from mireg.errors import RunError

__all__ = ["read_split"]


def read_split(run_dir: Path) -> Split:
    """The split a run was trained with (``split.json``)."""
    path = run_dir / "split.json"
    try:
        raw = json.loads(path.read_text())
        return Split(raw["labeled"], raw["unlabeled"], raw["validation"], raw["test"])
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: cannot read the run's split ({exc})") from exc
