"""Every bad data-layout input gives a clear error that names the file and the fix, or a
documented skip (recorded in the report) - never a traceback from inside a library.

Several cases run through the command line: ``maskpipe.cli.main`` returns 2 and prints one line.
"""

from __future__ import annotations

import json
import os

import pytest
from cli_helpers import cli_error
from datafactory import (
    DEFAULT_FOLDERS,
    make_dataset,
    truncate,
    write_huge_png_header,
    write_image,
    write_not_an_image,
    write_train_csv,
    write_zero_byte,
)

from maskpipe.cli import main
from maskpipe.data.index import build_index, index_eval
from maskpipe.errors import DataLayoutError

F45 = "000001_female_Asian_45"




def _index_cli(capsys, tmp_path, root, *extra: str) -> tuple[int, dict]:
    code = main(["index", str(root), "-o", str(tmp_path / "index.parquet"), "--report", str(tmp_path / "report.json"), *extra])
    capsys.readouterr()
    report = json.loads((tmp_path / "report.json").read_text()) if code == 0 else {}
    return code, report


def _skips(report: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in report["skipped_files"]}


# ---------------------------------------------------------------------------- whole-root errors


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = cli_error(capsys, "index", str(tmp_path / "empty"), "-o", str(tmp_path / "i.parquet"))
    assert "is empty" in line and str(tmp_path / "empty") in line and "expected one of" in line


def test_folder_with_only_hidden_files(tmp_path, capsys):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / ".DS_Store").write_bytes(b"x")
    line = cli_error(capsys, "index", str(tmp_path / "root"), "-o", str(tmp_path / "i.parquet"))
    assert "holds no files" in line


def test_missing_root(tmp_path, capsys):
    line = cli_error(capsys, "index", str(tmp_path / "nope"), "-o", str(tmp_path / "i.parquet"))
    assert "does not exist" in line


def test_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    line = cli_error(capsys, "index", str(tmp_path / "file.txt"), "-o", str(tmp_path / "i.parquet"))
    assert "is a file" in line


def test_no_recognisable_layout(tmp_path, capsys):
    write_image(tmp_path / "root" / "holiday" / "beach.jpg")
    line = cli_error(capsys, "index", str(tmp_path / "root"), "-o", str(tmp_path / "i.parquet"))
    assert "no recognisable layout" in line and "holiday/" in line
    assert "train/images/<id>_<gender>_<race>_<age>" in line and "--data_dir" in line


