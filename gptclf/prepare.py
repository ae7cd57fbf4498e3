"""`gptclf prepare`: a labelled table -> ``train.csv``, ``validation.csv``, ``test.csv`` and
``labels.json``, reproducibly and without half-written output.

The steps, all in memory: check the options; load the table (:mod:`gptclf.data`); keep the
requested classes; with ``dedupe``, drop repeated texts; undersample; split (stratified by class, or
the book's plain shuffled split); oversample the training split only. Then the four files are
written into a temporary folder beside ``out`` and moved in, so any bad input leaves ``out`` as it
was. Every random step uses ``seed``: the same input and options give byte-identical files.

Oversampling happens after the split and only to the training split, so a replicated text can never
sit in validation or test too (which would inflate the scores).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import ceil, floor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from gptclf.data import (
    EMPTY_TEXT,
    LABELS_FILE,
    MISSING_LABEL,
    PREPARED_FILES,
    SPLITS,
    LoadedTable,
    load_sms_spam,
    load_table,
    resolve_format,
)
from gptclf.errors import BadInputError, write_error
from gptclf.fileio import sha256_file

if TYPE_CHECKING:
    from gptclf.download import Progress

DATASETS: tuple[str, ...] = ("sms-spam",)
BALANCE_MODES: tuple[str, ...] = ("undersample", "oversample", "none")
DEFAULT_SPLIT = "0.7,0.1,0.2"
#: Bumped when the layout of a prepared folder changes.
PREPARED_FORMAT = "gptclf-prepared/1"
# Reasons a row is left out, in the order the steps run (and the summary lists them).
_REASONS = (EMPTY_TEXT, MISSING_LABEL, "unknown label", "duplicate", "undersampled")
# Listing a thousand unknown labels helps nobody: say how many more there are instead.
_MAX_LISTED = 10


@dataclass
class PrepareSummary:
    """What ``prepare`` did; :meth:`to_dict` is what ``--json`` prints and labels.json records.

    Attributes:
        out: The folder written.
        classes: Class names in order (index = position).
        counts: Split -> class -> rows.
        dropped: Reason -> rows left out (``empty text``, ``missing label``, ``unknown label``,
            ``duplicate``, ``undersampled``).
        oversampled: Copies added to the training split by ``oversample``.
        duplicate_texts: Rows whose text already appeared in an earlier kept row (before
            ``dedupe``; 403 in the SMS file).
        duplicates_across_splits: ``"train/test"`` etc. -> distinct texts found in both splits.
        source: Where the data came from (dataset or file, format, columns, sha256).
        balance: ``undersample``, ``oversample`` or ``none``.
        split: Split -> fraction.
        stratify: Whether each class was split on its own.
        dedupe: Whether repeated texts were dropped.
        seed: Seed of every random step.
    """

    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]
    dropped: dict[str, int]
    oversampled: int
    duplicate_texts: int
    duplicates_across_splits: dict[str, int]
    source: dict[str, Any]
    balance: str
    split: dict[str, float]
    stratify: bool
    dedupe: bool
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "out": str(self.out)}


def parse_split(spec: str | Sequence[float | str]) -> tuple[Fraction, Fraction, Fraction]:
    """Split fractions from ``"0.7,0.1,0.2"`` or ``"0.7,0.1"`` (the rest is test), exactly.

    Fractions are kept as exact rationals, so ``0.7 + 0.1 + 0.2`` sums to 1 and ``0.7 * 1494``
    rounds the way the book's ``int(len(df) * 0.7)`` does.

    Raises:
        BadInputError: Not two or three numbers, a negative one, a zero training fraction, or a
            sum other than 1.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        # str() first: Fraction(0.7) would be the binary float, Fraction("0.7") is 7/10.
        values = [Fraction(str(p).strip()) for p in parts]
    except (ValueError, ZeroDivisionError):
        raise BadInputError(f"--split {spec!r}: give two or three numbers, e.g. 0.7,0.1,0.2") from None
    if len(values) == 2 and sum(values) <= 1:
        values.append(1 - sum(values))
    if len(values) not in (2, 3):
        raise BadInputError(f"--split {spec!r}: give two or three fractions (train,validation[,test])")
    if any(v < 0 for v in values):
        raise BadInputError(f"--split {spec!r}: fractions cannot be negative")
    if sum(values) != 1:
        raise BadInputError(f"--split {spec!r}: fractions must sum to 1 (they sum to {float(sum(values)):g})")
    if values[0] == 0:
        raise BadInputError(f"--split {spec!r}: the training fraction must be above 0")
    return values[0], values[1], values[2]


