"""Data-parallel finetuning under ``torchrun``: process group, DDP wrapping, collectives, launcher.

gptclf is a plain torchrun program. torchrun (or ``gptclf finetune --devices N``, which starts it)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in every process; :func:`process_group` reads them, joins the group (NCCL on
CUDA, one GPU per process: the local rank's; gloo on the CPU) with a finite timeout on
collectives, and leaves it at the end. Under a world size of 1 nothing is initialised and the run
is the single-process one.

How the work is split (see :mod:`gptclf.training.loop`): every rank draws the same seeded global batches of
``batch_size * grad_accum * world_size`` texts and runs its share (:meth:`Shard.take`), so
``--batch-size`` is per device. Every number a decision depends on (the step's loss, validation
logits) is summed over the ranks before it is used, so all ranks decide the same (early stopping,
NaN stop, an interrupt) without a broadcast. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gptclf.device import LocalJob, resolve_device
from gptclf.errors import BadInputError
from gptclf.options import field_problems, option

T = TypeVar("T")


#: Seconds a collective may wait for the other ranks before the job fails (``--dist-timeout``).
@dataclass(frozen=True)
class LaunchSettings:
    """How ``gptclf finetune`` starts its processes: options of the command line only (no TOML, not
    recorded, free to change on ``--resume``)."""

    devices: int = option(1, "Data-parallel on N local processes (GPUs) via torchrun", "Run", at_least=1)
    dist_timeout: float = option(
        300.0,
        "Seconds a data-parallel process waits for the others before the job fails",
        "Run",
        above=0.0,
        envvar="GPTCLF_DIST_TIMEOUT",
    )

    def problems(self) -> list[str]:
        """Everything wrong with these values, as messages naming the option."""
        return field_problems(self)


DEFAULT_TIMEOUT = LaunchSettings.dist_timeout
#: How long ranks wait for rank 0 to download weights or prepare data (a long, CPU-side wait).
SLOW_TIMEOUT = 24 * 3600.0
#: Rows of a cache summed per collective: bounds the extra memory of :meth:`Shard.all_sum_rows`.
CHUNK_BYTES = 64 << 20


def local_world_size(world: int) -> int:
    """Processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, else the whole ``world``.

    Raises:
        BadInputError: ``LOCAL_WORLD_SIZE`` is not a positive integer.
    """
    raw = os.environ.get("LOCAL_WORLD_SIZE")
    if raw is None:
        return world
    try:
        local = int(raw)
    except ValueError:
        local = 0
    if local < 1:
        raise BadInputError(f"LOCAL_WORLD_SIZE must be an integer >= 1 (got {raw!r}; set by torchrun)")
    return local


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when torchrun started this process, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise BadInputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    return rank, world, local


def world_size() -> int:
    """The world size torchrun set (1 outside torchrun)."""
    env = torchrun_env()
    return 1 if env is None else env[1]


class RowFile(Protocol):
    """Rows stored outside memory (:class:`gptclf.inference.cache_file.StateFile`): read and written
    a range at a time."""

    shape: tuple[int, int]

    def element_size(self) -> int: ...
    def read(self, start: int, stop: int) -> torch.Tensor: ...
    def write(self, start: int, values: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel job (rank 0 of 1 for a single process).

    Its collectives are no-ops for a single process, so the training code has one path.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: Processes on this node (torchrun's ``LOCAL_WORLD_SIZE``): they share its RAM and GPUs.
    local_world_size: int = 1
    #: A gloo group with a long timeout for waiting on rank 0's downloads (None: single process).
    slow_group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's share: every ``world_size``-th item from ``rank``.

        A global training batch is length-sorted within its pool, so the shares have similar lengths.
        """
        return list(items[self.rank :: self.world_size])

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place, and return it."""
        if not self.distributed:
            return tensor
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            # NCCL reduces CUDA tensors only: go through this rank's GPU.
            on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu)
            return tensor.copy_(on_gpu)
        dist.all_reduce(tensor)
        return tensor

    def all_sum_rows(self, flat: torch.Tensor | RowFile) -> None:
        """:meth:`all_sum` of a (rows, C) tensor, or of a file of rows (a cache on disk), in chunks,
        so the cache needs no second copy."""
        if not self.distributed or flat.shape[0] == 0:
            return
        rows = max(1, CHUNK_BYTES // max(1, flat.shape[1] * flat.element_size()))
        for start in range(0, flat.shape[0], rows):
            stop = min(start + rows, flat.shape[0])
            if not isinstance(flat, torch.Tensor):
                flat.write(start, self.all_sum(flat.read(start, stop)))
                continue
            chunk = flat[start:stop]
            if chunk.is_contiguous():
                self.all_sum(chunk)
            else:
                chunk.copy_(self.all_sum(chunk.contiguous()))

    def barrier(self) -> None:
        """Wait until every rank gets here (within the collective timeout)."""
        if self.distributed:
            dist.barrier()

    def slow_barrier(self) -> None:
        """Wait until every rank gets here, on the slow group (:data:`SLOW_TIMEOUT`, not ``--dist-timeout``).

        For waits on work only rank 0 does and whose length the timeout cannot bound, such as
        saving a large checkpoint: the other ranks wait here, not in the next collective.
        A no-op for a single process.
        """
        if self.distributed:
            dist.barrier(group=self.slow_group)

    @contextlib.contextmanager
    def main_first(self, per_node: bool = True) -> Iterator[None]:
        """Run the block on rank 0 (``per_node``: on each node's local rank 0) first, then on the rest.

        For downloads into the cache and the data preparation: the first pass writes the files,
        the later ones find them in place. The wait may be long, so it uses the slow group.
        """
        first = (self.local_rank if per_node else self.rank) == 0
        if not self.distributed:
            yield
            return
        if first:
            yield
        dist.barrier(group=self.slow_group)
        if not first:
            yield

    def from_main(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; for small things such as a path)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled; for small things such as RNG states)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def local_job() -> LocalJob | None:
    """This process's place on its node in a torchrun job of several processes (None: one process).

    Raises:
        BadInputError: torchrun's variables are not integers.
    """
    env = torchrun_env()
    if env is None or env[1] == 1:
        return None
    return LocalJob(env[2], local_world_size(env[1]))


@contextlib.contextmanager
def process_group(device: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> Iterator[Shard]:
    """Join torchrun's process group for the duration of the block; yield this process's Shard.

    Outside torchrun, or with a world size of 1, nothing is initialised and ``Shard()`` comes back.
    The device follows the data-parallel rules of :func:`gptclf.device.resolve_device` (as the
    run's plan does); on CUDA it becomes the process's current device, its local rank's GPU.

    Args:
        device: ``--device``: ``auto``, ``cpu`` or ``cuda`` (one GPU per process).
        timeout: Seconds a collective may wait before the job fails instead of hanging.

    Raises:
        BadInputError: A device that cannot be used data-parallel, or a bad timeout.
    """
    env, job = torchrun_env(), local_job()
    if env is None or job is None:
        yield Shard()
        return
    problems = LaunchSettings(dist_timeout=timeout).problems()  # the option's own rule
    if problems:
        raise BadInputError("; ".join(problems))
    rank, world, _ = env
    dev = resolve_device(device, job)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend="nccl" if dev.type == "cuda" else "gloo",
        timeout=_dt.timedelta(seconds=timeout),
        device_id=dev if dev.type == "cuda" else None,
    )
    try:
        slow = dist.new_group(backend="gloo", timeout=_dt.timedelta(seconds=SLOW_TIMEOUT))
        yield Shard(rank, world, job.rank, job.processes, slow_group=slow)
    finally:
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, device: torch.device, shard: Shard) -> nn.Module:
    """``module`` in DistributedDataParallel when the job has several ranks, else as it is.

    DDP registers only parameters that require a gradient, so the frozen blocks (and the frozen
    trunk a cache replaces) cost nothing; every trainable parameter takes part in each forward,
    so ``find_unused_parameters`` stays off. GPT-2 here has no buffers, so DDP syncs nothing at a
    forward pass, and ranks may run different numbers of micro-batches in a step.
    """
    if not shard.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def launch_command(devices: int, args: Sequence[str]) -> list[str]:
    """The torchrun command that runs ``gptclf finetune ARGS`` on ``devices`` local processes.

    The ``--`` before the program matters: torchrun's argument parser looks at every word, also
    the program's, and stops with "ambiguous option" at ``--monitor`` (a prefix of its own
    ``--monitor-interval``); after ``--`` it reads none of them.
    """
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(devices)]
    return [*run, "-m", "--", "cli.main", "finetune", *args]


def launch(devices: int, args: Sequence[str]) -> int:
    """Run ``gptclf finetune ARGS`` under torchrun on this machine; return torchrun's exit code.

    torchrun ends every worker when one fails and exits 1 for any worker failure.
    """
    return subprocess.call(launch_command(devices, args))


def divide_cpu_threads(device: torch.device, shard: Shard) -> None:
    """On the CPU, give each of the node's ranks its share of the cores (torch takes them all in
    every process otherwise, and the ranks fight over them); GPUs are one per rank already."""
    if shard.distributed and device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // shard.local_world_size))


def refuse_distributed(verb: str) -> None:
    """``predict`` and ``evaluate`` run in one process: refuse a torchrun job of several.

    Raises:
        BadInputError: ``WORLD_SIZE`` > 1.
    """
    if world_size() > 1:
        raise BadInputError(
            f"`gptclf {verb}` runs in one process; start it without torchrun (WORLD_SIZE is {world_size()})"
        )