def test_eval_only_root_cannot_be_indexed_for_training(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    import shutil

    shutil.rmtree(data.root / "train")
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"))
    assert "no training images" in line


def test_every_image_broken(tmp_path):
    data = make_dataset(tmp_path / "data", DEFAULT_FOLDERS[:1], eval_images=0)
    for image in data.folder(DEFAULT_FOLDERS[0]).iterdir():
        write_zero_byte(image)
    with pytest.raises(DataLayoutError, match="no usable training images.*zero-byte"):
        build_index(str(data.root), tmp_path / "i.parquet")


# ---------------------------------------------------------------------------- profile folders


@pytest.mark.parametrize("folder", ["000099_female_Asian", "000099_unknown_Asian_30", "000099_male_Asian_thirty", "notes"])
def test_unparseable_folder_name_is_an_error_naming_it(tmp_path, capsys, folder):
    data = make_dataset(tmp_path / "data")
    write_image(data.images_dir / folder / "mask1.jpg")
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"))
    assert repr(folder) in line and "--skip-bad-profiles" in line


def test_unparseable_folder_is_skipped_and_reported_on_request(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    write_image(data.images_dir / "000099_female_Asian" / "mask1.jpg")
    code, report = _index_cli(capsys, tmp_path, data.root, "--skip-bad-profiles")
    assert code == 0
    assert [s["profile"] for s in report["skipped_profiles"]] == ["000099_female_Asian"]
    assert report["profiles"] == len(DEFAULT_FOLDERS)


@pytest.mark.parametrize(
    ("row", "problem"),
    [("000001,male,Asian,45", "gender is 'female' in the folder name but 'male'"), ("000001,female,Asian,46", "age is 45")],
)
def test_folder_disagreeing_with_train_csv_is_an_error(tmp_path, capsys, row, problem):
    data = make_dataset(tmp_path / "data", train_csv=False)
    others = [f for f in DEFAULT_FOLDERS if f != F45]
    write_train_csv(data.root / "train" / "train.csv", others, rows=[f"{row},{F45}"])
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"))
    assert repr(F45) in line and "train.csv" in line and problem in line


def test_folder_disagreeing_with_train_csv_is_skipped_on_request(tmp_path):
    data = make_dataset(tmp_path / "data", train_csv=False)
    others = [f for f in DEFAULT_FOLDERS if f != F45]
    write_train_csv(data.root / "train" / "train.csv", others, rows=[f"000001,female,Asian,46,{F45}"])
    result = build_index(str(data.root), tmp_path / "i.parquet", skip_bad_profiles=True)
    assert F45 not in set(result.train["profile"])
    assert result.report["skipped_profiles"][0]["profile"] == F45
    assert "disagrees with train.csv" in result.report["skipped_profiles"][0]["reason"]


@pytest.mark.parametrize("text", ["id,gender\n1,male\n", "", "\x00\xff\xfe"])
def test_malformed_train_csv_is_an_error_naming_it(tmp_path, capsys, text):
    data = make_dataset(tmp_path / "data")
    (data.root / "train" / "train.csv").write_bytes(text.encode("latin-1"))
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"))
    assert "train.csv" in line


def test_duplicate_profile_ids_are_reported_not_errors(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", list(DEFAULT_FOLDERS) + ["000001_female_Asian_47"])
    code, report = _index_cli(capsys, tmp_path, data.root)
    assert code == 0
    assert report["duplicate_ids"] == {"000001": [F45, "000001_female_Asian_47"]}


# ---------------------------------------------------------------------------- image files


def test_broken_and_odd_image_files_through_the_cli(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    truncate(data.image(F45, "mask1"))
    write_zero_byte(data.image(F45, "mask2"))
    write_not_an_image(data.image(F45, "mask3"))
    write_huge_png_header(data.image(F45, "mask4"))
    write_image(data.image(F45, "mask5"), mode="L")
    write_image(data.image(F45, "normal"), mode="CMYK")
    data.image(F45, "incorrect_mask").unlink()
    write_image(data.image(F45, "incorrect_mask", ".png"), mode="RGBA")
    code, report = _index_cli(capsys, tmp_path, data.root)
    assert code == 0
    skips = _skips(report)
    base = f"train/images/{F45}"
    assert skips[f"{base}/mask1.jpg"].startswith("truncated image")
    assert skips[f"{base}/mask2.jpg"] == "zero-byte file"
    assert skips[f"{base}/mask3.jpg"].startswith("not an image")
    assert skips[f"{base}/mask4.jpg"].startswith("image too large") and "40,000,000-pixel limit" in skips[f"{base}/mask4.jpg"]
    assert report["profiles_missing_images"] == {F45: ["mask1", "mask2", "mask3", "mask4"]}
    assert report["images"] == len(DEFAULT_FOLDERS) * 7 - 4  # grayscale, CMYK and RGBA are kept


def test_symlinks_outside_the_root_are_not_followed(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    secret = write_image(tmp_path / "outside" / "photo.jpg")
    data.image(F45, "mask1").unlink()
    os.symlink(secret, data.image(F45, "mask1"))
    os.symlink(tmp_path / "outside", data.images_dir / "000077_male_Asian_30")
    code, report = _index_cli(capsys, tmp_path, data.root)
    assert code == 0
    skips = _skips(report)
    assert "outside the data root" in skips[f"train/images/{F45}/mask1.jpg"]
    assert "outside the data root" in skips["train/images/000077_male_Asian_30"]
    assert "000077_male_Asian_30" not in json.dumps(report["counts"])


# ---------------------------------------------------------------------------- eval listing


def test_info_csv_listing_a_missing_image(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", eval_images=2)
    with open(data.root / "eval" / "info.csv", "a") as handle:
        handle.write("deadbeef.jpg,0\n")
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"))
    assert "deadbeef.jpg" in line and "info.csv" in line and "add the files or remove their rows" in line
    assert not (tmp_path / "i.parquet").exists()


def test_info_csv_with_duplicated_image_ids(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", eval_images=3)
    with open(data.root / "eval" / "info.csv", "a") as handle:
        handle.write(f"{data.eval_ids[1]},0\n")
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"))
    assert data.eval_ids[1] in line and "more than once" in line


def test_unreadable_eval_image_is_an_error_naming_it(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=3)
    truncate(data.eval_image(data.eval_ids[2]))
    with pytest.raises(DataLayoutError, match=f"{data.eval_ids[2]}.*truncated"):
        index_eval(str(data.root))


def test_info_csv_without_image_id_column(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=1)
    (data.root / "eval" / "info.csv").write_text("id,ans\nx.jpg,0\n")
    with pytest.raises(DataLayoutError, match="lacks the column.*ImageID"):
        index_eval(str(data.root))


def test_index_eval_on_a_root_without_eval(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=0)
    with pytest.raises(DataLayoutError, match="no eval/info.csv"):
        index_eval(str(data.root))


def test_bad_val_fraction_through_the_cli(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"), "--val-fraction", "1.5")
    assert "val_fraction" in line
