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
which makes ``last-position`` exact too. With every block frozen (``--trainable head``) and
``last-token`` pooling, only the last real token's state is ever read: the cache then keeps that one
state per text (``pooled``), a text's tokens times smaller. :func:`plan_cache` is the one decision:
whether a cache is exact (:func:`cacheable_blocks`), whether it is pooled, and where each split's goes.

Where each split's cache lives is decided for all splits at once (:func:`place_caches`): on the
GPU (CUDA only) while the caches read during training (train, then validation) fit together in a
share of the GPU memory free before the first is built; else in RAM (pinned on CUDA) while they
fit in this process's part of ``--cache-memory`` (the budget of the whole machine, divided among
the local ranks, each of which holds whole caches); else in a file in a temporary folder
(:class:`~gptclf.inference.cache_file.StateFile`: read a batch at a time, not mapped, so it does not
grow the process) that is removed when the cache is closed. The test split, read once at the end, is not
cached: its frozen blocks run once either way (in the same batches, so with the same numbers), and
its states would stay in memory all run. A folder left by a process that died (kill -9) is
removed by the next build.

Under DDP every rank needs the states of every training text (the shards are redrawn each epoch),
so each rank holds a whole cache, but the ranks compute disjoint parts of it: rank r runs every
``world_size``-th of the length-sorted batches a single process would run, writes those rows into
a zeroed cache, and the caches are summed over the ranks in chunks. Building takes 1/world_size
of the time, and each text's states come from the same batch as in a single process, so the cache
equals the single-process one exactly.

