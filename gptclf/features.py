"""Model inputs for training and evaluation: token batches, or hidden states cached after the
frozen first blocks.

With the default scope (last block + final norm + head), the first ``k`` blocks never change, so
their output for a text is the same in every epoch. :class:`FeatureCache` computes it once per
text (eval mode, no gradients) and training then runs only blocks ``k..``, the final norm and the
head. Right padding and the causal mask mean a real token's state never depends on the pads after
it, so each text is stored unpadded (one flat (tokens, C) tensor plus offsets) and re-padded per
batch: the cache is exact for any batch composition. It cannot be exact where the frozen part has
dropout, where every block trains (``all``, ``lora``), or for ``last-position`` pooling with
per-batch padding, which reads a pad's state (that depends on the batch's width). With a fixed
width (``--pad-to longest-train``, the book's padding) every text is cached together with its pads,
which makes ``last-position`` exact too. :func:`gptclf.classifier.frozen_prefix` and
:func:`cache_blocks` say where a cache is used.

Where each split's cache lives is decided for all splits at once (:func:`place_caches`): on the
GPU (CUDA only) while the caches read during training (train, then validation) fit together in a
share of the GPU memory free before the first is built; else in RAM (pinned on CUDA) while they
fit in this process's part of ``--cache-memory`` (the budget of the whole machine, divided among
the local ranks, each of which holds whole caches); else in a memory-mapped file in a temporary
folder that is removed when the cache is closed. The test split, read once at the end, never
takes GPU memory. A folder left by a process that died (kill -9) is removed by the next build.

Under DDP every rank needs the states of every training text (the shards are redrawn each epoch),
so each rank holds a whole cache, but the ranks compute disjoint parts of it: rank r runs every
``world_size``-th of the length-sorted batches a single process would run, writes those rows into
a zeroed cache, and the caches are summed over the ranks in chunks. Building takes 1/world_size
of the time, and each text's states come from the same batch as in a single process, so the cache
equals the single-process one exactly.

:func:`pooled_logits` saves most of the remaining work for ``last-token`` pooling: the final block
runs its query, MLP, norm and head at the pooled position only.
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
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptclf.batching import collate, sorted_batches
from gptclf.classifier import Classifier
from gptclf.device import Precision
from gptclf.distributed import Shard
from gptclf.errors import BadInputError
from gptclf.model import Block
from gptclf.tokenizer import EOT_ID

#: Share of the GPU's free memory (before any cache is built) the caches may take together; the
#: rest is for training's activations, gradients and optimizer state.
GPU_CACHE_SHARE = 0.5
#: Order in which splits claim cache space: the one read every step first. Other names rank with
#: validation.
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
#: Splits read only after training: their cache would hold GPU memory through the whole run.
END_SPLITS = frozenset({"test"})
#: Cache folders are named ``gptclf-cache-<pid>-<host>-<random>``, so that a later build can tell
#: a dead process's folder from a live one's.
CACHE_DIR_PREFIX = "gptclf-cache-"
_CACHE_DIR = re.compile(r"gptclf-cache-(\d+)-(.+)-[a-z0-9_]+")


@dataclass
class Batch:
    """One batch of model inputs: token ids, or cached hidden states entering ``start_block``.

    Attributes:
        input_ids: (B, T) token ids, or None when ``hidden`` is given.
        hidden: (B, T, C) hidden states after block ``start_block - 1``, or None.
        lengths: (B,) real tokens per text.
        start_block: First block to run.
    """

    input_ids: torch.Tensor | None
    hidden: torch.Tensor | None
    lengths: torch.Tensor
    start_block: int

    def logits(self, model: Classifier) -> torch.Tensor:
        """Run the model on this batch: (B, K) logits (see :func:`pooled_logits`)."""
        return pooled_logits(model, self.input_ids, self.lengths, self.hidden, self.start_block)


def pooled_logits(
    model: Classifier,
    input_ids: torch.Tensor | None,
    lengths: torch.Tensor,
    hidden: torch.Tensor | None = None,
    start_block: int = 0,
) -> torch.Tensor:
    """What ``model(input_ids, lengths, hidden, start_block)`` computes, with less work for
    ``last-token`` pooling: (B, K) logits.

    Only one position of the final block's output is read, the last real token's. So the final
    block computes keys and values at every position (its attention needs them) but its query,
    attention output, MLP, the final norm and the head at that one position: about a sixth of the
    block's work, in training the largest part of each step.
    """
    gpt = model.gpt
    n_layer = gpt.n_layer
    if model.pooling != "last-token" or start_block >= n_layer:
        return model(input_ids, lengths, hidden=hidden, start_block=start_block)
    if hidden is None:
        assert input_ids is not None and start_block == 0
        hidden = gpt.embed(input_ids)
    x = gpt.run_blocks(hidden, start_block, n_layer - 1)  # (B, T, C)
    last = _final_block_at(gpt.transformer.h[-1], x, (lengths - 1).clamp(min=0).to(x.device))  # (B, C)
    return gpt.lm_head(gpt.transformer.ln_f(last))  # (B, K)


def _final_block_at(block: Block, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``block(x)[b, pos[b]]`` for each row b: (B, T, C) -> (B, C), without the other positions."""
    b, t, c = x.shape
    rows = torch.arange(b, device=x.device)
    attn = block.attn
    heads = attn.n_head
    h = block.ln_1(x)  # (B, T, C)
    proj = attn.c_attn
    if isinstance(proj, nn.Linear):  # keys and values at every position, the query at pos only
        kv = F.linear(h, proj.weight[c:], proj.bias[c:])  # (B, T, 2C); GPT-2's c_attn has a bias
        q = F.linear(h[rows, pos], proj.weight[:c], proj.bias[:c])  # (B, C)
    else:  # a LoRA adapter: through the module, which adds the adapter's update
        qkv = proj(h)
        q, kv = qkv[rows, pos, :c], qkv[..., c:]
    q = q.view(b, heads, 1, c // heads)  # (B, H, 1, D): the one query
    k = kv[..., :c].view(b, t, heads, c // heads).transpose(1, 2)  # (B, H, T, D)
    v = kv[..., c:].view(b, t, heads, c // heads).transpose(1, 2)
    # Causal attention for the query at pos: keys 0..pos, never the pads after the text.
    visible = (torch.arange(t, device=x.device)[None, :] <= pos[:, None]).view(b, 1, 1, t)
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=visible, dropout_p=attn.dropout if block.training else 0.0
    )  # (B, H, 1, D)
    y = attn.resid_dropout(attn.c_proj(y.reshape(b, c)))  # (B, C)
    out = x[rows, pos] + y
    return out + block.mlp(block.ln_2(out))


class BatchLogits(nn.Module):
    """The training forward (:func:`pooled_logits`) as a module of its own.

    DDP must see every training forward to sync the gradients of the backward that follows, and
    training does not go through the classifier's ``forward``; this module does, for DDP to wrap.
    """

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor | None, lengths: torch.Tensor, hidden: torch.Tensor | None, start: int
    ) -> torch.Tensor:
        return pooled_logits(self.model, input_ids, lengths, hidden, start)


class Source(Protocol):
    """Anything that turns a list of example indices into a :class:`Batch` on a device."""

    lengths: list[int]
    start_block: int

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch: ...

    def close(self) -> None: ...


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device``; through pinned memory without blocking on CUDA."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class TokenSource:
    """Token-id batches, right-padded to the batch's longest text (or to ``pad_to``)."""

    start_block = 0

    def __init__(self, ids: Sequence[Sequence[int]], pad_to: int | None = None) -> None:
        self.ids = ids
        self.lengths = [len(x) for x in ids]
        self.pad_to = pad_to

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        input_ids, lengths = collate([self.ids[i] for i in indices], EOT_ID, self.pad_to)
        return Batch(to_device(input_ids, device), None, to_device(lengths, device), 0)

    def close(self) -> None:
        """Nothing to release."""


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


def check_spill_space(nbytes: int, spill_dir: Path | None = None) -> None:
    """Refuse a cache that cannot fit on the disk it spills to, before any of it is computed.

    A memory-mapped file on a full disk does not fail politely: the write that finds no space
    kills the process with SIGBUS. So the room is checked up front.

    Raises:
        BadInputError: Less free space in the spill folder than the caches placed on disk need.
    """
    if nbytes <= 0:
        return
    folder = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise BadInputError(
            f"the frozen-trunk cache needs {nbytes / 2**20:,.0f} MiB on disk in {folder} beyond "
            f"--cache-memory, and {free / 2**20:,.0f} MiB are free: raise --cache-memory, free some "
            "space, point TMPDIR at a larger disk, or pass --no-cache"
        )


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
    root = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    try:
        entries = sorted(root.iterdir())
    except OSError:  # absent or unreadable: nothing of ours to clean
        return []
    removed = []
    for path in entries:
        match = _CACHE_DIR.fullmatch(path.name)
        if match is None or match.group(2) != _host() or not _removable(path, int(match.group(1))):
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


def _host() -> str:
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


def cache_blocks(model: Classifier, scope_prefix: int, pad_to: int | None = None) -> int:
    """How many leading blocks a cache can replace for ``model`` (0: no cache).

    Args:
        model: The classifier (its pooling matters).
        scope_prefix: :func:`gptclf.classifier.frozen_prefix` of its GPT and scope.
        pad_to: The fixed padding width, if any.
    """
    # Position -1 of a padded batch is a pad whose state depends on the batch's width: a per-text
    # cache reproduces it only when every batch has the same width and the pads are cached too.
    return 0 if model.pooling == "last-position" and pad_to is None else scope_prefix


class FeatureCache:
    """Hidden states after the first ``start_block`` blocks, one unpadded slice per text.

    Build with :meth:`build`; release with :meth:`close` (removes a memory-mapped file).

    Attributes:
        lengths: Tokens per text.
        start_block: The block training starts at (= blocks cached).
        location: ``gpu``, ``memory`` or ``disk``.
        nbytes: Size of the stored states.
    """

    def __init__(
        self,
        flat: torch.Tensor,
        offsets: torch.Tensor,
        lengths: list[int],
        start_block: int,
        location: str,
        tmpdir: Path | None,
        pad_to: int | None,
    ) -> None:
        self.flat = flat  # (sum of lengths, C)
        self.offsets = offsets  # (N,) start row of each text in ``flat``, on flat's device
        self.lengths = lengths
        self.start_block = start_block
        self.location = location
        self.nbytes = flat.numel() * flat.element_size()
        self.pad_to = pad_to
        self._tmpdir = tmpdir
        self._staging = PinnedStaging()

    @classmethod
    def build(
        cls,
        model: Classifier,
        ids: Sequence[Sequence[int]],
        start_block: int,
        *,
        device: torch.device,
        precision: Precision,
        location: str = "memory",
        batch_size: int = 32,
        pad_to: int | None = None,
        spill_dir: Path | None = None,
        shard: Shard = Shard(),  # frozen, so one shared default is safe
    ) -> FeatureCache:
        """Run the first ``start_block`` blocks over every text once and keep their output.

        Args:
            model: The classifier, already on ``device``.
            ids: Token ids of each text (already truncated).
            start_block: Number of leading blocks to cache (>= 1).
            device: Where the model runs.
            precision: Autocast type of the forward passes (states are stored in fp32).
            location: ``gpu`` (on ``device``, CUDA only), ``memory`` (RAM, pinned on CUDA) or
                ``disk`` (a memory-mapped file); :func:`place_caches` decides.
            batch_size: Texts per forward pass.
            pad_to: Pad batches of this cache to at least this length (``--pad-to longest-train``).
            spill_dir: Folder for the memory-mapped file (default: the system's temporary folder).
            shard: This process's place in a data-parallel job: it computes its share of the
                batches and receives the rest from the other ranks.
        """
        assert start_block >= 1 and (location != "gpu" or device.type == "cuda"), (start_block, location)
        lengths = [len(x) for x in ids]
        # Under DDP the rows of the other ranks' texts must be zeros for the sum (a new memmap is).
        flat, tmpdir = _allocate(
            sum(lengths), model.gpt.config.n_embd, location, device, spill_dir, zeroed=shard.distributed
        )
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0)
        try:
            _fill(flat, model, ids, starts, start_block, device, precision, batch_size, shard)
            shard.all_sum_rows(flat)
        except BaseException:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        offsets = torch.as_tensor(starts, dtype=torch.long, device=flat.device)
        return cls(flat, offsets, lengths, start_block, location, tmpdir, pad_to)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        """Re-pad the cached states of ``indices`` into (B, T, C), zeros after each text's end.

        The pad positions' values never reach a real token (causal attention), and pooling reads
        real tokens only, so zeros are as good as the states real pad tokens would have had.
        Only the rows needed are read: gathered on the GPU for a GPU cache, else gathered into a
        pinned buffer that goes to the GPU without another copy.
        """
        lengths = torch.as_tensor([self.lengths[i] for i in indices], dtype=torch.long)
        width = int(lengths.max())
        if self.pad_to is not None:
            width = max(width, self.pad_to)
        home = self.offsets.device
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=home)
        steps = torch.arange(width, device=home)
        rows = (self.offsets[idx][:, None] + steps[None, :]).clamp(max=max(self.flat.shape[0] - 1, 0))
        if home.type == "cpu" and device.type == "cuda":
            hidden = self._staging.to_gpu(self.flat, rows.view(-1), device)
        else:
            hidden = self.flat.index_select(0, rows.view(-1)).to(device)
        hidden = hidden.view(len(indices), width, self.flat.shape[1])  # a fresh tensor: edited in place
        lengths_dev = to_device(lengths, device)
        pads = torch.arange(width, device=device)[None, :] >= lengths_dev[:, None]  # (B, T)
        hidden.masked_fill_(pads.unsqueeze(-1), 0.0)
        return Batch(None, hidden, lengths_dev, self.start_block)

    def close(self) -> None:
        """Drop the states and remove the memory-mapped file, if any."""
        self.flat = torch.empty(0, 0)
        self._staging = PinnedStaging()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


