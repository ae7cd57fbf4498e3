"""Helpers for the training tests: tiny classifiers, learnable synthetic data, prepared folders."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pandas as pd
import torch

from gptclf.fetch.artefacts import tokenizer_dir
from gptclf.inference.batching import Batch
from gptclf.model.classifier import Classifier, apply_scope, parse_scope, pool, replace_head
from gptclf.model.config import GPTConfig
from gptclf.model.gpt import build_model
from gptclf.model.tokenizer import TOKENIZER_FILES
from tests.conftest import BPE_DIR

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64)
TINY_SPEC = "n_layer=2,n_head=2,n_embd=32,n_positions=64"
FILLER = ["apple", "river", "stone", "cloud", "paper", "green", "music", "table", "light", "horse"]
KEYWORDS = {"spam": "prize", "ham": "dinner", "other": "meeting", "news": "election"}


def tiny_classifier(
    classes: list[str],
    scope: str = "last-block",
    pooling: str = "last-token",
    seed: int = 0,
    cfg: GPTConfig = TINY,
) -> Classifier:
    """A random tiny GPT with a class head and ``scope`` applied."""
    gpt = build_model(cfg, seed=seed)
    replace_head(gpt, len(classes), seed=seed)
    apply_scope(gpt, parse_scope(scope), seed=seed)
    return Classifier(gpt, classes, pooling)


def synthetic_ids(
    n: int, num_classes: int, seed: int, max_len: int = 24
) -> tuple[list[list[int]], list[int]]:
    """Token-id texts of varied length whose class is marked by one token at a random place."""
    rng = random.Random(seed)
    ids, labels = [], []
    for i in range(n):
        label = i % num_classes
        seq = [rng.randrange(1000, 1100) for _ in range(rng.randrange(2, max_len))]
        seq.insert(rng.randrange(len(seq) + 1), 500 + label)
        ids.append(seq)
        labels.append(label)
    return ids, labels


def synthetic_texts(n: int, classes: list[str], seed: int) -> pd.DataFrame:
    """Texts of filler words with one class keyword at a random place (learnable by a tiny model)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        words = [rng.choice(FILLER) for _ in range(rng.randrange(2, 12))]
        words.insert(rng.randrange(len(words) + 1), KEYWORDS[label])
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


def prepared_folder(root: Path, classes: list[str], n: int = 200, seed: int = 0) -> Path:
    """A folder written by ``gptclf prepare`` from synthetic texts (70/15/15 split)."""
    from gptclf.data.prepare import prepare

    source = root / "source.csv"
    synthetic_texts(n, classes, seed).to_csv(source, index=False)
    out = root / "prepared"
    prepare(out, input_path=source, classes=classes, split="0.7,0.15,0.15", seed=seed)
    return out


def install_tokenizer(home: Path | None = None) -> Path:
    """Copy GPT-2's tokenizer files (committed under tests/fixtures) into the test cache."""
    target = tokenizer_dir(home)
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(BPE_DIR / name, target / name)
    return target


def trainable_state(model: Classifier) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters, for comparing runs."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two states with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def run_batch(model: Classifier, batch: Batch) -> torch.Tensor:
    """The classifier's forward on a source's batch (token ids or cached hidden states)."""
    return model(batch.input_ids, batch.lengths, hidden=batch.hidden, start_block=batch.start_block)


def full_logits(
    model: Classifier,
    input_ids: torch.Tensor | None,
    lengths: torch.Tensor,
    hidden: torch.Tensor | None = None,
    start_block: int = 0,
) -> torch.Tensor:
    """The logits computed the long way, without the last-token shortcut: every block at every
    position, the final norm, the pooling, the head (the reference the shortcut must equal)."""
    gpt = model.gpt
    x = gpt.embed(input_ids) if hidden is None else hidden
    x = gpt.transformer.ln_f(gpt.run_blocks(x, start_block))
    return gpt.lm_head(pool(x, lengths, model.pooling))
