"""Profile-level stratified split."""

from __future__ import annotations

import pandas as pd
import pytest

from maskpipe.data.split import assign_split, split_groups
from maskpipe.errors import MaskpipeError
from maskpipe.labels import MASK_STEMS


def _rows(people: list[tuple[str, str, int, int]]) -> pd.DataFrame:
    """(profile, id, gender_label, age_label) -> one row per photo."""
    records = [
        {"profile": p, "id": i, "gender_label": g, "age_label": a, "stem": s}
        for p, i, g, a in people
        for s in MASK_STEMS
    ]
    return pd.DataFrame(records)


def _people(per_stratum: int) -> list[tuple[str, str, int, int]]:
    people = []
    for stratum in range(6):
        for k in range(per_stratum):
            pid = f"{stratum:02d}{k:04d}"
            people.append((f"{pid}_x_Asian_1", pid, stratum // 3, stratum % 3))
    return people


def test_all_photos_of_a_person_are_on_one_side():
    rows = _rows(_people(5))
    rows["split"] = assign_split(rows, 0.2, seed=1)
    assert (rows.groupby("profile")["split"].nunique() == 1).all()
    assert set(rows["split"]) == {"train", "val"}


def test_every_stratum_with_two_people_gives_someone_to_validation():
    rows = _rows(_people(2))
    rows["split"] = assign_split(rows, 0.05, seed=3)
    val = rows[rows["split"] == "val"].drop_duplicates("profile")
    assert sorted((val["gender_label"] * 3 + val["age_label"]).tolist()) == list(range(6))
    train = rows[rows["split"] == "train"].drop_duplicates("profile")
    assert len(train) == 6  # and never all of a stratum


def test_validation_share_follows_the_fraction_per_stratum():
    rows = _rows(_people(20))
    rows["split"] = assign_split(rows, 0.25, seed=0)
    people = rows.drop_duplicates("profile")
    shares = people.groupby(people["gender_label"] * 3 + people["age_label"])["split"].apply(lambda s: (s == "val").mean())
    assert (shares == 0.25).all()


def test_same_seed_same_split_other_seed_other_split():
    rows = _rows(_people(10))
    first = assign_split(rows, 0.2, seed=7)
    assert first.equals(assign_split(rows.sample(frac=1, random_state=0).sort_index(), 0.2, seed=7))
    assert not first.equals(assign_split(rows, 0.2, seed=8))


def test_adding_people_to_one_stratum_leaves_the_others_alone():
    base = {f"g{i}": i % 6 for i in range(30)}
    more = dict(base, **{f"h{i}": 0 for i in range(5)})
    before, after = split_groups(base, 0.2, 5), split_groups(more, 0.2, 5)
    stratum0 = {g for g, s in more.items() if s == 0}
    assert before - stratum0 == after - stratum0


def test_profiles_sharing_an_id_stay_together():
    people = _people(4) + [("000600_x_Asian_2", "dup", 0, 0), ("000601_x_Asian_3", "dup", 1, 1)]
    for seed in range(10):
        rows = _rows(people)
        rows["split"] = assign_split(rows, 0.5, seed=seed)
        assert rows.loc[rows["id"] == "dup", "split"].nunique() == 1


def test_zero_fraction_puts_everyone_in_train():
    rows = _rows(_people(3))
    assert set(assign_split(rows, 0.0, seed=0)) == {"train"}


def test_a_stratum_of_one_stays_in_train():
    assert split_groups({"a": 0, "b": 1, "c": 1}, 0.5, 0) in ({"b"}, {"c"})


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_invalid_fraction_is_an_error(fraction):
    with pytest.raises(MaskpipeError, match="val_fraction"):
        split_groups({"a": 0}, fraction)