def parse_classes(spec: str | Sequence[str] | None) -> list[str] | None:
    """Class names from ``"spam,ham"`` (order kept, white space stripped); None stays None.

    Raises:
        BadInputError: An empty name, a name given twice, or fewer than two names.
    """
    if spec is None:
        return None
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    if any(not n for n in names):
        raise BadInputError(f"--classes {spec!r}: a class name is empty")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInputError(f"--classes names {', '.join(map(repr, twice))} more than once")
    if len(names) < 2:
        raise BadInputError(f"--classes {spec!r}: a classifier needs at least two classes")
    return names


def min_rows_per_class(fractions: Sequence[Fraction]) -> int:
    """Fewest rows a class needs so that every split with a fraction above 0 gets one of them,
    and so does any larger class."""
    smallest = min(f for f in fractions if f > 0)
    n = ceil(1 / smallest)  # from here on every positive split has a whole row before rounding
    while n > 1 and _fills_every_split(n - 1, fractions):
        n -= 1
    return n


def prepare(
    out: Path,
    *,
    dataset: str | None = None,
    input_path: Path | None = None,
    fmt: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str = "utf-8",
    classes: str | Sequence[str] | None = None,
    balance: str | None = None,
    split: str | Sequence[float | str] = DEFAULT_SPLIT,
    stratify: bool = True,
    seed: int = 123,
    dedupe: bool = False,
    drop_unknown: bool = False,
    force: bool = False,
    home: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
) -> PrepareSummary:
    """Turn a labelled table into a prepared folder (see the module docstring for the steps).

    Args:
        out: Folder to write ``train.csv``, ``validation.csv``, ``test.csv`` and labels.json into.
        dataset: ``"sms-spam"``: the SMS Spam Collection from the cache, downloaded if missing.
        input_path: A labelled CSV, TSV, JSONL or SMS-format file (instead of ``dataset``).
        fmt: Format of ``input_path``; default from its extension.
        text_column: Text column of ``input_path`` (default ``text``).
        label_column: Label column of ``input_path`` (default ``label``).
        encoding: Text encoding of ``input_path``.
        classes: Class names in order, e.g. ``"spam,ham"``; default: the sorted distinct labels.
        balance: ``undersample`` (down to the smallest class), ``oversample`` (training split
            replicated up to its largest class) or ``none``. Default: ``undersample`` for
            ``sms-spam`` (the book's recipe), ``none`` for other input.
        split: Train, validation and test fractions; with two, test is the rest.
        stratify: Split each class on its own, so each keeps its proportion in every split
            (within one row). False: the book's split of the shuffled table.
        seed: Seed of every random step.
        dedupe: Drop rows whose text appeared earlier (first occurrence kept).
        drop_unknown: Drop rows whose label is not among ``classes`` instead of refusing them.
        force: Replace a prepared set already in ``out``.
        home: Cache folder for ``dataset`` (default :func:`gptclf.config.cache_home`).
        mirror: Mirror URL or folder for downloading ``dataset``.
        progress: Receives download progress events.

    Returns:
        The summary, also recorded in labels.json.

    Raises:
        BadInputError: Any bad option or input; ``out`` is then left as it was.
        DownloadError: ``dataset`` is not cached and cannot be downloaded.
    """
    out = Path(out)
    fractions, names, balance = _check_options(
        out, dataset, input_path, fmt, text_column, label_column, classes, balance, split, seed, force
    )
    if dataset is not None:
        from gptclf.download import ensure_sms_spam  # only this path needs the downloader

        path = ensure_sms_spam(home, mirror, progress)
        table = load_sms_spam(path)
        source: dict[str, Any] = {"dataset": dataset, "file": path.name}
    else:
        assert input_path is not None
        path = Path(input_path)
        table = load_table(path, text_column, label_column, fmt, encoding)
        source = {"file": path.name, "format": resolve_format(path, fmt)}
        if source["format"] != "sms":
            source |= {"text_column": text_column or "text", "label_column": label_column or "label"}
        source["encoding"] = encoding
    source["sha256"] = sha256_file(path)

    frame, dropped, names = _select_classes(table, names, drop_unknown, path)
    duplicate_texts = int(frame["text"].duplicated().sum())
    if dedupe and duplicate_texts:
        frame = frame[~frame["text"].duplicated()]
        dropped["duplicate"] = duplicate_texts
    _check_class_sizes(frame, names, fractions)
    if balance == "undersample":
        frame, dropped["undersampled"] = _undersample(frame, names, seed)
    parts = _split(frame, names, fractions, stratify, seed)
    oversampled = 0
    if balance == "oversample":
        parts["train"], oversampled = _oversample(parts["train"], names, seed)

    summary = PrepareSummary(
        out=out,
        classes=names,
        counts={s: {c: int((parts[s]["label"] == c).sum()) for c in names} for s in SPLITS},
        dropped={r: dropped[r] for r in _REASONS if dropped.get(r)},
        oversampled=oversampled,
        duplicate_texts=duplicate_texts,
        duplicates_across_splits=_shared_texts(parts),
        source=source,
        balance=balance,
        split={s: float(f) for s, f in zip(SPLITS, fractions, strict=True)},
        stratify=stratify,
        dedupe=dedupe,
        seed=seed,
    )
    _write(out, parts, summary)
    return summary


