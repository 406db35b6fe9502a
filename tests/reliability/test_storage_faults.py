"""maskpipe.storage when the S3 endpoint goes away mid-transfer, and with damaged cache files.

The outage tests run on moto (``moto_bucket`` in conftest.py), not on the session's SeaweedFS:
they stop the endpoint at a chosen request (the second GET of a download, say), which needs a
hook on each request in the server itself. moto's S3 app runs in this process, so it is stopped
for real (listening socket closed, open connections cut) at that moment and started again on
the same port; the objects survive because moto keeps them in process memory. The damaged-cache
tests run on SeaweedFS.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from maskpipe import storage
from maskpipe.errors import StorageError

FILES = {f"imgs/{i:02d}.jpg": bytes([i]) * (20_000 + i) for i in range(12)}


@pytest.fixture
def loopback(moto_server):
    """The stoppable moto endpoint that ``moto_bucket`` points the environment at."""
    return moto_server


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setenv("MASKPIPE_S3_RETRIES", "8")
    monkeypatch.setenv("MASKPIPE_S3_BACKOFF", "0.2")


def _upload_files(tmp_path: Path, uri: str) -> None:
    source = tmp_path / "source"
    for rel, data in FILES.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    storage.upload_dir(source, uri, workers=4)


class Outage:
    """Stops the server when the ``nth`` object request of ``method`` arrives; restarts it after
    ``down_s`` seconds (never, when ``down_s`` is None)."""

    def __init__(self, endpoint, method: str, nth: int = 2, down_s: float | None = 1.0) -> None:
        self.server = endpoint.moto
        self.method, self.nth, self.down_s = method, nth, down_s
        self.seen = 0
        self.started = threading.Event()
        self.down = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self.server.request_hooks.append(self.hook)

    def hook(self, environ: dict) -> None:
        is_object = environ["PATH_INFO"].strip("/").count("/") >= 1 and not environ.get("QUERY_STRING")
        if environ["REQUEST_METHOD"] != self.method or not is_object:
            return
        with self._lock:
            self.seen += 1
            fire = self.seen == self.nth
        if fire:
            threading.Thread(target=self._go_down, daemon=True).start()

    def _go_down(self) -> None:
        self.started.set()
        self.server.stop()
        self.down.set()
        if self.down_s is not None:
            time.sleep(self.down_s)
            self.server.start()
        self.finished.set()

    def settle(self) -> None:
        """Wait until an outage that began has done its stop (and restart), so that the
        bucket fixture's teardown restart cannot be overtaken by a late stop()."""
        self.server.request_hooks.clear()
        if self.started.is_set():
            self.finished.wait(10)


@pytest.fixture
def outage(moto_bucket, loopback):
    """Factory for Outage objects; waits for them to settle before the bucket is cleaned up."""
    made: list[Outage] = []

    def make(method: str, nth: int = 2, down_s: float | None = 1.0) -> Outage:
        made.append(Outage(loopback, method, nth, down_s))
        return made[-1]

    yield make
    for item in made:
        item.settle()


def _retry_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "maskpipe.storage" and "retry" in r.getMessage()]


def test_download_is_retried_and_completes_when_the_endpoint_restarts(
    moto_bucket, outage, quick_retries, tmp_path, caplog
):
    _upload_files(tmp_path, moto_bucket)
    outage = outage("GET", nth=2, down_s=1.0)
    caplog.set_level(logging.WARNING, logger="maskpipe.storage")

    paths = storage.localize(moto_bucket, sorted(FILES), cache_dir=tmp_path / "cache", workers=3)

    assert outage.started.is_set() and outage.finished.wait(5)
    assert [p.read_bytes() for p in paths] == [FILES[k] for k in sorted(FILES)]
    assert _retry_warnings(caplog), "the outage should have forced at least one retry"
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_upload_is_retried_and_completes_when_the_endpoint_restarts(
    moto_bucket, loopback, outage, quick_retries, tmp_path, caplog
):
    storage.list_files(moto_bucket)  # preflight done before the outage; uploads are what get cut
    outage = outage("PUT", nth=2, down_s=1.0)
    caplog.set_level(logging.WARNING, logger="maskpipe.storage")

    _upload_files(tmp_path, moto_bucket)

    assert outage.started.is_set() and outage.finished.wait(5)
    assert _retry_warnings(caplog)
    client, bucket = loopback.client(), storage.parse_s3_uri(moto_bucket)[0]
    assert {k: client.get_object(bucket, k).read() for k in FILES} == FILES


