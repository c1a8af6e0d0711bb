"""Patient-level splits: labelled / unlabelled / validation / test, seeded and disjoint.

The authors split per scan (ED and ES of one patient could land on both sides) and drew validation
from the unlabelled training patients; mireg splits patients and keeps validation and test apart
from all training data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mireg.contract import DatasetConfig
from mireg.errors import DataError
from mireg.preprocessing.store import VolumeStore

__all__ = ["Split", "make_split"]

_PARTS = ("labeled", "unlabeled", "validation", "test")


@dataclass(frozen=True)
class Split:
    """Patient ids of each part (disjoint)."""

    labeled: list[str]
    unlabeled: list[str]
    validation: list[str]
    test: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, path: Path, patients: Iterable[str] | None = None) -> Split:
        """Read and check a split file: a run's ``split.json`` or a recipe's ``data.split_file``.

        The file is a JSON object with the lists ``labeled``, ``unlabeled``, ``validation`` and
        ``test`` of patient ids. Its structure is always checked: only those four keys (a missing
        one is an empty list), each a list of patient ids (strings; integers are read as their
        decimal form), no id in two places, ``labeled`` not empty.

        Args:
            path: The JSON file.
            patients: The store's patient ids. When given, every id of the file must be one of them.

        Raises:
            DataError: The file is unreadable or breaks a check; the message names the file.
        """
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read split file ({exc})") from exc
        if not isinstance(raw, dict) or any(not isinstance(raw.get(p, []), list) for p in _PARTS):
            raise DataError(f"{path}: expected an object with lists {', '.join(_PARTS)}")
        extra = set(raw) - set(_PARTS)
        if extra:
            raise DataError(f"{path}: unknown keys {sorted(extra)}")
        lists: list[list[str]] = []
        for part in _PARTS:
            ids = []
            for i, item in enumerate(raw.get(part, [])):
                # bool is an int to Python, but never a patient id.
                if isinstance(item, bool) or not isinstance(item, (str, int)):
                    raise DataError(f"{path}: {part}[{i}]: expected a patient id, got {item!r}")
                ids.append(str(item))
            lists.append(ids)
        split = cls(*lists)
        known = None if patients is None else set(patients)
        seen: set[str] = set()
        for part in _PARTS:
            for patient in getattr(split, part):
                if known is not None and patient not in known:
                    raise DataError(f"{path}: {part}: unknown patient {patient!r}")
                if patient in seen:
                    raise DataError(f"{path}: {part}: patient {patient!r} appears twice")
                seen.add(patient)
        if not split.labeled:
            raise DataError(f"{path}: labeled is empty")
        return split


def _stratified_pick(patients: list[str], groups: dict[str, str], n: int) -> list[str]:
    """Take ``n`` patients round-robin over groups (patients already shuffled), so groups are equal."""
    by_group: dict[str, list[str]] = {}
    for p in patients:
        by_group.setdefault(groups[p], []).append(p)
    picked: list[str] = []
    queues = [by_group[g] for g in sorted(by_group)]
    while len(picked) < n:
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def make_split(store: VolumeStore, config: DatasetConfig, seed: int) -> Split:
    """Split the store's patients as ``config`` asks.

    Patients with labels are shuffled with ``seed``; the test patients are drawn first, stratified by
    pathology group where the store has groups, then the validation patients, and the labelled
    patients from the rest (``labeled_ratio`` of them, rounded, at least one; or
    ``labeled_patients``). The remaining training patients, plus every patient without labels, are
    unlabelled.
    """
    if config.split_file is not None:
        return Split.read(config.split_file, store.patients)
    labeled_volumes: dict[str, bool] = {}
    groups: dict[str, str] = {}
    for v in store.volumes:
        labeled_volumes[v.patient] = labeled_volumes.get(v.patient, True) and v.labeled
        groups[v.patient] = v.group
    with_labels = [p for p in store.patients if labeled_volumes[p]]
    without = [p for p in store.patients if not labeled_volumes[p]]
    needed = config.test_patients + config.val_patients + 1
    if len(with_labels) < needed:
        raise DataError(
            f"data: {len(with_labels)} labelled patients cannot give {config.test_patients} test + "
            f"{config.val_patients} validation patients and a training set",
            "lower data.test_patients / data.val_patients",
        )
    rng = np.random.default_rng(seed)
    order = [with_labels[i] for i in rng.permutation(len(with_labels))]
    test = _stratified_pick(order, groups, config.test_patients)
    rest = [p for p in order if p not in set(test)]
    validation, train = rest[: config.val_patients], rest[config.val_patients :]
    if config.labeled_patients is not None:
        if config.labeled_patients > len(train):
            raise DataError(
                f"data.labeled_patients: {config.labeled_patients} exceeds the {len(train)} training patients"
            )
        n_labeled = config.labeled_patients
    else:
        ratio = 1.0 if config.labeled_ratio is None else config.labeled_ratio
        n_labeled = max(1, round(ratio * len(train)))
    labeled = sorted(train[:n_labeled])
    unlabeled = sorted(train[n_labeled:]) + without
    return Split(labeled, unlabeled, sorted(validation), sorted(test))
