"""maskpipe.storage against local folders and a real S3 HTTP endpoint (loopback SeaweedFS, or MINIO_ENDPOINT's server)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest

from maskpipe import storage
from maskpipe.cli import main as cli_main
from maskpipe.errors import StorageError

SECRET = "test-secret-do-not-print-9f2c"
ACCESS = "test-access-do-not-print-71ab"


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DATA = {
    "train/images/000001_female_Asian_45/mask1.jpg": b"a" * 300,
    "train/images/000001_female_Asian_45/normal.jpg": b"b" * 200,
    "train/train.csv": b"id,gender,race,age,path\n",
    "eval/info.csv": b"ImageID,ans\n",
    "train/images/._mask1.jpg": b"resource fork",
}


# --------------------------------------------------------------------------- URIs and settings


def test_is_s3_tells_uris_from_local_paths(tmp_path):
    assert storage.is_s3("s3://bucket/prefix")
    assert not storage.is_s3("/data/s3://x")
    assert not storage.is_s3(str(tmp_path))
    assert not storage.is_s3(tmp_path)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://datasets", ("datasets", "")),
        ("s3://datasets/", ("datasets", "")),
        ("s3://datasets/mask/v1/", ("datasets", "mask/v1")),
    ],
)
def test_parse_s3_uri_splits_bucket_and_prefix(uri, expected):
    assert storage.parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix"])
def test_s3_uri_without_bucket_is_refused_with_the_expected_form(uri):
    with pytest.raises(StorageError, match="has no bucket.*s3://BUCKET/PREFIX"):
        storage.parse_s3_uri(uri)


def test_s3_uri_with_invalid_bucket_name_is_refused():
    with pytest.raises(StorageError, match="'Bad_Bucket' is not a valid bucket name"):
        storage.parse_s3_uri("s3://Bad_Bucket/x")


@pytest.mark.parametrize(
    ("env", "endpoint", "secure"),
    [
        ({"MINIO_ENDPOINT": "minio:9000", "MINIO_SECURE": "false"}, "minio:9000", False),
        ({"MINIO_ENDPOINT": "minio:9000"}, "minio:9000", True),
        ({"MINIO_ENDPOINT": "http://minio.kubeflow:9000"}, "minio.kubeflow:9000", False),
        ({"MINIO_ENDPOINT": "https://minio.example.org"}, "minio.example.org", True),
        ({"AWS_ENDPOINT_URL": "http://10.0.0.5:9000"}, "10.0.0.5:9000", False),
    ],
)
def test_settings_read_endpoint_and_scheme_from_env(env, endpoint, secure):
    keys = {"MINIO_ACCESS_KEY": ACCESS, "MINIO_SECRET_KEY": SECRET}
    settings = storage.S3Settings.from_env({**env, **keys})
    assert (settings.endpoint, settings.secure) == (endpoint, secure)


@pytest.mark.parametrize(
    "env, region",
    [({}, "us-east-1"), ({"MINIO_REGION": "eu-west-1"}, "eu-west-1"), ({"AWS_REGION": "ap-south-1"}, "ap-south-1")],
)
def test_region_defaults_to_us_east_1_so_the_client_never_asks_for_the_bucket_location(env, region):
    # minio-py without a region sends GetBucketLocation first, which a Kubeflow profile
    # namespace's keys may not (tests/test_profile_namespace.py runs that case for real)
    settings = storage.S3Settings.from_env({"MINIO_ENDPOINT": "s3:9000", "MINIO_ACCESS_KEY": ACCESS, "MINIO_SECRET_KEY": SECRET, **env})
    assert settings.region == region


def test_settings_fall_back_to_aws_credential_names():
    settings = storage.S3Settings.from_env(
        {"AWS_ENDPOINT_URL": "http://s3:9000", "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
         "AWS_DEFAULT_REGION": "eu-west-1"}
    )
    assert settings.access_key == ACCESS and settings.region == "eu-west-1"
    assert settings.key_vars == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def test_settings_repr_never_shows_the_keys():
    settings = storage.S3Settings.from_env(
        {"MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": ACCESS, "MINIO_SECRET_KEY": SECRET}
    )
    assert ACCESS not in repr(settings) and SECRET not in repr(settings)


def test_s3_root_without_endpoint_config_says_which_env_vars_to_set(monkeypatch):
    for name in ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match="MINIO_ENDPOINT.*MINIO_ACCESS_KEY.*AWS_ENDPOINT_URL"):
        storage.list_files("s3://datasets/mask")


def test_endpoint_without_keys_says_which_env_vars_to_set():
    with pytest.raises(StorageError, match="no S3 credentials.*MINIO_ACCESS_KEY and MINIO_SECRET_KEY"):
        storage.S3Settings.from_env({"MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": ACCESS})


def test_malformed_minio_secure_is_named():
    with pytest.raises(StorageError, match="MINIO_SECURE='maybe'"):
        storage.S3Settings.from_env(
            {"MINIO_ENDPOINT": "m:9000", "MINIO_SECURE": "maybe", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}
        )


# --------------------------------------------------------------------------- local roots


def test_local_list_files_is_recursive_sorted_and_keeps_hidden_files(tmp_path):
    _write_tree(tmp_path, DATA)
    assert storage.list_files(str(tmp_path)) == sorted(DATA)


def test_local_list_files_does_not_follow_symlinks_leaving_the_root(tmp_path):
    root = _write_tree(tmp_path / "root", {"a/x.jpg": b"x"})
    outside = _write_tree(tmp_path / "outside", {"secret.txt": b"s"})
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "escape_file.txt").symlink_to(outside / "secret.txt")
    (root / "inside_link.jpg").symlink_to(root / "a" / "x.jpg")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    assert storage.list_files(str(root)) == ["a/x.jpg", "inside_link.jpg"]


def test_local_list_files_of_a_missing_root_names_it(tmp_path):
    with pytest.raises(StorageError, match=f"{tmp_path / 'nope'} does not exist"):
        storage.list_files(str(tmp_path / "nope"))


def test_local_localize_returns_paths_under_the_root(tmp_path):
    _write_tree(tmp_path, DATA)
    paths = storage.localize(str(tmp_path), ["train/train.csv", "eval/info.csv"])
    assert paths == [tmp_path / "train/train.csv", tmp_path / "eval/info.csv"]
    assert storage.read_bytes(str(tmp_path), "eval/info.csv") == DATA["eval/info.csv"]


@pytest.mark.parametrize("rel", ["../outside.txt", "a/../../outside.txt", "/etc/passwd", "", "a/"])
def test_local_localize_refuses_paths_leaving_the_root(tmp_path, rel):
    root = _write_tree(tmp_path / "root", {"a/x.jpg": b"x"})
    with pytest.raises(StorageError, match="not a file path inside"):
        storage.localize(str(root), [rel])


def test_local_localize_refuses_a_symlink_leading_out_of_the_root(tmp_path):
    root = _write_tree(tmp_path / "root", {"a/x.jpg": b"x"})
    _write_tree(tmp_path / "outside", {"secret.txt": b"s"})
    (root / "link.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    with pytest.raises(StorageError, match="leaves the data root"):
        storage.read_bytes(str(root), "link.txt")


def test_local_sync_up_and_down_mirror_a_folder(tmp_path):
    state = _write_tree(tmp_path / "state", {"last.pt": b"epoch1"})
    remote = tmp_path / "remote"
    assert storage.sync_down(str(remote), tmp_path / "restored") is False
    assert storage.sync_up(state, str(remote)) is True
    assert storage.sync_up(state, str(remote)) is False  # nothing changed
    assert storage.sync_down(str(remote), tmp_path / "restored") is True
    assert (tmp_path / "restored" / "last.pt").read_bytes() == b"epoch1"


# --------------------------------------------------------------------------- S3 round trips


def test_upload_list_localize_and_rerun_reuses_the_cache(s3_bucket, tmp_path, caplog):
    source = _write_tree(tmp_path / "data", DATA)
    root = f"{s3_bucket}/mask"
    result = storage.upload_dir(source, root, workers=4)
    assert (result.uploaded, result.skipped, result.created_bucket) == (len(DATA), 0, False)
    assert f"uploaded {len(DATA)} files" in result.summary()

    rels = storage.list_files(root)
    assert rels == sorted(DATA)
    cache = tmp_path / "cache"
    paths = storage.localize(root, rels, cache_dir=cache, workers=3)
    assert [p.read_bytes() for p in paths] == [DATA[r] for r in rels]
    assert all(cache in p.parents for p in paths)
    inodes = [p.stat().st_ino for p in paths]

    caplog.set_level(logging.INFO, logger="maskpipe.storage")
    again = storage.localize(root, rels, cache_dir=cache, workers=3)
    assert again == paths
    assert [p.stat().st_ino for p in again] == inodes  # not rewritten
    assert f"{len(rels)} file(s) from {s3_bucket}: 0 downloaded, {len(rels)} reused" in caplog.text


def test_default_cache_dir_is_under_maskpipe_cache_dir_per_endpoint_and_bucket(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKPIPE_CACHE_DIR", str(tmp_path / "c"))
    storage.upload_dir(_write_tree(tmp_path / "d", {"x/y.txt": b"y"}), s3_bucket)
    [path] = storage.localize(s3_bucket, ["x/y.txt"])
    endpoint = storage.S3Settings.from_env().endpoint.replace(":", "_")
    assert path == tmp_path / "c" / endpoint / storage.parse_s3_uri(s3_bucket)[0] / "x" / "y.txt"


def test_localize_many_files_lists_once_and_downloads_all(s3_bucket, tmp_path):
    files = {f"imgs/{i:03d}.jpg": bytes([i]) * (50 + i) for i in range(40)}  # above the stat-each limit
    storage.upload_dir(_write_tree(tmp_path / "d", files), s3_bucket, workers=4)
    paths = storage.localize(s3_bucket, sorted(files), cache_dir=tmp_path / "cache", workers=4)
    assert [p.read_bytes() for p in paths] == [files[k] for k in sorted(files)]


def test_upload_dir_skips_objects_already_there_with_the_same_size(s3_bucket, tmp_path, s3_env):
    source = _write_tree(tmp_path / "d", {"a.txt": b"aaaa", "b.txt": b"bbbb"})
    storage.upload_dir(source, s3_bucket)
    (source / "a.txt").write_bytes(b"aaaaaa")  # new size: uploaded again
    (source / "c.txt").write_bytes(b"c")  # new file
    result = storage.upload_dir(source, s3_bucket)
    assert (result.uploaded, result.skipped) == (2, 1)
    bucket = storage.parse_s3_uri(s3_bucket)[0]
    assert s3_env.client().get_object(bucket, "a.txt").read() == b"aaaaaa"


def test_upload_dir_creates_a_missing_bucket_and_says_so(s3_env, tmp_path):
    name = f"maskpipe-created-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    try:
        result = storage.upload_dir(_write_tree(tmp_path / "d", {"a.txt": b"a"}), f"s3://{name}/p")
        assert result.created_bucket and f"created bucket '{name}'" in result.summary()
        assert storage.list_files(f"s3://{name}/p") == ["a.txt"]
    finally:
        client = s3_env.client()
        if client.bucket_exists(name):
            client.remove_object(name, "p/a.txt")
            client.remove_bucket(name)


def test_cached_file_is_replaced_when_the_object_changes_at_the_same_size(s3_bucket, tmp_path):
    local = _write_tree(tmp_path / "d", {"a.txt": b"old!"})
    storage.upload_file(local / "a.txt", f"{s3_bucket}/a.txt")
    [cached] = storage.localize(s3_bucket, ["a.txt"], cache_dir=tmp_path / "cache")
    (local / "a.txt").write_bytes(b"new!")
    storage.upload_file(local / "a.txt", f"{s3_bucket}/a.txt")
    [again] = storage.localize(s3_bucket, ["a.txt"], cache_dir=tmp_path / "cache")
    assert again == cached and again.read_bytes() == b"new!"


def test_localize_refuses_relative_paths_escaping_the_cache(s3_bucket, tmp_path):
    with pytest.raises(StorageError, match="'../../etc/passwd' is not a file path inside"):
        storage.localize(s3_bucket, ["../../etc/passwd"], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("count", [1, 40])  # one stat per object, or one listing
def test_localize_of_a_missing_object_names_it(s3_bucket, tmp_path, count):
    files = {f"f{i}.txt": b"x" for i in range(count)}
    storage.upload_dir(_write_tree(tmp_path / "d", files), s3_bucket)
    with pytest.raises(StorageError, match=f"{s3_bucket}/missing.jpg"):
        storage.localize(s3_bucket, [*files, "missing.jpg"], cache_dir=tmp_path / "cache")


def test_download_file_of_a_missing_object_names_it(s3_bucket, tmp_path):
    with pytest.raises(StorageError, match=f"{s3_bucket}/runs/nothing.pt does not exist"):
        storage.download_file(f"{s3_bucket}/runs/nothing.pt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_read_bytes_reads_an_object(s3_bucket, tmp_path):
    storage.upload_dir(_write_tree(tmp_path / "d", {"eval/info.csv": b"ImageID,ans\n"}), s3_bucket)
    assert storage.read_bytes(s3_bucket, "eval/info.csv") == b"ImageID,ans\n"


def test_large_file_goes_up_multipart_and_comes_back_identical(s3_bucket, s3_env, tmp_path, monkeypatch):
    monkeypatch.setattr(storage.transfer, "PART_SIZE", 5 * 1024 * 1024)  # the S3 minimum, to keep the file small
    payload = os.urandom(5 * 1024 * 1024 + 4096)
    (tmp_path / "big.bin").write_bytes(payload)
    storage.upload_file(tmp_path / "big.bin", f"{s3_bucket}/models/big.bin")
    stat = s3_env.client().stat_object(storage.parse_s3_uri(s3_bucket)[0], "models/big.bin")
    assert stat.etag.strip('"').endswith("-2")  # two parts
    storage.download_file(f"{s3_bucket}/models/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload
    # the multipart ETag is recomputed locally, so an unchanged big file is not sent again
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "big.bin").rename(folder / "big.bin")
    assert storage.sync_up(folder, f"{s3_bucket}/models") is False


def test_sync_up_and_down_keep_resume_state_under_a_run_prefix(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/runs/run-1/age"
    assert storage.sync_down(uri, tmp_path / "fresh") is False  # first run: nothing there
    state = _write_tree(tmp_path / "state", {"state/last.pt": b"epoch-1", "history.json": b"[]"})
    assert storage.sync_up(state, uri) is True
    assert storage.sync_up(state, uri) is False  # unchanged

    (state / "state/last.pt").write_bytes(b"epoch-2")  # same size, new content
    assert storage.sync_up(state, uri) is True

    restored = tmp_path / "retried-pod"
    assert storage.sync_down(uri, restored) is True
    assert (restored / "state/last.pt").read_bytes() == b"epoch-2"
    assert (restored / "history.json").read_bytes() == b"[]"


def test_cli_data_upload_prints_the_summary(s3_bucket, tmp_path, capsys):
    source = _write_tree(tmp_path / "d", {"train/train.csv": b"x"})
    assert cli_main(["data", "upload", str(source), f"{s3_bucket}/mask", "--workers", "2"]) == 0
    assert f"uploaded 1 files (1 B) to {s3_bucket}/mask" in capsys.readouterr().out


# --------------------------------------------------------------------------- S3 errors


def _assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def _maskpipe_log(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("maskpipe"))


def test_missing_bucket_is_named_within_seconds(s3_env, caplog):
    caplog.set_level(logging.DEBUG, logger="maskpipe")
    started = time.monotonic()
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist at http://") as info:
        storage.list_files("s3://no-such-bucket-here/data")
    assert time.monotonic() - started < 10
    _assert_no_secrets(str(info.value) + _maskpipe_log(caplog), s3_env.secret_key)


def test_unreachable_endpoint_fails_fast_naming_it_and_the_env_var(s3_env, monkeypatch, caplog):
    port = _free_loopback_port()
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    caplog.set_level(logging.DEBUG, logger="maskpipe")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.list_files("s3://datasets/mask")
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in message
    assert "MINIO_ENDPOINT" in message and "refused" in message.lower()
    _assert_no_secrets(message + _maskpipe_log(caplog), ACCESS, SECRET)


def test_wrong_credentials_are_refused_naming_endpoint_and_env_vars_not_values(s3_bucket, s3_env, monkeypatch, caplog):
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    caplog.set_level(logging.DEBUG, logger="maskpipe")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.list_files(f"{s3_bucket}/data")
    message = str(info.value)
    assert time.monotonic() - started < 10
    assert f"{s3_env.url} rejected the credentials" in message or f"{s3_env.url} denied access" in message
    assert "MINIO_ACCESS_KEY" in message and "MINIO_SECRET_KEY" in message
    _assert_no_secrets(message + _maskpipe_log(caplog), ACCESS, SECRET)


def test_upload_to_a_bucket_uri_without_object_key_is_refused(s3_bucket, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a")
    with pytest.raises(StorageError, match="names a bucket, not an object"):
        storage.upload_file(tmp_path / "a.txt", s3_bucket)
