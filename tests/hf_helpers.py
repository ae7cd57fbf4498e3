"""Helpers for the transformers tests: tiny random Hugging Face GPT-2 folders and their tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import BPE_DIR

#: A tiny GPT-2 with a context and LayerNorm epsilon other than GPT-2's, so that reading them is tested.
TINY_HF: dict[str, Any] = {
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "n_positions": 48,
    "layer_norm_epsilon": 1e-6,
}


def transformers_module() -> Any:
    """transformers (the dev extra), or skip the test."""
    return pytest.importorskip("transformers", reason="transformers is not installed (the dev extra)")


def copy_hf_tokenizer(folder: Path) -> None:
    """GPT-2's tokenizer files under Hugging Face's names."""
    shutil.copyfile(BPE_DIR / "encoder.json", folder / "vocab.json")
    shutil.copyfile(BPE_DIR / "vocab.bpe", folder / "merges.txt")


def hf_folder(folder: Path, kind: str = "GPT2ForSequenceClassification", seed: int = 0, **config: Any) -> Any:
    """Save a random tiny transformers GPT-2 of class ``kind`` into ``folder``; return the model.

    Every parameter is perturbed (LayerNorm weights and biases too, which transformers starts at
    1 and 0), so that a parity test sees each tensor in its right place.
    """
    transformers = transformers_module()
    cfg = transformers.GPT2Config(**{**TINY_HF, "pad_token_id": 50256, **config})
    torch.manual_seed(seed)
    model = getattr(transformers, kind)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return model
