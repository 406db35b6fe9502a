"""Batched three-model inference: same answers as one image at a time, TTA, order, combining."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from maskpipe.checkpoint import load_checkpoint, save_checkpoint
from maskpipe.config import load_config
from maskpipe.data.images import load_rgb
from maskpipe.data.transforms import hwc_float_to_chw, original_eval_transform
from maskpipe.ensemble import (
    classes_from_probs,
    combine_classes,
    predict_probs,
    predict_rows_probs,
    predict_submission,
)
from maskpipe.errors import DataLayoutError, MaskpipeError
from maskpipe.labels import NUM_CLASSES, TASKS, encode_class
from maskpipe.models import create_model, recalibrate_batchnorm
from maskpipe.runtime import open_backend
from maskpipe.torch_backend import load_task_models, resolve_device

pytestmark = pytest.mark.one_torch_thread  # tiny models (tests/fixtures/threads.py)

REPO = Path(__file__).resolve().parents[1]
IMAGES = 5  # odd, so batches of 2 or 3 leave a partial last batch
# Different preprocessing per task, as checkpoints trained with other settings would have.
TASK_DATA = {
    "mask": ["data.input_size=[32,24]", "data.crop_size=[56,40]"],
    "gender": ["data.input_size=[32,24]", "data.crop_size=[56,40]", "data.mean=[0.5,0.5,0.5]"],
    "age": ["data.input_size=[40,32]", "data.crop_size=null"],
}


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    """A tiny eval set: eval/info.csv lists the images in an order unlike their names."""
    root = tmp_path_factory.mktemp("data")
    images = root / "eval" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(IMAGES):
        image_id = f"{rng.integers(1 << 40):011x}.jpg"
        # Smooth-ish content with left/right asymmetry, so flips change the predictions.
        gradient = np.linspace(0, 255, 48)[None, :, None] * rng.random(3)
        pixels = np.clip(gradient + rng.normal(0, 40, (64, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / image_id, quality=95)
        ids.append(image_id)
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(root / "eval" / "info.csv", index=False)
    return root


@pytest.fixture(scope="module")
def mixed_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One checkpoint per task, each with its own preprocessing (TASK_DATA), giving varied answers."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for seed, task in enumerate(TASKS):
        config = load_config("smoke", TASK_DATA[task])
        torch.manual_seed(seed)
        model = create_model("resnet10t", NUM_CLASSES[task])
        # Varied answers, which the order, flip and combination tests need to mean anything.
        generator = torch.Generator().manual_seed(seed)
        recalibrate_batchnorm(model, torch.rand(16, 3, *config.data.input_size, generator=generator) * 4 - 2)
        save_checkpoint(folder / task, model, task=task, config=config, epoch=0, metrics={})
        out[task] = folder / task
    return out


def _image_paths(eval_root: Path) -> tuple[list[str], list[Path]]:
    ids = pd.read_csv(eval_root / "eval" / "info.csv")["ImageID"].tolist()
    return ids, [eval_root / "eval" / "images" / i for i in ids]


def _one_image_at_a_time(checkpoint, paths, flip=False) -> np.ndarray:
    """The competition's loop: albumentations eval transform, one image per forward pass."""
    transform = original_eval_transform(
        checkpoint.crop_size, checkpoint.input_size, checkpoint.mean, checkpoint.std
    )
    rows = []
    for path in paths:
        x = hwc_float_to_chw(transform(image=load_rgb(path))["image"])[None]
        if flip:
            x = x.flip(3)
        with torch.no_grad():
            rows.append(checkpoint.model(x).softmax(1)[0].numpy())
    return np.stack(rows)


def test_combine_classes_agrees_with_encode_class_for_all_18_combinations():
    combos = list(itertools.product(range(3), range(2), range(3)))
    mask, gender, age = (np.array(c) for c in zip(*combos))
    combined = combine_classes(mask, gender, age)
    assert combined.tolist() == [encode_class(*c) for c in combos]
    assert sorted(combined.tolist()) == list(range(18))


def test_combine_classes_rejects_labels_outside_a_task():
    with pytest.raises(ValueError, match="gender labels must be in 0..1"):
        combine_classes([0], [2], [0])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batched_probabilities_equal_one_image_at_a_time(mixed_checkpoints, eval_root, num_workers):
    _, paths = _image_paths(eval_root)
    loaded = load_task_models(mixed_checkpoints, torch.device("cpu"))
    batched = predict_probs(open_backend(loaded, device="cpu"), paths, batch_size=3, num_workers=num_workers)
    for task in TASKS:
        reference = _one_image_at_a_time(load_checkpoint(mixed_checkpoints[task]), paths)
        assert batched[task].shape == (IMAGES, NUM_CLASSES[task])
        np.testing.assert_allclose(batched[task], reference, atol=1e-5, err_msg=task)


