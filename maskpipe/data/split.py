"""Profile-level, label-stratified train/validation split.

All photos of a person land on one side: the unit of the split is a group of profiles
(by default the id, so the two folders that share an id in the real set stay together).
Groups are stratified by ``gender_label * 3 + age_label`` of the person; each stratum with at
least two groups gives ``round(n * val_fraction)`` of them (at least one, never all) to
validation. Each stratum is shuffled with its own generator seeded from ``(seed, stratum)``, so
the split is deterministic and adding people of one stratum does not reshuffle the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from maskpipe.errors import MaskpipeError

TRAIN, VAL = "train", "val"


def split_groups(strata: dict[str, int], val_fraction: float = 0.2, seed: int = 42) -> set[str]:
    """Choose the validation groups from ``{group: stratum}``; returns their names."""
    check_val_fraction(val_fraction)
    by_stratum: dict[int, list[str]] = {}
    for group, stratum in strata.items():
        by_stratum.setdefault(int(stratum), []).append(group)
    val: set[str] = set()
    for stratum, groups in sorted(by_stratum.items()):
        count = _val_count(len(groups), val_fraction)
        if count == 0:
            continue
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, stratum])
        order = rng.permutation(len(groups))
        ordered = sorted(groups)
        val.update(ordered[i] for i in order[:count])
    return val


def _val_count(n: int, val_fraction: float) -> int:
    if n < 2 or val_fraction == 0:
        return 0
    return min(n - 1, max(1, int(round(n * val_fraction))))


def assign_split(
    rows: pd.DataFrame, val_fraction: float = 0.2, seed: int = 42, group_col: str = "id"
) -> pd.Series:
    """``train``/``val`` for every row of an index frame (columns ``profile``, ``group_col``,
    ``gender_label``, ``age_label``), aligned with ``rows.index``."""
    if rows.empty:
        return pd.Series([], index=rows.index, dtype=object)
    people = rows.drop_duplicates("profile").sort_values("profile")
    firsts = people.drop_duplicates(group_col)  # a group takes the labels of its first profile
    strata = dict(
        zip(
            firsts[group_col].astype(str),
            (firsts["gender_label"] * 3 + firsts["age_label"]).astype(int),
        )
    )
    val = split_groups(strata, val_fraction, seed)
    return rows[group_col].astype(str).map(lambda g: VAL if g in val else TRAIN)


def check_val_fraction(val_fraction: float) -> float:
    if not 0.0 <= float(val_fraction) < 1.0:
        raise MaskpipeError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return float(val_fraction)
