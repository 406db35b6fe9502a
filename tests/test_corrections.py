"""Label corrections: the shipped list, custom CSV/YAML files, and their effect on the index."""

from __future__ import annotations

import pytest
from datafactory import DEFAULT_FOLDERS, make_dataset

from maskpipe.data.corrections import Correction, apply_corrections, load_corrections
from maskpipe.data.index import build_index
from maskpipe.data.layout import parse_profile
from maskpipe.errors import DataLayoutError

KNOWN_FOLDERS = [
    "006359_female_Asian_18", "006360_female_Asian_18", "006361_female_Asian_18", "006362_female_Asian_18",
    "006363_female_Asian_18", "006364_female_Asian_18", "001498-1_male_Asian_23", "004432_male_Asian_43",
    "000020_female_Asian_50", "004418_male_Asian_20", "005227_male_Asian_22",
]  # fmt: skip


def test_known_list_holds_the_widely_reported_fixes():
    source, fixes = load_corrections("known")
    assert "known.yaml" in source
    by_id = {f.id: f for f in fixes}
    assert all(by_id[f"00636{i}"].gender == "male" for i in range(4)) and by_id["006359"].gender == "male"
    assert by_id["001498-1"].gender == "female" and by_id["004432"].gender == "female"
    assert {i for i, f in by_id.items() if f.swap_incorrect_normal} == {"000020", "004418", "005227"}


def test_known_corrections_change_labels_in_the_index_and_are_reported(tmp_path):
    data = make_dataset(tmp_path / "data", list(DEFAULT_FOLDERS) + KNOWN_FOLDERS)
    result = build_index(str(data.root), tmp_path / "index.parquet", corrections="known")
    frame = result.train.set_index(["profile", "stem"])
    assert frame.loc[("006359_female_Asian_18", "mask1"), "gender"] == "male"
    assert frame.loc[("006359_female_Asian_18", "mask1"), "gender_label"] == 0
    assert frame.loc[("001498-1_male_Asian_23", "normal"), "gender_label"] == 1
    assert frame.loc[("000020_female_Asian_50", "incorrect_mask"), "mask_label"] == 2
    assert frame.loc[("000020_female_Asian_50", "normal"), "mask_label"] == 1
    assert frame.loc[("000020_female_Asian_50", "normal"), "class"] == 1 * 6 + 1 * 3 + 1
    assert frame.loc[("000002_male_Asian_20", "normal"), "mask_label"] == 2  # others untouched
    applied = result.report["corrections"]["applied"]
    assert len(applied) == 11
    assert {"profile": "004432_male_Asian_43", "field": "gender", "from": "male", "to": "female"}.items() <= next(
        a for a in applied if a["profile"] == "004432_male_Asian_43"
    ).items()
    assert "corrections" in result.summary() and "11 applied" in result.summary()


def test_without_corrections_labels_follow_the_folder_names(tmp_path):
    data = make_dataset(tmp_path / "data", list(DEFAULT_FOLDERS) + KNOWN_FOLDERS[:1])
    result = build_index(str(data.root), tmp_path / "index.parquet")
    assert set(result.train.loc[result.train["id"] == "006359", "gender"]) == {"female"}
    assert result.report["corrections"]["applied"] == []


def test_corrections_match_every_folder_of_an_id():
    profiles = {f: parse_profile(f) for f in ("000020_female_Asian_50", "000020_female_Asian_51", "000021_male_Asian_30")}
    result = apply_corrections(profiles, [Correction("000020", age=52), Correction("999999", gender="male")])
    assert result.profiles["000020_female_Asian_50"].age == 52 and result.profiles["000020_female_Asian_51"].age == 52
    assert result.profiles["000021_male_Asian_30"].age == 30
    assert result.unmatched == ["999999"]


def test_a_correction_that_is_already_true_is_not_logged():
    profiles = {"006359_male_Asian_18": parse_profile("006359_male_Asian_18")}
    assert apply_corrections(profiles, [Correction("006359", gender="male")]).applied == []


def test_csv_corrections_file(tmp_path):
    path = tmp_path / "fix.csv"
    path.write_text("id,gender,age,swap_incorrect_normal,note\n000001,male,,,\n000002,,61,,older\n000003,,,true,\n")
    _, fixes = load_corrections(path)
    assert fixes == [
        Correction("000001", gender="male"),
        Correction("000002", age=61, note="older"),
        Correction("000003", swap_incorrect_normal=True),
    ]


def test_yaml_corrections_file_through_the_index(tmp_path):
    data = make_dataset(tmp_path / "data")
    path = tmp_path / "fix.yaml"
    path.write_text("corrections:\n  - {id: '000002', age: 61}\n")
    result = build_index(str(data.root), tmp_path / "index.parquet", corrections=str(path))
    rows = result.train[result.train["id"] == "000002"]
    assert set(rows["age"]) == {61} and set(rows["age_label"]) == {2}
    assert result.report["corrections"]["source"] == str(path)


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("a.yaml", "corrections: [{id: '1', gender: other}]", "not male or female"),
        ("a.yaml", "corrections: [{id: '1', age: old}]", "not a whole number"),
        ("a.yaml", "corrections: [{id: '1', colour: red}]", "unknown field"),
        ("a.yaml", "corrections: [{id: '1'}]", "changes nothing"),
        ("a.yaml", "corrections: [{gender: male}]", "'id' is missing"),
        ("a.yaml", "fixes: []", "top-level 'corrections:'"),
        ("a.yaml", "corrections: [", "not valid YAML"),
        ("a.yaml", "corrections: [{id: '1', swap_incorrect_normal: maybe}]", "true or false"),
        ("a.csv", "profile,gender\nx,male\n", "'id' column"),
        ("a.txt", "id\n1\n", "unknown type"),
    ],
)
def test_bad_corrections_files_are_clear_errors(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataLayoutError, match=problem) as info:
        load_corrections(path)
    assert str(path) in str(info.value)


def test_missing_corrections_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist; pass 'known'"):
        load_corrections(tmp_path / "nope.yaml")