def test_tta_averages_the_original_and_flipped_probabilities(mixed_checkpoints, eval_root):
    _, paths = _image_paths(eval_root)
    loaded = load_task_models(mixed_checkpoints, torch.device("cpu"))
    with_tta = predict_probs(open_backend(loaded, device="cpu", tta=True), paths, batch_size=4, num_workers=0)
    for task in TASKS:
        plain_model = load_checkpoint(mixed_checkpoints[task])
        original = _one_image_at_a_time(plain_model, paths)
        flipped = _one_image_at_a_time(plain_model, paths, flip=True)
        assert with_tta[task].shape == (IMAGES, NUM_CLASSES[task])
        np.testing.assert_allclose(with_tta[task], (original + flipped) / 2, atol=1e-5)
        np.testing.assert_allclose(with_tta[task].sum(axis=1), 1.0, atol=1e-5)
        assert not np.allclose(original, flipped, atol=1e-4), "flip changed nothing: weak test"


def test_submission_follows_info_csv_order_and_matches_the_probabilities(
    mixed_checkpoints, eval_root, tmp_path
):
    out_csv, probs_path = tmp_path / "submission.csv", tmp_path / "probs.parquet"
    result = predict_submission(
        open_backend(mixed_checkpoints), str(eval_root), out_csv, probs_path=probs_path, batch_size=3, num_workers=0
    )
    ids, _ = _image_paths(eval_root)
    written = pd.read_csv(out_csv)
    assert list(written.columns) == ["ImageID", "ans"]
    assert written["ImageID"].tolist() == ids
    probs = pd.read_parquet(probs_path)
    assert list(probs.columns) == [
        "image_id", "mask_p0", "mask_p1", "mask_p2", "gender_p0", "gender_p1",
        "age_p0", "age_p1", "age_p2",
    ]  # fmt: skip
    assert probs["image_id"].tolist() == ids
    expected = [
        encode_class(
            int(np.argmax(row[["mask_p0", "mask_p1", "mask_p2"]])),
            int(np.argmax(row[["gender_p0", "gender_p1"]])),
            int(np.argmax(row[["age_p0", "age_p1", "age_p2"]])),
        )
        for _, row in probs.iterrows()
    ]
    assert written["ans"].tolist() == expected
    assert len(set(expected)) > 1, "all images in one class: the order check would be vacuous"
    assert result.submission["ans"].tolist() == expected
    assert f"{IMAGES} images" in result.summary()


def test_predict_classes_on_an_index_frame_keeps_row_order(mixed_checkpoints, eval_root):
    ids, _ = _image_paths(eval_root)
    frame = pd.DataFrame({"path": [f"eval/images/{i}" for i in ids]})
    backend = open_backend(mixed_checkpoints)
    forward = classes_from_probs(predict_rows_probs(backend, frame, str(eval_root), batch_size=2, num_workers=0))
    backward = classes_from_probs(predict_rows_probs(backend, frame[::-1], str(eval_root), batch_size=5, num_workers=0))
    assert forward.shape == (IMAGES,)
    assert forward.tolist() == backward[::-1].tolist()


def test_a_corrupt_eval_image_in_a_decoding_thread_is_reported_by_name(mixed_checkpoints, tmp_path, eval_root):
    ids, paths = _image_paths(eval_root)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:200])
    loaded = load_task_models(mixed_checkpoints, torch.device("cpu"))
    with pytest.raises(DataLayoutError, match="broken.jpg"):
        predict_probs(open_backend(loaded, device="cpu"), [*paths, broken], batch_size=2, num_workers=2)


@pytest.mark.parametrize(("device", "workers"), [("cpu", 0), ("cpu", 2), ("meta", 0), ("meta", 2)])
def test_cpu_decoding_threads_and_gpu_worker_processes_give_the_same_batches(tmp_path, eval_root, device, workers):
    # The CPU decodes in threads (ThreadedBatches), other devices in DataLoader worker
    # processes; "meta" stands in for CUDA here: it picks the loader without needing a GPU.
    from maskpipe.ensemble import EvalImages, ThreadedBatches, decode_loader

    _, paths = _image_paths(eval_root)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:200])
    views = [((56, 40), (32, 24)), (None, (40, 32))]
    loader = decode_loader(paths, views, batch_size=2, num_workers=workers, device=torch.device(device))
    assert isinstance(loader, ThreadedBatches) == (device == "cpu")
    assert loader.num_workers == workers and len(loader) == 3
    batches = list(loader)
    expected = [EvalImages(paths, views)[i] for i in range(IMAGES)]
    for v, (crop, size) in enumerate(views):
        stacked = torch.cat([batch[v] for batch in batches])
        assert stacked.shape == (IMAGES, *size, 3) and stacked.dtype == torch.uint8
        assert torch.equal(stacked, torch.from_numpy(np.stack([item[v] for item in expected])))
    bad = list(decode_loader([paths[0], broken], views, batch_size=2, num_workers=workers, device=torch.device(device)))
    assert isinstance(bad[0], str) and "broken.jpg" in bad[0]


def test_cpu_decoding_defaults_to_a_thread_per_core(eval_root):
    from maskpipe.data.images import default_workers
    from maskpipe.ensemble import decode_workers

    cores = min(default_workers(), 8)
    assert decode_workers(1, 64, torch.device("cpu")) == cores  # threads start for free
    assert decode_workers(1, 64, torch.device("cuda")) == 0  # processes do not
    assert decode_workers(1000, 64, torch.device("cuda")) == cores


