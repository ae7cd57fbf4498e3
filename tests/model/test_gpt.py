from __future__ import annotations

import pytest
import torch

from gptclf.model.config import GPTConfig
from gptclf.model.gpt import build_model


def test_shapes_and_tied_head(tiny_config: GPTConfig) -> None:
    model = build_model(tiny_config, seed=1)
    ids = torch.randint(0, tiny_config.vocab_size, (3, 7))
    assert model(ids).shape == (3, 7, tiny_config.vocab_size)
    assert model.hidden_states(ids).shape == (3, 7, tiny_config.n_embd)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_seeded_init_is_reproducible(tiny_config: GPTConfig) -> None:
    a = build_model(tiny_config, seed=5).state_dict()
    b = build_model(tiny_config, seed=5).state_dict()
    c = build_model(tiny_config, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"])


def test_block_slices_compose(tiny_config: GPTConfig) -> None:
    model = build_model(tiny_config, seed=2).eval()
    ids = torch.randint(0, tiny_config.vocab_size, (2, 9))
    x = model.embed(ids)
    split = model.transformer.ln_f(model.run_blocks(model.run_blocks(x, 0, 1), 1))
    torch.testing.assert_close(split, model.hidden_states(ids), rtol=0, atol=0)


def test_causal_so_padding_never_changes_real_tokens(tiny_config: GPTConfig) -> None:
    model = build_model(tiny_config, seed=3).eval()
    ids = torch.randint(0, 50000, (1, 6))
    padded = torch.cat([ids, torch.full((1, 10), 50256)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded)[:, :6], model(ids), atol=1e-5, rtol=0)


def test_too_long_input_is_an_error(tiny_config: GPTConfig) -> None:
    model = build_model(tiny_config, seed=0)
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, tiny_config.n_positions + 1, dtype=torch.long))
