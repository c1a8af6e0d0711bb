"""The base of mireg's strict configuration models (recipes, study files, model cards): an unknown
key is an error, and a validated value does not change."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    """A configuration model that forbids unknown keys and is frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
