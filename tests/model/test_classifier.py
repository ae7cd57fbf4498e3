from __future__ import annotations

import pytest
import torch
from torch import nn

from gptclf.errors import BadInputError
from gptclf.inference.cache_plan import cacheable_blocks
from gptclf.model.classifier import (
    Classifier,
    LoRALinear,
    apply_scope,
    merge_lora,
    parse_scope,
    pool,
    replace_head,
)
from gptclf.model.config import GPTConfig
from gptclf.model.gpt import build_model
from gptclf.model.tokenizer import collate
from tests.finetune_helpers import TINY, full_logits, tiny_classifier

C = TINY.n_embd
BLOCK = 12 * C * C + 13 * C  # ln_1, c_attn, c_proj, ln_2, c_fc, c_proj (weights and biases)
LN_F = 2 * C


def test_head_replacement_keeps_the_embedding() -> None:
    gpt = build_model(TINY, seed=1)
    wte = gpt.transformer.wte.weight
    before = wte.detach().clone()
    head = replace_head(gpt, 3)
    assert gpt.lm_head is head and head.weight.shape == (3, C) and head.bias is not None
    assert gpt.transformer.wte.weight is wte  # the very same tensor, not a copy
    assert torch.equal(gpt.transformer.wte.weight, before)
    with torch.no_grad():
        head.weight.add_(1.0)  # untied: changing the head leaves the embedding alone
    assert torch.equal(gpt.transformer.wte.weight, before)
    assert gpt(torch.tensor([[1, 2, 3]])).shape == (1, 3, 3)


def test_head_needs_two_classes() -> None:
    with pytest.raises(BadInputError, match="at least 2 classes"):
        replace_head(build_model(TINY, seed=1), 1)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("head", 2 * C + 2),
        ("last-block", BLOCK + LN_F + 2 * C + 2),
        ("last-blocks 2", 2 * BLOCK + LN_F + 2 * C + 2),
        ("all", 50257 * C + 64 * C + 2 * BLOCK + LN_F + 2 * C + 2),
        ("lora", 2 * 16 * 4 * C + 2 * C + 2),  # rank 4: r * (in + out) on 4 projections per block
    ],
)
def test_scopes_count_trainable_parameters(scope: str, expected: int) -> None:
    gpt = build_model(TINY, seed=1)
    replace_head(gpt, 2)
    n = apply_scope(gpt, parse_scope(scope, lora_rank=4))
    assert n == expected == sum(p.numel() for p in gpt.parameters() if p.requires_grad)


def test_last_block_scope_trains_exactly_the_last_block_norm_and_head() -> None:
    gpt = build_model(TINY, seed=1)
    replace_head(gpt, 2)
    apply_scope(gpt, parse_scope("last-block"))
    trained = {
        n.split(".")[1] if n.startswith("transformer") else n
        for n, p in gpt.named_parameters()
        if p.requires_grad
    }
    assert trained == {"h", "ln_f", "lm_head.weight", "lm_head.bias"}
    assert all(not p.requires_grad for p in gpt.transformer.h[0].parameters())
    assert cacheable_blocks(gpt, parse_scope("last-block")) == 1
    assert cacheable_blocks(gpt, parse_scope("head")) == 2
    assert cacheable_blocks(gpt, parse_scope("all")) == 0
    assert cacheable_blocks(gpt, parse_scope("lora")) == 0


