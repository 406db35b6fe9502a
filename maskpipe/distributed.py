"""The process group of a ``torchrun`` launch: its world from the environment, init/teardown, and the few collectives training needs.

``torchrun`` (or a Kubeflow Trainer TrainJob, which runs it) starts one process per device and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``. :func:`session` joins
the group when the world holds more than one process (gloo on the CPU, NCCL on GPUs, each
process on the GPU its ``LOCAL_RANK`` names) and leaves it afterwards. Without ``torchrun`` the
world is one process, no group is created, and every helper here is a no-op, so a single
process runs exactly the code it ran before distributed training existed.

A collective waits at most ``MASKPIPE_DIST_TIMEOUT_S`` seconds (default 1800: local rank 0
may be decoding the image cache while the others wait), so the survivors of a dead rank do not
hang forever; torchrun's agent normally ends them sooner and its failure summary names the rank.
torch is imported only where a group is used, so the command line can ask for the rank cheaply.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from maskpipe.errors import MaskpipeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800
TIMEOUT_ENV = "MASKPIPE_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class World:
    """Where this process stands in the launch: ``rank`` of ``size``, ``local_rank`` of
    ``local_size`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def label(self) -> str:
        """``rank 1 of 2`` (for log lines and errors)."""
        return f"rank {self.rank} of {self.size}"


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The world ``torchrun`` describes in the environment; one process without it."""
    env = os.environ if env is None else env

    def number(name: str, default: int) -> int:
        text = env.get(name, "").strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            raise DistributedError(f"environment variable {name}={text!r} is not an integer; torchrun sets it, unset it to run one process") from None

    size = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    world = World(rank, size, number("LOCAL_RANK", rank), number("LOCAL_WORLD_SIZE", size))
    if size < 1 or not 0 <= rank < size or not 0 <= world.local_rank < world.local_size:
        raise DistributedError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={world.local_rank} LOCAL_WORLD_SIZE={world.local_size}")
    return world


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes files); true without torchrun."""
    return world_from_env().is_main


def timeout_s() -> int:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = int(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={text!r} is not a whole number of seconds; set e.g. {TIMEOUT_ENV}=1800") from None
    if value < 1:
        raise DistributedError(f"{TIMEOUT_ENV} must be >= 1 second, got {value}")
    return value


def device_of(world: World, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when training on CUDA in a world of more
    than one, else ``device`` unchanged."""
    if not world.distributed or device.type != "cuda":
        return device
    import torch

    if world.local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"{world.label()} has LOCAL_RANK {world.local_rank} but this node shows "
            f"{torch.cuda.device_count()} GPU(s); run torchrun with --nproc_per_node at most the GPU count"
        )
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[World]:
    """Join the process group for the block (a no-op for one process, or when the caller
    already joined one); leave it after a last barrier, so no rank exits while rank 0 writes."""
    import torch
    import torch.distributed as dist

    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        yield world
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, timeout=datetime.timedelta(seconds=timeout_s()),
        device_id=device if device.type == "cuda" else None,
    )  # fmt: skip
    log.info("%s joined the %s process group (%d per node)", world.label(), backend, world.local_size)
    completed = False
    try:
        yield world
        completed = True
    finally:
        if completed:
            barrier()
        dist.destroy_process_group()


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def local_leader_first(world: World, work: Callable[[], T]) -> T:
    """``work()`` on local rank 0 first, then on the node's other ranks: what it writes to the
    node's disk (the decoded-image cache, downloads, a restored resume state) is written once
    and read by the rest."""
    if not active():
        return work()
    if world.local_rank == 0:
        result = work()
        barrier()
        return result
    barrier()
    return work()


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` for one process."""
    if not active():
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) into every rank's ``model``; no-op for one process."""
    if not active():
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def gather_strided(shares: list[torch.Tensor]) -> torch.Tensor:
    """Undo a strided split: ``shares[r]`` holds items ``r, r + W, ...`` of the whole, in order."""
    if len(shares) == 1:
        return shares[0]
    total = sum(len(share) for share in shares)
    whole = shares[0].new_empty((total, *shares[0].shape[1:]))
    for rank, share in enumerate(shares):
        whole[rank :: len(shares)] = share
    return whole


def shard(items, world: World):
    """This rank's items of a strided split (``items[rank::size]``); all of them for one process."""
    return items[world.rank :: world.size] if world.distributed else items


class DistributedError(MaskpipeError):
    """The torchrun environment is unusable, or the other ranks were lost."""


def collective_failure(world: World, exc: BaseException) -> str:
    """The one-line error a rank reports when a collective with the others failed."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"{world.label()} lost the other ranks ({first[:200]}): another rank ended or stopped "
        "answering; torchrun's failure summary names it. Rerun the same command to resume after "
        "the last completed epoch"
    )


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed or timed-out collective (not a bug in this rank's own work)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("Gloo", "gloo", "NCCL", "Connection closed by peer", "Connection reset", "timed out")
    )
