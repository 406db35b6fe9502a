"""`maskpipe export`: one ONNX graph of the ensemble that answers as `maskpipe infer` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskpipe.cli import main
from maskpipe.labels import TASKS
from maskpipe.model_card import CARD_FILE, ONNX_FILE, ModelDirError, read_model_dir
from maskpipe.runtime import open_backend
from cli_helpers import cli_error
from tiny import write_task_checkpoints

pytestmark = pytest.mark.one_torch_thread  # tiny models (tests/fixtures/threads.py)

PROB_TOLERANCE = 1e-4


def _task_flags(checkpoints: dict[str, Path]) -> list[str]:
    return [arg for task in TASKS for arg in (f"--{task}", str(checkpoints[task]))]


def _infer(tmp_path: Path, name: str, eval_data: Path, *source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    out, probs = tmp_path / f"{name}.csv", tmp_path / f"{name}.parquet"
    code = main(["infer", *source, "--data", str(eval_data), "-o", str(out), "--probs", str(probs), "--batch-size", "5"])
    assert code == 0
    return pd.read_csv(out), pd.read_parquet(probs)


def test_onnx_model_gives_the_classes_and_probabilities_of_infer_with_tta(exported_model, serving_checkpoints, serving_eval_data, tmp_path):
    torch_sub, torch_probs = _infer(tmp_path, "torch", serving_eval_data, *_task_flags(serving_checkpoints), "--tta")
    onnx_sub, onnx_probs = _infer(tmp_path, "onnx", serving_eval_data, "--model", str(exported_model), "--backend", "onnx")
    assert len(torch_sub) == 14 and torch_sub["ans"].nunique() > 1  # varied answers, or the test means little
    assert onnx_sub["ImageID"].tolist() == torch_sub["ImageID"].tolist()
    assert onnx_sub["ans"].tolist() == torch_sub["ans"].tolist()
    columns = [c for c in torch_probs.columns if c != "image_id"]
    assert np.abs(onnx_probs[columns].to_numpy() - torch_probs[columns].to_numpy()).max() < PROB_TOLERANCE


def test_torch_backend_on_the_model_folder_agrees_with_onnx(exported_model, serving_eval_data, tmp_path):
    onnx_sub, onnx_probs = _infer(tmp_path, "onnx", serving_eval_data, "--model", str(exported_model))
    torch_sub, torch_probs = _infer(tmp_path, "torch", serving_eval_data, "--model", str(exported_model), "--backend", "torch")
    assert torch_sub["ans"].tolist() == onnx_sub["ans"].tolist()
    columns = [c for c in torch_probs.columns if c != "image_id"]
    assert np.abs(onnx_probs[columns].to_numpy() - torch_probs[columns].to_numpy()).max() < PROB_TOLERANCE


def test_graph_outputs_agree_with_each_other_and_take_any_batch_size(exported_model):
    backend = open_backend(exported_model, "onnx")
    height, width = backend.card.input_size
    images = np.random.default_rng(0).integers(0, 256, (7, height, width, 3), dtype=np.uint8)
    whole = backend.predict(images)
    one = backend.predict(images[3:4])
    assert whole["class"].shape == (7,) and whole["class_probs"].shape == (7, 18)
    assert np.array_equal(whole["class_probs"].argmax(1), whole["class"])
    np.testing.assert_allclose(whole["class_probs"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one["mask_probs"][0], whole["mask_probs"][3], atol=1e-5)


def test_card_names_the_sources_geometry_and_every_file(exported_model, serving_checkpoints):
    card = json.loads((exported_model / CARD_FILE).read_text())
    assert card["input"] == {**card["input"], "dtype": "uint8", "layout": "NHWC", "size": [48, 36], "crop_size": [112, 84]}
    assert card["tta"] is True and card["opset"] == 18
    for task in TASKS:
        meta = json.loads((serving_checkpoints[task] / "checkpoint.json").read_text())
        assert card["sources"][task]["weights_sha256"] == meta["weights_sha256"]
        assert card["files"][f"checkpoints/{task}/model.safetensors"] == meta["weights_sha256"]
    assert set(card["packages"]) >= {"torch", "onnx", "onnxruntime", "maskpipe"}
    assert card["class_names"][17] == "not_wear/female/>=60"
    assert ONNX_FILE in card["files"]


@pytest.mark.parametrize("damage", ["alter", "remove"])
def test_a_missing_or_altered_file_is_refused_naming_it(exported_model, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.copytree(exported_model, copy)
    target = copy / "checkpoints" / "age" / "model.safetensors"
    if damage == "alter":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(ModelDirError, match="missing|altered") as caught:
        read_model_dir(copy)
    assert str(target) in str(caught.value)


def test_the_exported_folder_has_the_modes_a_plain_mkdir_and_open_give(serving_checkpoints, tmp_path):
    # Another user (the serving image's uid 1001) reads and hashes every file of the folder.
    import os
    import stat

    from maskpipe.export import export_model

    private = {}  # checkpoints an older maskpipe wrote: weights 600
    for task, folder in serving_checkpoints.items():
        private[task] = Path(shutil.copytree(folder, tmp_path / "private" / task))
        (private[task] / "model.safetensors").chmod(0o600)
    saved = os.umask(0o022)
    try:
        out = export_model(private, tmp_path / "model", tta=False)
    finally:
        os.umask(saved)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes.pop(".") == 0o755
    assert {name: mode for name, mode in modes.items() if mode != (0o755 if (out / name).is_dir() else 0o644)} == {}


def test_checkpoints_of_different_input_sizes_are_refused(serving_checkpoints, tmp_path, capsys):
    other = write_task_checkpoints(tmp_path / "other", ["data.input_size=[32,24]"])
    line = cli_error(
        capsys, "export", "--mask", str(serving_checkpoints["mask"]), "--gender", str(serving_checkpoints["gender"]),
        "--age", str(other["age"]), "-o", str(tmp_path / "model"),
    )  # fmt: skip
    assert "same data.crop_size and data.input_size" in line
    assert not (tmp_path / "model").exists()


def test_an_architecture_the_exporter_cannot_express_says_how_to_go_on_without_export(
    serving_checkpoints, tmp_path, capsys, monkeypatch
):
    import torch

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::some_op\nlong exporter trace")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    line = cli_error(capsys, "export", *_task_flags(serving_checkpoints), "-o", str(tmp_path / "model"))
    assert "ONNX export of the ensemble (resnet10t) failed (RuntimeError: Unsupported: aten::some_op)" in line
    assert "--no-export" in line and "maskpipe infer --mask" in line
    assert not (tmp_path / "model").exists()


def test_onnx_backend_without_an_exported_folder_is_a_clear_error(serving_checkpoints, serving_eval_data, tmp_path, capsys):
    line = cli_error(capsys, "infer", *_task_flags(serving_checkpoints), "--backend", "onnx", "--data", str(serving_eval_data), "-o", str(tmp_path / "s.csv"))
    assert "maskpipe export" in line


def test_default_preset_efficientnet_b4_exports_and_matches_torch(tmp_path):
    # Untrained BatchNorm statistics suffice: the test compares two runtimes on one graph.
    checkpoints = write_task_checkpoints(tmp_path / "b4", arch="efficientnet_b4", preset="default", calibrate=False)
    model_dir = tmp_path / "model"
    assert main(["export", *_task_flags(checkpoints), "-o", str(model_dir)]) == 0
    onnx, torch_backend = open_backend(model_dir, "onnx"), open_backend(model_dir, "torch", device="cpu")
    assert onnx.card.input_size == (448, 336) and onnx.card.data["sources"]["mask"]["arch"] == "efficientnet_b4"
    images = np.random.default_rng(1).integers(0, 256, (1, 448, 336, 3), dtype=np.uint8)
    got, expected = onnx.predict(images), torch_backend.predict(images)
    assert np.array_equal(got["class"], expected["class"])
    for name in ("mask_probs", "gender_probs", "age_probs"):
        np.testing.assert_allclose(got[name], expected[name], atol=PROB_TOLERANCE)