The build runs the classifier's own forward, cut after the cached blocks, through the one
inference loop (:func:`gptclf.inference.loop.run_batches`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptclf.device import Precision
from gptclf.distributed import Shard
from gptclf.errors import CacheSpaceError
from gptclf.inference.batching import Batch, Rows, Source, TokenSource, to_device
from gptclf.inference.cache_file import StateFile
from gptclf.inference.cache_plan import (
    CACHE_DIR_PREFIX,
    CachePlan,
    host_name,
    plan_cache,
    remove_stale_caches,
    spill_folder,
)
from gptclf.inference.longtexts import WindowedSource, WindowMap
from gptclf.inference.loop import run_batches
from gptclf.inference.token_ids import TokenIds
from gptclf.model.classifier import Classifier, TrainableScope, reads_a_pad
from gptclf.model.tokenizer import EOT_ID
from gptclf.progress import Progress


class FeatureCache:
    """Hidden states after the first ``start_block`` blocks, one unpadded slice per text (or, with
    ``pooled``, the state of its last real token only).

    Build with :meth:`build`; release with :meth:`close` (removes the file of a cache on disk).

    Attributes:
        lengths: Tokens per text (per row: a text's windows are rows of their own, see
            :class:`gptclf.inference.longtexts.WindowedSource`).
        start_block: The block training starts at (= blocks cached).
        location: ``gpu``, ``memory`` or ``disk``.
        nbytes: Size of the stored states.
        pooled: One state per text (its last real token's): batches are (B, 1, C) with lengths 1.
    """

    def __init__(
        self,
        flat: torch.Tensor | StateFile,
        offsets: torch.Tensor,
        lengths: list[int],
        start_block: int,
        location: str,
        tmpdir: Path | None,
        pad_to: int | None,
        pooled: bool = False,
    ) -> None:
        self.flat = flat  # (sum of lengths, C); pooled: (N, C); a StateFile on disk
        self.offsets = offsets  # (N,) start row of each text in ``flat``, on flat's device
        self.lengths = lengths
        self.start_block = start_block
        self.location = location
        self.nbytes = flat.numel() * flat.element_size()
        self.pad_to = pad_to
        self.pooled = pooled
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
        progress: Progress | None = None,
        label: str = "caching the frozen blocks",
        windows: WindowMap | None = None,
        pooled: bool = False,
        base: FeatureCache | None = None,
    ) -> FeatureCache:
        """Run the first ``start_block`` blocks over every text once and keep their output.

        Args:
            model: The classifier, already on ``device``.
            ids: Token ids of each text (already truncated).
            start_block: Number of leading blocks to cache (>= 1).
            device: Where the model runs.
            precision: Autocast type of the forward passes (states are stored in fp32).
            location: ``gpu`` (on ``device``, CUDA only), ``memory`` (RAM, pinned on CUDA) or
                ``disk`` (a :class:`StateFile`); :func:`place_caches` decides.
            batch_size: Texts per forward pass.
            pad_to: Pad batches of this cache to at least this length (``--pad-to longest-train``).
            spill_dir: Folder for the file of a disk cache (default: the system's temporary folder).
            shard: This process's place in a data-parallel job: it computes its share of the
                batches and receives the rest from the other ranks.
            progress: Shows the build as ``label``.
            windows: Which texts the rows of ``ids`` are of, when they are the texts' windows
                (``--long-texts``): the cache holds a row per window; the progress counts texts.
            pooled: Keep only each text's last real token's state (see
                :func:`~gptclf.inference.cache_plan.pooled_cache`: every block cached, ``last-token``).
            base: A cache of the same texts at a lower cut (one state per token): only the blocks
                from its cut to ``start_block`` run, over its states, batched as a build from the
                token ids batches them. The states are those of a build from the ids, bit for bit:
                the batches have the same texts and widths, and the pads (zeros here, pad tokens'
                states there) come after every real token, so causal attention never reads them
                and every other operation works row by row.
        """
        assert base is None or (
            not base.pooled
            and base.start_block < start_block
            and base.pad_to == pad_to
            and len(base) == len(ids)
        ), "a base cache is a per-token cache of the same texts at a lower cut"
        assert start_block >= 1 and (location != "gpu" or device.type == "cuda"), (start_block, location)
        lengths = _lengths(ids)
        assert not pooled or (start_block == model.gpt.n_layer and model.pooling == "last-token")
        rows = len(lengths) if pooled else sum(lengths)
        # Under DDP the rows of the other ranks' texts must be zeros for the sum (a new file is).
        flat, tmpdir = _allocate(
            rows, model.gpt.config.n_embd, location, device, spill_dir, zeroed=shard.distributed
        )
        if pooled:
            starts = np.arange(len(lengths), dtype=np.int64)
        else:
            starts = (
                np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0)
            )
        try:
            _fill(
                flat, model, ids, starts, start_block, device, precision, batch_size, shard, progress, label,
                windows, pooled, base,
            )  # fmt: skip
            shard.all_sum_rows(flat)
        except BaseException:
            if isinstance(flat, StateFile):
                flat.close()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        offsets = torch.as_tensor(starts, dtype=torch.long, device=flat.device)
        return cls(flat, offsets, lengths, start_block, location, tmpdir, pad_to, pooled)

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self) -> Rows:
        """A row per text (a text's windows are a :class:`~gptclf.inference.longtexts.WindowedSource`
        over the cache)."""
        return Rows(self)

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        """Re-pad the cached states of ``indices`` into (B, T, C), zeros after each text's end.

        The pad positions' values never reach a real token (causal attention), and pooling reads
        real tokens only, so zeros are as good as the states real pad tokens would have had.
        Only the rows needed are read: gathered on the GPU for a GPU cache, else gathered into a
        pinned buffer that goes to the GPU without another copy.
        """
        if self.pooled:
            return self._pooled_batch(indices, device)
        lengths = torch.as_tensor([self.lengths[i] for i in indices], dtype=torch.long)
        width = int(lengths.max())
        if self.pad_to is not None:
            width = max(width, self.pad_to)
        if isinstance(self.flat, StateFile):  # each text's rows read into the batch, zeros after them
            starts = self.offsets[torch.as_tensor(list(indices), dtype=torch.long)].tolist()
            hidden = self.flat.read_runs(starts, lengths.tolist(), width).to(device)
            return Batch(None, hidden, to_device(lengths, device), self.start_block)
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

    def _pooled_batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        """The pooled states of ``indices`` as (B, 1, C) texts of one token each: the last-token
        pooling then reads each text's one state, which is its last real token's."""
        if isinstance(self.flat, StateFile):
            rows = self.offsets[torch.as_tensor(list(indices), dtype=torch.long)].tolist()
            hidden = self.flat.read_runs(rows, [1] * len(rows), 1).to(device)
            ones = to_device(torch.ones(len(rows), dtype=torch.long), device)
            return Batch(None, hidden, ones, self.start_block)
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.flat.device)
        if self.flat.device.type == "cpu" and device.type == "cuda":
            hidden = self._staging.to_gpu(self.flat, idx, device)
        else:
            hidden = self.flat.index_select(0, idx).to(device)
        ones = to_device(torch.ones(len(idx), dtype=torch.long), device)
        return Batch(None, hidden.view(len(idx), 1, self.flat.shape[1]), ones, self.start_block)

    def close(self) -> None:
        """Drop the states and remove the file of a cache on disk, if any."""
        if isinstance(self.flat, StateFile):
            self.flat.close()
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
) -> tuple[torch.Tensor | StateFile, Path | None]:
    """A (total, width) fp32 tensor at ``location`` (a :class:`StateFile` of zeros for ``disk``),
    and the folder of its file for ``disk``."""
    empty = torch.zeros if zeroed else torch.empty
    if location == "gpu":
        return empty(total, width, device=device), None
    if location == "memory":
        return empty(total, width, pin_memory=device.type == "cuda"), None
    # The pid and host in the name let a later build remove the folder if this process is killed.
    tmpdir = Path(tempfile.mkdtemp(prefix=f"{CACHE_DIR_PREFIX}{os.getpid()}-{host_name()}-", dir=spill_dir))
    try:
        return StateFile(tmpdir / "states.f32", total, width), tmpdir
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def _fill(
    flat: torch.Tensor | StateFile,
    model: Classifier,
    ids: Sequence[Sequence[int]],
    starts: np.ndarray,
    start_block: int,
    device: torch.device,
    precision: Precision,
    batch_size: int,
    shard: Shard,
    progress: Progress | None,
    label: str,
    windows: WindowMap | None = None,
    pooled: bool = False,
    base: FeatureCache | None = None,
) -> None:
    """Write the trunk's output for this rank's share of the length-sorted batches into ``flat``
    (``windows``: the texts of the rows, when they are windows: the progress counts texts;
    ``pooled``: each text's last real token's state only, at row ``starts[i]``; ``base``: a lower
    cut's cache of the same texts, run on from its cut instead of from the token ids)."""
    lengths = _lengths(ids)

    def store(indices: Sequence[int], hidden: torch.Tensor) -> None:
        hidden = hidden.float().to(flat.device)  # (B, T, C)
        for row, i in enumerate(indices):
            values = hidden[row, lengths[i] - 1 : lengths[i]] if pooled else hidden[row, : lengths[i]]
            if isinstance(flat, StateFile):
                flat.write(int(starts[i]), values)
            else:
                flat[starts[i] : starts[i] + len(values)] = values

    rows: Source = TokenSource(ids) if base is None else base
    run_batches(
        model,
        rows if windows is None else WindowedSource(rows, windows),  # batched as rows either way
        store,
        batch_size=batch_size,
        device=device,
        precision=precision,
        shard=shard,
        stop_block=start_block,
        progress=progress,
        label=label,
    )


