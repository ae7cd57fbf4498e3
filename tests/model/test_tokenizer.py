from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from gptclf.errors import BadInputError
from gptclf.model.tokenizer import EOT_ID, TOKENIZER_FILES, encode, load_tokenizer
from tests.conftest import BPE_DIR, SMS_FILE, needs_shared_sms


def test_hello_world() -> None:
    enc = load_tokenizer(BPE_DIR)
    assert encode(enc, "Hello, world") == [15496, 11, 995]
    assert enc.n_vocab == 50257
    assert enc.decode([15496, 11, 995]) == "Hello, world"


def test_endoftext_in_text_is_ordinary_text() -> None:
    enc = load_tokenizer(BPE_DIR)
    ids = encode(enc, "before <|endoftext|> after")
    assert EOT_ID not in ids
    assert enc.decode(ids) == "before <|endoftext|> after"


def test_checksum_mismatch_and_missing_file(tmp_path: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(BPE_DIR / name, tmp_path / name)
    with open(tmp_path / "vocab.bpe", "a", encoding="utf-8") as fh:
        fh.write("x y\n")
    with pytest.raises(BadInputError, match="sha256 mismatch"):
        load_tokenizer(tmp_path)
    (tmp_path / "encoder.json").unlink()
    with pytest.raises(BadInputError, match="missing"):
        load_tokenizer(tmp_path)


@needs_shared_sms
@pytest.mark.slow
def test_same_ids_as_tiktokens_own_gpt2_on_the_sms_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken
    import tiktoken.registry

    # tiktoken's own gpt2 encoding fetches these two URLs; pre-fill its cache (keyed by the sha1
    # of the URL) with the same files so it builds offline, exactly as it would after a download.
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in TOKENIZER_FILES:
        key = hashlib.sha1((base + name).encode()).hexdigest()
        shutil.copy(BPE_DIR / name, tmp_path / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding("gpt2")

    ours = load_tokenizer(BPE_DIR)
    texts = [line.split("\t", 1)[1] for line in SMS_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == 5574
    assert ours.encode_ordinary_batch(texts) == reference.encode_ordinary_batch(texts)
