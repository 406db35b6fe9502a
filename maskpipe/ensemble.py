"""Batched three-model inference: eval images -> per-task probabilities -> 18 classes -> CSV.

How this differs from the competition's loop (one image at a time, one ``.item()`` per model):

* every image is decoded once and cropped/resized to each input size the checkpoints need
  (uint8, so batches are small to move); models that share a size share the batch. On the CPU
  a pool of threads decodes each batch, taking turns with the forward passes; on a GPU,
  DataLoader worker processes decode ahead of it;
* each checkpoint is run with its *own* saved preprocessing (crop, input size, mean/std from
  ``checkpoint.json``), normalised after the uint8 transfer, channels-last, under
  ``torch.inference_mode`` and, on CUDA, bf16 autocast;
* horizontal-flip TTA rides in the same forward pass (original and flipped images
  concatenated) and averages the softmax probabilities;
* the three predictions are combined as ``mask * 6 + gender * 3 + age`` (:mod:`maskpipe.labels`)
  on whole arrays, and the submission keeps ``eval/info.csv`` order, every row present.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from maskpipe.atomic import atomic_path, write_text
from maskpipe.checkpoint import LoadedCheckpoint, load_checkpoint
from maskpipe.data.resize import View  # (crop_size, input_size), once per distinct view
from maskpipe.errors import DataLayoutError, MaskpipeError
from maskpipe.labels import NUM_CLASSES, TASKS

log = logging.getLogger(__name__)


SUBMISSION_COLUMNS = ("ImageID", "ans")
MAX_DEFAULT_WORKERS = 8
# Images per forward pass on the CPU: past ~32 the activations fall out of the caches and the
# per-image cost rises again (resnet10t at 96x72, one thread: 2.9 ms at 32, 3.4 ms at 64).
CPU_FORWARD_CHUNK = 32


@dataclass
class InferResult:
    """What :func:`predict_submission` wrote and how long it took."""

    submission: pd.DataFrame
    out_csv: Path
    probs_path: Path | None
    seconds: float
    device: str
    tta: bool
    # per-task softmax probabilities of each submission row ({task: (N, classes)})
    probs: dict[str, np.ndarray] | None = None
    # the eval index rows predicted (image_id, path relative to data_root)
    frame: pd.DataFrame | None = None
    data_root: str | None = None

    def summary(self) -> str:
        n = len(self.submission)
        rate = n / self.seconds if self.seconds > 0 else float("inf")
        counts = np.bincount(self.submission["ans"].to_numpy(), minlength=18)
        used = int((counts > 0).sum())
        lines = [
            f"wrote {self.out_csv}: {n} images, {used}/18 classes predicted "
            f"({self.seconds:.1f} s, {rate:.1f} images/s on {self.device}"
            f"{', flip TTA' if self.tta else ''})"
        ]
        if self.probs_path is not None:
            lines.append(f"wrote per-task probabilities to {self.probs_path}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# entry points


def predict_submission(
    checkpoints: Mapping[str, Path | str | LoadedCheckpoint] | str | Path,
    data: str | Path | pd.DataFrame,
    out_csv: str | Path,
    *,
    data_root: str | None = None,
    tta: bool = False,
    probs_path: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    amp: bool | None = None,
    backend: str = "auto",
) -> InferResult:
    """Predict the 18-class id of every eval image and write ``ImageID,ans`` atomically.

    Args:
        checkpoints: ``{"mask": DIR, "gender": DIR, "age": DIR}`` (or loaded checkpoints);
            each folder must hold a checkpoint of that task. Or the folder ``maskpipe export``
            wrote, run with ``backend`` (its card decides TTA, so ``tta`` must agree or be off),
            or such a folder already opened with :func:`open_exported`.
        data: a data root (local or ``s3://``) with ``eval/info.csv`` and ``eval/images/``, or
            an eval index frame (``image_id``, ``path``), which then needs ``data_root``.
        out_csv: the submission to write (``ImageID,ans`` in ``info.csv`` order).
        tta: average the probabilities of each image and its horizontal flip.
        probs_path: also write per-task probabilities (parquet) for later ensembling.
        batch_size: images per forward pass (TTA doubles what the model sees).
        num_workers: decoding threads (CPU) or worker processes (GPU); None: the CPU count.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        cache_dir: local cache for ``s3://`` images.
        amp: bf16 autocast; None means on for CUDA, off for CPU.
        backend: ``torch``, or for an exported folder ``onnx``; ``auto`` chooses
            (:func:`resolve_backend`).
    """
    start = time.perf_counter()
    if isinstance(checkpoints, (str, Path)):
        # Model folder first: a wrong or altered folder fails before any image is read.
        checkpoints = open_exported(checkpoints, backend, device, tta)
    if hasattr(checkpoints, "predict"):  # an exported model folder, opened (maskpipe.runtime)
        exported = checkpoints
        frame, root = _eval_frame(data, data_root, cache_dir)
        probs = predict_rows_probs(exported, frame, root, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir)
        tta, torch_device = exported.card.tta, f"{getattr(exported, 'device', 'cpu')} ({exported.name})"
    else:
        resolve_backend(backend, exported=False)  # onnx needs an exported folder
        torch_device = resolve_device(device)
        # Checkpoints first: a wrong folder fails in seconds, before any image is read.
        loaded = load_task_models(checkpoints, torch_device)
        frame, root = _eval_frame(data, data_root, cache_dir)
        probs = _rows_probs(
            loaded, root, frame, cache_dir,
            tta=tta, batch_size=batch_size, num_workers=num_workers, device=torch_device, amp=amp,
        )  # fmt: skip
    classes = classes_from_probs(probs)
    submission = pd.DataFrame({"ImageID": frame["image_id"].astype(str).to_numpy(), "ans": classes})
    out_csv = Path(out_csv)
    write_text(out_csv, submission.to_csv(index=False))
    if probs_path is not None:
        probs_path = Path(probs_path)
        write_probs(probs_path, frame["image_id"].astype(str).tolist(), probs)
    return InferResult(
        submission=submission,
        out_csv=out_csv,
        probs_path=probs_path,
        seconds=time.perf_counter() - start,
        device=str(torch_device),
        tta=tta,
        probs=probs,
        frame=frame,
        data_root=root,
    )


def predict_classes(
    checkpoints: Mapping[str, Path | str | LoadedCheckpoint],
    frame: pd.DataFrame,
    data_root: str,
    **options: Any,
) -> np.ndarray:
    """18-class ids for the rows of ``frame`` (column ``path``, relative to ``data_root``),
    e.g. the validation people of the index, in row order; ``options`` as for
    :func:`predict_rows_probs`."""
    return classes_from_probs(predict_rows_probs(checkpoints, frame, data_root, **options))


def predict_rows_probs(
    checkpoints: Mapping[str, Path | str | LoadedCheckpoint],
    frame: pd.DataFrame,
    data_root: str,
    *,
    tta: bool = False,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    amp: bool | None = None,
) -> dict[str, np.ndarray]:
    """Per-task softmax probabilities (``{task: (N, classes)}``) for the rows of ``frame``
    (column ``path``, relative to ``data_root``), in row order. ``checkpoints`` may also be an
    exported folder opened with :func:`open_exported` (its card decides TTA; ``tta``,
    ``device`` and ``amp`` are then the backend's)."""
    if "path" not in frame.columns:
        raise DataLayoutError(f"the frame needs a 'path' column; it has {list(frame.columns)}")
    if hasattr(checkpoints, "predict"):  # an exported model folder, opened (maskpipe.runtime)
        paths = localize_paths(data_root, frame["path"].tolist(), cache_dir)
        return predict_probs_exported(checkpoints, paths, batch_size=batch_size, num_workers=num_workers)
    torch_device = resolve_device(device)
    loaded = load_task_models(checkpoints, torch_device)
    return _rows_probs(
        loaded, data_root, frame, cache_dir,
        tta=tta, batch_size=batch_size, num_workers=num_workers, device=torch_device, amp=amp,
    )  # fmt: skip


def resolve_backend(backend: str, *, exported: bool) -> str:
    """``auto`` -> for an exported folder ONNX Runtime on a CPU-only machine and torch where
    CUDA is available; for the three checkpoints torch. ``onnx`` needs an exported folder."""
    if backend not in ("auto", "onnx", "torch"):
        raise MaskpipeError(f"unknown backend {backend!r}; use auto, onnx or torch")
    if not exported:
        if backend == "onnx":
            raise MaskpipeError(
                "backend 'onnx' runs the exported model folder, and there is none: export the "
                "three checkpoints first (`maskpipe export`; in the pipeline export=true), or "
                "use backend torch"
            )
        return "torch"
    if backend == "auto":
        return "torch" if torch.cuda.is_available() else "onnx"
    return backend


def open_exported(model_dir: str | Path, backend: str, device: str, tta: bool):
    """An exported model folder, verified and opened with ``backend``; ``tta`` must not ask for
    what the graph was exported without."""
    from maskpipe.runtime import open_backend

    exported = open_backend(model_dir, resolve_backend(backend, exported=True), device=device)
    if tta and not exported.card.tta:
        raise MaskpipeError(
            f"--tta was asked for, but {model_dir} was exported without flip TTA; "
            "export it again without --no-tta, or drop --tta"
        )
    return exported


def predict_probs_exported(
    exported: Any, paths: Sequence[str | Path], *, batch_size: int = 64, num_workers: int | None = None
) -> dict[str, np.ndarray]:
    """Per-task probabilities from an exported model (:mod:`maskpipe.runtime`), decoding as
    :func:`predict_probs` does (threads taking turns with the forward passes)."""
    loader = make_loader(paths, [exported.card.view], batch_size=batch_size, num_workers=num_workers)
    log.info(
        "inference: %d images, exported model %s (%s backend), batch %d, %d decoding thread(s)",
        len(paths), exported.card.folder, exported.name, batch_size, loader.num_workers,
    )  # fmt: skip
    out = {task: np.empty((len(paths), NUM_CLASSES[task]), np.float32) for task in TASKS}
    row = 0
    for batch in _progress(loader, len(paths), batch_size):
        if isinstance(batch, str):
            raise DataLayoutError(batch)
        outputs = exported.predict(batch[0].numpy())
        for task in TASKS:
            out[task][row : row + len(batch[0])] = outputs[f"{task}_probs"]
        row += len(batch[0])
    if row != len(paths):
        raise RuntimeError(f"inference produced {row} rows for {len(paths)} images")
    return out


def _rows_probs(
    loaded: Mapping[str, LoadedCheckpoint],
    root: str,
    frame: pd.DataFrame,
    cache_dir: str | Path | None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Per-task probabilities for the images of ``frame['path']`` under ``root``."""
    return predict_probs(loaded, localize_paths(root, frame["path"].tolist(), cache_dir), **options)


def classes_from_probs(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """18-class ids from per-task probabilities: the argmax of each task, combined."""
    return combine_classes(*(probs[task].argmax(axis=1) for task in TASKS))


# ---------------------------------------------------------------------------------------------
# setup


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MaskpipeError(
            f"device {name!r} was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use --device cpu or --device auto"
        )
    if not (name == "cpu" or name.startswith("cuda")):
        raise MaskpipeError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def load_task_models(
    checkpoints: Mapping[str, Path | str | LoadedCheckpoint], device: torch.device
) -> dict[str, LoadedCheckpoint]:
    """Load one checkpoint per task (each checked to be of that task), channels-last."""
    unknown = sorted(set(checkpoints) - set(TASKS))
    missing = [task for task in TASKS if task not in checkpoints]
    if unknown or missing:
        raise MaskpipeError(
            f"inference needs exactly one checkpoint per task {', '.join(TASKS)}; "
            f"missing: {missing or 'none'}, unknown: {unknown or 'none'}"
        )
    loaded = {}
    for task in TASKS:
        source = checkpoints[task]
        if isinstance(source, LoadedCheckpoint):
            if source.task != task:
                raise MaskpipeError(
                    f"checkpoint {source.path} is for task {source.task!r}, given as {task!r}"
                )
            checkpoint = source
            checkpoint.model.to(device).eval()
        else:
            checkpoint = load_checkpoint(source, expected_task=task, device=device)
        checkpoint.model.to(memory_format=torch.channels_last)
        loaded[task] = checkpoint
    return loaded


def _eval_frame(
    data: str | Path | pd.DataFrame, data_root: str | None, cache_dir: str | Path | None
) -> tuple[pd.DataFrame, str]:
    if isinstance(data, pd.DataFrame):
        if data_root is None:
            raise MaskpipeError(
                "an eval index frame was given without data_root; pass the data root its "
                "'path' column is relative to (read_eval_index returns it)"
            )
        for column in ("image_id", "path"):
            if column not in data.columns:
                raise DataLayoutError(
                    f"the eval index frame lacks column {column!r}; it has {list(data.columns)}"
                )
        return data.reset_index(drop=True), str(data_root)
    from maskpipe.data.index import index_eval

    # Inference decodes every image and names a bad one, so skip the indexer's decode check.
    frame = index_eval(str(data), cache_dir, check_images=False)
    return frame, str(frame.attrs.get("data_root", data))


def localize_paths(root: str, rel_paths: list[str], cache_dir: str | Path | None) -> list[Path]:
    from maskpipe.storage import localize

    return localize(root, rel_paths, Path(cache_dir) if cache_dir is not None else None)


def default_num_workers(images: int, batch_size: int, device: torch.device | None = None) -> int:
    """Decoders: on the CPU one thread per core (at most 8); elsewhere one worker process per
    core (at most 8), none for a batch or two of images, where starting worker processes costs
    more than it saves."""
    from maskpipe.data.images import default_workers

    processes = device is None or device.type != "cpu"
    if processes and images <= 2 * batch_size:
        return 0
    return min(default_workers(), MAX_DEFAULT_WORKERS)


# ---------------------------------------------------------------------------------------------
# decoding


class EvalImages(torch.utils.data.Dataset):
    """Decode each image once and crop/resize it to every view; uint8 HxWx3 per view.

    A bad image is returned as its error message rather than raised, so the main process can
    raise the original, readable error (DataLoader workers re-wrap exceptions).
    """

    def __init__(self, paths: Sequence[str | Path], views: Sequence[View]) -> None:
        self.paths = [str(p) for p in paths]
        self.views = list(views)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...] | str:
        from maskpipe.data.resize import decode_views

        try:
            return decode_views(self.paths[index], self.views)
        except MaskpipeError as exc:
            return str(exc)


def collate_views(items: list[tuple[np.ndarray, ...] | str]) -> list[torch.Tensor] | str:
    """Stack each view into a (N, H, W, 3) uint8 tensor; the first error message otherwise."""
    for item in items:
        if isinstance(item, str):
            return item
    return [torch.from_numpy(np.stack(arrays)) for arrays in zip(*items)]


def checkpoint_view(checkpoint: LoadedCheckpoint) -> View:
    return checkpoint.crop_size, checkpoint.input_size


class ThreadedBatches:
    """Batches of :class:`EvalImages` decoded by a pool of ``threads`` in this process, one
    batch at a time: the CPU path.

    On the CPU the forward passes need every core, and DataLoader worker processes decoding
    beside them take cores from the torch threads (the slower of the two paths in
    ``benchmarks/inference.py``). Here decoding (PIL and OpenCV release the GIL) and the
    forward passes take turns, each with all cores. ``threads=0`` decodes serially.
    """

    def __init__(self, dataset: EvalImages, batch_size: int, threads: int) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, threads

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor] | str]:
        from concurrent.futures import ThreadPoolExecutor

        n, step = len(self.dataset), self.batch_size
        starts = range(0, n, step)
        if self.num_workers == 0:
            for start in starts:
                yield collate_views([self.dataset[i] for i in range(start, min(start + step, n))])
            return
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="decode") as pool:
            for start in starts:
                yield collate_views(list(pool.map(self.dataset.__getitem__, range(start, min(start + step, n)))))


def make_loader(
    paths: Sequence[str | Path],
    views: Sequence[View],
    *,
    batch_size: int,
    num_workers: int | None,
    device: torch.device = torch.device("cpu"),
) -> torch.utils.data.DataLoader | ThreadedBatches:
    """Decoded, collated batches in ``paths`` order: decoding threads taking turns with the
    forward passes on the CPU (:class:`ThreadedBatches`), worker processes that run ahead
    of the device elsewhere."""
    if batch_size < 1:
        raise MaskpipeError(f"batch size must be >= 1, got {batch_size}")
    workers = default_num_workers(len(paths), batch_size, device) if num_workers is None else num_workers
    if workers < 0:
        raise MaskpipeError(f"workers must be >= 0, got {workers}")
    if device.type == "cpu":
        return ThreadedBatches(EvalImages(paths, views), batch_size, workers)
    return torch.utils.data.DataLoader(
        EvalImages(paths, views),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_views,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


# ---------------------------------------------------------------------------------------------
# the batched forward pass


def predict_probs(
    loaded: Mapping[str, LoadedCheckpoint],
    paths: Sequence[str | Path],
    *,
    tta: bool = False,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    amp: bool | None = None,
) -> dict[str, np.ndarray]:
    """Softmax probabilities per task, ``{task: float32 (N, classes)}``, in ``paths`` order."""
    device = torch.device(device)
    use_amp = _check_amp(amp, device)
    views = sorted({checkpoint_view(c) for c in loaded.values()}, key=str)
    loader = make_loader(paths, views, batch_size=batch_size, num_workers=num_workers, device=device)
    decoders = "thread(s)" if isinstance(loader, ThreadedBatches) else "worker process(es)"
    log.info(
        "inference: %d images, %d model(s), %d input view(s) %s, batch %d, %d decoding %s, "
        "%s%s%s",
        len(paths), len(loaded), len(views), [v[1] for v in views], batch_size,
        loader.num_workers, decoders, device, ", bf16" if use_amp else "", ", flip TTA" if tta else "",
    )  # fmt: skip
    models = {task: inference_model(checkpoint.model) for task, checkpoint in loaded.items()}
    out = {task: np.empty((len(paths), NUM_CLASSES[task]), np.float32) for task in loaded}
    row = 0
    for batch in _progress(loader, len(paths), batch_size):
        if isinstance(batch, str):
            raise DataLayoutError(batch)
        on_device = [v.to(device, non_blocking=True) for v in batch]
        normalised: dict[Any, torch.Tensor] = {}
        for task, checkpoint in loaded.items():
            view = views.index(checkpoint_view(checkpoint))
            key = (view, tuple(checkpoint.mean), tuple(checkpoint.std))
            if key not in normalised:
                normalised[key] = prepare_batch(on_device[view], checkpoint.mean, checkpoint.std, tta)
            probs = forward_probs(models[task], normalised[key], tta=tta, amp=use_amp)
            out[task][row : row + len(probs)] = probs.cpu().numpy()
        row += batch[0].shape[0]
    if row != len(paths):  # a DataLoader that dropped rows would misalign the submission
        raise RuntimeError(f"inference produced {row} rows for {len(paths)} images")
    return out


def prepare_batch(
    batch_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], tta: bool
) -> torch.Tensor:
    """uint8 (N,H,W,3) -> normalised float NCHW (channels-last); with TTA, the N horizontal
    flips appended, so one forward pass sees both."""
    from maskpipe.data.transforms import normalize_to_tensor

    x = normalize_to_tensor(batch_uint8, mean, std, channels_last=True)
    if tta:
        x = torch.cat([x, x.flip(3)]).contiguous(memory_format=torch.channels_last)
    return x


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in eval mode) with each BatchNorm folded into the convolution before it,
    channels-last: one op fewer per layer, same outputs to float rounding.

    The fold needs a ``torch.fx`` trace; a model that cannot be traced is used as it is.
    Only exact ``Conv2d -> BatchNorm2d`` pairs are folded (timm's fused BatchNormAct layers
    are left alone), on a copy: the checkpoint's own model is not changed.
    """
    from torch.fx.experimental.optimization import fuse

    model.eval()
    try:
        fused = fuse(model)
    except Exception as exc:  # fx tracing fails on data-dependent control flow
        log.debug("no BatchNorm folding for %s (%s); running it unfused", type(model).__name__, exc)
        fused = model
    return fused.to(memory_format=torch.channels_last)


@torch.inference_mode()
def forward_probs(model: torch.nn.Module, x: torch.Tensor, *, tta: bool, amp: bool) -> torch.Tensor:
    """Softmax probabilities (float32) of a prepared batch; with TTA the batch holds the
    originals then their flips, and each image gets the mean of its two probabilities.
    On the CPU the batch goes through in chunks of :data:`CPU_FORWARD_CHUNK`."""
    chunk = CPU_FORWARD_CHUNK if x.device.type == "cpu" else len(x)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = torch.cat([model(part) for part in x.split(max(1, chunk))])
    probs = logits.float().softmax(dim=1)
    if tta:
        half = probs.shape[0] // 2
        probs = (probs[:half] + probs[half:]) / 2
    return probs


def _check_amp(amp: bool | None, device: torch.device) -> bool:
    if amp is None:
        return device.type == "cuda"
    if amp and device.type != "cuda":
        raise MaskpipeError(f"bf16 autocast was requested on {device}; it is only used on CUDA")
    return amp


def _progress(loader: Iterable, images: int, batch_size: int):
    from maskpipe.progress import progress

    return progress(loader, total=math.ceil(images / batch_size), desc="infer", unit="batch")


# ---------------------------------------------------------------------------------------------
# combining and writing


def combine_classes(mask: Any, gender: Any, age: Any) -> np.ndarray:
    """Vectorised :func:`maskpipe.labels.encode_class`: ``mask * 6 + gender * 3 + age``."""
    arrays = [np.asarray(v, dtype=np.int64) for v in (mask, gender, age)]
    for task, values in zip(TASKS, arrays):
        if values.size and (values.min() < 0 or values.max() >= NUM_CLASSES[task]):
            raise ValueError(f"{task} labels must be in 0..{NUM_CLASSES[task] - 1}")
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise ValueError(f"label arrays differ in shape: {[a.shape for a in arrays]}")
    mask_l, gender_l, age_l = arrays
    return mask_l * 6 + gender_l * 3 + age_l


def probs_frame(image_ids: Sequence[str], probs: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """``image_id, mask_p0..2, gender_p0..1, age_p0..2`` (one row per image)."""
    columns: dict[str, Any] = {"image_id": list(image_ids)}
    for task in TASKS:
        for c in range(NUM_CLASSES[task]):
            columns[f"{task}_p{c}"] = probs[task][:, c].astype(np.float32)
    return pd.DataFrame(columns)


def write_probs(path: Path, image_ids: Sequence[str], probs: Mapping[str, np.ndarray]) -> None:
    frame = probs_frame(image_ids, probs)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
