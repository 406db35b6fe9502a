"""Paths that come from files (info.csv, train.csv, index.parquet) or from object keys never
reach outside the data root, and nothing is ever written outside the local cache.

Each test plants a real target outside the root (a file that ``..`` would resolve to) so that
a path that escaped would find something to read, and checks afterwards that nothing was read
from or written to the outside.
"""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import cli_error
from datafactory import DEFAULT_FOLDERS, make_dataset, write_image

from maskpipe import storage
from maskpipe.data.index import build_index, index_eval, read_index, write_frame
from maskpipe.errors import DataLayoutError, StorageError

F45 = DEFAULT_FOLDERS[0]




# ---------------------------------------------------------------------------- info.csv ImageIDs


@pytest.mark.parametrize(
    "image_id", ["../../../outside.jpg", "../../train/images/000001_female_Asian_45/mask1.jpg", "sub/x.jpg", ".."]
)
def test_info_csv_image_id_that_is_a_path_is_refused(tmp_path, capsys, image_id):
    data = make_dataset(tmp_path / "data", eval_images=2)
    write_image(tmp_path / "outside.jpg")  # what ../../../outside.jpg resolves to from eval/images
    with open(data.root / "eval" / "info.csv", "a") as handle:
        handle.write(f"{image_id},0\n")
    line = cli_error(capsys, "index", str(data.root), "-o", str(tmp_path / "i.parquet"))
    assert repr(image_id) in line and "not plain file names" in line and "eval/images/" in line
    assert not (tmp_path / "i.parquet").exists()


def test_infer_data_with_an_escaping_image_id_is_refused(tmp_path, capsys, checkpoints):
    data = make_dataset(tmp_path / "data", eval_images=2)
    write_image(tmp_path / "outside.jpg")
    (data.root / "eval" / "info.csv").write_text("ImageID,ans\n../../../outside.jpg,0\n")
    line = cli_error(
        capsys, "infer", "--mask", str(checkpoints["mask"]), "--gender", str(checkpoints["gender"]),
        "--age", str(checkpoints["age"]), "--data", str(data.root), "-o", str(tmp_path / "submission.csv"),
    )  # fmt: skip
    assert "'../../../outside.jpg'" in line and "not plain file names" in line
    assert not (tmp_path / "submission.csv").exists()


# ---------------------------------------------------------------------------- train.csv paths


def test_train_csv_path_column_climbing_out_is_never_read(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=0, train_csv=False)
    outside = tmp_path / "000099_male_Asian_30"
    write_image(outside / "mask1.jpg")  # a profile folder that ../../../000099... would find
    rows = ["000099,male,Asian,30,../../../000099_male_Asian_30"]
    from datafactory import write_train_csv

    write_train_csv(data.root / "train" / "train.csv", DEFAULT_FOLDERS, rows=rows)
    result = build_index(str(data.root), tmp_path / "i.parquet")
    assert "000099_male_Asian_30" not in set(result.train["profile"])
    assert result.report["train_csv"]["csv_rows_without_folder"] == ["../../../000099_male_Asian_30"]
    assert all(not p.startswith("..") and "/../" not in p for p in result.train["path"])


# ---------------------------------------------------------------------------- tampered index files


def _tampered_index(tmp_path, data_root: str, rel_path: str):
    """A valid index whose first row's path was edited to ``rel_path``."""
    data = make_dataset(tmp_path / "data", eval_images=0)
    result = build_index(str(data.root), tmp_path / "good.parquet", val_fraction=0.34)
    frame = result.train.copy()
    frame.loc[0, "path"] = rel_path
    write_frame(frame, tmp_path / "tampered.parquet", data_root)
    return tmp_path / "tampered.parquet"


@pytest.mark.parametrize("rel_path", ["../outside.jpg", "train/../../outside.jpg", "/etc/passwd"])
def test_training_on_an_index_with_an_escaping_path_is_refused(tmp_path, capsys, rel_path):
    write_image(tmp_path / "outside.jpg")
    index = _tampered_index(tmp_path, str(tmp_path / "data"), rel_path)
    assert read_index(index)[0].loc[0, "path"] == rel_path
    line = cli_error(
        capsys, "train", "--task", "mask", "--index", str(index), "--out", str(tmp_path / "out"),
        "--preset", "smoke", "--set", "data.input_size=[32,24]", "--set", "data.crop_size=null",
    )  # fmt: skip
    assert repr(rel_path) in line and "is not a file path inside" in line


def test_training_on_an_s3_index_with_an_escaping_path_writes_nothing_outside_the_cache(
    tmp_path, capsys, s3_bucket
):
    index = _tampered_index(tmp_path, f"{s3_bucket}/data", "../../../../escaped.jpg")
    cache = tmp_path / "deep" / "cache"
    line = cli_error(
        capsys, "train", "--task", "mask", "--index", str(index), "--out", str(tmp_path / "out"),
        "--preset", "smoke", "--cache-dir", str(cache),
    )  # fmt: skip
    assert "'../../../../escaped.jpg' is not a file path inside" in line
    assert not list(tmp_path.rglob("escaped.jpg"))