# --- checks --------------------------------------------------------------------------------------


def _check_options(
    out: Path,
    dataset: str | None,
    input_path: Path | None,
    fmt: str | None,
    text_column: str | None,
    label_column: str | None,
    classes: str | Sequence[str] | None,
    balance: str | None,
    split: str | Sequence[float | str],
    seed: int,
    force: bool,
) -> tuple[tuple[Fraction, Fraction, Fraction], list[str] | None, str]:
    """Every check that needs no data, all reported at once, before anything is downloaded."""
    problems: list[str] = []
    if (dataset is None) == (input_path is None):
        problems.append("give either --dataset sms-spam or --input FILE")
    elif dataset is not None:
        if dataset not in DATASETS:
            problems.append(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
        if fmt or text_column or label_column:
            problems.append("--input-format, --text-column and --label-column go with --input, not --dataset")
    if balance is None:
        balance = "undersample" if dataset is not None else "none"
    elif balance not in BALANCE_MODES:
        problems.append(f"unknown --balance {balance!r} (choose from: {', '.join(BALANCE_MODES)})")
    if not 0 <= seed < 2**32:
        problems.append(f"--seed must be between 0 and 2**32 - 1 (got {seed})")
    fractions: tuple[Fraction, Fraction, Fraction] = (Fraction(1), Fraction(0), Fraction(0))
    try:
        fractions = parse_split(split)
    except BadInputError as exc:
        problems.append(str(exc))
    names = None
    try:
        names = parse_classes(classes)
    except BadInputError as exc:
        problems.append(str(exc))
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out} is a file, not a folder")
    elif unwritable := _unwritable(out):
        problems.append(unwritable)
    elif not force:
        present = [name for name in PREPARED_FILES if (out / name).exists()]
        if present:
            problems.append(
                f"{out} already holds a prepared set ({', '.join(present)}); pass --force to replace it"
            )
    if problems:
        raise BadInputError("; ".join(problems))
    return fractions, names, balance