def make_sources(
    model: Classifier,
    splits: dict[str, Sequence[Sequence[int]]],
    *,
    scope: TrainableScope,
    use_cache: bool,
    device: torch.device,
    precision: Precision,
    cache_memory: int,
    ram_fallback: int = 0,
    batch_size: int = 32,
    pad_to: int | None = None,
    spill_dir: Path | None = None,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
    note: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    windows: Mapping[str, WindowMap | None] | None = None,
    bases: Mapping[str, FeatureCache] | None = None,
) -> dict[str, Source]:
    """A :class:`Source` per split: cached states where exact and allowed, token batches otherwise.

    Args:
        model: The classifier, already on ``device`` with its scope applied.
        splits: Split name -> token ids of its texts.
        scope: The trainable scope (which blocks are frozen).
        use_cache: False for ``--no-cache``.
        device: Where the model runs.
        precision: Autocast type for building the cache.
        cache_memory: RAM in bytes the caches of this machine may take together (shared by its
            local ranks); the rest goes to a file on disk.
        ram_fallback: RAM the caches may take instead where the spill folder has no room for that
            file (the default ``--cache-memory``; 0: none, the plan is refused).
        batch_size: Texts per forward pass while building.
        pad_to: Fixed padding length (``--pad-to longest-train``), or None.
        spill_dir: Folder for the files of caches on disk.
        shard: This process's place in a data-parallel job (see :meth:`FeatureCache.build`).
        note: Receives a line for each stale cache folder removed (:func:`remove_stale_caches`).
        progress: Shows each split's cache build.
        windows: Split name -> which of its rows (windows, ``--long-texts``) belong to which text;
            a split without one has a row per text. The progress counts texts either way; the
            sources hold the rows (the caller reads a windowed split through a
            :class:`~gptclf.inference.longtexts.WindowedSource` over its source).
        bases: Split name -> a cache of its texts at a lower cut to build on (see
            :meth:`FeatureCache.build`'s ``base``; :class:`~gptclf.inference.cache_pool.CachePool`).

    Raises:
        BadInputError: The caches that go to disk cannot fit there (see :func:`plan_cache`).
    """
    plan = _agreed_plan(
        shard, model, scope, splits, use_cache=use_cache, device=device, cache_memory=cache_memory,
        ram_fallback=ram_fallback, pad_to=pad_to, local_ranks=shard.local_world_size, spill_dir=spill_dir,
    )  # fmt: skip
    if note is not None and shard.local_rank == 0:
        for line in filter(None, [plan.note, _tmpdir_note(spill_dir, plan)]):
            note(line)
    if plan.start_block == 0:
        return {name: TokenSource(ids, pad_to) for name, ids in splits.items()}
    if reads_a_pad(model.pooling):
        assert pad_to is not None
        # The pad read at position -1 is part of what the cache must hold: cache padded texts.
        splits = {name: _padded(ids, pad_to) for name, ids in splits.items()}
    if shard.local_rank == 0:  # one cleaner per machine
        remove_stale_caches(spill_dir, note)
    sources: dict[str, Source] = {}
    try:
        for name, ids in splits.items():
            if name not in plan.locations:  # read once, after training: from its token ids
                sources[name] = TokenSource(ids, pad_to)
                continue
            sources[name] = FeatureCache.build(
                model,
                ids,
                plan.start_block,
                device=device,
                precision=precision,
                location=plan.locations[name],
                batch_size=batch_size,
                pad_to=pad_to,
                spill_dir=spill_dir,
                shard=shard,
                progress=progress,
                label=f"caching the frozen blocks of the {name} split",
                windows=(windows or {}).get(name),
                pooled=plan.pooled,
                base=(bases or {}).get(name),
            )
    except BaseException:
        for source in sources.values():
            source.close()
        raise
    return sources


