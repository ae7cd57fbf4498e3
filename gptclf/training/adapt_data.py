"""The blocks ``gptclf adapt`` trains on: texts tokenised, held out, joined and cut into blocks.

Texts are tokenised once (:func:`gptclf.inference.token_ids.encode_compact`, two bytes a token) and
capped at ``--max-tokens``; a seeded share of the texts (``--validation``) is held out, so no
validation text is trained on. Each part is one stream of its texts in order with
``<|endoftext|>`` after every text, cut into blocks of ``--block-size`` tokens: a training stream's
last partial block is dropped (every training block has the same length, so a group's loss is its
mean token cross-entropy), a validation stream's is kept, so that its every token counts.

The blocks are saved in the work folder (``corpus/``, ``uint16``), and ``--resume`` reads them back
from there: an interrupted run continues on the very blocks it started on, also when its texts came
from stdin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from gptclf.data.corpus import TextSource
from gptclf.errors import BadInputError
from gptclf.fileio import atomic_open, atomic_write_json
from gptclf.inference.batching import TokenSource
from gptclf.inference.token_ids import TokenIds, encode_compact
from gptclf.model.tokenizer import EOT_ID
from gptclf.progress import Progress

CORPUS_DIR = "corpus"
_TRAIN, _VALIDATION, _INFO = "train.npy", "validation.npy", "corpus.json"


@dataclass
class Blocks:
    """Blocks of token ids, right-padded with ``<|endoftext|>`` where a block is short.

    Attributes:
        ids: (N, block_size) uint16.
        lengths: (N,) real tokens per block.
    """

    ids: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        """The blocks."""
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        """Real tokens over every block."""
        return int(self.lengths.sum())

    def targets(self) -> list[int]:
        """The tokens each block predicts (its length less one): the task's labels."""
        return (self.lengths - 1).tolist()

    def source(self) -> TokenSource:
        """The blocks as the loop reads them."""
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        mask = np.arange(self.ids.shape[1])[None, :] < self.lengths[:, None]
        return TokenSource(TokenIds(self.ids[mask], offsets))


@dataclass
class Corpus:
    """What adapt trains and validates on, and where it came from.

    Attributes:
        train: The training blocks.
        validation: The held-out blocks (empty with ``--validation 0``).
        sources: Per origin: ``source``, ``texts`` and ``tokens`` (before the cap and the split).
        info: Totals: ``texts``, ``tokens``, ``train_texts``, ``validation_texts``, ``capped``; the
            verb adds its ``notes`` (lines for people about what was read).
    """

    train: Blocks
    validation: Blocks
    sources: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Write the blocks and the record into ``folder`` (each file atomically)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, blocks in ((_TRAIN, self.train), (_VALIDATION, self.validation)):
            with atomic_open(folder / name, "wb", encoding=None) as fh:
                np.save(fh, np.concatenate([blocks.lengths[:, None].astype(np.uint16), blocks.ids], axis=1))
        atomic_write_json(folder / _INFO, {"sources": self.sources, "info": self.info})

    @classmethod
    def load(cls, folder: Path) -> Corpus:
        """What :meth:`save` wrote.

        Raises:
            BadInputError: The folder lacks a file (the run was interrupted before it saved them).
        """
        try:
            parts = [np.load(folder / name) for name in (_TRAIN, _VALIDATION)]
            record = json.loads((folder / _INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInputError(
                f"the interrupted run's blocks in {folder} are unreadable ({exc}): use --force"
            ) from None
        train, val = (Blocks(p[:, 1:], p[:, 0].astype(np.int64)) for p in parts)
        return cls(train, val, record["sources"], record["info"])


def build_corpus(
    sources: list[TextSource],
    enc: tiktoken.Encoding,
    block_size: int,
    *,
    validation: float,
    seed: int,
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> Corpus:
    """Tokenise the texts of ``sources``, hold out a share, and cut both parts into blocks.

    Raises:
        BadInputError: No texts, or fewer training tokens than one block (nothing written).
    """
    texts = [t for s in sources for t in s.texts]
    if not texts:
        where = ", ".join(s.name for s in sources) or "the input"
        raise BadInputError(f"no texts to adapt on in {where}: every text is empty")
    ids, _ = encode_compact(enc, texts, None, progress, total=len(texts))
    lengths = np.diff(ids.offsets)
    record, start = [], 0
    for s in sources:
        record.append(
            {
                "source": s.name,
                "texts": len(s.texts),
                "tokens": int(lengths[start : start + len(s.texts)].sum()),
            }
        )
        start += len(s.texts)
    keep, capped = _capped(lengths, max_tokens)
    rng = np.random.default_rng(seed)
    n = len(keep)
    n_val = min(max(round(validation * n), 1 if validation > 0 and n > 1 else 0), n - 1)
    held = np.zeros(n, dtype=bool)
    held[rng.choice(n, n_val, replace=False)] = True
    train = _blocks(ids, keep[~held], block_size, drop_last=True)
    val = _blocks(ids, keep[held], block_size, drop_last=False)
    if len(train) == 0:
        got = int(lengths[keep[~held]].sum()) + int((~held).sum())
        raise BadInputError(
            f"the {int((~held).sum()):,} training texts give {got:,} tokens (with the <|endoftext|> "
            f"between texts), fewer than one block of {block_size}: give more text or a smaller --block-size"
        )
    info = {
        "texts": int(n),
        "tokens": int(lengths[keep].sum()),
        "train_texts": int((~held).sum()),
        "validation_texts": int(n_val),
        "capped": capped,
    }
    return Corpus(train, val, record, info)


def _capped(lengths: np.ndarray, max_tokens: int | None) -> tuple[np.ndarray, bool]:
    """The texts kept under ``--max-tokens`` (counting one ``<|endoftext|>`` after each), in order."""
    if max_tokens is None:
        return np.arange(len(lengths)), False
    ends = np.cumsum(lengths + 1)
    n = int(np.searchsorted(ends, max_tokens, side="right"))
    return np.arange(max(n, 1)), n < len(lengths)


def _blocks(ids: TokenIds, texts: np.ndarray, block_size: int, *, drop_last: bool) -> Blocks:
    """The texts ``texts`` of ``ids`` joined by ``<|endoftext|>`` (one after each) into blocks."""
    lengths = np.diff(ids.offsets)[texts]
    stream = np.full(int(lengths.sum() + len(texts)), EOT_ID, dtype=np.uint16)
    starts = np.cumsum(lengths + 1) - (lengths + 1)  # where each text begins in the stream
    ranks = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # place in text
    stream[np.repeat(starts, lengths) + ranks] = ids.flat[np.repeat(ids.offsets[:-1][texts], lengths) + ranks]
    full = len(stream) // block_size
    rows = [stream[: full * block_size].reshape(full, block_size)]
    sizes = [np.full(full, block_size, dtype=np.int64)]
    rest = len(stream) - full * block_size
    if not drop_last and rest >= 2:  # a block of one token predicts nothing
        last = np.full((1, block_size), EOT_ID, dtype=np.uint16)
        last[0, :rest] = stream[full * block_size :]
        rows.append(last)
        sizes.append(np.array([rest], dtype=np.int64))
    return Blocks(np.concatenate(rows), np.concatenate(sizes))
