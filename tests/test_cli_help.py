"""Every command's help shows its text whole: rich markup must not swallow a bracketed word such as a
recipe section's name."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from mireg.cli import app

# mireg's commands, as the click objects typer builds from the app.
_COMMANDS: dict[str, Any] = dict(get_command(app).commands)


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_help_keeps_bracketed_words(name: str) -> None:
    command = _COMMANDS[name]
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    bracketed = {m.replace("\\", "") for text in texts for m in re.findall(r"\\?\[[A-Za-z_.]+\]", text)}
    result = CliRunner().invoke(app, [name, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for word in bracketed:
        assert word in result.output, (name, word)
