"""Choosing classes, balancing and splitting (gptclf.data.rows), through ``prepare`` and on their own;
the property that no row is lost or invented."""

from __future__ import annotations

import csv
import tempfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.data.prepare import prepare
from gptclf.data.prepared import prepared_fingerprint, read_prepared
from gptclf.data.rows import label_ids, min_rows_per_class, parse_classes, parse_split
from gptclf.data.tables import LoadedTable, load_table
from gptclf.errors import BadInputError
from tests.conftest import SMS_FILE, needs_shared_sms
from tests.data.test_tables import write_csv, write_jsonl


def labelled(n_per_class: dict[str, int]) -> list[list[str]]:
    return [[f"{label} text {i}", label] for label, n in n_per_class.items() for i in range(n)]


def read_split(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["text", "label"]
    return [(r[0], r[1]) for r in rows[1:]]


# --- options ----------------------------------------------------------------------------------------


def test_parse_split() -> None:
    assert parse_split("0.7,0.1,0.2") == (Fraction(7, 10), Fraction(1, 10), Fraction(2, 10))
    assert parse_split("0.8,0.1") == (Fraction(8, 10), Fraction(1, 10), Fraction(1, 10))
    assert parse_split([0.7, 0.1, 0.2]) == parse_split("0.7,0.1,0.2")
    for bad in ("0.7,0.4", "0.5,0.6,-0.1", "1", "0,0.5,0.5", "a,b", "0.2,0.2,0.2,0.4"):
        with pytest.raises(BadInputError, match="--split"):
            parse_split(bad)


def test_parse_classes() -> None:
    assert parse_classes(" spam , ham") == ["spam", "ham"]
    assert parse_classes(None) is None
    for bad, message in (("a,b,a", "'a' more than once"), ("a,,b", "empty"), ("a", "at least two")):
        with pytest.raises(BadInputError, match=message):
            parse_classes(bad)


def test_min_rows_per_class() -> None:
    assert min_rows_per_class(parse_split("0.7,0.1,0.2")) == 6
    assert min_rows_per_class(parse_split("0.5,0.5,0")) == 2


# --- prepare ------------------------------------------------------------------------------------


def test_stratified_split_keeps_every_class_within_one_row(tmp_path: Path) -> None:
    counts = {"a": 101, "b": 37, "c": 12}
    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled(counts))
    summary = prepare(tmp_path / "out", input_path=path, split="0.6,0.25,0.15")
    for split, share in zip(("train", "validation", "test"), (0.6, 0.25, 0.15), strict=True):
        for label, n in counts.items():
            assert abs(summary.counts[split][label] - n * share) < 1
    assert summary.balance == "none"


def test_undersample_and_book_split_sizes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"ham": 4827, "spam": 747}))
    summary = prepare(tmp_path / "out", input_path=path, balance="undersample", stratify=False)
    sizes = [sum(summary.counts[s].values()) for s in ("train", "validation", "test")]
    assert sizes == [1045, 149, 300]
    assert summary.dropped == {"undersampled": 4080}


@pytest.mark.parametrize("balance", ["undersample", "oversample"])
def test_class_order_sets_label_ids_but_not_the_split(tmp_path: Path, balance: str) -> None:
    """`--classes spam,ham` and `--classes ham,spam` put the same rows in the same splits."""
    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"ham": 60, "spam": 15}))
    for order in ("ham,spam", "spam,ham"):
        prepare(tmp_path / order, input_path=path, classes=order, balance=balance, stratify=False)
    for split in ("train", "validation", "test"):
        assert read_split(tmp_path / "ham,spam" / f"{split}.csv") == read_split(
            tmp_path / "spam,ham" / f"{split}.csv"
        )