def _unwritable(out: Path) -> str | None:
    """Why ``out`` cannot be written, or None. Found by writing (a folder made and removed at
    once), since permission bits say nothing of read-only mounts, /proc, or root: the temporary
    folder goes beside ``out``, and the files into ``out`` where it exists already."""
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # the folders up to here are made by the write
    if not ancestor.is_dir():
        return f"--out {out} is under {ancestor}, which is a file, not a folder"
    for folder in ([out] if out.is_dir() else []) + [ancestor]:
        probe = folder / f".gptclf-probe-{secrets.token_hex(6)}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return f"--out {out}: cannot write into {folder} ({reason}); choose a folder you can write to"
    return None


def _select_classes(
    table: LoadedTable, names: list[str] | None, drop_unknown: bool, path: Path
) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """Keep the rows of the requested classes; find the classes when none were named."""
    frame, dropped = table.frame, dict(table.dropped)
    counts = frame["label"].value_counts()
    if frame.empty:
        reasons = ", ".join(f"{n} {reason}" for reason, n in dropped.items())
        raise BadInputError(f"{path} has no row with both a text and a label ({reasons})")
    if names is None:
        names = sorted(counts.index)
        if len(names) < 2:
            raise BadInputError(
                f"{path} has a single class ({names[0]!r}, {counts.iloc[0]} rows); "
                "a classifier needs two or more"
            )
        return frame, dropped, names
    problems = []
    unknown = counts[~counts.index.isin(names)].sort_values(ascending=False, kind="stable")
    if len(unknown) and not drop_unknown:
        listed = ", ".join(f"{label!r} ({n} rows)" for label, n in unknown.iloc[:_MAX_LISTED].items())
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        problems.append(
            f"labels not among --classes: {listed}{more}; add them to --classes or pass --drop-unknown"
        )
    absent = [name for name in names if name not in counts.index]
    if absent:  # most likely a typo, which the list of unknown labels above helps to spot
        problems.append(f"--classes names {', '.join(map(repr, absent))}, which no row of {path} carries")
    if problems:
        raise BadInputError("; ".join(problems))
    if len(unknown):
        dropped["unknown label"] = int(unknown.sum())
        frame = frame[frame["label"].isin(names)]
    return frame, dropped, names


def _check_class_sizes(frame: pd.DataFrame, names: list[str], fractions: Sequence[Fraction]) -> None:
    counts = frame["label"].value_counts()
    short = {
        c: int(counts.get(c, 0)) for c in names if not _fills_every_split(int(counts.get(c, 0)), fractions)
    }
    if short:
        listed = ", ".join(f"{c!r} has {n}" for c, n in short.items())
        shares = "/".join(f"{float(f):g}" for f in fractions)
        raise BadInputError(
            f"too few rows for the split {shares}: {listed}; each class needs at least "
            f"{min_rows_per_class(fractions)} rows (add data, or change --split)"
        )


def _fills_every_split(n: int, fractions: Sequence[Fraction]) -> bool:
    return all(size > 0 for size, f in zip(_allocate(n, fractions), fractions, strict=True) if f > 0)


# --- balance and split ---------------------------------------------------------------------------


