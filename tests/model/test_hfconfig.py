from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptclf.errors import BadInputError
from gptclf.model.config import PRESETS, GPTConfig, local_model_dir
from gptclf.model.hfconfig import (
    TANH_GELUS,
    gpt_config_from_hf,
    hf_config_from_gpt,
    local_model,
    resolve_base_model,
)
from gptclf.model.weights import load_pretrained
from tests.hf_helpers import TINY_HF, hf_folder, transformers_module

GPT2 = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2}


def test_sizes_context_and_epsilon_come_from_the_config() -> None:
    cfg = gpt_config_from_hf({**GPT2, "n_positions": 48, "layer_norm_epsilon": 1e-6}, "c")
    assert cfg == GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=48, layer_norm_epsilon=1e-6)
    assert gpt_config_from_hf(hf_config_from_gpt(cfg), "c") == cfg  # the writer's inverse
    old = {k: v for k, v in GPT2.items() if k != "n_positions"} | {"n_ctx": 40}
    assert gpt_config_from_hf(old, "c").n_positions == 40  # older configs name the context n_ctx


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "llama"}, "model_type 'llama' is not 'gpt2'"),
        ({"activation_function": "relu"}, "activation_function 'relu'"),
        ({"activation_function": "gelu"}, "activation_function 'gelu'"),  # the erf GELU differs
        ({"n_inner": 100}, "n_inner 100"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"n_layer": "2"}, "n_layer must be an integer"),
        ({"vocab_size": 1000}, "vocab_size 1000"),
        ({"n_head": 3}, "divisible by n_head"),
    ],
)
def test_a_config_gptclf_does_not_compute_is_one_line(change: dict, message: str) -> None:
    with pytest.raises(BadInputError) as info:
        gpt_config_from_hf({**GPT2, **change}, "x/config.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_accepted_activations_are_transformers_tanh_gelu() -> None:
    activations = transformers_module().activations
    x = torch.linspace(-6, 6, 1001)
    ours = F.gelu(x, approximate="tanh")
    for name in TANH_GELUS:
        assert torch.allclose(activations.ACT2FN[name](x), ours, atol=1e-6), name
    assert not torch.allclose(activations.ACT2FN["gelu"](x), ours, atol=1e-6)  # why "gelu" is refused


def test_model_spec_rules() -> None:
    assert local_model_dir("gpt2-small") is None and local_model_dir("n_layer=2,n_head=2,n_embd=32") is None
    assert local_model_dir("./m") == Path("m") and local_model_dir("models/gpt2") == Path("models/gpt2")
    assert resolve_base_model("distilgpt2") == ("distilgpt2", PRESETS["distilgpt2"])
    assert PRESETS["distilgpt2"].n_layer == 6 and PRESETS["distilgpt2"].n_embd == 768
    with pytest.raises(BadInputError, match="does not exist"):
        resolve_base_model("./no-such-folder")


@pytest.mark.parametrize("kind", ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification"])
def test_a_transformers_folder_loads_and_matches_transformers(tmp_path: Path, kind: str) -> None:
    hf = hf_folder(tmp_path, kind)
    name, cfg = local_model(tmp_path)
    assert name == str(tmp_path.resolve())
    assert (cfg.n_positions, cfg.layer_norm_epsilon) == (
        TINY_HF["n_positions"],
        TINY_HF["layer_norm_epsilon"],
    )
    ours = load_pretrained(cfg, tmp_path / "model.safetensors").eval()
    ids = torch.randint(0, 50257, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trunk = hf if kind == "GPT2Model" else hf.transformer
        want = trunk(ids).last_hidden_state
        got = ours.hidden_states(ids)
        assert torch.allclose(got, want, atol=1e-5)
        if kind == "GPT2LMHeadModel":
            assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5)


def test_sizes_that_do_not_fit_the_weights_are_one_line(tmp_path: Path) -> None:
    hf_folder(tmp_path, "GPT2Model")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(BadInputError, match=r"does not fit this model: missing tensor transformer\.h\.2"):
        local_model(tmp_path)
    local_model(tmp_path, check_weights=False)  # --weights random needs only the config


def test_a_folder_without_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(GPT2))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BadInputError, match=r"no model\.safetensors \(pytorch_model\.bin is a pickle"):
        local_model(tmp_path)
    with pytest.raises(BadInputError, match=r"has no config\.json"):
        local_model(tmp_path / "..")
