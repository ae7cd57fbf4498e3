"""Labelled tables made from a seed, for prepare's byte-identity and memory tests (no gptclf
imports: tests/fixtures/make_prepare_sha256.py runs it against another checkout of the code)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

#: Texts that need quoting or escaping somewhere: quotes, commas, line ends, tabs, non-ASCII.
ODD = ['he said "hi"', "a,b", "two\nlines", "cr\rhere", "tab\there", "café ünï", "back\\slash", "  lead"]


def _numbers(seed: int) -> Iterator[int]:
    """A plain LCG: the same numbers on every Python version and platform."""
    state = seed
    while True:
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        yield state >> 33


def table_rows(n: int, classes: int = 3, seed: int = 1, multi: bool = False) -> list[tuple[str, str]]:
    """``n`` rows ``(text, label)`` of 10-30 words with class-specific words, uneven class sizes,
    some repeated texts and odd characters; ``multi``: labels are ``|``-joined lists (some empty)."""
    draw = _numbers(seed)
    rows: list[tuple[str, str]] = []
    for _ in range(n):
        c = next(draw) % (2 * classes - 1)
        c = c if c < classes else 0  # class 0 the largest
        words = [
            f"c{c}w{next(draw) % 150}" if next(draw) % 5 < 2 else f"w{next(draw) % 300}"
            for _ in range(10 + next(draw) % 21)
        ]
        if next(draw) % 40 == 0:
            words.insert(next(draw) % len(words), ODD[next(draw) % len(ODD)])
        text = " ".join(words)
        if rows and next(draw) % 12 == 0:  # a repeat of an earlier text
            text = rows[next(draw) % len(rows)][0]
        if multi:
            label = "|".join(f"l{j}" for j in range(classes) if j == c or next(draw) % 6 == 0)
        else:
            label = f"class{c}"
        rows.append((text, label))
    return rows


def write_table(path: Path, rows: list[tuple[str, str]], fmt: str = "csv") -> Path:
    """``rows`` as a CSV (header ``text,label``), JSONL or SMS-format (``label<TAB>text``) file."""
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    elif fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": t, "label": lb}, ensure_ascii=False) + "\n" for t, lb in rows)
    else:  # sms: one line a row, so no line ends inside a text
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(f"{lb}\t{' '.join(t.split())}\n" for t, lb in rows)
    return path


#: name -> (table: rows, classes, seed, multi, format; prepare's keyword arguments).
CASES: dict[str, tuple[tuple[int, int, int, bool, str], dict[str, object]]] = {
    "csv-none": ((900, 3, 1, False, "csv"), {}),
    "csv-oversample-dedupe-plain": (
        (900, 3, 2, False, "csv"),
        {"balance": "oversample", "dedupe": True, "stratify": False, "seed": 7},
    ),
    "csv-undersample-classes": (
        (900, 4, 3, False, "csv"),
        {"balance": "undersample", "classes": "class3,class1,class0,class2"},
    ),
    "jsonl-drop-unknown-lengths": (
        (700, 4, 4, False, "jsonl"),
        {"classes": "class0,class1,class2", "drop_unknown": True, "balance": "oversample", "max_length": 20},
    ),
    "sms-book": ((800, 2, 5, False, "sms"), {"dataset": "sms-spam", "stratify": False, "split": "0.7,0.1"}),
    "multi-label-dedupe": ((800, 3, 6, True, "csv"), {"multi_label": True, "dedupe": True, "seed": 3}),
}