# ---------------------------------------------------------------------------- object keys with ..
# SeaweedFS refuses a key with '..' segments (InvalidRequest), AWS S3 and moto store it as is:
# these run on moto (``moto_bucket``), where such keys can be planted as on AWS.


def _put(endpoint, bucket_uri: str, key: str, data: bytes) -> None:
    """Store an object under ``key`` as is. The minio client refuses '..' segments, so keys an
    attacker (or another S3 client) could create go in through boto3."""
    boto3 = pytest.importorskip("boto3")
    client = boto3.client(
        "s3", endpoint_url=endpoint.url, aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region or "us-east-1",
    )  # fmt: skip
    client.put_object(Bucket=storage.parse_s3_uri(bucket_uri)[0], Key=key, Body=data)


def _keys(endpoint, bucket_uri: str) -> list[str]:
    bucket = storage.parse_s3_uri(bucket_uri)[0]
    return [o.object_name for o in endpoint.client().list_objects(bucket, recursive=True)]


def test_index_of_a_bucket_with_dot_dot_object_keys_writes_nothing_outside_the_cache(
    tmp_path, moto_bucket, moto_server
):
    data = make_dataset(tmp_path / "local", eval_images=0)
    storage.upload_dir(data.root, f"{moto_bucket}/data", workers=4)
    jpeg = write_image(tmp_path / "payload.jpg").read_bytes()
    evil = [
        "data/train/images/../../../../escaped-a.jpg",
        f"data/train/images/{F45}/../../../../../escaped-b/mask1.jpg",
        "data/train/images/../mask1.jpg",
    ]
    for key in evil:
        _put(moto_server, moto_bucket, key, jpeg)
    if not set(evil) <= set(_keys(moto_server, moto_bucket)):
        pytest.skip("this S3 server normalises '..' in object keys, so none can be planted")
    cache = tmp_path / "a" / "b" / "c" / "cache"

    result = build_index(f"{moto_bucket}/data", tmp_path / "i.parquet", cache_dir=cache)

    skipped = {s["path"]: s["reason"] for s in result.report["skipped_files"]}
    for key in evil:
        assert "'..'" in skipped[key.removeprefix("data/")] and "not followed" in skipped[key.removeprefix("data/")]
    assert all(".." not in p for p in result.train["path"])
    assert result.report["images"] == len(DEFAULT_FOLDERS) * 7
    assert not list(tmp_path.rglob("escaped*"))
    assert not [p for p in tmp_path.rglob("mask1.jpg") if cache not in p.parents and "local" not in p.parts]


def test_resume_mirror_with_a_dot_dot_key_is_refused_naming_it(tmp_path, moto_bucket, moto_server):
    uri = f"{moto_bucket}/runs/r1/mask"
    _put(moto_server, moto_bucket, "runs/r1/mask/state/last.pt", b"state")
    _put(moto_server, moto_bucket, "runs/r1/mask/../../../../../escaped.pt", b"payload")
    if "runs/r1/mask/../../../../../escaped.pt" not in _keys(moto_server, moto_bucket):
        pytest.skip("this S3 server normalises '..' in object keys, so none can be planted")
    local = tmp_path / "x" / "y" / "z" / "out"
    with pytest.raises(StorageError, match=r"'\.\./\.\./\.\./\.\./\.\./escaped\.pt' is not a file path inside"):
        storage.sync_down(uri, local)
    assert not list(tmp_path.rglob("escaped.pt"))


def test_eval_listing_on_s3_naming_a_dot_dot_key_is_refused(tmp_path, moto_bucket, moto_server):
    data = make_dataset(tmp_path / "local", eval_images=1)
    storage.upload_dir(data.root, f"{moto_bucket}/data", workers=4)
    _put(moto_server, moto_bucket, "data/eval/images/../../../../escaped.jpg", write_image(tmp_path / "p.jpg").read_bytes())
    info = "ImageID,ans\n../../../../escaped.jpg,0\n"
    _put(moto_server, moto_bucket, "data/eval/info.csv", info.encode())
    with pytest.raises(DataLayoutError, match="not plain file names"):
        index_eval(f"{moto_bucket}/data", cache_dir=tmp_path / "c1" / "c2" / "cache")
    assert not list(tmp_path.rglob("escaped.jpg"))


def test_every_indexed_path_is_relative_and_stays_inside_the_root(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=2)
    result = build_index(str(data.root), tmp_path / "i.parquet")
    root = data.root.resolve()
    frames = [result.train["path"], result.eval["path"]]
    for rel in pd.concat(frames):
        resolved = (root / rel).resolve()
        assert not rel.startswith("/") and root in resolved.parents
