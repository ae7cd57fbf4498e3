"""One frozen-trunk cache per cut, shared by every model that trains above it (gptclf tune's trials)."""

from __future__ import annotations

import torch

from gptclf.device import resolve_precision
from gptclf.inference.cache import FeatureCache
from gptclf.inference.cache_pool import CachePool
from gptclf.model.classifier import parse_scope
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
