"""Keeping freed host memory mapped: CPU steps stop faulting in fresh pages (mireg.host_memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mireg.host_memory import ENV_VAR

# A step-like pattern: four 64 MiB tensors made and freed, sixteen times; minor page faults per round.
# (Kept, the heap has been seen to grow as late as the seventh round: eight rounds were too few.)
_ROUNDS = textwrap.dedent(
    """
    import json, resource, sys, torch
    from mireg.host_memory import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    faults = []
    for _ in range(16):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.ones(16 * 2**20); b = torch.ones(16 * 2**20); c = a + b; d = c * 2
        del a, b, c, d
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "faults": faults}))
    """
)

PAGES_PER_ROUND = 4 * 64 * 2**20 // 4096  # every page of the four tensors, if all are new


def _rounds(mode: str, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    default = _rounds("default")
    kept = _rounds("keep")
    assert kept["applied"] is True
    # With malloc's defaults every round touches new pages. Kept, the heap grows for the first few
    # rounds (how many depends on how its free blocks line up) and the later rounds reuse it.
    assert min(default["faults"]) > 0.9 * PAGES_PER_ROUND  # type: ignore[arg-type]
    assert sum(kept["faults"][-3:]) < 0.5 * PAGES_PER_ROUND  # type: ignore[index]


def test_the_environment_variable_turns_it_off() -> None:
    off = _rounds("keep", **{ENV_VAR: "0"})
    assert off["applied"] is False
