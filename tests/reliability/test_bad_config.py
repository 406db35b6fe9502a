"""Bad training configuration is refused by the CLI before any work starts: exit code 2, one
line naming the problem and the valid choices, and no output folder created."""

from __future__ import annotations

import pytest

from maskpipe.cli import main


def _train(tmp_path, *extra: str) -> list[str]:
    index = tmp_path / "index.parquet"
    index.write_bytes(b"")  # never read: the config is refused first
    return ["train", "--task", "mask", "--index", str(index), "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "train.epochs=0"], "train.epochs must be >= 1"),
        (["--set", "train.batch_size=0"], "train.batch_size must be >= 1"),
        (["--set", "train.epochs=ten"], "'train.epochs' (from --set) expects int"),
        (["--set", "train.lr=fast"], "expects float"),
        (["--set", "model.pretrained=maybe"], "expects bool"),
        (["--set", "train.learning_rate=0.1"], "valid keys: preset, model.arch"),
        (["--set", "model.arch=efficientnet_b99"], "unknown model.arch 'efficientnet_b99'"),
        (["--set", "train.optimizer=lion"], "valid choices: adamp, timm_adamp, adamw, sgd"),
        (["--set", "data.augment=slow"], "valid choices: original, fast"),
        (["--set", "train.select_by=val_f1", "--set", "data.use_val_split=false"], "needs data.use_val_split"),
        (["--preset", "turbo"], "valid presets: default, original, smoke"),
        (["--set", "epochs"], "is not of the form key=value"),
    ],
)
def test_bad_config_is_rejected_before_work(tmp_path, capsys, extra, expected):
    args = extra if "--preset" in extra else ["--preset", "smoke", *extra]
    code = main(_train(tmp_path, *args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "maskpipe train: error:" in err and expected in err
    assert not (tmp_path / "out").exists()


def test_unknown_task_lists_the_tasks(tmp_path, capsys):
    argv = _train(tmp_path)
    argv[argv.index("mask")] = "pose"
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'pose'" in err and "mask" in err and "gender" in err and "age" in err


def test_train_task_refuses_an_unknown_task_directly(tmp_path):
    from maskpipe.config import load_config
    from maskpipe.train import TrainingError, train_task

    with pytest.raises(TrainingError, match="valid tasks: mask, gender, age"):
        train_task(load_config("smoke"), "pose", tmp_path / "index.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_train_device_cuda_without_a_gpu_names_the_setting(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: train.device=cuda is valid here")
    code = main(_train(tmp_path, "--preset", "smoke", "--set", "train.device=cuda"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "train.device 'cuda' was requested but torch sees no CUDA GPU" in err
    assert "set train.device to cpu or auto" in err
    assert not (tmp_path / "out").exists()
