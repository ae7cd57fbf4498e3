"""Iterative stratification: every label keeps its share in every split, reproducibly."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from gptclf.data.labelsets import label_matrix
from gptclf.data.stratify import iterative_split, label_shares, missing_from
from tests.multilabel_helpers import LABELS, label_sets

FRACTIONS = (Fraction(7, 10), Fraction(1, 10), Fraction(1, 5))


def _matrix(n: int = 600, seed: int = 0) -> np.ndarray:
    return np.asarray(label_matrix(label_sets(n, seed), LABELS))


def test_each_label_keeps_its_share_within_a_few_points() -> None:
    y = _matrix()
    split_of = iterative_split(y, FRACTIONS, seed=123)
    shares = label_shares(y, split_of, 3)
    overall = y.mean(axis=0)
    assert np.abs(shares - overall).max() < 0.03, shares
    sizes = np.bincount(split_of, minlength=3)
    assert abs(sizes - 600 * np.array([0.7, 0.1, 0.2])).max() <= 3  # sizes follow the fractions
    assert missing_from(y, split_of, FRACTIONS) == []


def test_a_plain_random_split_is_worse_so_the_check_can_fail() -> None:
    y = _matrix(120, seed=4)
    rng = np.random.default_rng(0)
    worst_random = max(
        np.abs(label_shares(y, rng.permutation(np.repeat([0, 1, 2], [84, 12, 24])), 3) - y.mean(0)).max()
        for _ in range(20)
    )
    ours = np.abs(label_shares(y, iterative_split(y, FRACTIONS, seed=1), 3) - y.mean(0)).max()
    assert ours < worst_random


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    y = _matrix(200)
    a, b, c = (iterative_split(y, FRACTIONS, seed=s) for s in (5, 5, 6))
    assert (a == b).all() and (a != c).any()


def test_a_zero_fraction_gets_nothing_and_rare_labels_are_named() -> None:
    y = np.array([[1, 0]] * 20 + [[0, 1]] * 2 + [[0, 0]] * 8)
    split_of = iterative_split(y, (Fraction(4, 5), Fraction(1, 5), Fraction(0)), seed=0)
    assert not (split_of == 2).any() and (split_of >= 0).all()
    three = iterative_split(y, FRACTIONS, seed=0)
    assert missing_from(y, three, FRACTIONS) == [1]  # two rows cannot fill three splits
    assert y[three == 0, 1].sum() >= 1  # the rare label is placed in training first