class PinnedStaging:
    """A pinned host buffer, reused from batch to batch, for cache rows on their way to a GPU.

    Advanced indexing of a RAM cache (``flat[rows]``) returns pageable memory, which would have to
    be pinned again (a second copy) before an asynchronous transfer; gathering the rows straight
    into pinned memory with ``index_select(out=)`` saves that copy and the allocation. The buffer
    is rewritten only once the previous transfer out of it has finished (a CUDA event).
    """

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def to_gpu(self, flat: torch.Tensor, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``flat[rows]`` on ``device``: (len(rows), C), copied without blocking the host."""
        shape = (rows.numel(), flat.shape[1])
        need = shape[0] * shape[1]
        if self._copied is not None:
            self._copied.synchronize()  # the last transfer has read the buffer
        if self.buffer is None or self.buffer.numel() < need:
            grown = 0 if self.buffer is None else self.buffer.numel() * 3 // 2  # few regrowths
            self.buffer = torch.empty(max(need, grown), dtype=flat.dtype, pin_memory=True)
        staged = self.buffer[:need].view(shape)
        torch.index_select(flat, 0, rows, out=staged)
        out = staged.to(device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(device))
        return out


def _allocate(
    total: int, width: int, location: str, device: torch.device, spill_dir: Path | None, zeroed: bool
) -> tuple[torch.Tensor, Path | None]:
    """A (total, width) fp32 tensor at ``location``, and the folder of its file for ``disk``."""
    empty = torch.zeros if zeroed else torch.empty
    if location == "gpu":
        return empty(total, width, device=device), None
    if location == "memory":
        return empty(total, width, pin_memory=device.type == "cuda"), None
    # The pid and host in the name let a later build remove the folder if this process is killed.
    tmpdir = Path(tempfile.mkdtemp(prefix=f"{CACHE_DIR_PREFIX}{os.getpid()}-{_host()}-", dir=spill_dir))
    try:
        mapped = np.memmap(tmpdir / "states.f32", dtype=np.float32, mode="w+", shape=(max(total, 1), width))
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return torch.from_numpy(mapped)[:total], tmpdir


def _fill(
    flat: torch.Tensor,
    model: Classifier,
    ids: Sequence[Sequence[int]],
    starts: np.ndarray,
    start_block: int,
    device: torch.device,
    precision: Precision,
    batch_size: int,
    shard: Shard,
) -> None:
    """Write the trunk's output for this rank's share of the length-sorted batches into ``flat``."""
    lengths = [len(x) for x in ids]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in shard.take(sorted_batches(lengths, batch_size)):
                input_ids, _ = collate([ids[i] for i in batch], EOT_ID)
                with precision.autocast(device):
                    hidden = model.trunk(to_device(input_ids, device), start_block)  # (B, T, C)
                hidden = hidden.float().to(flat.device)
                for row, i in enumerate(batch):
                    flat[starts[i] : starts[i] + lengths[i]] = hidden[row, : lengths[i]]
    finally:
        model.train(was_training)


def make_sources(
    model: Classifier,
    splits: dict[str, Sequence[Sequence[int]]],
    *,
    scope_prefix: int,
    use_cache: bool,
    device: torch.device,
    precision: Precision,
    cache_memory: int,
    batch_size: int = 32,
    pad_to: int | None = None,
    spill_dir: Path | None = None,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
    note: Callable[[str], None] | None = None,
) -> dict[str, Source]:
    """A :class:`Source` per split: cached states where exact and allowed, token batches otherwise.

    Args:
        model: The classifier, already on ``device`` with its scope applied.
        splits: Split name -> token ids of its texts.
        scope_prefix: :func:`gptclf.classifier.frozen_prefix` of the model and scope.
        use_cache: False for ``--no-cache``.
        device: Where the model runs.
        precision: Autocast type for building the cache.
        cache_memory: RAM in bytes the caches of this machine may take together (shared by its
            local ranks); the rest is memory-mapped.
        batch_size: Texts per forward pass while building.
        pad_to: Fixed padding length (``--pad-to longest-train``), or None.
        spill_dir: Folder for memory-mapped caches.
        shard: This process's place in a data-parallel job (see :meth:`FeatureCache.build`).
        note: Receives a line for each stale cache folder removed (:func:`remove_stale_caches`).
    """
    start = cache_blocks(model, scope_prefix, pad_to) if use_cache else 0
    if start == 0:
        return {name: TokenSource(ids, pad_to) for name, ids in splits.items()}
    if model.pooling == "last-position":
        assert pad_to is not None
        # The pad read at position -1 is part of what the cache must hold: cache padded texts.
        splits = {name: [[*x, *[EOT_ID] * (pad_to - len(x))] for x in ids] for name, ids in splits.items()}
    if shard.local_rank == 0:  # one cleaner per machine
        remove_stale_caches(spill_dir, note)
    row_bytes = model.gpt.config.n_embd * 4  # fp32 states
    sizes = {name: sum(len(x) for x in ids) * row_bytes for name, ids in splits.items()}
    # Free GPU memory once, before any cache: measured per split, each would see only what the
    # previous left and the shares would add up.
    gpu_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    placement = place_caches(sizes, gpu_free=gpu_free, ram=cache_memory, local_ranks=shard.local_world_size)
    check_spill_space(sum(n for name, n in sizes.items() if placement[name] == "disk"), spill_dir)
    sources: dict[str, Source] = {}
    try:
        for name, ids in splits.items():
            sources[name] = FeatureCache.build(
                model,
                ids,
                start,
                device=device,
                precision=precision,
                location=placement[name],
                batch_size=batch_size,
                pad_to=pad_to,
                spill_dir=spill_dir,
                shard=shard,
            )
    except BaseException:
        for source in sources.values():
            source.close()
        raise
    return sources