def test_oversample_only_touches_train(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"a": 70, "b": 20}))
    summary = prepare(tmp_path / "out", input_path=path, balance="oversample", split="0.5,0.2,0.3")
    assert summary.counts["train"] == {"a": 35, "b": 35}
    assert summary.counts["test"] == {"a": 21, "b": 6}
    assert summary.oversampled == 25
    train = read_split(tmp_path / "out" / "train.csv")
    held_out = {t for s in ("validation", "test") for t, _ in read_split(tmp_path / "out" / f"{s}.csv")}
    assert not held_out & {t for t, _ in train}
    # Copies are spread evenly: 10 b rows -> 35 means every row appears 3 or 4 times.
    assert set(Counter(t for t, label in train if label == "b").values()) <= {3, 4}


def test_dedupe_and_duplicates_across_splits(tmp_path: Path) -> None:
    rows = labelled({"a": 30, "b": 30}) + [["a text 0", "a"]] * 10
    path = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    kept = prepare(tmp_path / "keep", input_path=path)
    assert kept.duplicate_texts == 10 and "duplicate" not in kept.dropped
    assert sum(kept.duplicates_across_splits.values()) >= 1
    deduped = prepare(tmp_path / "dedupe", input_path=path, dedupe=True)
    assert deduped.dropped == {"duplicate": 10}
    assert sum(deduped.duplicates_across_splits.values()) == 0


def test_classes_order_unknown_labels_and_drop_unknown(tmp_path: Path) -> None:
    rows = labelled({"pos": 20, "neg": 20, "meh": 3, "??": 1})
    path = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    with pytest.raises(BadInputError, match=r"'meh' \(3 rows\), '\?\?' \(1 rows\)"):
        prepare(tmp_path / "out", input_path=path, classes="pos,neg")
    summary = prepare(tmp_path / "out", input_path=path, classes="pos,neg", drop_unknown=True)
    assert summary.classes == ["pos", "neg"]
    assert summary.dropped == {"unknown label": 4}
    prepared = read_prepared(tmp_path / "out")
    assert prepared.classes == ["pos", "neg"]
    frame = prepared.splits["train"]
    assert label_ids(frame, prepared.classes) == [0 if label == "pos" else 1 for label in frame["label"]]


def test_class_too_small_and_single_class(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"a": 50, "b": 4}))
    with pytest.raises(BadInputError, match="'b' has 4; each class needs at least 6 rows"):
        prepare(tmp_path / "out", input_path=path)
    path = write_csv(tmp_path / "one.csv", ["text", "label"], labelled({"a": 50}))
    with pytest.raises(BadInputError, match="single class"):
        prepare(tmp_path / "out", input_path=path)
    assert not (tmp_path / "out").exists()


