"""Batched three-model inference: eval images -> a :class:`maskpipe.backend.Backend` ->
per-task probabilities -> 18 classes -> CSV.

How this differs from the competition's loop (one image at a time, one ``.item()`` per model):

* every image is decoded once and cropped/resized to each view the backend lists (uint8, so
  batches are small to move); models that share a view share the batch. On the CPU a pool of
  threads decodes each batch, taking turns with the forward passes; on a GPU, DataLoader worker
  processes decode ahead of it;
* the backend (:func:`maskpipe.runtime.open_backend`: torch checkpoints or an exported ONNX
  graph) runs each batch; its preprocessing, TTA and precision are its own;
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
from maskpipe.backend import Backend, classes_from_probs, combine_classes
from maskpipe.data.resize import View  # (crop_size, input_size), once per distinct view
from maskpipe.errors import DataLayoutError, MaskpipeError
from maskpipe.labels import NUM_CLASSES, TASKS

log = logging.getLogger(__name__)

__all__ = [
    "InferResult", "predict_submission", "predict_rows_probs", "predict_probs", "classes_from_probs",
    "combine_classes", "decode_loader", "probs_frame", "write_probs",
]  # fmt: skip


SUBMISSION_COLUMNS = ("ImageID", "ans")
MAX_DEFAULT_WORKERS = 8


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
    backend: Backend,
    data: str | Path | pd.DataFrame,
    out_csv: str | Path,
    *,
    data_root: str | None = None,
    probs_path: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> InferResult:
    """Predict the 18-class id of every eval image and write ``ImageID,ans`` atomically.

    Args:
        backend: the models, opened (:func:`maskpipe.runtime.open_backend`: open it before
            calling, so a wrong or altered folder fails before any image is read).
        data: a data root (local or ``s3://``) with ``eval/info.csv`` and ``eval/images/``, or
            an eval index frame (``image_id``, ``path``), which then needs ``data_root``.
        out_csv: the submission to write (``ImageID,ans`` in ``info.csv`` order).
        probs_path: also write per-task probabilities (parquet) for later ensembling.
        batch_size: images per forward pass (TTA doubles what the model sees).
        num_workers: decoding threads (CPU) or worker processes (GPU); None: the CPU count.
        cache_dir: local cache for ``s3://`` images.
    """
    start = time.perf_counter()
    frame, root = _eval_frame(data, data_root, cache_dir)
    probs = predict_rows_probs(
        backend, frame, root, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir
    )
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
        # three checkpoints: the device; an exported folder: which of its backends ran, too
        device=backend.device if backend.card is None else f"{backend.device} ({backend.name})",
        tta=backend.tta,
        probs=probs,
        frame=frame,
        data_root=root,
    )


def predict_rows_probs(
    backend: Backend,
    frame: pd.DataFrame,
    data_root: str,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Per-task softmax probabilities (``{task: (N, classes)}``) for the rows of ``frame``
    (column ``path``, relative to ``data_root``, local or ``s3://``), in row order."""
    if "path" not in frame.columns:
        raise DataLayoutError(f"the frame needs a 'path' column; it has {list(frame.columns)}")
    paths = localize_paths(data_root, frame["path"].tolist(), cache_dir)
    return predict_probs(backend, paths, batch_size=batch_size, num_workers=num_workers)


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


def decode_workers(images: int, batch_size: int, device: torch.device | None = None) -> int:
    """How many decoders :func:`decode_loader` runs for inference (training's count is
    :func:`maskpipe.data.datasets.default_num_workers`): on the CPU one thread per core (at
    most 8); elsewhere one worker process per core (at most 8), none for a batch or two of
    images, where starting worker processes costs more than it saves."""
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


def decode_loader(
    paths: Sequence[str | Path],
    views: Sequence[View],
    *,
    batch_size: int,
    num_workers: int | None,
    device: torch.device = torch.device("cpu"),
) -> torch.utils.data.DataLoader | ThreadedBatches:
    """Inference input: decoded, collated batches of every view in ``paths`` order (the training
    loaders are :func:`maskpipe.data.datasets.make_loader`'s): decoding threads taking turns with the
    forward passes on the CPU (:class:`ThreadedBatches`), worker processes that run ahead
    of the device elsewhere."""
    if batch_size < 1:
        raise MaskpipeError(f"batch size must be >= 1, got {batch_size}")
    workers = decode_workers(len(paths), batch_size, device) if num_workers is None else num_workers
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
    backend: Backend, paths: Sequence[str | Path], *, batch_size: int = 64, num_workers: int | None = None
) -> dict[str, np.ndarray]:
    """Softmax probabilities per task, ``{task: float32 (N, classes)}``, in ``paths`` order."""
    device = torch.device(backend.device)
    views = list(backend.views)
    loader = decode_loader(paths, views, batch_size=batch_size, num_workers=num_workers, device=device)
    decoders = "thread(s)" if isinstance(loader, ThreadedBatches) else "worker process(es)"
    log.info(
        "inference: %d images, %s backend%s, %d input view(s) %s, batch %d, %d decoding %s, %s%s",
        len(paths), backend.name, "" if backend.card is None else f" on {backend.card.folder}",
        len(views), [v[1] for v in views], batch_size, loader.num_workers, decoders, backend.device,
        ", flip TTA" if backend.tta else "",
    )  # fmt: skip
    out = {task: np.empty((len(paths), NUM_CLASSES[task]), np.float32) for task in TASKS}
    row = 0
    for batch in _progress(loader, len(paths), batch_size):
        if isinstance(batch, str):
            raise DataLayoutError(batch)
        probs = backend.probs([view.numpy() for view in batch])
        for task in TASKS:
            out[task][row : row + len(batch[0])] = probs[task]
        row += batch[0].shape[0]
    if row != len(paths):  # a DataLoader that dropped rows would misalign the submission
        raise RuntimeError(f"inference produced {row} rows for {len(paths)} images")
    return out


def _progress(loader: Iterable, images: int, batch_size: int):
    from maskpipe.progress import progress

    return progress(loader, total=math.ceil(images / batch_size), desc="infer", unit="batch")


# ---------------------------------------------------------------------------------------------
# combining and writing


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
