from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptclf.batching import collate
from gptclf.classifier import frozen_prefix, parse_scope
from gptclf.device import resolve_precision
from gptclf.features import CacheBudget, FeatureCache, TokenSource, make_sources, pooled_logits
from tests.finetune_helpers import synthetic_ids, tiny_classifier

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


def build(
    ids: list[list[int]], budget: int = 1 << 30, spill: Path | None = None, **kw: object
) -> FeatureCache:
    model = tiny_classifier(["a", "b"], seed=4)
    return FeatureCache.build(
        model,
        ids,
        1,
        device=CPU,
        precision=FP32,
        budget=CacheBudget(budget),
        batch_size=5,
        spill_dir=spill,
        **kw,
    )


def test_cache_holds_each_text_unpadded_and_repads_exactly() -> None:
    """Right padding + causal attention: a text's states do not depend on its batch's padding."""
    ids, _ = synthetic_ids(23, 2, seed=1)
    model = tiny_classifier(["a", "b"], seed=4).eval()
    cache = FeatureCache.build(
        model, ids, 1, device=CPU, precision=FP32, budget=CacheBudget(1 << 30), batch_size=5
    )
    assert cache.flat.shape == (sum(len(x) for x in ids), 32) and cache.location == "memory"
    picked = [3, 0, 17, 9]
    batch = cache.batch(picked, CPU)
    with torch.no_grad():
        input_ids, lengths = collate([ids[i] for i in picked])
        direct = model.trunk(input_ids, 1)  # this batch's own padding, unlike the cache's batches
    assert torch.equal(batch.lengths, lengths) and batch.start_block == 1 and batch.input_ids is None
    for row, n in enumerate(lengths.tolist()):
        assert torch.allclose(batch.hidden[row, :n], direct[row, :n], atol=1e-5)
        assert not batch.hidden[row, n:].any()  # zeros after the text
    with torch.no_grad():
        cached_logits = batch.logits(model)
        plain_logits = TokenSource(ids).batch(picked, CPU).logits(model)
    assert torch.allclose(cached_logits, plain_logits, atol=1e-5)


def test_cache_beyond_the_budget_is_memory_mapped_and_removed(tmp_path: Path) -> None:
    ids, _ = synthetic_ids(15, 2, seed=2)
    in_memory = build(ids)
    on_disk = build(ids, budget=0, spill=tmp_path)
    assert on_disk.location == "disk"
    files = list(tmp_path.glob("gptclf-cache-*/states.f32"))
    assert len(files) == 1 and files[0].stat().st_size == on_disk.nbytes
    assert torch.equal(on_disk.batch([4, 2, 8], CPU).hidden, in_memory.batch([4, 2, 8], CPU).hidden)
    on_disk.close()
    assert not list(tmp_path.iterdir())


def test_budget_is_shared_between_splits(tmp_path: Path) -> None:
    ids, _ = synthetic_ids(10, 2, seed=3)
    one_split = sum(len(x) for x in ids) * 32 * 4
    model = tiny_classifier(["a", "b"], seed=4)
    sources = make_sources(
        model, {"train": ids, "validation": ids}, scope_prefix=1, use_cache=True, device=CPU, precision=FP32,
        cache_memory=one_split + 10, spill_dir=tmp_path,
    )  # fmt: skip
    assert [s.location for s in sources.values()] == ["memory", "disk"]  # type: ignore[attr-defined]
    for source in sources.values():
        source.close()
    assert not list(tmp_path.iterdir())


def test_pad_to_pads_cached_batches_too() -> None:
    ids, _ = synthetic_ids(6, 2, seed=4)
    cache = build(ids, pad_to=40)
    assert cache.batch([0, 1], CPU).hidden.shape == (2, 40, 32)
    assert TokenSource(ids, pad_to=40).batch([0, 1], CPU).input_ids.shape == (2, 40)


