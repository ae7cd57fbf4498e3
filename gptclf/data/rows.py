"""Which rows go where: the classes of a labelled table, label ids, duplicates, balancing and the
train/validation/test split, reproducibly (every random step takes the seed).

Balancing and splitting never depend on the order of ``--classes`` (which sets the label ids only):
classes are grouped in name order. Oversampling happens after the split and only to the training
split, so a replicated text can never sit in validation or test too (which would inflate the
scores). Split fractions are exact rationals (:func:`parse_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import ceil, floor
from pathlib import Path

import pandas as pd

from gptclf.data.tables import LoadedTable
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
    """A table balanced and split.

    Attributes:
        parts: ``"train"``, ``"validation"``, ``"test"`` -> frame (``text``, ``label``, ...).
        undersampled: Rows left out by ``undersample``.
        oversampled: Copies added to the training split by ``oversample``.
    """

    parts: dict[str, pd.DataFrame]
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


def select_classes(
    table: LoadedTable, names: list[str] | None, drop_unknown: bool, path: Path
) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """Keep the rows of the requested classes; find the classes (sorted labels) when none are named.

    Args:
        table: The table read from ``path``.
        names: Class names in order, or None.
        drop_unknown: Drop rows of other labels (counted as ``unknown label``) instead of refusing.
        path: The input, for messages.

    Returns:
        The rows kept, the rows dropped so far by reason (the table's own included), the classes.

    Raises:
        BadInputError: No usable row, a single class, labels not among ``names`` (without
            ``drop_unknown``), or a name that no row carries; all problems in one message.
    """
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
        dropped[UNKNOWN_LABEL] = int(unknown.sum())
        frame = frame[frame["label"].isin(names)]
    return frame, dropped, names


def balance_and_split(
    frame: pd.DataFrame, names: list[str], fractions: Fractions, *, balance: str, stratify: bool, seed: int
) -> Split:
    """Balance the classes and split the rows into train, validation and test.

    Args:
        frame: Rows with ``text`` and ``label``, every label one of ``names``.
        names: The classes.
        fractions: Train, validation and test fractions.
        balance: ``undersample`` (every class down to the smallest, before the split),
            ``oversample`` (the training split's classes replicated up to its largest) or ``none``.
        stratify: Split each class on its own, so each keeps its proportion in every split
            (within one row). False: the book's split of the shuffled table.
        seed: Seed of every random step.

    Raises:
        BadInputError: A class has too few rows to give every split with a share a row.
    """
    _check_class_sizes(frame, names, fractions)
    undersampled = 0
    if balance == "undersample":
        frame, undersampled = _undersample(frame, names, seed)
    parts = _split(frame, names, fractions, stratify, seed)
    oversampled = 0
    if balance == "oversample":
        parts["train"], oversampled = _oversample(parts["train"], names, seed)
    return Split(parts=parts, undersampled=undersampled, oversampled=oversampled)


def shared_texts(parts: dict[str, pd.DataFrame]) -> dict[str, int]:
    """``"train/test"`` etc. -> how many distinct texts two splits have in common."""
    texts = {name: set(part["text"]) for name, part in parts.items()}
    pairs = [("train", "validation"), ("train", "test"), ("validation", "test")]
    return {f"{a}/{b}": len(texts[a] & texts[b]) for a, b in pairs}


def min_rows_per_class(fractions: Sequence[Fraction]) -> int:
    """Fewest rows a class needs so that every split with a fraction above 0 gets one of them,
    and so does any larger class."""
    smallest = min(f for f in fractions if f > 0)
    n = ceil(1 / smallest)  # from here on every positive split has a whole row before rounding
    while n > 1 and _fills_every_split(n - 1, fractions):
        n -= 1
    return n


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
