"""``gptclf adapt``'s core: blocks, perplexity, the Hugging Face folder, prepared data, bad input."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from gptclf.data.corpus import TextSource, prepared_texts
from gptclf.data.prepared import write_prepared
from gptclf.errors import BadInputError
from gptclf.model.tokenizer import EOT_ID, load_tokenizer
from gptclf.rundir import work_dir
from gptclf.training.adapt import adapt
from gptclf.training.adapt_data import build_corpus
from gptclf.training.adapt_settings import AdaptSettings
from tests.conftest import BPE_DIR
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder

WORDS = ["the cat sat on the mat", "a dog ran in the park", "we like green apples", "rain falls on the hill"]


def repetitive(n: int, seed: int = 0) -> list[str]:
    """Short texts drawn from a handful of sentences: a tiny model learns them in a few epochs."""
    rng = random.Random(seed)
    return [rng.choice(WORDS) for _ in range(n)]


def settings(out: Path, **options: Any) -> AdaptSettings:
    """A tiny random model on the CPU, blocks of 32 tokens, a learning rate that moves it fast."""
    base = {
        "model": TINY_SPEC, "weights": "random", "device": "cpu", "block_size": 32, "epochs": 3,
        "lr": 3e-3, "out": str(out),
    }  # fmt: skip
    base.update(options)
    return AdaptSettings().with_options(base, given=frozenset(base))


def text_file(path: Path, texts: list[str]) -> str:
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return str(path)


def test_blocks_join_texts_with_endoftext_and_hold_out_whole_texts() -> None:
    enc = load_tokenizer(BPE_DIR)
    texts = [f"text number {i} says hello" for i in range(40)]
    corpus = build_corpus([TextSource("t", texts)], enc, 16, validation=0.25, seed=3)
    assert corpus.info["validation_texts"] == 10 and corpus.info["train_texts"] == 30
    assert (corpus.train.lengths == 16).all()  # every training block is whole
    val_text = enc.decode(
        [t for b, n in zip(corpus.validation.ids, corpus.validation.lengths, strict=True) for t in b[:n]]
    )
    train_text = enc.decode(corpus.train.ids.reshape(-1).tolist())
    held = [t for t in texts if f"{t}<|endoftext|>" in val_text]
    assert len(held) == 10 and not any(f"{t}<|endoftext|>" in train_text for t in held)
    assert corpus.validation.lengths[-1] <= 16 and corpus.validation.tokens == sum(
        len(enc.encode(t)) + 1 for t in held
    )  # the last partial validation block is kept: every held-out token counts
    assert int((corpus.train.ids == EOT_ID).sum()) >= 25  # one separator after each text (the cut tail aside)


def test_max_tokens_caps_the_texts_read() -> None:
    enc = load_tokenizer(BPE_DIR)
    corpus = build_corpus([TextSource("t", repetitive(200))], enc, 16, validation=0.1, seed=0, max_tokens=300)
    assert corpus.info["capped"] and corpus.train.tokens + corpus.validation.tokens <= 300


@pytest.mark.slow
def test_perplexity_falls_and_the_folder_loads_in_transformers_with_the_same_logits(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    install_tokenizer()
    out = tmp_path / "lm"
    result = adapt(settings(out, input=[text_file(tmp_path / "t.txt", repetitive(400))]))
    assert result.before is not None and result.after is not None
    assert result.after["perplexity"] < result.before["perplexity"] / 20  # well below its start
    assert result.tokens_per_second > 0 and result.history.best is not None
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["README.md", "config.json", "merges.txt", "model.safetensors", "special_tokens_map.json",
         "tokenizer_config.json", "vocab.json"]
    )  # fmt: skip
    assert not work_dir(out).exists()
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(0))
    from gptclf.model.hfconfig import local_model
    from gptclf.model.weights import load_pretrained

    ours = load_pretrained(local_model(out)[1], out / "model.safetensors").eval()
    with torch.no_grad():
        assert float((hf(ids).logits - ours(ids)).abs().max()) < 1e-5
    card = (out / "README.md").read_text()
    assert f"{result.after['perplexity']:,.2f}" in card and "t.txt" in card


def _hand_prepared(root: Path, test_texts: list[str]) -> Path:
    """A prepared folder written directly: repetitive train and validation texts, ``test_texts``."""
    train, val = repetitive(120, seed=1), repetitive(20, seed=2)
    frames = {
        "train": pd.DataFrame({"text": train, "label": ["a", "b"] * 60}),
        "validation": pd.DataFrame({"text": val, "label": ["a", "b"] * 10}),
        "test": pd.DataFrame({"text": test_texts, "label": ["a"] * len(test_texts)}),
    }
    write_prepared(root, frames, {"classes": ["a", "b"], "source": {"file": "stdin"}})
    return root


@pytest.mark.slow
def test_the_test_split_of_a_prepared_folder_is_never_read(tmp_path: Path) -> None:
    install_tokenizer()
    weights = []
    for n, sentinel in enumerate(["zebra quokka narwhal " * 20, "völlig anderer Text " * 20]):
        data = _hand_prepared(tmp_path / f"data{n}", [sentinel] * 5)
        result = adapt(settings(tmp_path / f"lm{n}", data=str(data), epochs=1))
        assert [s["texts"] for s in result.sources] == [120, 20]  # train, validation; no set-aside rows
        assert result.notes and "stdin" in result.notes[0]
        weights.append(load_file(tmp_path / f"lm{n}" / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the sentinel changed nothing


def test_set_aside_rows_are_read_from_the_source_and_test_texts_never(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    source = tmp_path / "source.csv"
    frame = pd.read_csv(source)
    extra = pd.DataFrame({"text": [f"extra ham text {i}" for i in range(30)], "label": ["ham"] * 30})
    pd.concat([frame, extra]).to_csv(tmp_path / "skewed.csv", index=False)
    from gptclf.data.prepare import prepare

    skewed = tmp_path / "skewed"
    prepare(skewed, tmp_path / "skewed.csv", classes=["spam", "ham"], balance="undersample", seed=1)
    found = prepared_texts(skewed, tmp_path / "skewed.csv", None)
    splits = {
        s: pd.read_csv(skewed / f"{s}.csv", keep_default_na=False) for s in ("train", "validation", "test")
    }
    train, val, aside = found.sources
    assert len(train.texts) == len(splits["train"]) and len(val.texts) == len(splits["validation"])
    in_splits = {t for f in splits.values() for t in f["text"]}
    assert aside.texts and not set(aside.texts) & in_splits  # no text of any split, test's least of all
    every = pd.read_csv(tmp_path / "skewed.csv")["text"]
    assert len(aside.texts) == sum(t not in in_splits for t in every)
    with pytest.raises(BadInputError, match="not the file"):
        prepared_texts(skewed, source, None)  # another file than the recorded one
    assert prepared_texts(data, None, None).note is not None  # not found: said, not guessed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"input": ["EMPTY"]}, "no texts"),
        ({"input": ["SHORT"]}, "fewer than one block"),
        ({"input": ["GOOD"], "block_size": 65}, "over the model's context"),
        ({"data": "NOTEXT"}, "holds no texts"),
        ({"input": ["GOOD"], "trainable": "head"}, "no head"),
        ({}, "give the texts"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    install_tokenizer()
    files = {
        "EMPTY": text_file(tmp_path / "empty.txt", ["", "  "]),
        "SHORT": text_file(tmp_path / "short.txt", ["hi", "there"]),
        "GOOD": text_file(tmp_path / "good.txt", repetitive(50)),
    }
    notext = tmp_path / "notext"
    write_prepared(
        notext,
        {s: pd.DataFrame({"text": [] if s != "test" else ["x"], "label": [] if s != "test" else ["a"]})
         for s in ("train", "validation", "test")},
        {"classes": ["a", "b"]},
    )  # fmt: skip
    resolved = {k: ([files[v] for v in val] if k == "input" else str(notext) if val == "NOTEXT" else val)
                for k, val in options.items()}  # fmt: skip
    out = tmp_path / "lm"
    with pytest.raises(BadInputError, match=message):
        adapt(settings(out, **resolved))
    assert not out.exists() and not work_dir(out).exists()


def test_a_block_size_of_the_context_is_the_default(tmp_path: Path) -> None:
    from gptclf.training.adapt_settings import adapt_plan

    assert adapt_plan(settings(tmp_path / "lm", input=["-"], block_size=None)).block_size == 64
    assert np.iinfo(np.uint16).max >= EOT_ID


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["lora", "last-blocks 1"])
def test_partial_scopes_write_a_plain_gpt2_folder(tmp_path: Path, trainable: str) -> None:
    install_tokenizer()
    out = tmp_path / "lm"
    texts = text_file(tmp_path / "t.txt", repetitive(200))
    result = adapt(settings(out, input=[texts], epochs=1, trainable=trainable, lora_rank=4))
    assert result.after is not None and result.after["perplexity"] < result.before["perplexity"]
    from gptclf.model.hfconfig import local_model
    from gptclf.model.weights import load_pretrained

    start = adapt(
        settings(tmp_path / "lm0", input=[texts], epochs=1, trainable=trainable, lora_rank=4, lr=1e-12)
    )
    assert start.trainable_params == result.trainable_params < start.total_params
    ours = load_pretrained(local_model(out)[1], out / "model.safetensors")  # LoRA merged: plain tensors
    frozen = load_file(tmp_path / "lm0" / "model.safetensors")
    assert torch.equal(ours.transformer.wte.weight, frozen["transformer.wte.weight"])  # the tied layer stayed


@pytest.mark.slow
def test_without_a_validation_share_the_last_weights_are_written(tmp_path: Path) -> None:
    install_tokenizer()
    out = tmp_path / "lm"
    result = adapt(
        settings(out, input=[text_file(tmp_path / "t.txt", repetitive(60))], validation=0.0, epochs=1)
    )
    assert result.before is None and result.after is None and result.blocks["validation"] == 0
    assert result.corpus["validation_texts"] == 0 and (out / "model.safetensors").is_file()
    assert "n/a" in (out / "README.md").read_text()


def test_a_known_datasets_set_aside_rows_come_from_its_cached_copy(tmp_path: Path) -> None:
    from gptclf.data.prepare import prepare

    sms = tmp_path / "SMSSpamCollection"
    lines = [f"ham\tham text number {i}" for i in range(40)] + [f"spam\tWIN prize {i}" for i in range(10)]
    sms.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "sms"
    prepare(data, sms, dataset="sms-spam", split="0.7,0.1,0.2", stratify=False, seed=123)  # 10/10 kept
    found = prepared_texts(data, None, {"sms-spam": sms})
    assert found.note is None and [len(s.texts) for s in found.sources] == [14, 2, 30]  # 30 ham set aside
    test = set(pd.read_csv(data / "test.csv")["text"])
    assert not test & set(found.sources[2].texts)
    other = tmp_path / "other"
    other.write_text("ham\tsomething else\n", encoding="utf-8")
    assert prepared_texts(data, None, {"sms-spam": other}).note is not None  # not the recorded file