def test_same_seed_same_bytes_other_seed_other_split(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"a": 40, "b": 25}))
    for name, seed in (("one", 7), ("two", 7), ("three", 8)):
        prepare(tmp_path / name, input_path=path, seed=seed, balance="oversample")
    for file in ("train.csv", "validation.csv", "test.csv", "labels.json"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()
    assert prepared_fingerprint(tmp_path / "one") == prepared_fingerprint(tmp_path / "two")
    assert prepared_fingerprint(tmp_path / "one") != prepared_fingerprint(tmp_path / "three")


@needs_shared_sms
def test_real_file_book_split_and_stratified(tmp_path: Path) -> None:
    book = prepare(tmp_path / "book", input_path=SMS_FILE, balance="undersample", stratify=False)
    assert [sum(book.counts[s].values()) for s in ("train", "validation", "test")] == [1045, 149, 300]
    assert {c: sum(book.counts[s][c] for s in book.counts) for c in book.classes} == {"ham": 747, "spam": 747}
    assert book.duplicate_texts == 403
    strat = prepare(tmp_path / "strat", input_path=SMS_FILE)  # all 5,574 rows, stratified
    for split, share in (("train", 0.7), ("validation", 0.1), ("test", 0.2)):
        assert abs(strat.counts[split]["ham"] - 4827 * share) < 1
        assert abs(strat.counts[split]["spam"] - 747 * share) < 1
    prepared = read_prepared(tmp_path / "strat")
    texts = [t for s in prepared.splits.values() for t in s["text"]]
    assert len(texts) == 5574 and sum(t.startswith('"') for t in texts) == 54


# --- property: no row is lost or invented ------------------------------------------------------

# Half the texts come from a small pool, so exact and near duplicates (for --dedupe) are common.
_TEXT = st.one_of(
    st.sampled_from(["x", "x ", " x", "", "  ", '"q', '"q"', "a,b", "l1\nl2", "l1\r\nl2", "tab\t"]),
    st.text(
        alphabet=st.one_of(
            st.sampled_from(['"', "'", ",", "\t", "\n", "\r", " ", "\\", "{", "}", "é", "😀", "\u2028"]),
            # NUL is left out: a raw NUL in a text file marks binary data, which is refused.
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        ),
        max_size=12,
    ),
)
_LABEL = st.sampled_from(["a", " a ", "b\t", "b", "c", "", "  "])


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.tuples(_TEXT, _LABEL), max_size=25),
    fmt=st.sampled_from(["csv", "jsonl"]),
    dedupe=st.booleans(),
    only_ab=st.booleans(),
    balance=st.sampled_from(["none", "undersample", "oversample"]),
)
@pytest.mark.slow
def test_no_row_lost_or_invented(
    rows: list[tuple[str, str]], fmt: str, dedupe: bool, only_ab: bool, balance: str
) -> None:
    if not only_ab:  # a handful of "c" rows would be too few to split: keep two classes
        rows = [(text, "a" if label == "c" else label) for text, label in rows]
    # Enough rows of both classes up front, so that every generated table can be split.
    rows = [(f"seed row {label} {i}", label) for label in "ab" for i in range(6)] + rows
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in.{fmt}"
        if fmt == "csv":
            write_csv(path, ["id", "body", "y"], [[str(i), t, y] for i, (t, y) in enumerate(rows)])
        else:
            write_jsonl(path, [{"body": t or None, "y": y} for t, y in rows])
        check_table(load_table(path, text_column="body", label_column="y"), rows)
        summary = prepare(
            Path(tmp) / "out",
            input_path=path,
            text_column="body",
            label_column="y",
            classes="a,b" if only_ab else None,
            drop_unknown=only_ab,
            dedupe=dedupe,
            balance=balance,
            split="0.5,0.25,0.25",
        )
        out = {s: read_split(Path(tmp) / "out" / f"{s}.csv") for s in ("train", "validation", "test")}

    # What should come out, worked out here independently of the code under test.
    kept: Counter[tuple[str, str]] = Counter()
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    for text, raw_label in rows:
        label = raw_label.strip()
        if not text.strip():
            dropped["empty text"] += 1
        elif not label:
            dropped["missing label"] += 1
        elif only_ab and label not in ("a", "b"):
            dropped["unknown label"] += 1
        elif dedupe and text in seen:
            dropped["duplicate"] += 1
        else:
            kept[text, label] += 1
            seen.add(text)
    assert {k: v for k, v in summary.dropped.items() if k != "undersampled"} == dict(dropped)
    assert sum(kept.values()) + sum(dropped.values()) == len(rows)

    for split, written_rows in out.items():
        assert len(written_rows) == sum(summary.counts[split].values())
    written = Counter(out["train"]) + Counter(out["validation"]) + Counter(out["test"])
    # Rows missing from the output are exactly those undersampling left out; rows written more
    # often than they came in are exactly the copies oversampling added, all of kept rows.
    assert sum((kept - written).values()) == summary.dropped.get("undersampled", 0)
    assert sum((written - kept).values()) == summary.oversampled
    assert set(written) <= set(kept)
    assert not (Counter(out["validation"]) + Counter(out["test"])) - kept


def check_table(table: LoadedTable, rows: list[tuple[str, str]]) -> None:
    """Every record is in the frame under its own number with its exact text, or dropped."""
    assert table.frame["row"].is_unique
    for text, label, row in table.frame.itertuples(index=False):
        assert (text, label) == (rows[row - 1][0], rows[row - 1][1].strip())
    assert len(table.frame) + sum(table.dropped.values()) == len(rows)
