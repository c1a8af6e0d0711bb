"""Cardiac cine: which frames to segment, and which are end-diastole (ED) and end-systole (ES).

Frames are numbered from 1, as ACDC's ``Info.cfg`` and scanner consoles number them. ED and ES come
from the user (``mireg predict --ed N --es M``) or, for a 4D NIfTI scan of ACDC's layout, from the
``Info.cfg`` beside it. Torch-free: prediction of exported models uses it.
"""

from __future__ import annotations

from pathlib import Path

from mireg.errors import DataError

__all__ = ["acdc_phases", "parse_frames", "read_info"]


def read_info(path: Path) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines); ED and ES are required."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    info: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DataError(f"{path}:{number}: expected 'Key: value', got {line.strip()!r}")
        info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info:
            raise DataError(f"{path}: missing key {key!r}")
        if not info[key].isdigit():
            raise DataError(f"{path}: {key} must be a frame number, got {info[key]!r}")
    return info


def acdc_phases(scan: Path) -> tuple[int, int] | None:
    """The ED and ES frame numbers from the ``Info.cfg`` beside ``scan``, or None if there is none."""
    info_file = scan.parent / "Info.cfg"
    if not info_file.is_file():
        return None
    info = read_info(info_file)
    return int(info["ED"]), int(info["ES"])


def parse_frames(text: str, option: str = "--frames") -> list[int]:
    """Frame numbers from ``1,5,12`` or ``1-5,12`` (counted from 1; order kept, repeats dropped).

    Raises:
        DataError: Naming ``option`` and the part that is not a frame number or range.
    """
    frames: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        try:
            numbers = range(int(first), int(last) + 1) if dash else [int(first)]
        except ValueError:
            raise DataError(
                f"{option}: {part!r} is not a frame number or range (e.g. 1,5,12 or 1-5)"
            ) from None
        if not numbers or min(numbers) < 1:
            raise DataError(f"{option}: {part!r}: frames are numbered from 1")
        frames.extend(n for n in numbers if n not in frames)
    return frames
