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

The cache lives on the GPU when the device is CUDA and it fits, else in (pinned) RAM up to a
budget (``--cache-memory``), else in a memory-mapped file in a temporary folder that is removed
when the cache is closed.

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

import shutil
import tempfile
from collections.abc import Sequence
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
from gptclf.model import Block
from gptclf.tokenizer import EOT_ID

#: Share of the GPU's free memory a cache may take (the rest is for training).
GPU_CACHE_SHARE = 0.5


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


class CacheBudget:
    """RAM that caches may still take, shared by the splits of one run."""

    def __init__(self, nbytes: int) -> None:
        self.remaining = max(0, nbytes)

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if they fit; return whether they did."""
        if nbytes > self.remaining:
            return False
        self.remaining -= nbytes
        return True


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

    @classmethod
    def build(
        cls,
        model: Classifier,
        ids: Sequence[Sequence[int]],
        start_block: int,
        *,
        device: torch.device,
        precision: Precision,
        budget: CacheBudget,
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
            budget: RAM still available to caches; a cache that does not fit goes to disk.
            batch_size: Texts per forward pass.
            pad_to: Pad batches of this cache to at least this length (``--pad-to longest-train``).
            spill_dir: Folder for the memory-mapped file (default: the system's temporary folder).
            shard: This process's place in a data-parallel job: it computes its share of the
                batches and receives the rest from the other ranks.
        """
        assert start_block >= 1
        lengths = [len(x) for x in ids]
        n_embd = model.gpt.config.n_embd
        total = sum(lengths)
        nbytes = total * n_embd * 4
        tmpdir = None
        # Under DDP the rows of the other ranks' texts must be zeros for the sum (a new memmap is).
        empty = torch.zeros if shard.distributed else torch.empty
        if device.type == "cuda" and nbytes <= GPU_CACHE_SHARE * torch.cuda.mem_get_info(device)[0]:
            flat, location = empty(total, n_embd, device=device), "gpu"
        elif budget.take(nbytes):
            flat, location = empty(total, n_embd, pin_memory=device.type == "cuda"), "memory"
        else:
            tmpdir = Path(tempfile.mkdtemp(prefix="gptclf-cache-", dir=spill_dir))
            mapped = np.memmap(
                tmpdir / "states.f32", dtype=np.float32, mode="w+", shape=(max(total, 1), n_embd)
            )
            flat, location = torch.from_numpy(mapped)[:total], "disk"
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0)
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
            shard.all_sum_rows(flat)
        except BaseException:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        finally:
            model.train(was_training)
        offsets = torch.as_tensor(starts, dtype=torch.long, device=flat.device)
        return cls(flat, offsets, lengths, start_block, location, tmpdir, pad_to)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        """Re-pad the cached states of ``indices`` into (B, T, C), zeros after each text's end.

        The pad positions' values never reach a real token (causal attention), and pooling reads
        real tokens only, so zeros are as good as the states real pad tokens would have had.
        """
        lengths = torch.as_tensor([self.lengths[i] for i in indices], dtype=torch.long)
        width = int(lengths.max())
        if self.pad_to is not None:
            width = max(width, self.pad_to)
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.offsets.device)
        steps = torch.arange(width, device=self.offsets.device)
        real = steps[None, :] < lengths.to(self.offsets.device)[:, None]  # (B, T)
        rows = (self.offsets[idx][:, None] + steps[None, :]).clamp(max=max(self.flat.shape[0] - 1, 0))
        hidden = self.flat[rows] * real.unsqueeze(-1)  # (B, T, C), read only the rows needed
        return Batch(None, to_device(hidden, device), to_device(lengths, device), self.start_block)

    def close(self) -> None:
        """Drop the states and remove the memory-mapped file, if any."""
        self.flat = torch.empty(0, 0)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


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
) -> dict[str, Source]:
    """A :class:`Source` per split: cached states where exact and allowed, token batches otherwise.

    Args:
        model: The classifier, already on ``device`` with its scope applied.
        splits: Split name -> token ids of its texts.
        scope_prefix: :func:`gptclf.classifier.frozen_prefix` of the model and scope.
        use_cache: False for ``--no-cache``.
        device: Where the model runs.
        precision: Autocast type for building the cache.
        cache_memory: RAM in bytes the caches may take together; the rest is memory-mapped.
        batch_size: Texts per forward pass while building.
        pad_to: Fixed padding length (``--pad-to longest-train``), or None.
        spill_dir: Folder for memory-mapped caches.
        shard: This process's place in a data-parallel job (see :meth:`FeatureCache.build`).
    """
    start = cache_blocks(model, scope_prefix, pad_to) if use_cache else 0
    if start == 0:
        return {name: TokenSource(ids, pad_to) for name, ids in splits.items()}
    if model.pooling == "last-position":
        assert pad_to is not None
        # The pad read at position -1 is part of what the cache must hold: cache padded texts.
        splits = {name: [[*x, *[EOT_ID] * (pad_to - len(x))] for x in ids] for name, ids in splits.items()}
    budget = CacheBudget(cache_memory)
    sources: dict[str, Source] = {}
    try:
        for name, ids in splits.items():
            sources[name] = FeatureCache.build(
                model,
                ids,
                start,
                device=device,
                precision=precision,
                budget=budget,
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
