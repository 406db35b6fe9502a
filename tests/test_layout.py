"""Layout detection and profile folder names."""

from __future__ import annotations

import os

import pytest

from maskpipe.data.layout import Profile, detect_layout, find_escaping_links, is_hidden, parse_profile
from maskpipe.errors import DataLayoutError


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("000001_female_Asian_45", Profile("000001_female_Asian_45", "000001", "female", "Asian", 45)),
        ("000600-1_male_Asian_18", Profile("000600-1_male_Asian_18", "000600-1", "male", "Asian", 18)),
        ("004432_Male_Asian_60", Profile("004432_Male_Asian_60", "004432", "male", "Asian", 60)),
        ("000002_FEMALE_Asian_30", Profile("000002_FEMALE_Asian_30", "000002", "female", "Asian", 30)),
    ],
)
def test_profile_folder_names_parse(folder, expected):
    assert parse_profile(folder) == expected


@pytest.mark.parametrize(
    ("folder", "problem"),
    [
        ("000001_female_Asian", "does not parse"),
        ("000001_female_Asian_45_extra", "does not parse"),
        ("000001__Asian_45", "does not parse"),
        ("000001_woman_Asian_45", "gender 'woman'"),
        ("000001_female_Asian_forty", "age 'forty'"),
        ("000001_female_Asian_-3", "age '-3'"),
        ("000001_female_Asian_999", "age '999'"),
    ],
)
def test_bad_profile_names_are_errors_naming_the_folder_and_the_pattern(folder, problem):
    with pytest.raises(DataLayoutError) as info:
        parse_profile(folder)
    message = str(info.value)
    assert repr(folder) in message and problem in message
    assert "<id>_<gender>_<race>_<age>" in message
    assert "--skip-bad-profiles" in message


@pytest.mark.parametrize(
    ("path", "hidden"),
    [
        (".DS_Store", True),
        ("train/images/x/._mask1.jpg", True),
        ("train/images/x/.ipynb_checkpoints/mask1-checkpoint.jpg", True),
        ("__MACOSX/train/images/x/mask1.jpg", True),
        ("train/images/000001_female_Asian_45/mask1.jpg", False),
    ],
)
def test_hidden_paths(path, hidden):
    assert is_hidden(path) is hidden


def test_competition_layout_is_detected_with_its_csvs():
    files = ["train/images/000001_female_Asian_45/mask1.jpg", "train/train.csv", "eval/info.csv", "eval/images/a.jpg"]
    layout = detect_layout("/data", files)
    assert (layout.kind, layout.images_prefix, layout.train_csv, layout.eval_info) == (
        "competition", "train/images", "train/train.csv", "eval/info.csv",
    )
    assert layout.image_path("p/mask1.jpg") == "train/images/p/mask1.jpg"


def test_a_folder_of_profile_folders_is_detected():
    layout = detect_layout("/data", ["000001_female_Asian_45/mask1.jpg", "000002_male_Asian_20/normal.png"])
    assert (layout.kind, layout.images_prefix, layout.train_csv) == ("profiles", "", None)
    assert layout.image_path("p/mask1.jpg") == "p/mask1.jpg"


def test_the_train_folder_itself_is_detected():
    layout = detect_layout("/data/train", ["images/000001_female_Asian_45/mask1.jpg", "train.csv"])
    assert (layout.kind, layout.images_prefix, layout.train_csv) == ("train_dir", "images", "train.csv")


def test_eval_only_root_has_no_training_images():
    layout = detect_layout("/data", ["eval/info.csv", "eval/images/a.jpg"])
    assert layout.kind == "eval_only" and layout.images_prefix is None


def test_unrecognisable_root_names_the_expected_layouts_and_what_was_found():
    with pytest.raises(DataLayoutError) as info:
        detect_layout("/data", ["photos/cat.jpg", "notes.txt"])
    message = str(info.value)
    assert "no recognisable layout" in message and "train/images/<id>_<gender>_<race>_<age>" in message
    assert "photos/" in message and "notes.txt" in message


def test_only_hidden_files_count_as_empty():
    with pytest.raises(DataLayoutError, match="holds no files"):
        detect_layout("/data", [".DS_Store", "._x"])


def test_symlinks_leaving_the_root_are_found(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    (root / "a" / "inside.jpg").write_bytes(b"y")
    os.symlink(outside, root / "a" / "escape.jpg")
    os.symlink(tmp_path, root / "up")
    os.symlink(root / "a" / "inside.jpg", root / "a" / "ok.jpg")
    assert find_escaping_links(root) == ["a/escape.jpg", "up"]
