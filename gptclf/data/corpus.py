"""Unlabelled texts for ``gptclf adapt``: from files and stdin, or from a prepared folder.

Files go through :func:`gptclf.data.tables.read_texts` (one path for TXT one text a line, CSV, TSV,
JSONL, Parquet, compressed files and stdin); empty texts are skipped. A prepared folder gives its
train and validation texts and the rows its preparation set aside (undersampling, deduplication,
): those are the texts of the file it was made from that are in none of
its splits. The file is the cached copy of a known dataset (the SMS Spam Collection) or the one
given, and must be the file labels.json records (its sha256). The test split is never a source of
texts: its texts are read only to be left out of the set-aside rows.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptclf.data.decoding import is_stdin
from gptclf.data.prepare import KNOWN_DATASETS
from gptclf.data.prepared import read_prepared
from gptclf.data.tables import iter_table, read_texts
from gptclf.errors import BadInputError
from gptclf.fileio import sha256_file


@dataclass
class TextSource:
    """Texts of one origin, and how it is named to the user.

    Attributes:
        name: ``train.csv of DIR``, a file's path, ``stdin``.
        texts: The non-empty texts, in order.
    """

    name: str
    texts: list[str] = field(default_factory=list)


def file_texts(path: str, text_column: str | None, fmt: str | None, encoding: str) -> TextSource:
    """The non-empty texts of a file or of stdin (``-``).

    Raises:
        BadInputError: Missing file, unknown format, missing column, undecodable bytes.
    """
    texts = [t for t in read_texts(path, text_column, fmt, encoding) if t.strip()]
    return TextSource("stdin" if is_stdin(path) else str(path), texts)


@dataclass
class PreparedTexts:
    """The texts of a prepared folder that adapt reads.

    Attributes:
        sources: train, validation and, where the source file was found, the set-aside rows.
        note: Why the set-aside rows were not read (None: they were, or there were none).
    """

    sources: list[TextSource]
    note: str | None = None


def prepared_texts(
    folder: Path, source_file: Path | None, known: Mapping[str, Path] | None = None
) -> PreparedTexts:
    """The train and validation texts of ``folder`` and the rows its preparation set aside.

    Args:
        folder: A prepared folder.
        source_file: The file it was made from (None: a known dataset's copy in ``known``).
        known: Where the known datasets' files are (the cache), by name.

    Raises:
        BadInputError: Not a prepared folder, or a ``source_file`` that is not the recorded one.
    """
    prepared = read_prepared(folder)
    sources = [
        TextSource(f"{split}.csv of {folder}", [t for t in prepared.splits[split]["text"] if t.strip()])
        for split in ("train", "validation")
    ]
    record: dict[str, Any] = prepared.meta.get("source") or {}
    path, note = _source_path(record, source_file, known or {}, folder)
    if path is not None:
        # Every split's texts are left out: train and validation are read above, test never is.
        in_splits = {_digest(t) for frame in prepared.splits.values() for t in frame["text"]}
        aside = [t for t in _source_texts(path, record) if t.strip() and _digest(t) not in in_splits]
        sources.append(TextSource(f"set-aside rows of {path} (prepare left them out of every split)", aside))
    prepared.splits.clear()
    return PreparedTexts(sources, note)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _source_path(
    record: dict[str, Any], given: Path | None, known: Mapping[str, Path], folder: Path
) -> tuple[Path | None, str | None]:
    """The source file to read the set-aside rows from, or None and why not."""
    recorded = record.get("sha256")
    name = record.get("file", "its input")
    if given is not None:
        given = Path(given).expanduser()
        if not given.is_file():
            raise BadInputError(f"--source {given}: no such file")
        if recorded is not None and sha256_file(given) != recorded:
            raise BadInputError(
                f"--source {given} is not the file {folder} was prepared from (its sha256 differs "
                f"from labels.json's record of {name})"
            )
        return given, None
    cached = known.get(record.get("dataset", ""))
    if cached is not None and cached.is_file() and (recorded is None or sha256_file(cached) == recorded):
        return cached, None
    if record.get("file") == "stdin" or recorded is None:
        return None, f"the rows prepare set aside were not read: {folder} was prepared from stdin"
    return None, (
        f"the rows prepare set aside were not read: give the file {folder} was prepared from "
        f"({name}) with --source FILE"
    )


def _source_texts(path: Path, record: dict[str, Any]) -> Iterator[str]:
    """The texts of the source file as prepare read it (its format, columns and encoding)."""
    dataset = KNOWN_DATASETS.get(record.get("dataset", ""))
    fmt = dataset.fmt if dataset else record.get("format")
    encoding = dataset.encoding if dataset else record.get("encoding", "utf-8")
    # As prepare read it: records without a text or a label are dropped there and here alike.
    pairs: Iterable[tuple[str, str]] = iter_table(
        path, Counter(), record.get("text_column"), record.get("label_column"), fmt, encoding
    )
    return (text for text, _ in pairs)