def _agreed_plan(shard: Shard, *args: Any, **kwargs: Any) -> CachePlan:
    """:func:`plan_cache` on every rank, then agreed on before any rank writes a file: each rank
    checks the disk while it is still empty of this build's files, and if one cannot place its
    caches, every rank stops with an error (none waits in a collective for a rank that left)."""
    failure: CacheSpaceError | None = None
    try:
        plan = plan_cache(*args, **kwargs)
    except CacheSpaceError as exc:
        failure = exc
    if shard.distributed:
        failed = shard.all_sum(torch.tensor([0.0 if failure is None else 1.0], dtype=torch.float64))
        if failure is None and failed.item() > 0:
            failure = CacheSpaceError(
                "another process of this job cannot place its frozen-trunk cache on disk (its message "
                "says why): raise --cache-memory, free some space, point TMPDIR at a larger disk, or "
                "pass --no-cache"
            )
    if failure is not None:
        raise failure
    return plan


def _tmpdir_note(spill_dir: Path | None, plan: CachePlan) -> str | None:
    """A line when caches go to disk and ``TMPDIR`` names a folder Python passed over (missing, not
    a folder, not writable): they go to the folder it chose instead, which the user did not."""
    asked = os.environ.get("TMPDIR")
    if spill_dir is not None or not asked or "disk" not in plan.locations.values():
        return None
    used = spill_folder()
    if os.path.realpath(asked) == os.path.realpath(used):
        return None
    return f"TMPDIR={asked} cannot be written (or is not a folder): the cache's file goes to {used}"


def _lengths(ids: Sequence[Sequence[int]]) -> list[int]:
    """Tokens of each text (read off the offsets of :class:`TokenIds`)."""
    return ids.lengths if isinstance(ids, TokenIds) else [len(x) for x in ids]


def _padded(ids: Sequence[Sequence[int]], pad_to: int) -> Sequence[Sequence[int]]:
    """Every text right-padded with ``<|endoftext|>`` to ``pad_to`` ids."""
    if isinstance(ids, TokenIds):
        return ids.padded(pad_to, EOT_ID)
    return [[*x, *[EOT_ID] * (pad_to - len(x))] for x in ids]
