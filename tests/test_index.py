"""build_index / read_index / index_eval on small data sets built in the test."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
from datafactory import (
    DEFAULT_FOLDERS,
    make_dataset,
    make_profile,
    truncate,
    write_image,
    write_not_an_image,
    write_zero_byte,
)

from maskpipe.data.index import (
    INDEX_COLUMNS,
    build_index,
    eval_index_path,
    index_eval,
    read_eval_index,
    read_index,
)
from maskpipe.errors import DataLayoutError
from maskpipe.labels import MASK_STEMS, encode_class

F45 = "000001_female_Asian_45"
M20 = "000002_male_Asian_20"


def _skipped(result) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in result.report["skipped_files"]}


def test_index_has_one_row_per_image_with_the_contract_columns(tmp_path):
    data = make_dataset(tmp_path / "data")
    result = build_index(str(data.root), tmp_path / "index.parquet", tmp_path / "report.json")
    frame, root = read_index(tmp_path / "index.parquet")
    assert list(frame.columns) == INDEX_COLUMNS
    assert len(frame) == len(DEFAULT_FOLDERS) * 7
    assert root == str(data.root.resolve())
    row = frame[(frame["profile"] == F45) & (frame["stem"] == "incorrect_mask")].iloc[0]
    assert row["path"] == f"train/images/{F45}/incorrect_mask.jpg"
    assert (row["id"], row["gender"], row["race"], row["age"]) == ("000001", "female", "Asian", 45)
    assert (row["mask_label"], row["gender_label"], row["age_label"]) == (1, 1, 1)
    assert row["class"] == encode_class(1, 1, 1)
    for column in ("age", "mask_label", "gender_label", "age_label", "class"):
        assert frame[column].dtype == "int64"
    assert result.report["images"] == len(frame)
    assert json.loads((tmp_path / "report.json").read_text())["profiles"] == len(DEFAULT_FOLDERS)


def test_every_path_in_the_index_is_relative_and_exists(tmp_path):
    data = make_dataset(tmp_path / "data")
    build_index(str(data.root), tmp_path / "index.parquet")
    frame, root = read_index(tmp_path / "index.parquet")
    assert all(not os.path.isabs(p) and (data.root / p).is_file() for p in frame["path"])


def test_split_keeps_each_person_on_one_side_and_covers_every_stratum(tmp_path):
    data = make_dataset(tmp_path / "data")
    result = build_index(str(data.root), tmp_path / "index.parquet", val_fraction=0.2)
    frame = result.train
    assert (frame.groupby("profile")["split"].nunique() == 1).all()
    val = frame[frame["split"] == "val"].drop_duplicates("profile")
    assert sorted((val["gender_label"] * 3 + val["age_label"]).unique()) == list(range(6))
    again = build_index(str(data.root), tmp_path / "again.parquet", val_fraction=0.2)
    assert again.train["split"].equals(frame["split"])


def test_index_metadata_holds_the_data_root_made_absolute(tmp_path, monkeypatch):
    make_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    build_index("data", tmp_path / "index.parquet")
    metadata = pq.read_schema(tmp_path / "index.parquet").metadata
    assert metadata[b"maskpipe.data_root"].decode() == str(tmp_path / "data")


def test_eval_index_lists_info_csv_rows_in_order(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=4)
    listed = list(reversed(data.eval_ids))
    (data.root / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{i},0\n" for i in listed))
    result = build_index(str(data.root), tmp_path / "out" / "index.parquet")
    assert result.eval_index_path == tmp_path / "out" / "index.eval.parquet"
    frame, root = read_eval_index(result.eval_index_path)
    assert frame["image_id"].tolist() == listed
    assert frame["path"].tolist() == [f"eval/images/{i}" for i in listed]
    assert root == str(data.root)


def test_index_eval_alone_reads_eval_only(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=3)
    shutil.rmtree(data.root / "train")
    frame = index_eval(str(data.root))
    assert frame["image_id"].tolist() == data.eval_ids
    assert frame.attrs["data_root"] == str(data.root)


def test_eval_index_path_names():
    assert eval_index_path("/x/index.parquet").as_posix() == "/x/index.eval.parquet"
    assert eval_index_path("/x/rows").as_posix() == "/x/rows.eval.parquet"


@pytest.mark.parametrize("layout", ["profiles", "train_dir"])
def test_other_layouts_give_the_same_rows(tmp_path, layout):
    data = make_dataset(tmp_path / "data", layout=layout)
    result = build_index(str(data.root), tmp_path / "index.parquet")
    assert result.report["layout"] == layout
    assert len(result.train) == len(DEFAULT_FOLDERS) * 7
    assert result.eval is None
    prefix = "" if layout == "profiles" else "images/"
    assert result.train["path"].iloc[0] == f"{prefix}{sorted(DEFAULT_FOLDERS)[0]}/mask1.jpg"


def test_extensions_in_any_case_and_mixed_in_a_folder_are_indexed(tmp_path):
    data = make_dataset(tmp_path / "data", train_csv=False, eval_images=0)
    shutil.rmtree(data.folder(F45))
    exts = dict(zip(MASK_STEMS, [".jpg", ".jpeg", ".JPG", ".Jpeg", ".png", ".PNG", ".jpg"]))
    make_profile(data.images_dir, F45, ext=exts)
    result = build_index(str(data.root), tmp_path / "index.parquet")
    rows = result.train[result.train["profile"] == F45]
    assert len(rows) == 7
    assert sorted(os.path.splitext(p)[1] for p in rows["path"]) == sorted(exts.values())


def test_hidden_files_and_notebook_checkpoints_are_ignored(tmp_path):
    data = make_dataset(tmp_path / "data")
    (data.images_dir / ".DS_Store").write_bytes(b"Bud1")
    (data.folder(F45) / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07")
    write_image(data.folder(F45) / ".ipynb_checkpoints" / "mask1-checkpoint.jpg")
    write_image(data.images_dir / ".ipynb_checkpoints" / "000099_male_Asian_30" / "mask1.jpg")
    result = build_index(str(data.root), tmp_path / "index.parquet")
    assert len(result.train) == len(DEFAULT_FOLDERS) * 7
    assert result.report["ignored_hidden_files"] == 4
    assert result.report["skipped_files"] == []


def test_unknown_stems_and_non_image_files_are_skipped_and_reported(tmp_path):
    data = make_dataset(tmp_path / "data")
    write_image(data.folder(F45) / "mask6.jpg")
    (data.folder(F45) / "notes.txt").write_text("hello")
    write_image(data.images_dir / "stray.jpg")
    write_image(data.folder(F45) / "extra" / "mask1.jpg")
    result = build_index(str(data.root), tmp_path / "index.parquet")
    skipped = _skipped(result)
    assert "unknown image name 'mask6'" in skipped[f"train/images/{F45}/mask6.jpg"]
    assert "not a .jpg/.jpeg/.png" in skipped[f"train/images/{F45}/notes.txt"]
    assert "not directly inside a profile folder" in skipped["train/images/stray.jpg"]
    assert "not directly inside a profile folder" in skipped[f"train/images/{F45}/extra/mask1.jpg"]
    assert len(result.train) == len(DEFAULT_FOLDERS) * 7


def test_two_files_with_one_stem_keep_the_jpg_and_report_the_other(tmp_path):
    data = make_dataset(tmp_path / "data")
    write_image(data.folder(F45) / "mask1.png")
    write_image(data.folder(F45) / "normal.JPG")
    result = build_index(str(data.root), tmp_path / "index.parquet")
    rows = result.train[result.train["profile"] == F45].set_index("stem")
    assert rows.loc["mask1", "path"].endswith("mask1.jpg")
    assert rows.loc["normal", "path"].endswith("normal.jpg")
    skipped = _skipped(result)
    assert "kept mask1.jpg" in skipped[f"train/images/{F45}/mask1.png"]
    assert "kept normal.jpg" in skipped[f"train/images/{F45}/normal.JPG"]


def test_a_readable_copy_wins_over_a_broken_one(tmp_path):
    data = make_dataset(tmp_path / "data")
    truncate(data.image(F45, "mask1"))
    write_image(data.folder(F45) / "mask1.png")
    result = build_index(str(data.root), tmp_path / "index.parquet")
    rows = result.train[result.train["profile"] == F45].set_index("stem")
    assert rows.loc["mask1", "path"].endswith("mask1.png")
    assert "truncated" in _skipped(result)[f"train/images/{F45}/mask1.jpg"]


def test_broken_images_are_skipped_and_the_person_reported_as_incomplete(tmp_path):
    data = make_dataset(tmp_path / "data")
    truncate(data.image(F45, "mask2"))
    write_zero_byte(data.image(F45, "mask3"))
    write_not_an_image(data.image(M20, "normal"))
    data.image(M20, "mask5").unlink()
    result = build_index(str(data.root), tmp_path / "index.parquet", workers=1)
    skipped = _skipped(result)
    assert skipped[f"train/images/{F45}/mask3.jpg"] == "zero-byte file"
    assert skipped[f"train/images/{F45}/mask2.jpg"].startswith("truncated image")
    assert skipped[f"train/images/{M20}/normal.jpg"].startswith("not an image")
    assert result.report["profiles_missing_images"] == {F45: ["mask2", "mask3"], M20: ["mask5", "normal"]}
    assert len(result.train) == len(DEFAULT_FOLDERS) * 7 - 4
    assert set(result.train.loc[result.train["profile"] == F45, "stem"]) == set(MASK_STEMS) - {"mask2", "mask3"}


def test_grayscale_rgba_and_cmyk_images_are_kept(tmp_path):
    data = make_dataset(tmp_path / "data")
    write_image(data.image(F45, "mask1"), mode="L")
    write_image(data.image(F45, "mask2"), mode="CMYK")
    data.image(F45, "mask3").unlink()
    write_image(data.image(F45, "mask3", ".png"), mode="RGBA")
    result = build_index(str(data.root), tmp_path / "index.parquet")
    assert len(result.train[result.train["profile"] == F45]) == 7
    assert result.report["skipped_files"] == []


def test_symlink_leaving_the_root_is_skipped_and_reported(tmp_path):
    data = make_dataset(tmp_path / "data")
    outside = write_image(tmp_path / "elsewhere" / "face.jpg")
    data.image(F45, "mask4").unlink()
    os.symlink(outside, data.image(F45, "mask4"))
    result = build_index(str(data.root), tmp_path / "index.parquet")
    assert "symlink pointing outside" in _skipped(result)[f"train/images/{F45}/mask4.jpg"]
    assert result.report["profiles_missing_images"] == {F45: ["mask4"]}


def test_duplicate_ids_are_reported_and_both_folders_kept(tmp_path):
    folders = list(DEFAULT_FOLDERS) + ["000001_female_Asian_46"]
    data = make_dataset(tmp_path / "data", folders)
    result = build_index(str(data.root), tmp_path / "index.parquet")
    assert result.report["duplicate_ids"] == {"000001": ["000001_female_Asian_45", "000001_female_Asian_46"]}
    assert result.train.loc[result.train["id"] == "000001", "profile"].nunique() == 2
    assert result.train.loc[result.train["id"] == "000001", "split"].nunique() == 1


def test_ids_keep_their_zero_padding_and_suffixes(tmp_path):
    folders = ["000600-1_male_Asian_18", "000007_female_Asian_60"]
    data = make_dataset(tmp_path / "data", folders)
    frame = build_index(str(data.root), tmp_path / "index.parquet").train
    assert set(frame["id"]) == {"000600-1", "000007"}


def test_csv_and_folders_that_do_not_match_are_reported(tmp_path):
    data = make_dataset(tmp_path / "data")
    lines = (data.root / "train" / "train.csv").read_text().splitlines()
    kept = [line for line in lines if M20 not in line] + ["000999,male,Asian,30,000999_male_Asian_30"]
    (data.root / "train" / "train.csv").write_text("\n".join(kept) + "\n")
    report = build_index(str(data.root), tmp_path / "index.parquet").report["train_csv"]
    assert report["folders_not_in_csv"] == [M20]
    assert report["csv_rows_without_folder"] == ["000999_male_Asian_30"]


def test_summary_is_a_small_table_of_the_counts(tmp_path):
    data = make_dataset(tmp_path / "data")
    result = build_index(str(data.root), tmp_path / "index.parquet")
    text = result.summary()
    assert f"{len(DEFAULT_FOLDERS)} people" in text and "84 images" in text
    assert "wear/female" in text and "not_wear/male" in text and ">=60" in text
    assert "eval images: 3" in text
    assert len(text.splitlines()) < 15


def test_outputs_are_written_without_leftover_temporary_files(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    build_index(str(data.root), out / "index.parquet", out / "report.json")
    assert sorted(p.name for p in out.iterdir()) == ["index.eval.parquet", "index.parquet", "report.json"]


def test_a_failed_index_leaves_the_previous_one_in_place(tmp_path):
    data = make_dataset(tmp_path / "data")
    build_index(str(data.root), tmp_path / "index.parquet")
    before = (tmp_path / "index.parquet").read_bytes()
    (data.root / "eval" / "info.csv").write_text("ImageID,ans\nmissing.jpg,0\n")
    with pytest.raises(DataLayoutError):
        build_index(str(data.root), tmp_path / "index.parquet")
    assert (tmp_path / "index.parquet").read_bytes() == before


def test_read_index_rejects_a_parquet_that_is_not_an_index(tmp_path):
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(DataLayoutError, match="not a maskpipe index.*maskpipe index"):
        read_index(tmp_path / "other.parquet")
    with pytest.raises(DataLayoutError, match="does not exist"):
        read_index(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataLayoutError, match="not a readable parquet"):
        read_index(tmp_path / "junk.parquet")


def test_synthetic_quirks_are_all_handled(tmp_path):
    from maskpipe.data.synth import generate

    generate(tmp_path / "synth", people=10, eval_people=1, seed=3, size=(32, 40), quirks=True)
    result = build_index(str(tmp_path / "synth"), tmp_path / "index.parquet")
    assert len(result.train) == 70
    assert result.report["skipped_files"] == []
    assert result.report["ignored_hidden_files"] >= 3
    assert len(result.report["duplicate_ids"]) == 1
    assert any(p.endswith(".png") for p in result.train["path"])
    assert any("-1_" in p for p in result.train["profile"])


def test_s3_root_gives_the_same_rows_as_the_local_copy(tmp_path, s3_bucket):
    from maskpipe.storage import upload_dir

    data = make_dataset(tmp_path / "data")
    write_zero_byte(data.image(F45, "mask1"))
    uri = f"{s3_bucket}/datasets/v1"
    upload_dir(data.root, uri)
    remote = build_index(uri, tmp_path / "s3.parquet", cache_dir=tmp_path / "cache")
    local = build_index(str(data.root), tmp_path / "local.parquet")
    assert remote.train.equals(local.train)
    frame, root = read_index(tmp_path / "s3.parquet")
    assert root == uri
    assert read_eval_index(remote.eval_index_path)[0].equals(local.eval)
    assert _skipped(remote) == _skipped(local)
