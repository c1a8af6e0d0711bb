"""The command line starts fast: help, --version and `plugins` (without --check) never import torch."""

from __future__ import annotations

import pytest

from .helpers import run_fresh_python

# Runs `mireg ARGS` through the real entry point in a fresh interpreter, then reports its exit code
# and which heavy modules the command imported.
_SCRIPT = """
import json, sys
args = sys.argv[1:]
sys.argv = ["mireg", *args]
from mireg.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "numpy", "mireg.contract") if m in sys.modules]
print("\\nRESULT " + json.dumps({"code": code, "heavy": heavy}))
"""


def _run_fresh(*args: str) -> dict[str, object]:
    return run_fresh_python(_SCRIPT, *args, timeout=120)[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["plugins"],
        ["train", "--help"],
        ["eval", "--help"],
        ["predict", "--help"],
        ["export", "--help"],
    ],
)
def test_help_version_and_plugins_do_not_import_torch(args: list[str]) -> None:
    result = _run_fresh(*args)
    assert result["code"] == 0
    assert "torch" not in result["heavy"], result  # type: ignore[operator]
