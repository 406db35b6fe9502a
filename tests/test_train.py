"""train_task on a small synthetic set with the smoke preset: learning, outputs, resume.

The set (60 people, 96x128 photos) is built once per session; the three task models are
trained once and shared by the tests that only read their outputs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from maskpipe.checkpoint import load_checkpoint, load_state
from maskpipe.config import load_config, load_config_file
from maskpipe.errors import CheckpointError
from maskpipe.train import STATE_FILE, train_task

PEOPLE = 60


@pytest.fixture(scope="session")
def synth_index(tmp_path_factory) -> Path:
    """index.parquet of a 40-person synthetic set (train/val split by person)."""
    from maskpipe.data.index import build_index
    from maskpipe.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root / "data", people=PEOPLE, eval_people=4, seed=3, size=(96, 128))
    build_index(str(root / "data"), root / "index.parquet", val_fraction=0.25, seed=1)
    return root / "index.parquet"


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train-cache")


@pytest.fixture(scope="session")
def trained(synth_index, train_cache, tmp_path_factory):
    """The three task models trained with the smoke preset (about 2 minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("checkpoints")
    config = load_config("smoke")
    return {
        task: train_task(config, task, synth_index, out / task, cache_dir=train_cache)
        for task in ("mask", "gender", "age")
    }


def _smoke(*overrides: str):
    return load_config("smoke", list(overrides))


@pytest.mark.slow
def test_mask_model_recognises_unseen_people(trained):
    metrics = trained["mask"].metrics
    assert metrics["split"] == "val"
    # Majority-class accuracy is 5/7 = 0.71; measured 0.87-0.99 depending on the split.
    assert metrics["accuracy"] >= 0.85 and metrics["macro_f1"] >= 0.7


@pytest.mark.slow
def test_gender_and_age_models_learn_their_training_people(trained):
    # On 45 synthetic training people both models fit the training people (chance: 0.5 and
    # 0.33) but generalise weakly to the 15 held-out people (identity cues are easier than
    # hair); see docs/presets.md. The validation score is recorded, not asserted here.
    assert trained["gender"].history[-1]["train_accuracy"] >= 0.85
    assert trained["age"].history[-1]["train_accuracy"] >= 0.75
    for task in ("gender", "age"):
        assert trained[task].metrics["split"] == "val" and 0 <= trained[task].metrics["macro_f1"] <= 1


@pytest.mark.slow
def test_checkpoint_folder_is_complete_and_loadable(trained):
    result = trained["gender"]
    folder = result.checkpoint_dir
    loaded = load_checkpoint(folder, expected_task="gender")
    assert loaded.meta["arch"] == "resnet10t" and loaded.meta["input_size"] == [96, 72]
    history = json.loads((folder / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 9))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class_f1", "confusion_matrix"} <= metrics.keys()
    assert metrics["epoch"] == result.best_epoch == loaded.meta["epoch"]
    assert load_config_file(folder / "config.yaml") == load_config("smoke")
    state = load_state(folder / STATE_FILE)
    assert state["epoch"] == 8 and state["task"] == "gender"
    assert not list(folder.rglob("*.tmp"))
    assert "gender: epochs 8/8" in result.summary()


@pytest.mark.slow
def test_rerunning_a_finished_run_is_a_no_op(trained, synth_index, train_cache):
    result = trained["mask"]
    weights = (result.checkpoint_dir / "model.safetensors").stat().st_mtime_ns
    again = train_task(load_config("smoke"), "mask", synth_index, result.checkpoint_dir, cache_dir=train_cache)
    assert again.already_finished and again.metrics == result.metrics
    assert (result.checkpoint_dir / "model.safetensors").stat().st_mtime_ns == weights
    assert "already finished" in again.summary()


@pytest.mark.slow
def test_more_epochs_resume_after_the_last_completed_one(synth_index, train_cache, tmp_path, caplog):
    out = tmp_path / "mask"
    train_task(_smoke("train.epochs=2"), "mask", synth_index, out, cache_dir=train_cache)
    with caplog.at_level(logging.INFO, logger="maskpipe.train"):
        result = train_task(_smoke("train.epochs=4"), "mask", synth_index, out, cache_dir=train_cache)
    assert result.resumed_from == 2 and result.epochs_done == 4
    assert "resuming" in caplog.text and "mask epoch 3/4" in caplog.text
    assert "mask epoch 1/4" not in caplog.text
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]

    with pytest.raises(CheckpointError, match=r"model.arch: 'resnet10t' -> 'resnet14t'"):
        train_task(_smoke("train.epochs=5", "model.arch=resnet14t"), "mask", synth_index, out)
    with pytest.raises(CheckpointError, match="belongs to task 'mask'"):
        train_task(_smoke("train.epochs=5"), "age", synth_index, out)


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(synth_index, train_cache, tmp_path):
    config = _smoke("train.epochs=1")
    first = train_task(config, "gender", synth_index, tmp_path / "a", cache_dir=train_cache)
    second = train_task(config, "gender", synth_index, tmp_path / "b", cache_dir=train_cache)
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert first.metrics == second.metrics


@pytest.mark.slow
def test_resume_state_is_mirrored_and_restored_from_s3(s3_bucket, synth_index, train_cache, tmp_path):
    uri = f"{s3_bucket}/runs/r1/age/"
    config = _smoke("train.epochs=1")
    first = train_task(config, "age", synth_index, tmp_path / "age", resume_uri=uri, cache_dir=train_cache)
    shutil.rmtree(tmp_path / "age")  # the pod and its disk are gone
    again = train_task(config, "age", synth_index, tmp_path / "age", resume_uri=uri, cache_dir=train_cache)
    assert again.already_finished and again.metrics == first.metrics
    assert load_checkpoint(tmp_path / "age", expected_task="age").meta["epoch"] == 1


def test_index_without_validation_rows_is_a_clear_error(tmp_path):
    import pandas as pd

    from maskpipe.data.index import write_frame
    from maskpipe.train import TrainingError

    frame = pd.DataFrame(
        {"path": ["a/mask1.jpg"], "profile": ["a"], "id": ["1"], "gender": ["male"], "race": ["Asian"],
         "age": [20], "stem": ["mask1"], "mask_label": [0], "gender_label": [0], "age_label": [0],
         "class": [0], "split": ["train"]}
    )  # fmt: skip
    write_frame(frame, tmp_path / "index.parquet", str(tmp_path))
    with pytest.raises(TrainingError, match="no validation rows"):
        train_task(_smoke(), "mask", tmp_path / "index.parquet", tmp_path / "out")


def test_offline_pretrained_weights_fail_fast_before_reading_images(synth_index, tmp_path, monkeypatch):
    import time

    from maskpipe.errors import WeightsUnavailableError

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # closed port: no hub
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="model.pretrained=false"):
        train_task(_smoke("model.pretrained=true"), "mask", synth_index, tmp_path / "out",
                   cache_dir=tmp_path / "cache")  # fmt: skip
    assert time.monotonic() - start < 15
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "out" / STATE_FILE).exists()


@pytest.mark.slow
def test_local_weights_file_starts_training(synth_index, train_cache, tmp_path):
    from safetensors.torch import save_file

    from maskpipe.models import create_model

    weights = tmp_path / "resnet10t-imagenet.safetensors"
    save_file(create_model("resnet10t", 1000).state_dict(), str(weights))
    config = _smoke("train.epochs=1", f"model.weights={weights}")
    result = train_task(config, "mask", synth_index, tmp_path / "out", cache_dir=train_cache)
    assert result.epochs_done == 1
    assert load_checkpoint(tmp_path / "out").model.fc.out_features == 3
