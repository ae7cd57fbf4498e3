"""GPT-2's byte-level BPE through tiktoken, built from local files so a run never needs the network.

``tiktoken.get_encoding("gpt2")`` downloads ``encoder.json`` and ``vocab.bpe`` on first use. Here the
same :class:`tiktoken.Encoding` is built from the two files in the cache (or a run directory),
each checked against its known sha256 first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import tiktoken
import torch

from gptclf.errors import BadInputError

#: Token id of ``<|endoftext|>``, GPT-2's only special token; also the pad id.
EOT_ID = 50256
EOT_TEXT = "<|endoftext|>"

#: The two tokenizer files and their sha256, byte-identical to OpenAI's.
TOKENIZER_FILES: dict[str, str] = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

# GPT-2's pre-tokenisation pattern (the one tiktoken calls r50k).
_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters of encoder.json back to bytes."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    mapping = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + n)] = b
            n += 1
    return mapping


def _mergeable_ranks(encoder_json: bytes) -> dict[bytes, int]:
    """Token bytes -> id, from encoder.json (whose ids are the BPE merge ranks)."""
    decoder = _byte_decoder()
    encoder: dict[str, int] = json.loads(encoder_json)
    ranks = {}
    for token, rank in encoder.items():
        if token == EOT_TEXT:
            continue
        ranks[bytes(decoder[ch] for ch in token)] = rank
    return ranks


def _check_merges(vocab_bpe: bytes, ranks: dict[bytes, int]) -> None:
    """Check that vocab.bpe's merges agree with encoder.json (same order, same tokens)."""
    decoder = _byte_decoder()
    lines = vocab_bpe.decode("utf-8").split("\n")[1:-1]
    for i, line in enumerate(lines):
        first, second = line.split()
        merged = bytes(decoder[c] for c in first) + bytes(decoder[c] for c in second)
        if ranks.get(merged) != 256 + i:
            raise BadInputError(f"vocab.bpe merge {i} ({line!r}) does not match encoder.json")


def load_tokenizer(directory: Path, verify: bool = True) -> tiktoken.Encoding:
    """Build GPT-2's tokenizer from ``encoder.json`` and ``vocab.bpe`` in ``directory``.

    Args:
        directory: Folder holding the two files (the cache's, see
            :func:`gptclf.fetch.artefacts.tokenizer_dir`, or a run directory).
        verify: Check each file's sha256 before use.

    Raises:
        BadInputError: A file is missing or is not the GPT-2 file.
    """
    directory = Path(directory)
    contents = {}
    for name, digest in TOKENIZER_FILES.items():
        path = directory / name
        if not path.is_file():
            raise BadInputError(
                f"tokenizer file {path} is missing: run `gptclf download` (or --mirror DIR) first"
            )
        data = path.read_bytes()
        if verify and hashlib.sha256(data).hexdigest() != digest:
            raise BadInputError(f"{path} is not GPT-2's {name} (sha256 mismatch): download it again")
        contents[name] = data
    ranks = _mergeable_ranks(contents["encoder.json"])
    if not verify:  # the checksum already proves the two files agree
        _check_merges(contents["vocab.bpe"], ranks)
    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT_ID},
        explicit_n_vocab=50257,
    )


def encode(enc: tiktoken.Encoding, text: str) -> list[int]:
    """Encode text, treating ``<|endoftext|>`` inside it as ordinary characters, never an error."""
    return enc.encode_ordinary(text)


def encode_batch(enc: tiktoken.Encoding, texts: list[str]) -> list[list[int]]:
    """Encode many texts, one after the other on this thread, special tokens as ordinary text: the
    ids of tiktoken's ``encode_ordinary_batch``.

    Not that batch call: it starts a pool of 8 threads every call, which on 2 cores took 3x as long
    over 300,000 texts and left about 12 MB more resident; and a Ctrl-C landing while the pool shuts
    down could leave its threads waiting on a lock the interrupted main thread held, hanging the
    process for good (seen in ``evaluate --long-texts window``: SIGINT, then SIGTERM, did not end it).
    """
    return [enc.encode_ordinary(text) for text in texts]


def collate(
    seqs: Sequence[Sequence[int]], pad_id: int = EOT_ID, pad_to: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into a batch.

    Args:
        seqs: Token ids of each text.
        pad_id: The padding id (GPT-2's ``<|endoftext|>``).
        pad_to: Pad to this length instead of the batch's longest (the book's fixed padding).

    Returns:
        ``input_ids`` (B, T) int64 and ``lengths`` (B,) int64.
    """
    lengths = [len(s) for s in seqs]
    width = max(lengths) if pad_to is None else max(pad_to, max(lengths))
    batch = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        batch[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return batch, torch.as_tensor(lengths, dtype=torch.long)
