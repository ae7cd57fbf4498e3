"""Which rows go where: the classes of a labelled table, label ids, duplicates, balancing and the
train/validation/test split, reproducibly (every random step takes the seed).

Balancing and splitting never depend on the order of ``--classes`` (which sets the label ids only):
classes are grouped in name order. Oversampling happens after the split and only to the training
split, so a replicated text can never sit in validation or test too (which would inflate the
scores). Split fractions are exact rationals (:func:`parse_split`).

Everything is decided on compact arrays, never on the texts: a label id per row in, row positions
per split out (:func:`plan_split`), so ``prepare`` holds a few bytes a row whatever the texts'
size. The random steps are those of the pandas code this replaced (``DataFrame.sample`` with
``random_state=seed``: a fresh ``RandomState(seed).choice`` each time), so the same input, options
and seed still give the same files byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import ceil, floor
from pathlib import Path

import numpy as np
import pandas as pd

from gptclf.errors import BadInputError

#: The three splits, in the order they are written and reported.
SPLITS: tuple[str, ...] = ("train", "validation", "test")

#: How classes can be balanced.
BALANCE_MODES: tuple[str, ...] = ("undersample", "oversample", "none")
#: Reasons a row is left out here (loading has its own, see :mod:`gptclf.data.tables`).
UNKNOWN_LABEL = "unknown label"
DUPLICATE = "duplicate"
UNDERSAMPLED = "undersampled"
#: Split fractions: train, validation, test.
Fractions = tuple[Fraction, Fraction, Fraction]
# Listing a thousand unknown labels helps nobody: say how many more there are instead.
_MAX_LISTED = 10


@dataclass
class Split:
    """Rows balanced and split.

    Attributes:
        parts: ``"train"``, ``"validation"``, ``"test"`` -> row positions (int array, in the
            order the split file lists them; oversampled rows repeat).
        undersampled: Rows left out by ``undersample``.
        oversampled: Copies added to the training split by ``oversample``.
    """

    parts: dict[str, np.ndarray]
    undersampled: int = 0
    oversampled: int = 0


def parse_split(spec: str | Sequence[float | str]) -> Fractions:
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


def label_ids(frame: pd.DataFrame, classes: Sequence[str]) -> list[int]:
    """Class indices of ``frame["label"]``: the position of each label in ``classes``.

    Raises:
        BadInputError: A label is not one of ``classes``.
    """
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame["label"]) - index.keys())
    if unknown:
        raise BadInputError(f"labels not among the classes {list(classes)}: {unknown}")
    return [index[label] for label in frame["label"]]


def choose_classes(
    counts: dict[str, int], names: list[str] | None, drop_unknown: bool, path: Path, dropped: dict[str, int]
) -> list[str]:
    """The classes of a table whose labels were counted; refuse what cannot be prepared.

    Args:
        counts: Label -> rows carrying it, in the order the labels first appear.
        names: Class names in order, or None: the sorted labels.
        drop_unknown: Rows of other labels are to be dropped (the caller drops them) rather than
            refused.
        path: The input, for messages.
        dropped: The rows dropped while reading, by reason (named when no row is left).

    Returns:
        The classes in order.

    Raises:
        BadInputError: No usable row, a single class, labels not among ``names`` (without
            ``drop_unknown``), or a name that no row carries; all problems in one message.
    """
    # Most rows first, ties in order of appearance (what pandas' value_counts gives).
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    if not ranked:
        reasons = ", ".join(f"{n} {reason}" for reason, n in dropped.items())
        raise BadInputError(f"{path} has no row with both a text and a label ({reasons})")
    if names is None:
        names = sorted(counts)
        if len(names) < 2:
            raise BadInputError(
                f"{path} has a single class ({names[0]!r}, {ranked[0][1]} rows); "
                "a classifier needs two or more"
            )
        return names
    problems = []
    unknown = [(label, n) for label, n in ranked if label not in names]
    if unknown and not drop_unknown:
        listed = ", ".join(f"{label!r} ({n} rows)" for label, n in unknown[:_MAX_LISTED])
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        problems.append(
            f"labels not among --classes: {listed}{more}; add them to --classes or pass --drop-unknown"
        )
    absent = [name for name in names if name not in counts]
    if absent:  # most likely a typo, which the list of unknown labels above helps to spot
        problems.append(f"--classes names {', '.join(map(repr, absent))}, which no row of {path} carries")
    if problems:
        raise BadInputError("; ".join(problems))
    return names


def plan_split(
    labels: np.ndarray, names: list[str], fractions: Fractions, *, balance: str, stratify: bool, seed: int
) -> Split:
    """Balance the classes and split the rows into train, validation and test.

    Args:
        labels: The class of each row (an index into ``names``), rows in file order.
        names: The classes.
        fractions: Train, validation and test fractions.
        balance: ``undersample`` (every class down to the smallest, before the split),
            ``oversample`` (the training split's classes replicated up to its largest) or ``none``.
        stratify: Split each class on its own, so each keeps its proportion in every split
            (within one row). False: the book's split of the shuffled table.
        seed: Seed of every random step.

    Returns:
        The positions (into ``labels``) of each split's rows.

    Raises:
        BadInputError: A class has too few rows to give every split with a share a row, or none
            in the training split to oversample.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    _check_class_sizes({c: int(n) for c, n in zip(names, counts, strict=True)}, names, fractions)
    rows = np.arange(len(labels))
    undersampled = 0
    if balance == "undersample":
        rows, undersampled = _undersample(rows, labels, names, seed)
    parts = _split(rows, labels, names, fractions, stratify, seed)
    oversampled = 0
    if balance == "oversample":
        parts["train"], oversampled = _oversample(parts["train"], labels, names, seed)
    return Split(parts=parts, undersampled=undersampled, oversampled=oversampled)


def shared_texts(text_ids: dict[str, np.ndarray]) -> dict[str, int]:
    """``"train/test"`` etc. -> how many distinct texts two splits have in common, given each
    split's text ids (equal texts, equal ids)."""
    pairs = [("train", "validation"), ("train", "test"), ("validation", "test")]
    return {f"{a}/{b}": len(np.intersect1d(text_ids[a], text_ids[b])) for a, b in pairs}


def min_rows_per_class(fractions: Sequence[Fraction]) -> int:
    """Fewest rows a class needs so that every split with a fraction above 0 gets one of them,
    and so does any larger class."""
    smallest = min(f for f in fractions if f > 0)
    n = ceil(1 / smallest)  # from here on every positive split has a whole row before rounding
    while n > 1 and _fills_every_split(n - 1, fractions):
        n -= 1
    return n


def _check_class_sizes(counts: dict[str, int], names: list[str], fractions: Sequence[Fraction]) -> None:
    short = {c: counts.get(c, 0) for c in names if not _fills_every_split(counts.get(c, 0), fractions)}
    if short:
        listed = ", ".join(f"{c!r} has {n}" for c, n in short.items())
        shares = "/".join(f"{float(f):g}" for f in fractions)
        raise BadInputError(
            f"too few rows for the split {shares}: {listed}; each class needs at least "
            f"{min_rows_per_class(fractions)} rows (add data, or change --split)"
        )


def _fills_every_split(n: int, fractions: Sequence[Fraction]) -> bool:
    return all(size > 0 for size, f in zip(_allocate(n, fractions), fractions, strict=True) if f > 0)


def _allocate(n: int, fractions: Sequence[Fraction]) -> list[int]:
    """Split ``n`` rows by ``fractions`` with largest remainders: each share is within one row of
    ``n * fraction``; ties go to the earlier split. A zero fraction never gets a row."""
    exact = [n * f for f in fractions]
    sizes = [floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` of the positions ``0..n-1``, seeded: what ``DataFrame.sample(size, random_state=seed)``
    takes from ``n`` rows (a fresh ``RandomState`` each call; ``size == n`` is a shuffle)."""
    return np.random.RandomState(seed).choice(n, size=size, replace=False).astype(np.int64, copy=False)


def _by_class(rows: np.ndarray, labels: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """``rows`` of each class in name order (each in the order of ``rows``). Name order, not
    ``--classes`` order: the class order sets label ids only, and must not change which rows
    land in which split."""
    of_rows = labels[rows]
    return [rows[of_rows == names.index(c)] for c in sorted(names)]


def _undersample(rows: np.ndarray, labels: np.ndarray, names: list[str], seed: int) -> tuple[np.ndarray, int]:
    """Sample every class down to the smallest one; classes concatenated in name order, as the book
    does (``pd.concat([ham_subset, spam])``)."""
    groups = _by_class(rows, labels, names)
    smallest = min(len(g) for g in groups)
    kept = [g[_sample(len(g), smallest, seed)] if len(g) > smallest else g for g in groups]
    return np.concatenate(kept), len(rows) - smallest * len(groups)


def _split(
    rows: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    fractions: Sequence[Fraction],
    stratify: bool,
    seed: int,
) -> dict[str, np.ndarray]:
    # The book: df.sample(frac=1, random_state=123), then int(n * 0.7) train, int(n * 0.1)
    # validation, the rest test. Stratified: the same shuffle, then each class cut on its own.
    shuffled = rows[_sample(len(rows), len(rows), seed)]
    split_of = np.full(len(shuffled), -1, dtype=np.int64)
    of_shuffled = labels[shuffled]
    everything = [np.arange(len(shuffled))]
    groups = [np.flatnonzero(of_shuffled == c) for c in range(len(names))] if stratify else everything
    for index in groups:
        if stratify:
            sizes = _allocate(len(index), fractions)
        else:
            sizes = [int(len(index) * f) for f in fractions[:2]]
            sizes.append(len(index) - sum(sizes))
            if fractions[2] == 0:  # the rounding remainder goes to train when there is no test
                sizes = [sizes[0] + sizes[2], sizes[1], 0]
        start = 0
        for split, size in enumerate(sizes):
            split_of[index[start : start + size]] = split
            start += size
    return {name: shuffled[split_of == i] for i, name in enumerate(SPLITS)}


def _oversample(train: np.ndarray, labels: np.ndarray, names: list[str], seed: int) -> tuple[np.ndarray, int]:
    """Replicate each smaller class of the training split up to the largest: whole copies first,
    then a seeded sample for the remainder, so every row appears as evenly often as possible."""
    groups = _by_class(train, labels, names)
    empty = [c for c, g in zip(sorted(names), groups, strict=True) if not len(g)]
    if empty:
        raise BadInputError(
            f"--balance oversample: no training row of {', '.join(map(repr, empty))} to replicate "
            "(use a stratified split, or add rows)"
        )
    largest = max(len(g) for g in groups)
    extra = []
    for group in groups:
        copies, rest = divmod(largest - len(group), len(group))
        extra += [group] * copies + [group[_sample(len(group), rest, seed)]]
    added = sum(len(e) for e in extra)
    mixed = np.concatenate([train, *extra])
    return mixed[_sample(len(mixed), len(mixed), seed)], added