def _allocate(n: int, fractions: Sequence[Fraction]) -> list[int]:
    """Split ``n`` rows by ``fractions`` with largest remainders: each share is within one row of
    ``n * fraction``; ties go to the earlier split. A zero fraction never gets a row."""
    exact = [n * f for f in fractions]
    sizes = [floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _undersample(frame: pd.DataFrame, names: list[str], seed: int) -> tuple[pd.DataFrame, int]:
    """Sample every class down to the smallest one; classes concatenated in name order, as the book
    does (``pd.concat([ham_subset, spam])``). Name order, not ``--classes`` order: the class order
    sets label ids only, and must not change which rows land in which split."""
    groups = [frame[frame["label"] == c] for c in sorted(names)]
    smallest = min(len(g) for g in groups)
    kept = [g.sample(smallest, random_state=seed) if len(g) > smallest else g for g in groups]
    return pd.concat(kept), len(frame) - smallest * len(groups)


def _split(
    frame: pd.DataFrame, names: list[str], fractions: Sequence[Fraction], stratify: bool, seed: int
) -> dict[str, pd.DataFrame]:
    # The book: df.sample(frac=1, random_state=123), then int(n * 0.7) train, int(n * 0.1)
    # validation, the rest test. Stratified: the same shuffle, then each class cut on its own.
    shuffled = frame.sample(frac=1, random_state=seed).reset_index(drop=True)
    split_of = pd.Series("", index=shuffled.index)
    groups = [shuffled[shuffled["label"] == c].index for c in names] if stratify else [shuffled.index]
    for index in groups:
        if stratify:
            sizes = _allocate(len(index), fractions)
        else:
            sizes = [int(len(index) * f) for f in fractions[:2]]
            sizes.append(len(index) - sum(sizes))
            if fractions[2] == 0:  # the rounding remainder goes to train when there is no test
                sizes = [sizes[0] + sizes[2], sizes[1], 0]
        start = 0
        for name, size in zip(SPLITS, sizes, strict=True):
            split_of.loc[index[start : start + size]] = name
            start += size
    return {name: shuffled[split_of == name].reset_index(drop=True) for name in SPLITS}


def _oversample(train: pd.DataFrame, names: list[str], seed: int) -> tuple[pd.DataFrame, int]:
    """Replicate each smaller class of the training split up to the largest: whole copies first,
    then a seeded sample for the remainder, so every row appears as evenly often as possible."""
    groups = [train[train["label"] == c] for c in sorted(names)]  # independent of --classes order
    largest = max(len(g) for g in groups)
    extra = []
    for group in groups:
        copies, rest = divmod(largest - len(group), len(group))
        extra += [group] * copies + [group.sample(rest, random_state=seed)]
    added = sum(len(e) for e in extra)
    mixed = pd.concat([train, *extra]).sample(frac=1, random_state=seed).reset_index(drop=True)
    return mixed, added


def _shared_texts(parts: dict[str, pd.DataFrame]) -> dict[str, int]:
    texts = {name: set(part["text"]) for name, part in parts.items()}
    pairs = [("train", "validation"), ("train", "test"), ("validation", "test")]
    return {f"{a}/{b}": len(texts[a] & texts[b]) for a, b in pairs}


# --- writing -------------------------------------------------------------------------------------


def _csv_bytes(part: pd.DataFrame) -> bytes:
    # The csv module's default CRLF ending matters: with "\n" it would not quote a lone "\r" in a
    # text, and a reader would split the row there.
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(zip(part["text"], part["label"], strict=True))
    return buffer.getvalue().encode("utf-8")


def _write(out: Path, parts: dict[str, pd.DataFrame], summary: PrepareSummary) -> None:
    """Write the four files into a fresh folder beside ``out``, then move them in (labels.json
    last, and it records every split's checksum, so a folder left half-replaced is detected)."""
    files = {f"{name}.csv": _csv_bytes(parts[name]) for name in SPLITS}
    meta = {"format": PREPARED_FORMAT, **summary.to_dict(), "files": {}}
    del meta["out"]  # the folder may move; the files must not change with it
    for name, data in files.items():
        meta["files"][name] = {
            "rows": len(parts[name.removesuffix(".csv")]),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    files[LABELS_FILE] = (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    assert tuple(files) == PREPARED_FILES

    try:
        _move_in(out, files)
    except OSError as exc:  # a disk that fills after the checks: one line, no debris
        raise write_error(exc, out, needed=sum(map(len, files.values()))) from None


def _move_in(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a temporary folder beside ``out``, then move them into ``out``; the
    temporary folder is removed whatever happens."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp) so the folder gets the umask's permissions when it becomes `out`.
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_file(tmp / name, data)
        if not out.exists():
            with contextlib.suppress(OSError):  # created meanwhile: fall back to moving files
                os.rename(tmp, out)  # the whole set appears at once
                return
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_file(path: Path, data: bytes) -> None:
    """``data`` into a new file, on the disk (fsync) before the file is moved into place."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
