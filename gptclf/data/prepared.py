"""The prepared-folder format: what ``gptclf prepare`` writes and ``finetune`` / ``evaluate`` read.

A prepared folder holds ``train.csv``, ``validation.csv`` and ``test.csv`` (header ``text,label``,
RFC 4180 with CRLF line ends, UTF-8) and ``labels.json``: the format tag, the class names in order
(a class's index is its position), the metadata of the run that wrote it, and every split file's
row count and sha256. labels.json is written last and its checksums are checked on reading, so a
folder left half-replaced, or a split file edited by hand, is refused rather than trained on.

Everything here is byte-exact: the same splits and metadata give the same files, so that
:func:`prepared_fingerprint` (recorded by a run) names the data a run saw.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gptclf.data.labels import reader_of
from gptclf.data.rows import SPLITS
from gptclf.errors import BadInputError, write_error
from gptclf.fileio import exchange_paths, fsync_folder, link_tree, remove_stale_temp_files, temp_dir_for
from gptclf.progress import Progress

#: The file holding the class names and the metadata of a prepared folder.
LABELS_FILE = "labels.json"
#: Everything a prepared folder holds; labels.json last, as it is written last.
PREPARED_FILES: tuple[str, ...] = (*(f"{s}.csv" for s in SPLITS), LABELS_FILE)
#: Bumped when the layout of a prepared folder changes.
PREPARED_FORMAT = "gptclf-prepared/1"


@dataclass
class PreparedData:
    """A prepared folder read back.

    Attributes:
        classes: Class names; a class's index is its position.
        splits: ``"train"``, ``"validation"``, ``"test"`` -> frame with ``text`` and ``label``
            (the class name; for multi-label data a tuple of label names, possibly empty).
        meta: Everything labels.json holds (source, seed, split, balance, counts, ...).
    """

    classes: list[str]
    splits: dict[str, pd.DataFrame]
    meta: dict[str, Any]


# --- writing -------------------------------------------------------------------------------------


def write_prepared(out: Path, parts: Mapping[str, pd.DataFrame], meta: Mapping[str, Any]) -> None:
    """Write a prepared folder from frames: :func:`write_prepared_rows` of their ``text`` and
    ``label`` columns.

    Args:
        out: The folder (made if missing; files of another prepared set in it are replaced).
        parts: Split name -> frame with ``text`` and ``label``, for every name of :data:`SPLITS`.
        meta: As :func:`write_prepared_rows`'s.
    """
    rows = {name: zip(parts[name]["text"], parts[name]["label"], strict=True) for name in SPLITS}
    write_prepared_rows(out, rows, meta)


def write_prepared_rows(
    out: Path,
    parts: Mapping[str, Iterable[tuple[str, str]]],
    meta: Mapping[str, Any],
    *,
    progress: Progress | None = None,
    total: int | None = None,
) -> None:
    """Write a prepared folder: the three split files and labels.json, all or nothing.

    The rows are written as they come, a batch at a time (memory stays flat whatever their
    number), into a fresh folder beside ``out``, which is then moved in (labels.json last), so
    ``out`` never holds a mix that :func:`read_prepared` would accept.

    Args:
        out: The folder (made if missing; files of another prepared set in it are replaced).
        parts: Split name -> its ``(text, label)`` rows, for every name of :data:`SPLITS`.
        meta: What labels.json records besides the format tag and the files; must hold
            ``classes``. Its key order is kept, as it is part of the bytes.
        progress: Shows the rows written (a step ``writing`` of ``total`` rows).
        total: The rows of all three splits, for the progress.

    Raises:
        DiskFullError: The disk filled while writing (one line with the bytes the whole set
            needs, no temporary folder left).
        GptclfError: Another write error, named with ``out``.
    """
    assert "classes" in meta and "format" not in meta and "files" not in meta
    files = [_SplitFile(f"{name}.csv") for name in SPLITS]

    def fill(folder: Path) -> None:
        shown = progress or Progress()
        shown.begin("writing", total=total, unit="rows")
        try:
            for file in files:  # after a failed write, the rest counted only (for the message)
                failed = any(f.error is not None for f in files)
                file.write(None if failed else folder, parts[file.name.removesuffix(".csv")], shown)
        finally:
            shown.end()
        labels = {"format": PREPARED_FORMAT, **meta, "files": {f.name: f.record() for f in files}}
        data = (json.dumps(labels, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        failed = next((f.error for f in files if f.error is not None), None)
        if failed is not None:  # the set's whole size is known now: say it
            raise _Unwritten(failed, sum(f.size for f in files) + len(data))
        _write_file(folder / LABELS_FILE, data)

    try:
        _move_in(out, fill, PREPARED_FILES)
    except _Unwritten as unwritten:  # a disk that fills after the checks: one line, no debris
        raise write_error(unwritten.error, out, needed=unwritten.needed) from None
    except OSError as exc:
        raise write_error(exc, out) from None


#: Rows encoded and written at a time.
_WRITE_BATCH = 4096


class _Unwritten(Exception):
    """A split file could not be written; ``needed``: the bytes of the whole set."""

    def __init__(self, error: OSError, needed: int) -> None:
        super().__init__(str(error))
        self.error, self.needed = error, needed


class _SplitFile:
    """One split file written a batch of rows at a time, its rows, bytes and sha256 counted.

    After a write error the rows are still encoded and counted (not written), so that the
    message can say how many bytes the whole set needs; the error is kept in ``error``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows = self.size = 0
        self.digest = hashlib.sha256()
        self.error: OSError | None = None

    def record(self) -> dict[str, Any]:
        """labels.json's entry of the file."""
        return {"rows": self.rows, "sha256": self.digest.hexdigest()}

    def write(self, folder: Path | None, rows: Iterable[tuple[str, str]], progress: Progress) -> None:
        """Write the header and ``rows`` into ``folder`` (None: count them only), on the disk
        (fsync) when done; a write error is kept in ``error`` and the rest counted only."""
        batches = _batches(rows)
        header = self._encode([("text", "label")])
        if folder is None:
            self._count(batches)
            return
        try:
            with open(folder / self.name, "wb") as fh:
                fh.write(header)
                for batch in batches:
                    fh.write(self._encode(batch))
                    self.rows += len(batch)
                    progress.advance(len(batch))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self.error = exc
            self._count(batches)

    def _count(self, batches: Iterator[list[tuple[str, str]]]) -> None:
        for batch in batches:
            self._encode(batch)
            self.rows += len(batch)

    def _encode(self, batch: list[tuple[str, str]]) -> bytes:
        # The csv module's default CRLF ending matters: with "\n" it would not quote a lone "\r" in a
        # text, and a reader would split the row there.
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows(batch)
        data = buffer.getvalue().encode("utf-8")
        self.digest.update(data)
        self.size += len(data)
        return data


