"""The frozen-trunk cache's one decision: whether a cache is exact, and where each split's goes.

:func:`plan_cache` decides both for all splits at once, before anything is computed: whether the
first blocks can be cached exactly (:func:`cacheable_blocks`), where each split's cache lives
(:func:`place_caches`: GPU, RAM or disk), and whether the part that goes to disk fits there
(:func:`check_spill_space`). The disk folders are named by their process so that a later build
removes those a killed run left (:func:`remove_stale_caches`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gptclf.errors import CacheSpaceError
from gptclf.model.classifier import Classifier, TrainableScope, reads_a_pad
from gptclf.model.gpt import GPT

#: Share of the GPU's free memory (before any cache is built) the caches may take together; the
#: rest is for training's activations, gradients and optimizer state.
GPU_CACHE_SHARE = 0.5
#: Order in which splits claim cache space: the one read every step first. Other names rank with
#: validation.
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
#: Splits read only after training: their cache would hold GPU memory through the whole run.
END_SPLITS = frozenset({"test"})
#: Splits read once, after training: a cache saves them no work (their frozen blocks run once
#: either way, and give the same numbers) and would hold their states in memory through the whole
#: run, so they are read from their token ids.
UNCACHED_SPLITS = END_SPLITS
#: Cache folders are named ``gptclf-cache-<pid>-<host>-<random>``, so that a later build can tell
#: a dead process's folder from a live one's.
CACHE_DIR_PREFIX = "gptclf-cache-"
_CACHE_DIR = re.compile(r"gptclf-cache-(\d+)-(.+)-[a-z0-9_]+")


def place_caches(
    sizes: Mapping[str, int],
    *,
    gpu_free: int | None,
    ram: int,
    local_ranks: int = 1,
    gpu_share: float = GPU_CACHE_SHARE,
) -> dict[str, str]:
    """Where each split's cache goes: ``gpu``, ``memory`` or ``disk``, decided for all at once.

    Splits claim space in the order they are read (:data:`SPLIT_ORDER`: train, validation, then
    test). The GPU takes caches while their total stays within ``gpu_share`` of ``gpu_free``;
    :data:`END_SPLITS` never go there. RAM takes caches within ``ram // local_ranks``: every
    process on the machine holds whole caches, so the machine's budget is shared. The rest
    goes to disk.

    Args:
        sizes: Split name -> bytes its cache needs.
        gpu_free: Free memory of this process's GPU before any cache; None off CUDA.
        ram: RAM in bytes all the machine's caches may take (``--cache-memory``).
        local_ranks: Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``).
        gpu_share: Share of ``gpu_free`` the caches may take together.

    Returns:
        Split name -> location, in the order of ``sizes``.
    """
    gpu_left = int(gpu_share * gpu_free) if gpu_free is not None else -1
    ram_left = max(0, ram) // max(1, local_ranks)
    placed: dict[str, str] = {}
    for name in sorted(sizes, key=lambda n: SPLIT_ORDER.get(n, 1)):  # stable: ties keep their order
        nbytes = sizes[name]
        if name not in END_SPLITS and nbytes <= gpu_left:
            placed[name], gpu_left = "gpu", gpu_left - nbytes
        elif nbytes <= ram_left:
            placed[name], ram_left = "memory", ram_left - nbytes
        else:
            placed[name] = "disk"
    return {name: placed[name] for name in sizes}


def check_spill_space(nbytes: int, spill_dir: Path | None = None, copies: int = 1) -> None:
    """Refuse a cache that cannot fit on the disk it spills to, before any of it is computed.

    A build that runs out of room would fail after minutes of work, so the room is checked before
    any (and the file reserves it when it is made: :class:`~gptclf.inference.cache_file.StateFile`).

    Args:
        nbytes: Bytes the files of this machine need together.
        spill_dir: The folder they go to (default: the system's temporary folder).
        copies: Processes of this machine that each write their own files (torchrun's local ranks).

    Raises:
        CacheSpaceError: Less free space in the spill folder than the caches placed on disk need.
    """
    if nbytes <= 0:
        return
    folder = spill_folder(spill_dir)
    free = spill_room(folder)
    if free == 0 and not os.access(folder, os.W_OK | os.X_OK):
        raise CacheSpaceError(
            f"the frozen-trunk cache needs {_mib(nbytes)} MiB on disk beyond --cache-memory, "
            f"and {folder} cannot be written: point TMPDIR at a writable folder, raise --cache-memory, "
            "or pass --no-cache"
        )
    if free < nbytes:
        each = f" ({copies} processes, each with its own)" if copies > 1 else ""
        raise CacheSpaceError(
            f"the frozen-trunk cache needs {_mib(nbytes)} MiB on disk in {folder}{each} beyond "
            f"--cache-memory, and {_mib(free)} MiB are free: raise --cache-memory, free some "
            "space, point TMPDIR at a larger disk, or pass --no-cache"
        )


def _mib(nbytes: int) -> str:
    """MiB for a message: whole ones, or one decimal under 10 (a 256 KiB disk is 0.2, not 0)."""
    return f"{nbytes / 2**20:,.1f}" if nbytes < 10 << 20 else f"{nbytes / 2**20:,.0f}"


def spill_folder(spill_dir: Path | None = None) -> Path:
    """The folder caches spill into: ``spill_dir``, or the system's temporary folder."""
    return Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())


def spill_room(spill_dir: Path | None = None) -> int:
    """Free bytes in the folder caches spill into (0 where it cannot be read or written)."""
    folder = spill_folder(spill_dir)
    try:
        return shutil.disk_usage(folder).free if os.access(folder, os.W_OK | os.X_OK) else 0
    except OSError:
        return 0


def remove_stale_caches(
    spill_dir: Path | None = None, note: Callable[[str], None] | None = None
) -> list[Path]:
    """Remove the cache folders that gptclf processes of this machine left in ``spill_dir`` and
    that no live process owns any more (a kill -9 or a power cut during a run).

    A folder is removed only when its name says it is a gptclf cache of this host, it belongs to
    this user, and the process that made it is gone. Other users' and live processes' folders,
    and folders named otherwise, are left alone.

    Args:
        spill_dir: The folder caches spill into (default: the system's temporary folder).
        note: Receives one line per removed folder.

    Returns:
        The folders removed.
    """
    root = spill_folder(spill_dir)
    try:
        entries = sorted(root.iterdir())
    except OSError:  # absent or unreadable: nothing of ours to clean
        return []
    removed = []
    for path in entries:
        match = _CACHE_DIR.fullmatch(path.name)
        if match is None or match.group(2) != host_name() or not _removable(path, int(match.group(1))):
            continue
        size = _tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():  # another run cleaning at the same time may have removed it first
            removed.append(path)
            if note is not None:
                note(
                    f"removed {path} ({size / 2**20:,.1f} MiB): a feature cache left by process "
                    f"{match.group(1)}, which is gone"
                )
    return removed


def _tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (what a removal frees; files vanishing meanwhile count 0)."""
    total = 0
    for file in path.rglob("*"):
        try:
            total += file.lstat().st_size if file.is_file() else 0
        except OSError:
            continue
    return total


def host_name() -> str:
    """This machine's name as it appears in cache folder names (letters, digits and dots)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _removable(path: Path, pid: int) -> bool:
    """Whether ``path`` is a real folder of this user whose owning process ``pid`` is gone."""
    if os.name != "posix" or pid == os.getpid():
        return False  # no signal-0 probe off POSIX (Windows' os.kill would send a Ctrl-C)
    try:
        info = path.lstat()
    except OSError:
        return False
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False  # another user's live process, or a number no process can have
    return False


def cacheable_blocks(
    gpt: GPT, scope: TrainableScope, pooling: str = "last-token", pad_to: int | None = None
) -> int:
    """How many leading blocks a cache can replace exactly (0: no cache): the one rule.

    0 where caching cannot be exact: ``all`` and ``lora`` train every block; dropout in the
    frozen part would make its output differ from epoch to epoch; and position -1 of a padded
    batch (``last-position`` pooling) is a pad whose state depends on the batch's width, which a
    per-text cache reproduces only when every batch has the same width (``pad_to``) and the pads
    are cached too.
    """
    if scope.kind in ("all", "lora") or gpt.config.dropout > 0:
        return 0
    if reads_a_pad(pooling) and pad_to is None:
        return 0
    return gpt.n_layer - scope.trainable_blocks(gpt.n_layer)


def pooled_cache(gpt: GPT, start_block: int, pooling: str) -> bool:
    """Whether a cache of ``start_block`` blocks needs only one state per text: every block is
    cached (``--trainable head``) and the pooling reads the last real token, so what follows the
    cache (the final norm, per position, and the head) reads that token's state alone. The cache
    then holds one vector a text instead of one per token, and gives the same numbers: the norm of
    a row does not depend on the rows beside it."""
    return start_block == gpt.n_layer and pooling == "last-token"


@dataclass(frozen=True)
class CachePlan:
    """What :func:`plan_cache` decided.

    Attributes:
        start_block: Blocks the cache replaces (0: no cache, token batches).
        locations: Split -> ``gpu``, ``memory`` or ``disk``; a split not named
            (:data:`UNCACHED_SPLITS`) is read from its token ids.
        pooled: The cache holds one state per text (:func:`pooled_cache`), not one per token.
        note: A line for the user about the placement (a cache kept in RAM for want of disk room).
    """

    start_block: int
    locations: dict[str, str]
    pooled: bool = False
    note: str | None = None


def plan_cache(
    model: Classifier,
    scope: TrainableScope,
    splits: Mapping[str, Sequence[Sequence[int]]],
    *,
    use_cache: bool,
    device: torch.device,
    cache_memory: int,
    ram_fallback: int = 0,
    pad_to: int | None = None,
    local_ranks: int = 1,
    spill_dir: Path | None = None,
) -> CachePlan:
    """The one decision about the frozen-trunk cache: whether it is exact, and where each split's
    goes (GPU, RAM, disk: :func:`place_caches`), checked against the free disk before any work.
    Where the spill folder lacks room for what goes to disk, the caches are placed again within
    ``ram_fallback`` (the default ``--cache-memory``: a small RAM share, more only when needed).

    Raises:
        CacheSpaceError: The caches placed on disk cannot fit in the spill folder.
    """
    start = cacheable_blocks(model.gpt, scope, model.pooling, pad_to) if use_cache else 0
    if start == 0:
        return CachePlan(0, {})
    row_bytes = model.gpt.config.n_embd * 4  # fp32 states
    width = pad_to or 0 if reads_a_pad(model.pooling) else 0  # such texts are cached with their pads
    pooled = pooled_cache(model.gpt, start, model.pooling)
    sizes = {
        name: (len(ids) if pooled else sum(max(n, width) for n in _lengths(ids))) * row_bytes
        for name, ids in splits.items()
        if name not in UNCACHED_SPLITS
    }
    # Free GPU memory once, before any cache: measured per split, each would see only what the
    # previous left and the shares would add up.
    gpu_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    locations = place_caches(sizes, gpu_free=gpu_free, ram=cache_memory, local_ranks=local_ranks)
    copies = max(1, local_ranks)  # every process of this machine writes files of its own

    def on_disk(placed: Mapping[str, str]) -> int:
        return sum(n for name, n in sizes.items() if placed[name] == "disk") * copies

    spilled, note = on_disk(locations), None
    if spilled and ram_fallback > cache_memory and (room := spill_room(spill_dir)) < spilled:
        locations = place_caches(sizes, gpu_free=gpu_free, ram=ram_fallback, local_ranks=local_ranks)
        note = (
            f"the temporary folder {spill_folder(spill_dir)} has {_mib(room)} MiB free, less than the "
            f"{_mib(spilled)} MiB of cache beyond --cache-memory: {_mib(spilled - on_disk(locations))} "
            "MiB of it stay in RAM"
        )
        spilled = on_disk(locations)
    check_spill_space(spilled, spill_dir, copies)
    return CachePlan(start, locations, pooled, note)


def _lengths(ids: Sequence[Sequence[int]]) -> list[int]:
    """Tokens of each text (read off the offsets of compact ids)."""
    lengths = getattr(ids, "lengths", None)  # TokenIds (not imported: batching imports no cache code)
    return list(lengths) if lengths is not None else [len(x) for x in ids]
