from __future__ import annotations

import pytest

from gptclf.errors import BadInputError
from gptclf.model.config import ALIASES, PRESETS, GPTConfig, resolve_model


@pytest.mark.parametrize(
    ("name", "width", "layers", "heads"),
    [
        ("gpt2-small", 768, 12, 12),
        ("gpt2-medium", 1024, 24, 16),
        ("gpt2-large", 1280, 36, 20),
        ("gpt2-xl", 1600, 48, 25),
    ],
)
def test_presets(name: str, width: int, layers: int, heads: int) -> None:
    cfg = PRESETS[name]
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head) == (width, layers, heads)
    assert (cfg.vocab_size, cfg.n_positions) == (50257, 1024)


def test_aliases_resolve_to_presets() -> None:
    for alias, preset in ALIASES.items():
        assert resolve_model(alias) == (preset, PRESETS[preset])


def test_custom_size() -> None:
    name, cfg = resolve_model("n_layer=4,n_head=4,n_embd=256")
    assert name == "custom"
    assert cfg == GPTConfig(n_layer=4, n_head=4, n_embd=256)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt3", "gpt2-small"),
        ("n_layer=4,n_head=3,n_embd=256", "divisible"),
        ("n_layers=4", "unknown key"),
        ("n_layer=four", "not a number"),
    ],
)
def test_bad_model_names(spec: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        resolve_model(spec)


def test_config_round_trip() -> None:
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=64)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BadInputError, match="unknown model config keys"):
        GPTConfig.from_dict({**cfg.to_dict(), "extra": 1})
