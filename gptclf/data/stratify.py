"""The train/validation/test split of multi-label data: iterative stratification, seeded.

Sechidis, Tsoumakas and Vlahavas (2011), "On the stratification of multi-label data": the label
with the fewest rows still to place goes first; each of its rows goes to the split that still
wants the most rows of that label (ties: the split that wants the most rows overall, then the
seeded random order). Rare labels are placed first, so each label keeps its share in every split
as far as its count allows; "no label" is placed as one more label. Every random
choice comes from ``seed``: the same rows and seed give the same split.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def iterative_split(matrix: np.ndarray, fractions: Sequence[Fraction], seed: int) -> np.ndarray:
    """The split (index into ``fractions``) of each row of a (N, K) 0/1 label matrix.

    A split whose fraction is 0 gets no row.
    """
    y = np.asarray(matrix, dtype=bool).reshape(len(matrix), -1)
    # "No label" is stratified like a label, so the rows without one keep their share too.
    y = np.concatenate([y, ~y.any(axis=1, keepdims=True)], axis=1)
    n, k = y.shape
    rng = np.random.default_rng(seed)
    share = np.array([float(f) for f in fractions])
    open_split = share > 0
    wanted = n * share  # rows each split still wants
    wanted_label = np.outer(share, y.sum(axis=0))  # (S, K) rows of each label each split still wants
    out = np.full(n, -1, dtype=np.int64)
    left = y.copy()
    order = rng.permutation(n)  # the seeded order in which the rows of a label are placed
    tiebreak = rng.random(len(share))
    for _ in range(k):
        remaining = left.sum(axis=0)
        if not remaining.any():
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, n + 1)))
        for row in order[left[order, label]]:
            target = _best(wanted_label[:, label], wanted, open_split, tiebreak)
            out[row] = target
            wanted[target] -= 1
            wanted_label[target] -= y[row]
            left[row] = False
    assert (out >= 0).all()  # every row has a label or the "no label" column
    return out


def _best(first: np.ndarray, second: np.ndarray, open_split: np.ndarray, tiebreak: np.ndarray) -> int:
    """The open split with the largest ``first``, then ``second``, then ``tiebreak``."""
    keys = [(first[s], second[s], tiebreak[s], s) for s in range(len(first)) if open_split[s]]
    return max(keys)[3]


def label_shares(matrix: np.ndarray, split_of: np.ndarray, n_splits: int) -> np.ndarray:
    """(S, K): the share of each split's rows that carry each label."""
    y = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), -1)
    out = np.zeros((n_splits, y.shape[1]))
    for s in range(n_splits):
        rows = y[split_of == s]
        if len(rows):
            out[s] = rows.mean(axis=0)
    return out


def missing_from(matrix: np.ndarray, split_of: np.ndarray, fractions: Sequence[Fraction]) -> list[int]:
    """Labels (column indices) absent from a split that has a fraction above 0: too rare to be
    in every split."""
    y = np.asarray(matrix, dtype=bool).reshape(len(matrix), -1)
    return [
        label
        for label in range(y.shape[1])
        if any(f > 0 and not y[split_of == s, label].any() for s, f in enumerate(fractions))
    ]