def _batches(rows: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """``rows`` in lists of :data:`_WRITE_BATCH`."""
    rows = iter(rows)
    while batch := list(itertools.islice(rows, _WRITE_BATCH)):
        yield batch


def _move_in(out: Path, fill: Callable[[Path], None], names: Sequence[str]) -> None:
    """Have ``fill`` write the files ``names`` into a temporary folder beside ``out``, and make it
    ``out`` whole.

    An existing ``out`` keeps its other entries (hard-linked into the new folder), and the two
    folders are exchanged atomically where the system allows it (Linux's ``renameat2``), so a
    signal or a kill at any moment leaves the old set or the new one, never a mix; elsewhere the
    files are moved in one by one, ``labels.json`` last. The temporary folder is named with this
    process's id: whatever a kill -9 leaves of it, the next ``prepare`` beside it removes.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out.parent)
    tmp = temp_dir_for(out)  # the umask's permissions, as the folder becomes `out`
    try:
        fill(tmp)
        if not out.exists():
            with contextlib.suppress(OSError):  # created meanwhile: fall back to moving files
                os.rename(tmp, out)  # the whole set appears at once
                fsync_folder(out.parent)
                return
        for entry in out.iterdir():
            if entry.name not in names:
                link_tree(entry, tmp / entry.name)  # the folder's other files stay
        if exchange_paths(tmp, out):
            fsync_folder(out.parent)
            return  # `tmp` now holds the old set, removed below
        for name in names:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_file(path: Path, data: bytes) -> None:
    """``data`` into a new file, on the disk (fsync) before the file is moved into place."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# --- reading -------------------------------------------------------------------------------------


def read_prepared(directory: Path) -> PreparedData:
    """Read a prepared folder and check that its files belong together.

    Raises:
        BadInputError: A file is missing, labels.json is malformed, a split file does not match
            the checksum labels.json recorded for it, or a label is not one of the classes.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    splits: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = _checked_split(directory, split, meta)
        with open(path, encoding="utf-8", newline="") as fh:
            splits[split] = _split_frame(list(_split_records(path, fh, split_rows(meta, split))), meta, path)
    return PreparedData(classes=meta["classes"], splits=splits, meta=meta)


def read_meta(directory: Path) -> dict[str, Any]:
    """labels.json of a prepared folder (the format tag, classes, metadata, each file's rows and
    checksum), once the folder is known to hold every file.

    Raises:
        BadInputError: A file is missing or labels.json is malformed.
    """
    directory = Path(directory)
    _require_prepared(directory)
    return _read_labels_json(directory / LABELS_FILE)


#: Rows of a split parsed at a time when it is streamed (:func:`iter_split`).
SPLIT_CHUNK = 65_536


def split_rows(meta: Mapping[str, Any], split: str) -> int | None:
    """How many rows labels.json records for ``split`` (None when it does not say)."""
    rows = meta.get("files", {}).get(f"{split}.csv", {}).get("rows")
    return rows if isinstance(rows, int) else None


def iter_split(
    directory: Path, split: str, meta: Mapping[str, Any], chunk: int | None = None
) -> Iterator[pd.DataFrame]:
    """One split of a prepared folder as frames of at most ``chunk`` rows (``text`` and ``label``,
    parsed as :func:`read_prepared` parses them), after its checksum is checked: memory in the
    chunk, not in the split (default :data:`SPLIT_CHUNK`). An empty split gives no frame.

    Raises:
        BadInputError: As :func:`read_prepared` (the checksum before any row).
    """
    directory = Path(directory)
    path = _checked_split(directory, split, meta)
    with open(path, encoding="utf-8", newline="") as fh:
        records = _split_records(path, fh, split_rows(meta, split))
        while block := list(itertools.islice(records, chunk or SPLIT_CHUNK)):
            yield _split_frame(block, meta, path)


def _split_frame(records: list[list[str]], meta: Mapping[str, Any], path: Path) -> pd.DataFrame:
    """``text`` and ``label`` of a split's records, the labels as the folder's reader holds them in
    memory (a class name per cell, or a list of labels as a tuple)."""
    frame = pd.DataFrame({"text": [r[0] for r in records], "label": [r[1] for r in records]})
    return reader_of(meta).parse(frame, meta["classes"], meta, str(path))


def _checked_split(directory: Path, split: str, meta: Mapping[str, Any]) -> Path:
    """The path of ``split``'s file once its SHA-256 (read a block at a time) is the one
    labels.json recorded.

    Raises:
        BadInputError: The file was edited or left from another prepare run.
    """
    name = f"{split}.csv"
    recorded = meta.get("files", {}).get(name, {}).get("sha256")
    if recorded != _file_sha256(directory / name):
        raise BadInputError(
            f"{directory / name} does not match labels.json (edited, or left from another "
            "prepare run); run `gptclf prepare --force` again"
        )
    return directory / name


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def prepared_fingerprint(directory: Path) -> str:
    """SHA-256 over the four files of a prepared folder, for recording which data a run saw.

    Raises:
        BadInputError: A file is missing.
    """
    directory = Path(directory)
    _require_prepared(directory)
    digest = hashlib.sha256()
    for name in PREPARED_FILES:
        file_hash = _file_sha256(directory / name)
        digest.update(f"{name}\0{file_hash}\n".encode())
    return digest.hexdigest()


def _require_prepared(directory: Path) -> None:
    missing = [name for name in PREPARED_FILES if not (directory / name).is_file()]
    if missing:
        raise BadInputError(
            f"{directory} is not a prepared data folder (missing {', '.join(missing)}); "
            f"run `gptclf prepare --out {directory}` first"
        )


def _read_labels_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc})") from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise BadInputError(f"{path}: 'classes' must list two or more distinct names")
    return meta


def _split_records(path: Path, fh: Iterable[str], rows: int | None) -> Iterator[list[str]]:
    """The ``[text, label]`` records of a split file open as text (``newline=""``), after its
    header; ``rows``: how many labels.json says it holds (None: not checked).

    A file whose checksum matches was written by ``prepare`` and none of this fails; it guards a
    folder whose labels.json was edited together with the file.

    Raises:
        BadInputError: The header is not ``text,label``; a line that is not UTF-8 or not CSV, a
            record without exactly two fields, or another number of rows than ``rows``.
    """
    again = "run `gptclf prepare --force` again"
    reader = csv.reader(fh, strict=True)
    count = 0
    try:
        header = next(reader, None)
        if header != ["text", "label"]:
            raise BadInputError(f"{path}: expected the header text,label, found {header}")
        for record in reader:
            count += 1
            if len(record) != 2:
                raise BadInputError(
                    f"{path}: line {reader.line_num} has {len(record)} fields, not text,label; {again}"
                )
            yield record
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: after line {reader.line_num} it is not valid utf-8; {again}") from None
    except csv.Error as exc:
        raise BadInputError(f"{path}: line {reader.line_num} is not valid CSV ({exc}); {again}") from None
    if rows is not None and count != rows:
        raise BadInputError(f"{path} holds {count:,} rows and labels.json says {rows:,}; {again}")
