"""The synthetic data set: the competition's layout, deterministic, learnable, realistic shares."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskpipe.data.index import build_index
from maskpipe.data.layout import parse_profile
from maskpipe.data.synth import generate
from maskpipe.errors import MaskpipeError
from maskpipe.labels import MASK_STEMS, encode_class

SMALL = (32, 40)


def _digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_file_names_and_csvs_match_the_competition(tmp_path):
    summary = generate(tmp_path, people=5, eval_people=2, seed=0, size=SMALL)
    folders = sorted(p.name for p in (tmp_path / "train" / "images").iterdir())
    assert len(folders) == 5
    for folder in folders:
        profile = parse_profile(folder)
        assert re.fullmatch(r"\d{6}", profile.id) and profile.race == "Asian"
        assert sorted(p.name for p in (tmp_path / "train" / "images" / folder).iterdir()) == sorted(
            f"{s}.jpg" for s in MASK_STEMS
        )
    train = pd.read_csv(tmp_path / "train" / "train.csv", dtype=str)
    assert list(train.columns) == ["id", "gender", "race", "age", "path"]
    assert sorted(train["path"]) == folders
    assert (train["id"] + "_" + train["gender"] + "_" + train["race"] + "_" + train["age"]).tolist() == train["path"].tolist()
    info = pd.read_csv(tmp_path / "eval" / "info.csv", dtype=str)
    assert list(info.columns) == ["ImageID", "ans"] and set(info["ans"]) == {"0"}
    assert all(re.fullmatch(r"[0-9a-f]{40}\.jpg", i) for i in info["ImageID"])
    assert sorted(p.name for p in (tmp_path / "eval" / "images").iterdir()) == sorted(info["ImageID"])
    with Image.open(tmp_path / "eval" / "images" / info["ImageID"][0]) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", SMALL, "RGB")
    assert summary.train_images == 35 and summary.eval_images == 14


def test_eval_truth_sits_outside_eval_and_matches_info_csv(tmp_path):
    generate(tmp_path, people=2, eval_people=3, seed=0, size=SMALL)
    assert not (tmp_path / "eval" / "eval_truth.csv").exists()
    truth = pd.read_csv(tmp_path / "eval_truth.csv", dtype={"ImageID": str})
    info = pd.read_csv(tmp_path / "eval" / "info.csv", dtype=str)
    assert list(truth.columns) == ["ImageID", "ans", "mask", "gender", "age"]
    assert truth["ImageID"].tolist() == info["ImageID"].tolist()
    assert all(encode_class(m, g, a) == ans for ans, m, g, a in truth[["ans", "mask", "gender", "age"]].itertuples(index=False))
    assert sorted(truth["mask"].value_counts().tolist()) == [3, 3, 15]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", people=3, eval_people=1, seed=5, size=SMALL)
    generate(tmp_path / "b", people=3, eval_people=1, seed=5, size=SMALL)
    generate(tmp_path / "c", people=3, eval_people=1, seed=6, size=SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_default_output_is_clean_and_indexes_without_skips(tmp_path):
    generate(tmp_path / "data", people=6, eval_people=1, seed=2, size=SMALL)
    result = build_index(str(tmp_path / "data"), tmp_path / "index.parquet")
    assert result.report["skipped_files"] == [] and result.report["duplicate_ids"] == {}
    assert result.report["ignored_hidden_files"] == 1  # the generator's own marker file
    assert all(p.endswith(".jpg") for p in result.train["path"])


def test_quirks_option_adds_the_real_layout_quirks(tmp_path):
    summary = generate(tmp_path, people=9, eval_people=0, seed=1, size=SMALL, quirks=True)
    names = [p.name for p in (tmp_path / "train" / "images").rglob("*") if p.is_file()]
    extensions = {n.rsplit(".", 1)[1] for n in names}
    assert {"jpg", "jpeg", "png", "JPG", "Jpeg"} <= extensions
    assert ".DS_Store" in names and "._mask1.jpg" in names
    assert any("-1_" in p.name for p in (tmp_path / "train" / "images").iterdir())
    assert any("in two folders" in q for q in summary.quirks)
    assert not (tmp_path / "eval").exists()


def test_shares_follow_the_real_data(tmp_path):
    summary = generate(tmp_path, people=400, eval_people=0, seed=0, size=(16, 16))
    assert 0.55 < summary.female_share < 0.67
    young, middle, old = (n / 400 for n in summary.age_bin_counts)
    assert 0.40 < young < 0.54 and 0.38 < middle < 0.52 and 0.04 < old < 0.12
    ages = pd.read_csv(tmp_path / "train" / "train.csv")["age"]
    assert ages.min() >= 18 and ages.max() == 60


def test_refuses_a_folder_it_did_not_write_and_regenerates_its_own(tmp_path):
    (tmp_path / "foreign" / "train").mkdir(parents=True)
    with pytest.raises(MaskpipeError, match="did not write"):
        generate(tmp_path / "foreign", people=1, eval_people=0, size=SMALL)
    generate(tmp_path / "own", people=3, eval_people=1, seed=0, size=SMALL)
    generate(tmp_path / "own", people=2, eval_people=1, seed=1, size=SMALL)
    assert len(list((tmp_path / "own" / "train" / "images").iterdir())) == 2
    assert len(list((tmp_path / "own" / "eval" / "images").iterdir())) == 7


def test_a_run_killed_half_way_is_regenerated_on_rerun(tmp_path, monkeypatch):
    import maskpipe.data.synth as synth

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_eval", killed)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "data", people=2, eval_people=1, size=SMALL)
    assert (tmp_path / "data" / "train").is_dir() and not (tmp_path / "data" / "eval_truth.csv").exists()
    monkeypatch.undo()
    generate(tmp_path / "data", people=2, eval_people=1, size=SMALL)
    assert (tmp_path / "data" / "eval_truth.csv").is_file()


@pytest.mark.parametrize(("people", "size"), [(0, SMALL), (1, (8, 8))])
def test_bad_arguments_are_clear_errors(tmp_path, people, size):
    with pytest.raises(MaskpipeError):
        generate(tmp_path, people=people, eval_people=0, size=size)


def test_each_person_keeps_one_identity_across_photos(tmp_path):
    generate(tmp_path, people=10, eval_people=0, seed=4, size=(48, 64))
    colours = []  # background chromaticity (brightness jitter cancels out) of each photo
    for folder in sorted((tmp_path / "train" / "images").iterdir()):
        corners = [np.asarray(Image.open(folder / f"{s}.jpg"), dtype=np.float64)[:6, :6].mean(axis=(0, 1)) for s in MASK_STEMS]
        colours.append([c / c.sum() for c in corners])
    colours = np.array(colours)  # people x photos x 3
    within = np.abs(colours - colours.mean(axis=1, keepdims=True)).mean()
    between = np.abs(colours - colours.reshape(-1, 3).mean(axis=0)).mean()
    assert within < between / 3  # the background colour belongs to the person


def test_all_three_tasks_are_learnable_from_small_images(tmp_path):
    """A ridge classifier on 18x24 pixels, tested on unseen people, beats the majority class
    on every task: the labels are drawn into the pictures (a CNN does much better)."""
    generate(tmp_path / "data", people=160, eval_people=0, seed=11, size=(36, 48))
    frame = build_index(str(tmp_path / "data"), tmp_path / "index.parquet", val_fraction=0.3, workers=1).train
    pixels = np.stack(
        [np.asarray(Image.open(tmp_path / "data" / p).resize((18, 24)), dtype=np.float64).ravel() / 255 for p in frame["path"]]
    )
    features = np.c_[pixels, np.ones(len(pixels))]
    train = (frame["split"] == "train").to_numpy()
    for task, margin in (("mask", 0.15), ("gender", 0.15), ("age", 0.05)):
        y = frame[f"{task}_label"].to_numpy()
        targets = np.eye(y.max() + 1)[y]
        a = features[train]
        weights = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ targets[train])
        accuracy = ((features[~train] @ weights).argmax(1) == y[~train]).mean()
        majority = np.bincount(y[~train]).max() / (~train).sum()
        assert accuracy > majority + margin, (task, accuracy, majority)


def test_cli_size_is_height_by_width_as_image_size_is(tmp_path):
    from maskpipe.cli import main

    assert main(["synth", str(tmp_path / "cli"), "--people", "2", "--eval-people", "1", "--seed", "3", "--size", "40x32"]) == 0
    generate(tmp_path / "api", people=2, eval_people=1, seed=3, size=(32, 40))  # (width, height)
    assert _digest(tmp_path / "cli") == _digest(tmp_path / "api")
    photo = next((tmp_path / "cli" / "train" / "images").rglob("*.jpg"))
    assert Image.open(photo).size == (32, 40)  # PIL: (width, height)