def test_missing_task_checkpoint_is_a_clear_error(mixed_checkpoints, tmp_path, eval_root):
    with pytest.raises(MaskpipeError, match=r"missing: \['age'\]"):
        predict_submission(
            open_backend({"mask": mixed_checkpoints["mask"], "gender": mixed_checkpoints["gender"]}),
            str(eval_root),
            tmp_path / "s.csv",
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_asking_for_cuda_without_a_gpu_fails_instead_of_falling_back():
    with pytest.raises(MaskpipeError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_bf16_on_cpu_is_refused_not_silently_ignored(mixed_checkpoints, eval_root):
    _, paths = _image_paths(eval_root)
    loaded = load_task_models(mixed_checkpoints, torch.device("cpu"))
    with pytest.raises(MaskpipeError, match="only used on CUDA"):
        predict_probs(open_backend(loaded, device="cpu", amp=True), paths)


def inference_benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as when run as a script: its helpers
    spec = importlib.util.spec_from_file_location("bench_inference", REPO / "benchmarks" / "inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_quick_run_prints_the_speedup_last(tmp_path, capsys, monkeypatch):
    code = inference_benchmark(monkeypatch).main(
        ["--quick", "--images", "6", "--batch-size", "4", "--workers", "0",
         "--image-size", "128x96", "--input-size", "32x24", "--work-dir", str(tmp_path),
         "--results", str(tmp_path / "inference.md")]
    )  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[-1].startswith("inference speedup: ")
    assert lines[-1] in (tmp_path / "inference.md").read_text()  # the run's results file
    # every path maskpipe infer offers stays in the table; the last line is the fastest one's
    for path in ("original per-image loop", "batched ensemble (torch)", "exported graph (onnx)", "exported graph int8 (onnx)"):
        assert any(line.startswith(f"{path}:") and "images/s" in line for line in lines), path
    assert lines[-2].startswith("fastest path: ")
    ratio = lines[-1].removeprefix("inference speedup: ")
    assert ratio.endswith("x") and float(ratio[:-1]) > 0


def test_benchmark_runs_given_checkpoints_on_a_data_roots_photos(
    serving_checkpoints, eval_root, tmp_path, capsys, monkeypatch
):
    # serving_checkpoints: one view for all three, so the graph can be exported
    code = inference_benchmark(monkeypatch).main(
        ["--quick", "--images", "6", "--batch-size", "4", "--workers", "0", "--data", str(eval_root),
         *(arg for task in TASKS for arg in (f"--{task}", str(serving_checkpoints[task]))),
         "--calibration-images", "2", "--work-dir", str(tmp_path), "--results", str(tmp_path / "inference.md")]
    )  # fmt: skip
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert f"eval photos of {eval_root}; 3 x resnet10t (--mask/--gender/--age)" in out
    assert "exported graph int8 (onnx):" in out and out.strip().splitlines()[-1].startswith("inference speedup: ")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "images").exists()


def test_eval_images_from_minio_give_the_same_submission_as_local(
    mixed_checkpoints, eval_root, tmp_path, s3_bucket
):
    from maskpipe.storage import upload_dir

    upload_dir(eval_root, f"{s3_bucket}/competition")
    local = predict_submission(open_backend(mixed_checkpoints), str(eval_root), tmp_path / "local.csv", num_workers=0)
    remote = predict_submission(
        open_backend(mixed_checkpoints),
        f"{s3_bucket}/competition",
        tmp_path / "remote.csv",
        cache_dir=tmp_path / "cache",
        num_workers=0,
    )
    assert (tmp_path / "remote.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert remote.submission.equals(local.submission)
    assert any((tmp_path / "cache").rglob("*.jpg")), "images should come through the cache"


def test_cli_infer_on_a_synthetic_set_then_evaluate_against_its_truth(mixed_checkpoints, tmp_path, capsys):
    from maskpipe.cli import main
    from maskpipe.data.synth import generate

    generate(tmp_path / "data", people=1, eval_people=2, seed=1, size=(48, 64))
    out_csv, probs, scores = tmp_path / "sub.csv", tmp_path / "probs.parquet", tmp_path / "s.json"
    code = main(
        ["infer", "--mask", str(mixed_checkpoints["mask"]), "--gender", str(mixed_checkpoints["gender"]),
         "--age", str(mixed_checkpoints["age"]), "--data", str(tmp_path / "data"), "-o", str(out_csv),
         "--tta", "--probs", str(probs), "--workers", "0", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "14 images" in capsys.readouterr().out  # 2 people x 7 photos
    info = pd.read_csv(tmp_path / "data" / "eval" / "info.csv")
    assert pd.read_csv(out_csv)["ImageID"].tolist() == info["ImageID"].tolist()
    truth = tmp_path / "data" / "eval_truth.csv"
    assert main(["evaluate", str(out_csv), str(truth), "--json", str(scores)]) == 0
    assert "macro-F1" in capsys.readouterr().out
    assert 0.0 <= pd.read_json(scores, typ="series")["macro_f1"] <= 1.0
