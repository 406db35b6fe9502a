"""`maskpipe export --quantize int8`: an int8 graph beside the fp32 one, calibrated and measured
on photos, run by the onnx backend, covered by the card's sha256 list; its agreement holds on an
AVX2-only CPU (run as one with ``qemu-x86_64 -cpu Haswell``) as on this one, and `maskpipe
serve` measures it again on its own CPU before it serves int8."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.serve_client import ServerProcess, request, serving_python, v1_body
from maskpipe.cli import main
from maskpipe.cpu import cpu_features
from maskpipe.data.resize import decode_views
from maskpipe.errors import MaskpipeError
from maskpipe.labels import TASKS
from maskpipe.model_card import CARD_FILE, INT8_CHECK_FILE, INT8_ONNX_FILE, ONNX_FILE, ModelDirError, read_model_dir
from maskpipe.quantize import (
    Int8CheckError,
    find_calibration_images,
    int8_or_fp32_here,
    quantize_model_dir,
    split_calibration,
)
from maskpipe.runtime import open_backend
from cli_helpers import cli_error

pytestmark = pytest.mark.one_torch_thread  # tiny models (tests/fixtures/threads.py)

# Photos per half of the calibration sample: the synthetic root's 28 training photos give 14
# to calibrate and 14 to check.
CALIBRATION_IMAGES = 14
# The tiny untrained models have near-tied probabilities on many photos, so int8 rounding may
# flip a few answers; 90% allows 4 of the 42 eval photos. A broken quantization (wrong input
# scale, a graph that ignores the photo) agrees on far fewer: the models give varied answers.
MIN_INFER_AGREEMENT = 0.90
REPO = Path(__file__).resolve().parents[1]
# QEMU's CPU model with AVX2 and neither AVX-512 nor VNNI: where ONNX Runtime's uint8 x int8
# kernels sum in saturating 16 bits (SERVING_NOTES: how to run a process as another CPU).
AVX2_ONLY_CPU = "Haswell"


@pytest.fixture(scope="module")
def quantize_data(tmp_path_factory) -> Path:
    """28 training photos (4 people) to calibrate with, 42 eval photos (6 people) to infer on."""
    from maskpipe.data.synth import generate

    root = tmp_path_factory.mktemp("quantize-data")
    generate(root, people=4, eval_people=6, size=(96, 128))
    return root


@pytest.fixture(scope="module")
def int8_model(serving_checkpoints, quantize_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8-export") / "model"
    flags = [arg for task in TASKS for arg in (f"--{task}", str(serving_checkpoints[task]))]
    code = main(
        ["export", *flags, "-o", str(out), "--quantize", "int8", "--calibration", str(quantize_data),
         "--calibration-images", str(CALIBRATION_IMAGES)]
    )  # fmt: skip
    assert code == 0
    return out


def _infer(tmp_path: Path, name: str, model: Path, quantize_data: Path, capsys) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    out, probs = tmp_path / f"{name}.csv", tmp_path / f"{name}.parquet"
    code = main(["infer", "--model", str(model), "--data", str(quantize_data), "-o", str(out), "--probs", str(probs), "--workers", "0"])
    assert code == 0
    return pd.read_csv(out), pd.read_parquet(probs), capsys.readouterr().out


def test_int8_export_keeps_the_fp32_graph_and_the_card_names_the_int8_one(int8_model, quantize_data):
    card = json.loads((int8_model / CARD_FILE).read_text())
    assert card["precision"] == "int8" and card["onnx_file"] == INT8_ONNX_FILE
    assert {ONNX_FILE, INT8_ONNX_FILE} <= set(card["files"])
    assert (int8_model / ONNX_FILE).is_file() and (int8_model / INT8_ONNX_FILE).is_file()
    quantization = card["quantization"]
    assert quantization["reference_file"] == ONNX_FILE
    assert quantization["calibration_images"] == quantization["check_images"] == CALIBRATION_IMAGES
    assert quantization["calibration_source"] == str(quantize_data)
    assert quantization["onnxruntime"] == card["packages"]["onnxruntime"]
    assert "QDQ" in quantization["method"] and quantization["op_types"] == ["Conv", "MatMul", "Gemm"]
    assert "reduce_range" in quantization["method"]
    assert set(quantization["agreement"]) == {"class", *TASKS}
    assert "rough figure" in quantization["note"]  # 14 held-out photos are few, and it says so


def test_infer_on_the_int8_folder_runs_int8_and_agrees_with_fp32(int8_model, exported_model, quantize_data, tmp_path, capsys):
    fp32_sub, fp32_probs, _ = _infer(tmp_path, "fp32", exported_model, quantize_data, capsys)
    int8_sub, int8_probs, summary = _infer(tmp_path, "int8", int8_model, quantize_data, capsys)
    assert "(onnx int8)" in summary
    assert len(fp32_sub) == 42 and fp32_sub["ans"].nunique() > 1  # varied answers, or agreement means little
    agreement = (fp32_sub["ans"] == int8_sub["ans"]).mean()
    assert agreement >= MIN_INFER_AGREEMENT, f"int8 agrees with fp32 on {agreement:.1%}"
    columns = [c for c in fp32_probs.columns if c != "image_id"]
    # Different numbers prove another graph ran; small ones that it is the same model.
    difference = np.abs(fp32_probs[columns].to_numpy() - int8_probs[columns].to_numpy()).max()
    assert 0 < difference < 0.5


def test_card_agreement_is_the_agreement_on_the_held_out_photos(int8_model, exported_model, quantize_data):
    card = read_model_dir(int8_model)
    _, held_out = split_calibration(find_calibration_images(quantize_data), CALIBRATION_IMAGES)
    images = np.stack([decode_views(path, [card.view])[0] for path in held_out])
    fp32, int8 = open_backend(exported_model).predict(images), open_backend(int8_model).predict(images)
    recorded = card.data["quantization"]
    assert recorded["agreement"]["class"] == pytest.approx(np.mean(fp32["class"] == int8["class"]))
    for task in TASKS:
        expected = np.mean(fp32[f"{task}_probs"].argmax(1) == int8[f"{task}_probs"].argmax(1))
        assert recorded["agreement"][task] == pytest.approx(expected)
        measured = np.abs(fp32[f"{task}_probs"] - int8[f"{task}_probs"]).max()
        assert recorded["max_abs_prob_difference"][f"{task}_probs"] == pytest.approx(measured, abs=1e-5)


def test_calibration_and_check_photos_are_disjoint_and_independent_of_order(quantize_data):
    photos = find_calibration_images(quantize_data)
    calibrate, check = split_calibration(photos, 10)
    assert (calibrate, check) == split_calibration(list(reversed(photos)), 10)
    assert len(calibrate) == len(check) == 10 and not set(calibrate) & set(check)
    assert all("/train/images/" in path.as_posix() for path in photos)  # a data root: its training photos


def test_an_altered_int8_graph_is_refused_naming_it(int8_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(int8_model, copy)
    target = copy / INT8_ONNX_FILE
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="altered") as caught:
        read_model_dir(copy)
    assert str(target) in str(caught.value)


def test_a_card_naming_a_graph_outside_its_file_list_is_refused(exported_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(exported_model, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    (copy / CARD_FILE).write_text(json.dumps({**card, "onnx_file": "../elsewhere.onnx"}))
    with pytest.raises(ModelDirError, match="not a file its list covers"):
        read_model_dir(copy)


def test_quantize_model_dir_writes_an_int8_copy_and_leaves_the_source_fp32(exported_model, quantize_data, tmp_path):
    photos = find_calibration_images(quantize_data)
    out = quantize_model_dir(exported_model, photos, out_dir=tmp_path / "int8", images=4)
    assert read_model_dir(out).precision == "int8" and read_model_dir(out).data["quantization"]["check_images"] == 4
    source = read_model_dir(exported_model)
    assert source.precision == "fp32" and not (exported_model / INT8_ONNX_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build folder left behind


def test_default_export_is_fp32_without_an_int8_graph(exported_model):
    card = read_model_dir(exported_model)
    assert card.precision == "fp32" and card.onnx_path == exported_model / ONNX_FILE
    assert "quantization" not in card.data and INT8_ONNX_FILE not in card.data["files"]
    assert open_backend(exported_model).name == "onnx"


def test_a_card_from_before_int8_reads_as_fp32(exported_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(exported_model, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    del card["precision"], card["onnx_file"]
    (copy / CARD_FILE).write_text(json.dumps(card))
    assert read_model_dir(copy).precision == "fp32" and read_model_dir(copy).onnx_path == copy / ONNX_FILE


def test_quantize_without_calibration_is_a_usage_error(serving_checkpoints, tmp_path, capsys):
    flags = [arg for task in TASKS for arg in (f"--{task}", str(serving_checkpoints[task]))]
    line = cli_error(capsys, "export", *flags, "-o", str(tmp_path / "model"), "--quantize", "int8")
    assert "--calibration" in line
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("case", ["no photos", "missing"])
def test_a_calibration_folder_without_photos_is_a_clear_error_naming_it(serving_checkpoints, tmp_path, capsys, case):
    folder = tmp_path / "calibration"
    if case == "no photos":
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "notes.txt").write_text("not a photo")
        (folder / ".hidden.jpg").write_bytes(b"")
    flags = [arg for task in TASKS for arg in (f"--{task}", str(serving_checkpoints[task]))]
    line = cli_error(capsys, "export", *flags, "-o", str(tmp_path / "model"), "--quantize", "int8", "--calibration", str(folder))
    assert str(folder) in line and ".jpg" in line
    assert not (tmp_path / "model").exists()


def test_running_an_int8_folder_imports_no_torch(int8_model):
    # The serving image has ONNX Runtime and no torch.
    code = (
        "import sys; from maskpipe.runtime import open_backend; import maskpipe.quantize; "
        f"b = open_backend({str(int8_model)!r}); assert b.name == 'onnx int8', b.name; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# the CPU the agreement holds on


def _eval_images(quantize_data: Path, card) -> np.ndarray:
    photos = sorted((quantize_data / "eval" / "images").iterdir())
    return np.stack([decode_views(path, [card.view])[0] for path in photos])


def _qemu() -> str:
    qemu = shutil.which("qemu-x86_64")
    what = "qemu-x86_64 (Debian's qemu-user, which runs the int8 graph as an AVX2-only CPU)"
    if platform.machine() != "x86_64":
        problem = f"this host is {platform.machine()}, not x86-64, where {what} is meant to run"
    elif qemu is None:
        problem = f"{what} is not installed (apt-get install qemu-user)"
    else:
        return qemu
    if os.environ.get("MASKPIPE_REQUIRE_QEMU"):
        pytest.fail(f"MASKPIPE_REQUIRE_QEMU is set but {problem}")
    pytest.skip(f"{problem}; MASKPIPE_REQUIRE_QEMU=1 makes this a failure")


def test_the_card_records_the_cpu_it_was_measured_on_and_keeps_its_held_out_photos(int8_model, quantize_data):
    card = read_model_dir(int8_model)  # also re-hashes int8_check.npz against the card
    quantization = card.data["quantization"]
    assert quantization["cpu"] == cpu_features()  # exported in this process, on this CPU
    assert set(quantization["cpu"]) == {"avx2", "avx512", "vnni", "model_name"}
    assert all(isinstance(quantization["cpu"][k], bool) for k in ("avx2", "avx512", "vnni"))
    sample = quantization["check_sample"]
    assert sample["file"] == INT8_CHECK_FILE and INT8_CHECK_FILE in card.data["files"]
    _, held_out = split_calibration(find_calibration_images(quantize_data), CALIBRATION_IMAGES)
    with np.load(int8_model / INT8_CHECK_FILE) as stored:
        kept = stored["images"]
    assert sample["images"] == len(kept) == CALIBRATION_IMAGES
    expected = np.stack([decode_views(path, [card.view])[0] for path in held_out])
    assert kept.dtype == np.uint8 and np.array_equal(kept, expected)  # the held-out photos, as the graph takes them
    assert sample["agreement"] == quantization["agreement"]["class"]  # all of them kept: the same figure


@pytest.mark.integration
def test_the_int8_folder_agrees_with_fp32_on_an_avx2_only_cpu(int8_model, exported_model, quantize_data, tmp_path):
    # Full-range int8 weights agreed on 88% of these photos there (and 98% here); 7-bit ones
    # keep the integer sums inside the 16 bits those kernels saturate at.
    qemu = _qemu()
    card = read_model_dir(int8_model)
    np.save(tmp_path / "images.npy", _eval_images(quantize_data, card))
    code = (
        "import json, sys; import numpy as np; from maskpipe.cpu import cpu_features; "
        "from maskpipe.runtime import open_backend; b = open_backend(sys.argv[1]); "
        "out = b.predict(np.load(sys.argv[2])); "
        "print(json.dumps({'cpu': cpu_features(), 'backend': b.name, 'class': out['class'].tolist()}))"
    )
    result = subprocess.run(
        [qemu, "-cpu", AVX2_ONLY_CPU, sys.executable, "-c", code,
         str(int8_model), str(tmp_path / "images.npy")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    emulated = json.loads(result.stdout.strip().splitlines()[-1])
    assert emulated["cpu"]["avx2"] and not emulated["cpu"]["avx512"] and not emulated["cpu"]["vnni"]
    assert emulated["backend"] == "onnx int8"
    fp32 = open_backend(exported_model).predict(np.load(tmp_path / "images.npy"))["class"]
    agreement = np.mean(np.asarray(emulated["class"]) == fp32)
    assert agreement >= MIN_INFER_AGREEMENT, f"int8 agrees with fp32 on {agreement:.1%} on an AVX2-only CPU"


# ---------------------------------------------------------------------------------------------
# maskpipe serve's check at start


def _quantize_log(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "maskpipe.quantize"]


def test_the_serve_check_keeps_int8_where_it_holds_with_one_log_line(int8_model, monkeypatch, caplog):
    monkeypatch.delenv("MASKPIPE_INT8_MIN_AGREEMENT", raising=False)
    caplog.set_level(logging.INFO, logger="maskpipe.quantize")
    backend = open_backend(int8_model)
    assert int8_or_fp32_here(backend) is backend
    [line] = _quantize_log(caplog)
    assert "serving int8" in line.getMessage() and "held-out photos on this CPU" in line.getMessage()


def test_the_serve_check_below_its_threshold_serves_fp32_with_one_log_line(
    int8_model, exported_model, quantize_data, monkeypatch, caplog
):
    monkeypatch.setenv("MASKPIPE_INT8_MIN_AGREEMENT", "1.01")  # above any agreement: the check fails
    caplog.set_level(logging.INFO, logger="maskpipe.quantize")
    served = int8_or_fp32_here(open_backend(int8_model))
    assert served.name == "onnx" and served.card.onnx_path == int8_model / ONNX_FILE
    [line] = _quantize_log(caplog)
    assert line.levelno == logging.WARNING
    assert "threshold 101.0%" in line.getMessage() and "serving the fp32 graph model.onnx" in line.getMessage()
    images = _eval_images(quantize_data, served.card)
    reference = open_backend(exported_model).predict(images)
    answered = served.predict(images)
    for name, value in reference.items():
        np.testing.assert_array_equal(answered[name], value)  # the fp32 graph, not int8


def test_the_serve_check_refuses_when_told_to(int8_model, monkeypatch):
    monkeypatch.setenv("MASKPIPE_INT8_MIN_AGREEMENT", "1.01")
    monkeypatch.setenv("MASKPIPE_INT8_ON_FAILURE", "refuse")
    with pytest.raises(Int8CheckError, match="refusing to serve int8 .MASKPIPE_INT8_ON_FAILURE=refuse"):
        int8_or_fp32_here(open_backend(int8_model))


@pytest.mark.parametrize(("name", "value"), [("MASKPIPE_INT8_MIN_AGREEMENT", "ninety"), ("MASKPIPE_INT8_ON_FAILURE", "int8")])
def test_a_bad_serve_check_setting_is_a_clear_error_naming_it(int8_model, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(MaskpipeError, match=f"{name}='{value}' is not"):
        int8_or_fp32_here(open_backend(int8_model))


def test_an_int8_folder_without_held_out_photos_is_served_fp32(int8_model, tmp_path, caplog):
    copy = tmp_path / "model"
    shutil.copytree(int8_model, copy)
    (copy / INT8_CHECK_FILE).unlink()
    card = json.loads((copy / CARD_FILE).read_text())
    del card["quantization"]["check_sample"], card["files"][INT8_CHECK_FILE]  # as exported before the check
    (copy / CARD_FILE).write_text(json.dumps(card))
    served = int8_or_fp32_here(open_backend(copy))
    assert served.name == "onnx"
    [line] = _quantize_log(caplog)
    assert f"keeps no held-out photos ({INT8_CHECK_FILE})" in line.getMessage()


@pytest.mark.integration
def test_maskpipe_serve_below_the_threshold_answers_with_the_fp32_graph(int8_model, exported_model, quantize_data, tmp_path, monkeypatch):
    python = serving_python(REPO)
    if not python.exists():
        pytest.fail(f"no serving environment at {python}: run `make venv` (or set MASKPIPE_SERVE_PYTHON)")
    monkeypatch.setenv("MASKPIPE_INT8_MIN_AGREEMENT", "1.01")  # the server inherits it
    photos = sorted((quantize_data / "eval" / "images").iterdir())[:8]
    fp32 = open_backend(exported_model).predict(np.stack([decode_views(p, [read_model_dir(exported_model).view])[0] for p in photos]))
    with ServerProcess(int8_model, python=str(python), log_path=tmp_path / "serve.log") as server:
        reply = request(f"{server.url}/v1/models/maskpipe:predict", v1_body([p.read_bytes() for p in photos]))
        log = server.log_tail(20000)
    assert reply.status == 200, reply.body
    assert [answer["class"] for answer in reply.body["predictions"]] == fp32["class"].tolist()
    assert sum("serving the fp32 graph model.onnx instead of int8" in line for line in log.splitlines()) == 1
    assert "(onnx backend" in log  # the startup line names what is served