def test_dropout_makes_the_frozen_part_uncacheable() -> None:
    gpt = build_model(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, dropout=0.1), seed=1)
    assert cacheable_blocks(gpt, parse_scope("last-block")) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("everything", "unknown trainable scope"),
        ("last-blocks", "needs a number"),
        ("head 2", "takes no argument"),
    ],
)
def test_bad_scopes(text: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_scope(text)


def test_lora_starts_as_the_base_model_and_merges_exactly() -> None:
    plain = tiny_classifier(["a", "b"], scope="head", seed=3)
    lora = tiny_classifier(["a", "b"], scope="lora", seed=3)
    ids, lengths = collate([[5, 6, 7, 8], [9, 10]])
    with torch.no_grad():
        assert torch.allclose(plain(ids, lengths), lora(ids, lengths), atol=1e-6)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # as if trained
        before = lora(ids, lengths)
        merge_lora(lora.gpt)
        assert not any("lora_" in n for n, _ in lora.named_parameters())
        assert torch.allclose(lora(ids, lengths), before, atol=1e-5)


@pytest.mark.parametrize("pooling", ["last-token", "mean"])
def test_padding_never_changes_a_prediction(pooling: str) -> None:
    model = tiny_classifier(["a", "b", "c"], pooling=pooling, seed=5).eval()
    short = [11, 12, 13]
    longer = list(range(100, 160))  # 60 tokens: the short text gets 57 pads in the batch
    with torch.no_grad():
        alone = model(*collate([short]))
        ids, lengths = collate([short, longer])
        together = model(ids, lengths)
    assert torch.allclose(alone[0], together[0], atol=1e-5)


def test_last_position_reads_a_pad() -> None:
    """The book's pooling: a text's logits change with the batch it is in (why it loses accuracy)."""
    model = tiny_classifier(["a", "b"], pooling="last-position", seed=5).eval()
    with torch.no_grad():
        alone = model(*collate([[11, 12, 13]]))
        together = model(*collate([[11, 12, 13], list(range(100, 160))]))
    assert not torch.allclose(alone[0], together[0], atol=1e-3)


def test_pool_modes() -> None:
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # rows [0,1,2], [3,4,5]
    lengths = torch.tensor([2, 3])
    assert pool(hidden, lengths, "last-token").flatten().tolist() == [1.0, 5.0]
    assert pool(hidden, lengths, "last-position").flatten().tolist() == [2.0, 5.0]
    assert pool(hidden, lengths, "mean").flatten().tolist() == [0.5, 4.0]
    with pytest.raises(BadInputError, match="unknown pooling"):
        pool(hidden, lengths, "max")
    with pytest.raises(BadInputError, match="unknown pooling"):
        Classifier(build_model(TINY), ["a", "b"], "first")


def test_cached_start_equals_a_full_forward() -> None:
    model = tiny_classifier(["a", "b"], seed=2).eval()
    ids, lengths = collate([[1, 2, 3, 4], [5, 6]])
    with torch.no_grad():
        hidden = model(ids, lengths, stop_block=1)
        assert torch.allclose(
            model(None, lengths, hidden=hidden, start_block=1), model(ids, lengths), atol=1e-6
        )


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_lora_alpha_is_refused(alpha: float) -> None:
    for scope in ("lora", "last-block"):
        with pytest.raises(BadInputError, match="--lora-alpha must be a finite number"):
            parse_scope(scope, lora_alpha=alpha)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_lora_merge_follows_the_base_layer_and_leaves_the_rng_alone(dtype: torch.dtype) -> None:
    base = nn.Linear(8, 6, dtype=dtype)
    layer = LoRALinear(base, rank=2, alpha=4.0, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    merged = layer.merged()
    assert torch.equal(torch.get_rng_state(), rng)  # no default init drew from the global RNG
    assert merged.weight.dtype == merged.bias.dtype == dtype
    x = torch.randn(3, 8, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        tol = 1e-12 if dtype == torch.float64 else 5e-2
        torch.testing.assert_close(merged(x), layer(x), atol=tol, rtol=tol)
    on_meta = layer.to("meta").merged()  # built where the base lives, not on the CPU
    assert on_meta.weight.device.type == "meta" and on_meta.weight.dtype == dtype


@pytest.mark.parametrize("pooling", ["last-token", "last-position", "mean"])
@pytest.mark.parametrize("scope", ["head", "last-block", "all", "lora"])
@pytest.mark.parametrize("start_block", [0, 1])
def test_the_one_forward_equals_the_full_computation(pooling: str, scope: str, start_block: int) -> None:
    """Classifier.forward (with its last-token shortcut) equals every block at every position, the
    final norm, the pooling and the head, within 1e-5, from token ids and from cached states."""
    model = tiny_classifier(["a", "b", "c"], scope=scope, pooling=pooling, seed=3).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # adapters that change the output, so the LoRA path is exercised
        ids, lengths = collate([[5, 6, 7, 8, 9], [1, 2], [3, 4, 5]])
        hidden = model(ids, lengths, stop_block=start_block) if start_block else None
        got = model(None if start_block else ids, lengths, hidden=hidden, start_block=start_block)
        want = full_logits(model, None if start_block else ids, lengths, hidden, start_block)
    assert got.shape == (3, 3) and float((got - want).abs().max()) < 1e-5
