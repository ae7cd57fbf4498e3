"""A generated multi-label table whose labels follow from its words, for the multi-label tests
and benchmarks/multilabel.py: four labels, about a third of the rows with two or more, some with none."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

LABELS = ["billing", "bug", "feature", "account"]
KEYWORDS = {"billing": "invoice", "bug": "crash", "feature": "wish", "account": "password"}
FILLER = ["apple", "river", "stone", "cloud", "paper", "green", "music", "table", "light", "horse"]


def label_sets(n: int, seed: int) -> list[list[str]]:
    """``n`` label lists: 1/6 empty, 1/2 one label, 1/3 two or three; ``account`` is the rare one."""
    rng = random.Random(seed)
    weights = [4, 4, 4, 1]  # account is rarer than the rest
    out = []
    for i in range(n):
        size = (0, 1, 1, 1, 2, 3)[i % 6] if i % 12 != 11 else 2
        chosen: list[str] = []
        while len(chosen) < size:
            name = rng.choices(LABELS, weights)[0]
            if name not in chosen:
                chosen.append(name)
        out.append([name for name in LABELS if name in chosen])
    return out


def multilabel_table(n: int, seed: int = 0) -> pd.DataFrame:
    """``text`` (filler words with one keyword per label) and ``labels`` (lists of names)."""
    rng = random.Random(seed + 1)
    rows = []
    for labels in label_sets(n, seed):
        words = [rng.choice(FILLER) for _ in range(rng.randrange(2, 10))]
        for name in labels:
            words.insert(rng.randrange(len(words) + 1), KEYWORDS[name])
        rows.append({"text": " ".join(words), "labels": labels})
    return pd.DataFrame(rows)


def write_table(path: Path, n: int, seed: int = 0, sep: str = "|") -> Path:
    """The table as a CSV with a ``label`` column of ``sep``-joined lists (empty: no label)."""
    frame = multilabel_table(n, seed)
    frame.assign(label=[sep.join(x) for x in frame["labels"]])[["text", "label"]].to_csv(path, index=False)
    return path
