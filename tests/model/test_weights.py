"""Hugging Face checkpoints load exactly: parity with transformers on random weights, shapes of presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gptclf.errors import BadInputError
from gptclf.model.config import PRESETS, GPTConfig
from gptclf.model.weights import expected_hf_shapes, load_pretrained, load_weights, verify_checkpoint

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is not installed")

TINY = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_positions=128)


def _hf_config(cfg: GPTConfig) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


@pytest.fixture(scope="module")
def hf_model() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_hf_config(TINY)).eval()
    with torch.no_grad():  # make biases and LayerNorms non-trivial so the mapping is really tested
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def saved_dir(hf_model: transformers.GPT2LMHeadModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(out, safe_serialization=True)
    return out


def _hub_style_file(hf_model: transformers.GPT2LMHeadModel, path: Path) -> Path:
    """Write the checkpoint as the hub's files are: no prefix, with causal-mask buffers."""
    tensors = {}
    for name, t in hf_model.transformer.state_dict().items():
        tensors[name] = t.detach().clone().contiguous()
    for i in range(TINY.n_layer):
        n = TINY.n_positions
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    save_file(tensors, str(path))
    return path


def _compare(ours: torch.nn.Module, hf_model: transformers.GPT2LMHeadModel) -> None:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY.vocab_size, (3, 17), generator=gen)
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    # Right padding: the real positions of a padded batch agree with Hugging Face's output
    # on the unpadded texts.
    lengths = [17, 9, 4]
    padded = ids.clone()
    for row, n in enumerate(lengths):
        padded[row, n:] = 50256
    with torch.no_grad():
        got = ours(padded)
        for row, n in enumerate(lengths):
            ref = hf_model(ids[row : row + 1, :n]).logits[0]
            torch.testing.assert_close(got[row, :n], ref, atol=1e-5, rtol=0)


def test_parity_with_transformers_save_pretrained(hf_model, saved_dir: Path) -> None:
    ours = load_pretrained(TINY, saved_dir / "model.safetensors").eval()
    _compare(ours, hf_model)
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_parity_with_hub_style_file(hf_model, tmp_path: Path) -> None:
    path = _hub_style_file(hf_model, tmp_path / "model.safetensors")
    ours = load_pretrained(TINY, path).eval()
    _compare(ours, hf_model)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_expected_shapes_match_transformers(preset: str) -> None:
    cfg = PRESETS[preset]
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(_hf_config(cfg))
    theirs = {
        k: tuple(v.shape)
        for k, v in hf.state_dict().items()
        if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))
    }
    assert expected_hf_shapes(cfg) == theirs


def test_wrong_shape_names_tensor_and_shapes(hf_model, tmp_path: Path) -> None:
    path = _hub_style_file(hf_model, tmp_path / "model.safetensors")
    other = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_positions=256)
    with pytest.raises(
        BadInputError, match=r"transformer\.wpe\.weight has shape \[128, 64\], expected \[256, 64\]"
    ):
        verify_checkpoint(path, other)


def test_missing_and_unexpected_tensors(hf_model, tmp_path: Path) -> None:
    tensors = {k: v.clone().contiguous() for k, v in hf_model.transformer.state_dict().items()}
    del tensors["ln_f.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(BadInputError) as info:
        load_pretrained(TINY, path)
    assert "missing tensor transformer.ln_f.bias (expected shape [64])" in str(info.value)
    assert "unexpected tensor transformer.extra.weight" in str(info.value)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="not a readable safetensors file"):
        load_pretrained(TINY, path)


def test_weights_sources(tmp_path: Path) -> None:
    a = load_weights("random", TINY, "custom", seed=4)
    b = load_weights("random", TINY, "custom", seed=4)
    assert torch.equal(a.transformer.wte.weight, b.transformer.wte.weight)
    with pytest.raises(BadInputError, match="custom model size"):
        load_weights("pretrained", TINY, "custom")
    with pytest.raises(BadInputError, match="gptclf download --model gpt2-small"):
        load_weights(
            "pretrained", PRESETS["gpt2-small"], "gpt2-small", pretrained=tmp_path / "none.safetensors"
        )
    with pytest.raises(BadInputError, match="does not exist"):
        load_weights(str(tmp_path / "nope.safetensors"), TINY, "custom")


#: Ways a checkpoint file is damaged, and what the one-line error says.
DAMAGES = {
    "cut": "is truncated (it has",
    "padded": "is damaged (it has",
    "cut-header": "truncated inside its",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_cut_or_padded_checkpoint_is_refused_by_its_header(hf_model, tmp_path: Path, damage: str) -> None:
    path = _hub_style_file(hf_model, tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes({"cut": data[:-1], "padded": data + bytes(16), "cut-header": data[:40]}[damage])
    with pytest.raises(BadInputError, match=re.escape(DAMAGES[damage])) as err:
        verify_checkpoint(path, TINY)  # the header check: the data is not read
    assert str(path) in str(err.value) and "download or save it again" in str(err.value)
    with pytest.raises(BadInputError, match=re.escape(DAMAGES[damage])):
        load_pretrained(TINY, path)
