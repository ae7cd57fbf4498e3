from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptclf.batching import collate
from gptclf.checkpoint import build_run_info, classifier_state, load_run, read_run_info, save_run
from gptclf.classifier import Classifier, parse_scope
from gptclf.errors import BadInputError
from tests.finetune_helpers import TINY, install_tokenizer, tiny_classifier


def info_for(model: Classifier, scope: str = "last-block") -> dict[str, object]:
    return build_run_info(
        model_name="custom", config=TINY, classes=model.classes, max_length=64, pooling=model.pooling,
        trainable=parse_scope(scope).to_dict(), trainable_params=1, train={"epochs": 1}, seed=1,
        weights="random", data={"dir": "/somewhere", "fingerprint": "abc"},
    )  # fmt: skip


@pytest.mark.parametrize(("scope", "pooling"), [("last-block", "last-token"), ("lora", "mean")])
def test_a_saved_run_loads_and_predicts_the_same(tmp_path: Path, scope: str, pooling: str) -> None:
    tokenizer = install_tokenizer()
    model = tiny_classifier(["spam", "ham", "other"], scope=scope, pooling=pooling, seed=2).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as if trained, so merging has something to fold in
    ids, lengths = collate([[10, 20, 30], [40, 50, 60, 70, 80]])
    with torch.no_grad():
        expected = model(ids, lengths)
    run = tmp_path / "run"
    save_run(run, model, info_for(model, scope), tokenizer)
    assert sorted(p.name for p in run.iterdir()) == [
        "encoder.json",
        "model.safetensors",
        "run.json",
        "vocab.bpe",
    ]
    loaded = load_run(run)
    assert loaded.classes == ["spam", "ham", "other"] and loaded.model.pooling == pooling
    assert loaded.max_length == 64 and loaded.info["data"]["fingerprint"] == "abc"
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids, lengths), expected, atol=1e-5)
    assert loaded.tokenizer.encode_ordinary("Hello, world") == [15496, 11, 995]
    has_adapters = any("lora_" in n for n, _ in model.named_parameters())
    assert has_adapters == (scope == "lora")  # saving merged a copy, not the live model


def test_saved_state_is_plain_fp32_without_adapters() -> None:
    model = tiny_classifier(["a", "b"], scope="lora")
    state = classifier_state(model)
    assert not any("lora" in k for k in state)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
    assert state["lm_head.weight"].shape == (2, TINY.n_embd)


def test_incomplete_or_foreign_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        read_run_info(tmp_path / "nope")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"missing model\.safetensors, encoder\.json, vocab\.bpe"):
        read_run_info(tmp_path)
    for name in ("model.safetensors", "encoder.json", "vocab.bpe"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(BadInputError, match="format is None"):
        read_run_info(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format": "gptclf-run", "format_version": 99}))
    with pytest.raises(BadInputError, match="newer than this gptclf"):
        read_run_info(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_run_info(tmp_path)


def test_weights_that_do_not_match_run_json_are_refused(tmp_path: Path) -> None:
    tokenizer = install_tokenizer()
    model = tiny_classifier(["a", "b"])
    save_run(tmp_path, model, info_for(model), tokenizer)
    info = json.loads((tmp_path / "run.json").read_text())
    info["classes"] = ["a", "b", "c"]  # a 3-way head cannot take 2-way weights
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(BadInputError, match=r"does not match run\.json"):
        load_run(tmp_path)
