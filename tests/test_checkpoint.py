"""Checkpoint folders round-trip; resume state round-trips and refuses non-plain objects."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml

from maskpipe.checkpoint import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_state,
    sha256_file,
)
from maskpipe.config import load_config
from maskpipe.errors import CheckpointError
from maskpipe.labels import NUM_CLASSES, TASK_CLASS_NAMES
from maskpipe.models import create_model


@pytest.fixture(scope="module")
def config():
    return load_config("smoke", ["data.input_size=[40,32]", "data.crop_size=[320,256]"])


def _model(task: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet10t", NUM_CLASSES[task], pretrained=False)


@pytest.mark.parametrize("task", ["mask", "gender", "age"])
def test_round_trip_gives_the_same_weights_and_outputs(tmp_path, config, task):
    model = _model(task).eval()
    save_checkpoint(tmp_path, model, task=task, config=config, epoch=3, metrics={"val_f1": 0.7})

    loaded = load_checkpoint(tmp_path, expected_task=task)

    assert not loaded.model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    x = torch.randn(2, 3, 40, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x))
    assert loaded.task == task
    assert loaded.input_size == (40, 32) and loaded.crop_size == (320, 256)
    assert loaded.config.model.arch == "resnet10t"


def test_metadata_holds_everything_inference_needs(tmp_path, config):
    save_checkpoint(
        tmp_path, _model("age"), task="age", config=config, epoch=5, metrics={"val_f1": 0.5}
    )
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["format"] == 1
    assert meta["task"] == "age" and meta["num_classes"] == 3
    assert meta["class_names"] == list(TASK_CLASS_NAMES["age"])
    assert meta["arch"] == "resnet10t"
    assert meta["input_size"] == [40, 32] and meta["crop_size"] == [320, 256]
    assert meta["mean"] == config.data.mean and meta["std"] == config.data.std
    assert meta["epoch"] == 5 and meta["metrics"] == {"val_f1": 0.5}
    assert meta["maskpipe_version"]
    assert meta["weights_sha256"] == sha256_file(tmp_path / WEIGHTS_FILE)
    assert yaml.safe_load((tmp_path / CONFIG_FILE).read_text())["data"]["input_size"] == [40, 32]


def test_weights_file_is_safetensors_not_pickle(tmp_path, config):
    save_checkpoint(tmp_path, _model("gender"), task="gender", config=config, epoch=0, metrics={})
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / WEIGHTS_FILE))
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert (tmp_path / WEIGHTS_FILE).read_bytes()[:2] != b"PK"  # not a torch zip/pickle


def test_channels_last_model_saves_contiguous_weights(tmp_path, config):
    model = _model("mask").to(memory_format=torch.channels_last)
    save_checkpoint(tmp_path, model, task="mask", config=config, epoch=0, metrics={})
    loaded = load_checkpoint(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_saving_a_model_with_the_wrong_head_fails_before_writing(tmp_path, config):
    with pytest.raises(ValueError, match="3 outputs but task 'gender' has 2"):
        save_checkpoint(tmp_path, _model("mask"), task="gender", config=config, epoch=0, metrics={})
    assert not (tmp_path / META_FILE).exists()


def test_resave_replaces_all_files_consistently(tmp_path, config):
    save_checkpoint(tmp_path, _model("mask", 0), task="mask", config=config, epoch=1, metrics={})
    second = _model("mask", 1)
    save_checkpoint(tmp_path, second, task="mask", config=config, epoch=2, metrics={})
    loaded = load_checkpoint(tmp_path)
    assert loaded.meta["epoch"] == 2
    assert torch.equal(loaded.model.fc.weight, second.fc.weight)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_state_round_trip_keeps_tensors_numbers_and_nesting(tmp_path):
    model = _model("mask")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 4,
        "best_score": 0.81,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": torch.from_numpy(np.random.default_rng(1).integers(0, 9, 4)),
        "python_rng": (3, (1, 2, 3), None),
    }
    path = tmp_path / "state" / "last.pt"
    save_state(path, state)
    back = load_state(path)
    assert back["epoch"] == 4 and back["best_score"] == 0.81
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    assert back["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert torch.equal(back["model"]["fc.weight"], model.state_dict()["fc.weight"])


@pytest.mark.parametrize(
    "value, where",
    [(np.zeros(3), "state['rng']"), (np.float64(1.5), "state['rng']"), ({"a": object()}, "['a']")],
)
def test_save_state_refuses_values_weights_only_loading_would_reject(tmp_path, value, where):
    with pytest.raises(TypeError, match=re.escape(where) + r".*only tensors"):
        save_state(tmp_path / "last.pt", {"rng": value})
    assert not (tmp_path / "last.pt").exists()


def test_load_state_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="last.pt does not exist"):
        load_state(tmp_path / "last.pt")


def test_load_state_of_a_truncated_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "last.pt"
    save_state(path, {"w": torch.randn(100, 100)})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_state(path)
