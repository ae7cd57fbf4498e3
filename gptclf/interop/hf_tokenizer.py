"""GPT-2's tokenizer in Hugging Face's layout and back: ``vocab.json`` + ``merges.txt`` <->
``encoder.json`` + ``vocab.bpe``.

The two layouts hold the same content: ``vocab.json`` is ``encoder.json`` (token -> id, in GPT-2's
printable stand-ins for bytes) and ``merges.txt`` is ``vocab.bpe`` (a ``#version`` line, then one
merge per line). Hugging Face's copies may be formatted differently (compact JSON, another
version line), so a folder's files are read by content and written again the way OpenAI wrote
them; the result must have the sha256 of GPT-2's files (:data:`gptclf.model.tokenizer.TOKENIZER_FILES`),
else the tokenizer is not GPT-2's byte-level BPE and is refused.

``tokenizer_config.json`` makes ``AutoTokenizer`` build GPT-2's tokenizer with ``<|endoftext|>`` as
the pad token, right padding (what a causal model needs for its last real token to see no pad) and
``model_max_length`` = the run's ``max_length``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gptclf.errors import BadInputError
from gptclf.fileio import atomic_write_bytes, atomic_write_json
from gptclf.model.tokenizer import EOT_ID, EOT_TEXT, TOKENIZER_FILES

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
#: The files :func:`write_hf_tokenizer` writes.
HF_TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
_MERGES_HEADER = "#version: 0.2"


def tokenizer_config(max_length: int) -> dict[str, Any]:
    """The content of ``tokenizer_config.json`` for a model that reads ``max_length`` tokens."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": int(max_length),
        "padding_side": "right",
        "truncation_side": "right",  # gptclf keeps a text's first max_length tokens
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        "bos_token": EOT_TEXT,
        "eos_token": EOT_TEXT,
        "unk_token": EOT_TEXT,
        "pad_token": EOT_TEXT,
        "added_tokens_decoder": {
            str(EOT_ID): {
                "content": EOT_TEXT,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
        "clean_up_tokenization_spaces": False,
    }


def write_hf_tokenizer(src: Path, dst: Path, max_length: int) -> None:
    """Write GPT-2's tokenizer from ``encoder.json``/``vocab.bpe`` in ``src`` into ``dst`` in
    Hugging Face's layout (the two files' bytes are copied unchanged)."""
    src, dst = Path(src), Path(dst)
    atomic_write_bytes(dst / VOCAB_FILE, (src / "encoder.json").read_bytes())
    atomic_write_bytes(dst / MERGES_FILE, (src / "vocab.bpe").read_bytes())
    atomic_write_json(dst / TOKENIZER_CONFIG, tokenizer_config(max_length))
    special = {name: EOT_TEXT for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    atomic_write_json(dst / SPECIAL_TOKENS_MAP, special)


def _canonical_files(folder: Path) -> dict[str, bytes]:
    """``encoder.json`` and ``vocab.bpe`` as OpenAI wrote them, from a folder's HF files.

    Raises:
        BadInputError: A file is missing or unreadable.
    """
    vocab, merges = folder / VOCAB_FILE, folder / MERGES_FILE
    missing = [p.name for p in (vocab, merges) if not p.is_file()]
    if missing:
        raise BadInputError(
            f"{folder} has no {' or '.join(missing)}: gptclf needs GPT-2's byte-level BPE tokenizer files"
        )
    try:
        encoder = json.loads(vocab.read_text(encoding="utf-8"))
        lines = merges.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{folder}'s tokenizer files are unreadable ({exc})") from exc
    rules = [line for line in lines if line.strip() and not line.startswith("#version")]
    return {
        "encoder.json": json.dumps(encoder).encode("utf-8"),  # OpenAI's json.dump defaults
        "vocab.bpe": "\n".join([_MERGES_HEADER, *rules, ""]).encode("utf-8"),
    }


def gpt2_tokenizer_files(folder: Path) -> dict[str, bytes]:
    """``encoder.json`` and ``vocab.bpe`` (name -> bytes) from a HF folder's GPT-2 tokenizer,
    checked to be GPT-2's; write them with :func:`write_tokenizer_files`.

    Raises:
        BadInputError: The folder's tokenizer is missing or is not GPT-2's byte-level BPE.
    """
    folder = Path(folder)
    files = _canonical_files(folder)
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != TOKENIZER_FILES[name]:
            source = VOCAB_FILE if name == "encoder.json" else MERGES_FILE
            raise BadInputError(
                f"{folder / source} is not GPT-2's byte-level BPE (its content differs from GPT-2's "
                f"{name}): gptclf runs only models with GPT-2's tokenizer"
            )
    return files


def write_tokenizer_files(files: dict[str, bytes], dst: Path) -> None:
    """Write the files of :func:`gpt2_tokenizer_files` into ``dst`` (atomically each)."""
    for name, data in files.items():
        atomic_write_bytes(Path(dst) / name, data)


def hf_max_length(folder: Path) -> int | None:
    """``model_max_length`` of a folder's tokenizer_config.json, or None (absent or not a number)."""
    path = Path(folder) / TOKENIZER_CONFIG
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None
