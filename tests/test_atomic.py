"""maskpipe.atomic: files written atomically get the umask's mode, like a plain open().

The images run as uid 1001 in group 0; a data set or index written on the host and
bind-mounted into a container must be readable there, which mkstemp's mode 600 forbids.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from maskpipe import atomic


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_give_files_the_mode_the_umask_allows(tmp_path, umask, mask, expected):
    umask(mask)
    atomic.write_text(tmp_path / "a.txt", "x")
    atomic.write_json(tmp_path / "b.json", {"k": 1})
    with atomic.atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"\0")
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {n: expected for n in ("a.txt", "b.json", "c.bin")}


def test_a_file_written_by_the_atomic_writer_matches_a_plain_open(tmp_path, umask):
    umask(0o027)
    atomic.write_bytes(tmp_path / "atomic", b"x")
    (tmp_path / "plain").write_bytes(b"x")
    assert _mode(tmp_path / "atomic") == _mode(tmp_path / "plain") == 0o640


def test_a_writer_that_replaces_the_temporary_file_still_gets_the_umask_mode(tmp_path, umask):
    # safetensors' save_file (every checkpoint's weights) leaves its file 600; a container user
    # (uid 1001) could then not read weights the host wrote, nor hash an exported folder.
    import torch
    from safetensors.torch import save_file

    umask(0o022)
    with atomic.atomic_path(tmp_path / "model.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    with atomic.atomic_path(tmp_path / "replaced.bin") as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    assert _mode(tmp_path / "model.safetensors") == _mode(tmp_path / "replaced.bin") == 0o644


def test_current_umask_reads_without_changing_it(umask):
    umask(0o037)
    assert atomic.current_umask() == 0o037
    assert atomic.current_umask() == 0o037


def test_current_umask_works_without_proc(monkeypatch, umask):
    umask(0o026)
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    assert atomic.current_umask() == 0o026
    assert os.umask(0o026) == 0o026, "the fallback must restore the umask it read"


def test_temporary_files_beside_the_target_are_unique_and_hidden(tmp_path, umask):
    umask(0o022)
    names = []
    threads = [threading.Thread(target=lambda: names.append(atomic.temporary_file_beside(tmp_path / "t", suffix=".part")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 8
    assert all(p.name.startswith(".t.") and p.name.endswith(".part") and _mode(p) == 0o644 for p in names)


def test_atomic_dir_swaps_in_a_finished_folder_and_leaves_the_old_one_on_error(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "model"
    with atomic.atomic_dir(target) as building:
        (building / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new" and _mode(target) == 0o755
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as building:
            (building / "a.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert (target / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no build folder is left behind"
