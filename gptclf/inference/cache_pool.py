"""One frozen-trunk cache per cut, shared by every model that trains above that cut.

``gptclf tune`` trains many classifiers on the same texts with the same frozen weights: every trial
that trains the head, the last block or the last N blocks reads the same hidden states after the
frozen blocks. :class:`CachePool` builds each split's cache once per *cut* (the number of blocks a
cache replaces, :func:`~gptclf.inference.cache_plan.cacheable_blocks`) and hands the same
:class:`~gptclf.inference.batching.Source` to every later model with that cut. The sources are the
pool's: their users never close them; :meth:`CachePool.close` does, once.

Sharing is exact because the states before the cut depend only on the frozen weights, which every
model built from the same ``--weights`` and seed has bit for bit, and on the token ids, which are
tokenised once. Models that read a pad at position -1 (``last-position`` pooling) cache padded
texts, and a pooled cache (every block frozen, ``last-token`` pooling) keeps one state a text, so
each of those has a cache of its own at the same cut.

A cut above one already built is not run from the token ids: its cache is built on the lower cut's
states, running only the blocks between the two (the same numbers bit for bit, see
:meth:`~gptclf.inference.cache.FeatureCache.build`'s ``base``). With ``base_cut`` (tune passes the
lowest cut its search space can ask for), the first cut above it builds the base cut first: every
later cut then costs only its own blocks above it, and the base cut's build is what a trial at that
cut needs anyway. Building the base cut and then a higher one on it runs as many blocks as building
the higher one from the ids, so this never costs more time, only the memory of the base cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gptclf.device import Precision
from gptclf.distributed import Shard
from gptclf.inference.batching import Source
from gptclf.inference.cache import FeatureCache, make_sources
from gptclf.inference.cache_plan import cacheable_blocks, pooled_cache
from gptclf.inference.longtexts import WindowMap
from gptclf.model.classifier import Classifier, TrainableScope, reads_a_pad
from gptclf.progress import Progress


@dataclass
class CacheBuild:
    """One build of the pool: the cut, the splits, their bytes and where they went, the seconds."""

    blocks: int
    splits: tuple[str, ...]
    nbytes: int
    location: str
    seconds: float
    built_on: int = 0


@dataclass
class CachePool:
    """Sources by (cut, whether pads are cached, how the texts were tokenised, split), built on first use.

    Attributes:
        cache_memory: RAM in bytes the pool's caches may take together; each build is placed with
            what the earlier ones left (the rest goes to disk, as finetune places a cache).
        ram_fallback: RAM they may take instead where the spill folder lacks room (0: none).
        local_ranks: Processes of this machine that each hold a pool of their own (``tune`` under
            torchrun spreads trials over ranks, each with its own caches): the budgets above are the
            machine's, so each pool takes its share, and each counts its files against the disk
            as one of that many.
        base_cut: A cut to build first, for the cuts above it to be built on (0: none).
        builds: Every cache build, in order (a cut of 0, plain token batches, is no build), with
            the cut it was built on (0: from the token ids).
        note: Receives the builds' notes where :meth:`sources` is given none (a cache kept in RAM
            for want of disk room, a ``TMPDIR`` passed over, a dead process's cache removed),
            each line once however many builds say it.
    """

    cache_memory: int
    ram_fallback: int = 0
    base_cut: int = 0
    local_ranks: int = 1
    note: Callable[[str], None] | None = None
    builds: list[CacheBuild] = field(default_factory=list)
    _sources: dict[tuple[Any, ...], Source] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)

    def _note_once(self, line: str) -> None:
        if self.note is not None and line not in self._said:
            self._said.add(line)
            self.note(line)

    def sources(
        self,
        model: Classifier,
        splits: Mapping[str, Sequence[Sequence[int]]],
        *,
        scope: TrainableScope,
        use_cache: bool,
        device: torch.device,
        precision: Precision,
        batch_size: int,
        pad_to: int | None,
        windows: Mapping[str, WindowMap | None] | None = None,
        note: Callable[[str], None] | None = None,
        progress: Progress | None = None,
        inputs: Hashable = (),
    ) -> dict[str, Source]:
        """Each split's source for ``model`` (with ``scope`` applied): those of its cut already
        built, and the missing ones built now (arguments as :func:`make_sources`'s; ``inputs``
        names how the texts were tokenised, when models of one pool may read them differently:
        another ``--max-length`` is another cache)."""
        cut = cacheable_blocks(model.gpt, scope, model.pooling, pad_to) if use_cache else 0
        # A pooled cache (every block frozen, last-token pooling) holds one state a text: only
        # models that read that one state may share it.
        key = (
            cut,
            reads_a_pad(model.pooling) and cut > 0,
            cut > 0 and pooled_cache(model.gpt, cut, model.pooling),
            inputs,
        )
        missing = {name: ids for name, ids in splits.items() if (*key, name) not in self._sources}
        note = note or (self._note_once if self.note is not None else None)
        if missing:
            bases = self._bases(key, missing)
            if not bases and 0 < self.base_cut < cut:  # the base cut first (its cut: base_cut, as cut > 0)
                base_scope = TrainableScope("last-blocks", model.gpt.n_layer - self.base_cut)
                self.sources(
                    model, missing, scope=base_scope, use_cache=use_cache, device=device, precision=precision,
                    batch_size=batch_size, pad_to=pad_to, windows=windows, note=note, progress=progress,
                    inputs=inputs,
                )  # fmt: skip
                bases = self._bases(key, missing)
            t0 = time.monotonic()
            ranks = max(1, self.local_ranks)  # make_sources divides the machine's budget by them
            built = make_sources(
                model, dict(missing), scope=scope, use_cache=use_cache, device=device, precision=precision,
                cache_memory=max(self.cache_memory - self.held() * ranks, 0),
                ram_fallback=max(self.ram_fallback - self.held() * ranks, 0), batch_size=batch_size,
                pad_to=pad_to, shard=Shard(local_world_size=ranks),  # the budget's share; not a DDP build
                note=note, progress=progress, windows=windows, bases=bases,
            )  # fmt: skip
            for name, source in built.items():
                self._sources[(*key, name)] = source
            caches = [s for s in built.values() if isinstance(s, FeatureCache)]
            if caches:
                self.builds.append(
                    CacheBuild(
                        cut,
                        tuple(built),
                        sum(c.nbytes for c in caches),
                        "+".join(sorted({c.location for c in caches})),
                        time.monotonic() - t0,
                        max((b.start_block for b in bases.values()), default=0),
                    )
                )
        return {name: self._sources[(*key, name)] for name in splits}

    def _bases(self, key: tuple[Any, ...], splits: Mapping[str, Any]) -> dict[str, FeatureCache]:
        """For each of ``splits``, the per-token cache at the highest cut below ``key``'s with the
        same texts (pads cached alike, tokenised alike), if the pool has one."""
        cut, pads, _, inputs = key
        found: dict[str, FeatureCache] = {}
        for name in splits:
            lower = [
                source
                for (c, p, pooled, i, n), source in self._sources.items()
                if n == name and p == pads and i == inputs and not pooled and 0 < c < cut
                and isinstance(source, FeatureCache)
            ]  # fmt: skip
            if lower:
                found[name] = max(lower, key=lambda source: source.start_block)
        return found

    def held(self) -> int:
        """Bytes of the caches the pool holds in RAM."""
        return sum(
            s.nbytes for s in self._sources.values() if isinstance(s, FeatureCache) and s.location == "memory"
        )

    def summary(self) -> list[dict[str, Any]]:
        """JSON-ready: each build."""
        return [b.__dict__ | {"splits": list(b.splits)} for b in self.builds]

    def close(self) -> None:
        """Free every source (a cache on disk is removed)."""
        for source in self._sources.values():
            source.close()
        self._sources.clear()
