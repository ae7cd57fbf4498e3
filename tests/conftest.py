"""Shared fixtures: tiny models, the real data in ../shared when it is there, an isolated cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gptclf.model.config import GPTConfig

#: Every test session runs with its own home folder and fails if the real one was touched.
pytest_plugins = ["tests.home_guard"]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GPTCLF_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
SMS_FILE = SHARED_DATA / "sms_spam_collection" / "SMSSpamCollection"
#: GPT-2's tokenizer files (byte-identical to OpenAI's, the sha256 in ../shared/data/SHA256SUMS):
#: committed with the fixture run, so that every test that needs a tokenizer runs in a fresh clone.
BPE_DIR = REPO / "tests" / "fixtures" / "run-v1"

#: Only the tests of the real SMS corpus need ../shared.
needs_shared_sms = pytest.mark.skipif(
    not SMS_FILE.is_file(), reason=f"SMS Spam Collection not found at {SMS_FILE} (../shared is absent)"
)


@pytest.fixture
def tiny_config() -> GPTConfig:
    """A 2-layer, 32-wide GPT with GPT-2's vocabulary and a short context."""
    return GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache, so nothing reads or writes ~/.cache/gptclf."""
    home = tmp_path_factory.mktemp("gptclf_home")
    monkeypatch.setenv("GPTCLF_HOME", str(home))
    monkeypatch.delenv("GPTCLF_MIRROR", raising=False)
    return home


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and other jobs on a 2-core machine stay unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
