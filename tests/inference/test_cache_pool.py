"""One frozen-trunk cache per cut, shared by every model that trains above it (gptclf tune's trials)."""

from __future__ import annotations

import pytest
import torch

from gptclf.device import resolve_precision
from gptclf.inference.cache import FeatureCache
from gptclf.inference.cache_pool import CachePool
from gptclf.model.classifier import parse_scope
from gptclf.model.config import GPTConfig
from tests.finetune_helpers import synthetic_ids, tiny_classifier

CPU = torch.device("cpu")


def _sources(pool: CachePool, scope: str, pooling: str = "last-token", inputs: tuple = ()) -> dict:
    ids, _ = synthetic_ids(20, 2, seed=0)
    model = tiny_classifier(["a", "b"], scope=scope, pooling=pooling, seed=0)  # the same frozen weights
    return pool.sources(
        model, {"train": ids[:14], "validation": ids[14:]}, scope=parse_scope(scope), use_cache=True,
        device=CPU, precision=resolve_precision("fp32", CPU), batch_size=8, pad_to=None, inputs=inputs,
    )  # fmt: skip


def test_models_of_one_cut_share_its_cache_and_other_cuts_get_their_own() -> None:
    pool = CachePool(cache_memory=1 << 30)
    first = _sources(pool, "last-block")
    again = _sources(pool, "last-block", pooling="mean")  # the token states do not depend on pooling
    assert all(first[n] is again[n] for n in first) and isinstance(first["train"], FeatureCache)
    head = _sources(pool, "head")
    assert head["train"] is not first["train"] and head["train"].start_block == 2 and head["train"].pooled
    mean = _sources(pool, "head", pooling="mean")  # reads every token: not the pooled cache
    assert mean["train"] is not head["train"] and not mean["train"].pooled
    assert [(b.blocks, b.splits) for b in pool.builds] == [(c, ("train", "validation")) for c in (1, 2, 2)]
    assert pool.held() == sum(b.nbytes for b in pool.builds)
    _sources(pool, "last-block", inputs=(32,))  # texts cut another way: another cache
    assert len(pool.builds) == 4
    summary = pool.summary()
    assert summary[0]["blocks"] == 1 and summary[0]["location"] == "memory" and summary[0]["seconds"] >= 0
    pool.close()
    assert pool.held() == 0


def test_a_model_without_a_cache_gets_token_batches_and_no_build() -> None:
    pool = CachePool(cache_memory=1 << 30)
    sources = _sources(pool, "lora")
    assert not isinstance(sources["train"], FeatureCache) and pool.builds == []
    assert _sources(pool, "lora")["train"] is sources["train"]
    pool.close()


def test_the_shared_cache_gives_the_states_a_fresh_build_gives() -> None:
    pool = CachePool(cache_memory=1 << 30)
    shared = _sources(pool, "last-block")["validation"]
    fresh = _sources(CachePool(cache_memory=1 << 30), "last-block")["validation"]
    a, b = shared.batch(range(len(shared)), CPU), fresh.batch(range(len(fresh)), CPU)
    assert torch.equal(a.hidden, b.hidden)


FOUR = GPTConfig(n_layer=4, n_head=4, n_embd=64, n_positions=64)


@pytest.mark.parametrize(
    ("pooling", "pad_to", "precision", "pooled"),
    [("last-token", None, "fp32", False), ("last-token", None, "fp32", True), ("mean", None, "bf16", False),
     ("last-position", 40, "fp32", False)],
)  # fmt: skip
def test_a_cache_built_on_a_lower_cut_is_the_one_built_from_the_ids_bit_for_bit(
    pooling: str, pad_to: int | None, precision: str, pooled: bool
) -> None:
    """Blocks 1..3 run over the cut-1 states give the states blocks 0..3 give from the token ids:
    batches of several widths (40 texts of 3 to 38 tokens, 8 a batch), zeros as pads."""
    ids, _ = synthetic_ids(40, 2, seed=3, max_len=38)
    if pad_to is not None:  # the pads read at position -1 are cached with the texts
        ids = [[*x, *[50256] * (pad_to - len(x))] for x in ids]
    model = tiny_classifier(["a", "b"], scope="head", pooling=pooling, seed=1, cfg=FOUR)
    prec = resolve_precision(precision, CPU)
    common = {"device": CPU, "precision": prec, "batch_size": 8, "pad_to": pad_to}
    top = 4 if pooled else 3
    direct = FeatureCache.build(model, ids, top, pooled=pooled, **common)
    base = FeatureCache.build(model, ids, 1, **common)
    derived = FeatureCache.build(model, ids, top, pooled=pooled, base=base, **common)
    assert (derived.start_block, derived.pooled, derived.lengths) == (top, pooled, direct.lengths)
    assert torch.equal(derived.flat, direct.flat)
    for cache in (direct, base, derived):
        cache.close()


def test_higher_cuts_are_built_on_the_base_cut_and_give_the_same_training_inputs() -> None:
    """With base_cut 1, the first cut asked for (the head's, 2) builds cut 1 first and runs block 1
    on it; a later last-block model (cut 1) gets that cache without a build."""
    pool = CachePool(cache_memory=1 << 30, base_cut=1)
    head = _sources(pool, "head")
    assert [(b.blocks, b.built_on) for b in pool.builds] == [(1, 0), (2, 1)]
    last = _sources(pool, "last-block")
    assert len(pool.builds) == 2 and isinstance(last["train"], FeatureCache)
    assert last["train"].start_block == 1
    fresh = _sources(CachePool(cache_memory=1 << 30), "head")
    for name in ("train", "validation"):
        assert torch.equal(head[name].flat, fresh[name].flat)
    mean = _sources(pool, "head", pooling="mean")  # cut 2 per token: built on cut 1, no new base
    assert [(b.blocks, b.built_on) for b in pool.builds][2:] == [(2, 1)] and not mean["train"].pooled
    assert pool.summary()[1]["built_on"] == 1
    pool.close()


def test_without_a_base_cut_a_lower_cut_built_earlier_is_still_built_on() -> None:
    pool = CachePool(cache_memory=1 << 30)
    _sources(pool, "head")  # cut 2 first: nothing below it yet
    _sources(pool, "last-block")  # cut 1: from the ids
    _sources(pool, "head", pooling="mean")  # cut 2 per token: on cut 1
    assert [(b.blocks, b.built_on) for b in pool.builds] == [(2, 0), (1, 0), (2, 1)]
    pool.close()


def test_pools_of_several_local_ranks_each_take_their_share_of_the_machines_budget() -> None:
    """tune under torchrun: every rank holds a pool of its own, so a budget one pool fits in goes to
    disk when two ranks of the machine share it."""
    alone = CachePool(cache_memory=1 << 30)
    built = _sources(alone, "last-block")
    size, train = sum(s.nbytes for s in built.values()), built["train"].nbytes
    assert size < 2 * train  # so that half the budget cannot hold the train split
    alone.close()
    for ranks, where in ((1, "memory"), (2, "disk")):
        pool = CachePool(cache_memory=size, local_ranks=ranks)
        sources = _sources(pool, "last-block")
        assert sources["train"].location == where  # type: ignore[attr-defined]  (the larger split)
        pool.close()
