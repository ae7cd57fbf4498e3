"""The label readers of prepare: label lists (`gptclf prepare --multi-label`, the library side; the CLI
tests have the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptclf.data.labels import LabelLists
from gptclf.data.prepare import prepare
from gptclf.data.prepared import read_prepared
from gptclf.errors import BadInputError
from tests.multilabel_helpers import LABELS, write_table


def test_the_same_seed_writes_the_same_bytes_and_reads_back_as_label_sets(tmp_path: Path) -> None:
    source = write_table(tmp_path / "t.csv", 120)
    a = prepare(tmp_path / "a", source, classes=",".join(LABELS), seed=3, labels=LabelLists())
    prepare(tmp_path / "b", source, classes=",".join(LABELS), seed=3, labels=LabelLists())
    prepare(tmp_path / "c", source, classes=",".join(LABELS), seed=4, labels=LabelLists())
    files = ("train.csv", "validation.csv", "test.csv", "labels.json")
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()
    prepared = read_prepared(tmp_path / "a")
    assert prepared.classes == LABELS and prepared.meta["multi_label"] is True
    labels = prepared.splits["train"]["label"].tolist()
    assert all(isinstance(row, tuple) for row in labels) and () in labels
    assert sum(len(prepared.splits[s]) for s in ("train", "validation", "test")) == 120
    assert a.counts["train"]["billing"] == sum("billing" in row for row in labels)


def test_another_separator_is_recorded_and_read_back(tmp_path: Path) -> None:
    source = write_table(tmp_path / "t.csv", 60, sep=";")
    summary = prepare(tmp_path / "p", source, labels=LabelLists(";"))
    assert summary.label_sep == ";" and summary.classes == sorted(LABELS)
    assert ";" in (tmp_path / "p" / "train.csv").read_text()
    assert any(len(row) >= 2 for row in read_prepared(tmp_path / "p").splits["train"]["label"])


def test_an_existing_set_is_kept_without_force(tmp_path: Path) -> None:
    source = write_table(tmp_path / "t.csv", 60)
    prepare(tmp_path / "p", source, labels=LabelLists())
    before = (tmp_path / "p" / "labels.json").read_bytes()
    with pytest.raises(BadInputError, match="pass --force"):
        prepare(tmp_path / "p", source, seed=9, labels=LabelLists())
    assert (tmp_path / "p" / "labels.json").read_bytes() == before