def test_download_gives_up_after_the_budget_naming_the_object(moto_bucket, outage, monkeypatch, tmp_path):
    _upload_files(tmp_path, moto_bucket)
    monkeypatch.setenv("MASKPIPE_S3_RETRIES", "3")
    monkeypatch.setenv("MASKPIPE_S3_BACKOFF", "0.05")
    outage = outage("GET", nth=1, down_s=None)
    cache = tmp_path / "cache"

    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.localize(moto_bucket, sorted(FILES), cache_dir=cache, workers=2)

    assert outage.down.wait(5)
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert f"{moto_bucket}/imgs/" in message and "giving up after 3 attempts" in message
    assert "MASKPIPE_S3_RETRIES" in message
    # whatever did arrive is complete; nothing half-written sits under a final name
    for path in cache.rglob("*.jpg"):
        assert path.read_bytes() == FILES[path.relative_to(cache / storage.parse_s3_uri(moto_bucket)[0]).as_posix()]
    assert not list(cache.rglob("*.part"))


def test_upload_gives_up_after_the_budget_naming_the_object(moto_bucket, loopback, monkeypatch, tmp_path):
    storage.list_files(moto_bucket)
    monkeypatch.setenv("MASKPIPE_S3_RETRIES", "2")
    monkeypatch.setenv("MASKPIPE_S3_BACKOFF", "0.05")
    (tmp_path / "last.pt").write_bytes(b"state")
    loopback.moto.stop()
    with pytest.raises(StorageError, match=rf"{moto_bucket}/runs/r1/last.pt: giving up after 2 attempts"):
        storage.upload_file(tmp_path / "last.pt", f"{moto_bucket}/runs/r1/last.pt")


def test_truncated_cache_file_is_downloaded_again(s3_bucket, tmp_path):
    _upload_files(tmp_path, s3_bucket)
    cache = tmp_path / "cache"
    paths = storage.localize(s3_bucket, sorted(FILES), cache_dir=cache)
    damaged, intact = paths[3], paths[4]
    intact_inode = intact.stat().st_ino
    damaged.write_bytes(damaged.read_bytes()[:1000])  # what a killed pod might leave

    again = storage.localize(s3_bucket, sorted(FILES), cache_dir=cache)

    assert [p.read_bytes() for p in again] == [FILES[k] for k in sorted(FILES)]
    assert intact.stat().st_ino == intact_inode  # the good files were reused


def test_truncated_cache_file_of_a_multipart_object_is_downloaded_again(s3_bucket, tmp_path, monkeypatch):
    # a multipart ETag is no MD5 of the file, so the size check alone must catch this
    monkeypatch.setattr(storage.transfer, "PART_SIZE", 5 * 1024 * 1024)
    payload = bytes(range(256)) * (5 * 4096 + 16)  # a little over one part
    (tmp_path / "big.bin").write_bytes(payload)
    storage.upload_file(tmp_path / "big.bin", f"{s3_bucket}/big.bin")
    [path] = storage.localize(s3_bucket, ["big.bin"], cache_dir=tmp_path / "cache")
    with open(path, "r+b") as handle:
        handle.truncate(len(payload) // 2)
    [again] = storage.localize(s3_bucket, ["big.bin"], cache_dir=tmp_path / "cache")
    assert again.read_bytes() == payload


def test_cache_file_with_right_size_but_wrong_bytes_is_downloaded_again(s3_bucket, tmp_path):
    _upload_files(tmp_path, s3_bucket)
    cache = tmp_path / "cache"
    [path] = storage.localize(s3_bucket, ["imgs/05.jpg"], cache_dir=cache)
    path.write_bytes(b"\0" * path.stat().st_size)  # e.g. a crash before the data reached the disk
    [again] = storage.localize(s3_bucket, ["imgs/05.jpg"], cache_dir=cache)
    assert again.read_bytes() == FILES["imgs/05.jpg"]


def test_sync_down_restores_a_damaged_resume_state(s3_bucket, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "last.pt").write_bytes(b"epoch-7-weights")
    storage.sync_up(state, f"{s3_bucket}/runs/r/age")
    (state / "last.pt").write_bytes(b"epoch-7")  # truncated locally
    assert storage.sync_down(f"{s3_bucket}/runs/r/age", state) is True
    assert (state / "last.pt").read_bytes() == b"epoch-7-weights"
