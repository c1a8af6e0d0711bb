"""Write the labelled-ratio recipes of the paper's experiments from the 5 % recipes one folder up.

    python recipes/ratios/generate.py

Each file here is its base recipe (`recipes/<dataset>_<method>.toml`) with another
`data.labeled_ratio`, name and header; everything else (the paper's settings) is unchanged. Full
supervision does not depend on the ratio: it is `recipes/<dataset>_full.toml`.
tests/test_recipe.py checks that the files here are exactly what this script writes.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE_RATIO = 0.05

#: dataset -> (methods, labelled ratios): the paper's ACDC curve, and 5 / 10 % for the others.
EXPERIMENTS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "acdc": (
        ("partial", "entmin", "meanteacher", "uda", "iic", "udaiic", "midl"),
        (0.02, 0.03, 0.04, 0.05, 0.10),
    ),
    "prostate": (("partial", "uda", "iic", "udaiic"), (0.05, 0.10)),
    "spleen": (("partial", "uda", "iic", "udaiic"), (0.05, 0.10)),
}


def _percent(ratio: float) -> int:
    return round(ratio * 100)


def recipe_text(dataset: str, method: str, ratio: float) -> str:
    """The recipe text of ``dataset``/``method`` at ``ratio`` (from the 5 % base recipe)."""
    base_name = f"{dataset}_{method}"
    text = (HERE.parent / f"{base_name}.toml").read_text()
    pct = _percent(ratio)
    replacements = [
        (rf'^name = "{base_name}"$', f'name = "{base_name}_{pct}pct"'),
        (rf"^labeled_ratio = {BASE_RATIO}\b", f"labeled_ratio = {ratio}"),
        (r"\b5 % (of the training patients )?labelled", rf"{pct} % \g<1>labelled"),
    ]
    for pattern, value in replacements:
        text, count = re.subn(pattern, value, text, count=1, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f"{base_name}.toml: no match for {pattern!r}")
    return text


def expected_files() -> dict[str, str]:
    """File name -> text of every ratio recipe."""
    return {
        f"{dataset}_{method}_{_percent(ratio)}pct.toml": recipe_text(dataset, method, ratio)
        for dataset, (methods, ratios) in EXPERIMENTS.items()
        for method in methods
        for ratio in ratios
    }


def main() -> None:
    for name, text in expected_files().items():
        (HERE / name).write_text(text)
    print(f"wrote {len(expected_files())} recipes to {HERE}")


if __name__ == "__main__":
    main()
