"""A bad checkpoint is rejected when it is loaded, with an error that names the file and the fix.

Wrong task, wrong class count, corrupt or truncated weights, weights of another architecture,
an unknown format version, missing files, and pickle payloads (which must never execute).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import pytest
import torch

from maskpipe.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    load_state,
    save_state,
    sha256_file,
)
from maskpipe.cli import main
from maskpipe.errors import CheckpointError
from maskpipe.models import create_model


@pytest.fixture
def mask_checkpoint(checkpoints, tmp_path) -> Path:
    """A private copy of a valid mask checkpoint, free to damage."""
    return Path(shutil.copytree(checkpoints["mask"], tmp_path / "mask"))


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta))


def _replace_weights(folder: Path, data: bytes) -> None:
    """Swap the weights file and record its sha256, as a careless manual edit would."""
    (folder / WEIGHTS_FILE).write_bytes(data)
    _edit_meta(folder, weights_sha256=sha256_file(folder / WEIGHTS_FILE))


def _safetensors_of(model: torch.nn.Module, path: Path) -> bytes:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.read_bytes()


class _Payload:
    """Unpickling this would create ``marker``: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# ---------------------------------------------------------------------------------------------
# wrong task


def test_wrong_task_fails_through_the_cli_with_exit_code_2(checkpoints, tmp_path, capsys):
    code = main(
        ["infer", "--mask", str(checkpoints["mask"]), "--gender", str(checkpoints["gender"]),
         "--age", str(checkpoints["mask"]), "--data", str(tmp_path / "no-data"),
         "-o", str(tmp_path / "submission.csv")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "trained for task 'mask', not 'age'" in err and "--age DIR" in err
    assert str(checkpoints["mask"]) in err
    assert not (tmp_path / "submission.csv").exists()


def test_wrong_task_is_rejected_by_load_checkpoint(checkpoints):
    with pytest.raises(CheckpointError, match="trained for task 'gender', not 'mask'"):
        load_checkpoint(checkpoints["gender"], expected_task="mask")


# ---------------------------------------------------------------------------------------------
# wrong class count


def test_class_count_in_metadata_that_disagrees_with_the_labels(mask_checkpoint):
    _edit_meta(mask_checkpoint, num_classes=4)
    with pytest.raises(CheckpointError, match=r"checkpoint.json: wrong class count.*4.*define 3"):
        load_checkpoint(mask_checkpoint)


def test_weights_with_another_number_of_outputs(mask_checkpoint, tmp_path):
    _replace_weights(mask_checkpoint, _safetensors_of(create_model("resnet10t", 4), tmp_path / "w"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: wrong class count: the weights have 4 outputs"):
        load_checkpoint(mask_checkpoint)


def test_class_names_in_another_order(mask_checkpoint):
    _edit_meta(mask_checkpoint, class_names=["incorrect", "wear", "not_wear"])
    with pytest.raises(CheckpointError, match="class order would be misread"):
        load_checkpoint(mask_checkpoint)


# ---------------------------------------------------------------------------------------------
# corrupt and truncated files


def test_flipped_bytes_in_the_weights_fail_the_checksum(mask_checkpoint):
    path = mask_checkpoint / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt, truncated or was replaced"):
        load_checkpoint(mask_checkpoint)


def test_truncated_weights_fail_the_checksum(mask_checkpoint):
    path = mask_checkpoint / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(mask_checkpoint)


def test_truncated_weights_with_a_matching_checksum_fail_the_parser(mask_checkpoint):
    _replace_weights(mask_checkpoint, (mask_checkpoint / WEIGHTS_FILE).read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(mask_checkpoint)


def test_checkpoint_json_that_is_not_json(mask_checkpoint):
    (mask_checkpoint / META_FILE).write_text('{"format": 1, "task": ')
    with pytest.raises(CheckpointError, match="checkpoint.json is not valid JSON"):
        load_checkpoint(mask_checkpoint)


@pytest.mark.parametrize("name", [META_FILE, WEIGHTS_FILE, "config.yaml"])
def test_a_missing_file_is_named(mask_checkpoint, name):
    (mask_checkpoint / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')} is missing"):
        load_checkpoint(mask_checkpoint)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"no-such-dir does not exist.*maskpipe train --out"):
        load_checkpoint(tmp_path / "no-such-dir")


def test_unknown_format_version(mask_checkpoint):
    _edit_meta(mask_checkpoint, format=2)
    with pytest.raises(CheckpointError, match="format 2 but maskpipe .* reads format 1"):
        load_checkpoint(mask_checkpoint)


# ---------------------------------------------------------------------------------------------
# architecture


def test_weights_of_another_architecture(mask_checkpoint, tmp_path):
    _replace_weights(mask_checkpoint, _safetensors_of(create_model("resnet18", 3), tmp_path / "w"))
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'resnet10t'.*missing.*unexpected"):
        load_checkpoint(mask_checkpoint)


def test_metadata_naming_another_architecture(mask_checkpoint):
    _edit_meta(mask_checkpoint, arch="resnet18")
    with pytest.raises(CheckpointError, match="does not fit architecture 'resnet18'"):
        load_checkpoint(mask_checkpoint)


def test_metadata_naming_an_unknown_architecture(mask_checkpoint):
    _edit_meta(mask_checkpoint, arch="no_such_net")
    with pytest.raises(CheckpointError, match="cannot build architecture 'no_such_net'"):
        load_checkpoint(mask_checkpoint)


# ---------------------------------------------------------------------------------------------
# pickle payloads


def test_pickle_payload_in_resume_state_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "state" / "last.pt"
    path.parent.mkdir()
    torch.save({"epoch": 3, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load resume state .*last.pt.*pickle"):
        load_state(path)
    assert not marker.exists()


def test_pickle_payload_in_place_of_the_weights_is_refused_and_never_runs(mask_checkpoint, tmp_path):
    marker = tmp_path / "payload-ran"
    payload = tmp_path / "payload.pt"
    torch.save({"fc.weight": _Payload(marker)}, payload)
    _replace_weights(mask_checkpoint, payload.read_bytes())
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(mask_checkpoint)
    assert not marker.exists()


def test_save_state_will_not_write_a_pickled_object(tmp_path):
    with pytest.raises(TypeError, match="_Payload"):
        save_state(tmp_path / "last.pt", {"extra": _Payload(tmp_path / "x")})