@pytest.mark.parametrize(
    ("scope", "pooling", "use_cache", "cached"),
    [
        ("last-block", "last-token", True, True),
        ("head", "mean", True, True),
        ("last-block", "last-token", False, False),  # --no-cache
        ("all", "last-token", True, False),  # every block trains
        ("lora", "last-token", True, False),  # adapters in every block
        ("last-block", "last-position", True, False),  # reads a pad, whose state depends on the batch
    ],
)
def test_cache_is_used_only_where_exact(scope: str, pooling: str, use_cache: bool, cached: bool) -> None:
    ids, _ = synthetic_ids(4, 2, seed=5)
    model = tiny_classifier(["a", "b"], scope=scope, pooling=pooling)
    prefix = frozen_prefix(model.gpt, parse_scope(scope))
    sources = make_sources(
        model, {"train": ids}, scope_prefix=prefix, use_cache=use_cache, device=CPU, precision=FP32,
        cache_memory=1 << 20,
    )  # fmt: skip
    assert isinstance(sources["train"], FeatureCache) is cached
    if cached:
        assert sources["train"].start_block == prefix


def test_cpu_bf16_autocast_builds_a_close_cache() -> None:
    ids, _ = synthetic_ids(8, 2, seed=6)
    model = tiny_classifier(["a", "b"], seed=4)
    bf16 = FeatureCache.build(
        model, ids, 1, device=CPU, precision=resolve_precision("bf16", CPU), budget=CacheBudget(1 << 30)
    )
    fp32 = build(ids)
    assert bf16.flat.dtype == torch.float32
    diff = (bf16.flat - fp32.flat).abs().max()
    assert 0 < diff < 0.1  # bf16 matmuls ran (not bit-identical), and stayed close


@pytest.mark.parametrize("scope", ["last-block", "last-blocks 2", "lora", "head"])
def test_last_token_shortcut_equals_the_full_forward(scope: str) -> None:
    """The final block run at the pooled position only: same logits and same gradients."""
    ids, _ = synthetic_ids(7, 3, seed=7)
    model = tiny_classifier(["a", "b", "c"], scope=scope, seed=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    input_ids, lengths = collate(ids)
    grads = []
    for forward in (lambda: pooled_logits(model, input_ids, lengths), lambda: model(input_ids, lengths)):
        model.zero_grad()
        logits = forward()
        (logits * torch.arange(1.0, 4.0)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["logits"] = logits.detach()
    assert float((grads[0].pop("logits") - grads[1]["logits"]).abs().max()) < 1e-5
    for name, grad in grads[0].items():  # gradients reach ~10 here: compare relative to their size
        assert torch.allclose(grad, grads[1][name], rtol=1e-4, atol=1e-5), name
    with torch.no_grad():
        hidden = model.trunk(input_ids, 1)
        assert torch.allclose(pooled_logits(model, None, lengths, hidden, 1), grads[1]["logits"], atol=1e-5)


def test_last_position_with_fixed_padding_is_cached_exactly() -> None:
    """The book's pooling (position -1) with the book's padding: cached pads give the same logits."""
    ids, _ = synthetic_ids(9, 2, seed=6)
    pad_to = max(len(x) for x in ids) + 3
    model = tiny_classifier(["a", "b"], pooling="last-position", seed=4).eval()
    kwargs = {"device": CPU, "precision": FP32, "cache_memory": 1 << 20, "pad_to": pad_to}
    cached = make_sources(model, {"train": ids}, scope_prefix=1, use_cache=True, **kwargs)["train"]
    plain = make_sources(model, {"train": ids}, scope_prefix=1, use_cache=False, **kwargs)["train"]
    assert isinstance(cached, FeatureCache) and isinstance(plain, TokenSource)
    picked = [4, 0, 7]
    with torch.no_grad():
        torch.testing.assert_close(
            cached.batch(picked, CPU).logits(model), plain.batch(picked, CPU).logits(model), atol=1e-5, rtol=0
        )
