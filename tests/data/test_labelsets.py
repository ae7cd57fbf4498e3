"""Multi-label tables: label lists, JSON lists, 0/1 columns, repeats, counts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gptclf.data.labels import ClassLabels, LabelLists, reader_of
from gptclf.data.labelsets import (
    check_separator,
    cooccurrence,
    label_counts,
    label_matrix,
    parse_label_columns,
    read_multilabel_table,
    select_labels,
    split_cell,
)
from gptclf.errors import BadInputError


def _csv(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_label_column_of_lists_keeps_rows_without_a_label(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": "x|y"}, {"text": "b", "label": ""}, {"text": " ", "label": "x"}]
    path = _csv(tmp_path / "t.csv", [*rows, {"text": "c", "label": " y | x |"}])
    table = read_multilabel_table(path)
    assert table.frame["label"].tolist() == [("x", "y"), (), ("y", "x")]
    assert table.frame["row"].tolist() == [1, 2, 4] and table.dropped == {"empty text": 1}


def test_a_label_named_twice_in_a_row_is_kept_once_and_counted(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", [{"text": "a", "label": "x|x|y"}, {"text": "b", "label": "y|y|y"}])
    table = read_multilabel_table(path)
    assert table.frame["label"].tolist() == [("x", "y"), ("y",)] and table.repeated == 3


def test_jsonl_may_hold_json_lists_and_another_separator(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"text": "a", "tags": ["x", "y"]}, {"text": "b", "tags": None}, {"text": "c", "tags": "x;y"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = read_multilabel_table(path, label_column="tags", sep=";")
    assert table.frame["label"].tolist() == [("x", "y"), (), ("x", "y")]


def test_label_columns_hold_zero_or_one(tmp_path: Path) -> None:
    rows = [{"text": "a", "toxic": 1, "insult": 0}, {"text": "b", "toxic": 0, "insult": 0},
            {"text": "c", "toxic": 1, "insult": 1}]  # fmt: skip
    table = read_multilabel_table(_csv(tmp_path / "t.csv", rows), label_columns=["toxic", "insult"])
    assert table.frame["label"].tolist() == [("toxic",), (), ("toxic", "insult")]
    rows[1]["insult"] = 2
    with pytest.raises(BadInputError, match=r"column 'insult' holds '2'; --label-columns must hold 0 or 1"):
        read_multilabel_table(_csv(tmp_path / "u.csv", rows), label_columns=["toxic", "insult"])


@pytest.mark.parametrize(
    ("spec", "message"), [("a,,b", "a column name is empty"), ("a,b,a", "'a' more than once")]
)
def test_bad_label_columns(spec: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_label_columns(spec)
    assert parse_label_columns(" a , b ") == ["a", "b"] and parse_label_columns(None) is None


def test_select_labels_orders_rows_by_the_classes_and_refuses_bad_labels() -> None:
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": [("y", "x"), (), ("z",)]})
    ordered, names = select_labels(frame, ["z", "x", "y"], "t.csv")
    assert names == ["z", "x", "y"] and ordered["label"].tolist() == [("x", "y"), (), ("z",)]
    assert select_labels(frame, None, "t.csv")[1] == ["x", "y", "z"]
    with pytest.raises(BadInputError, match=r"labels not among --classes: 'z' \(1 rows\)"):
        select_labels(frame, ["x", "y"], "t.csv")
    with pytest.raises(BadInputError, match=r"--classes names 'w', which no row of t.csv carries"):
        select_labels(frame, ["x", "y", "z", "w"], "t.csv")
    empty = pd.DataFrame({"text": ["a", "b"], "label": [(), ()]})
    with pytest.raises(BadInputError, match="the label column is empty in every row"):
        select_labels(empty, None, "t.csv")


def test_matrix_counts_and_cooccurrence() -> None:
    frame = pd.DataFrame({"text": list("abcd"), "label": [("x", "y"), ("x",), (), ("x", "y")]})
    assert label_matrix(frame["label"], ["x", "y"]) == [[1, 1], [1, 0], [0, 0], [1, 1]]
    assert label_counts(frame, ["x", "y"]) == {"x": 3, "y": 2, "(none)": 1}
    assert cooccurrence(frame, ["x", "y"]) == {"x": {"x": 3, "y": 2}, "y": {"x": 2, "y": 2}}
    with pytest.raises(BadInputError, match="'q' is not among the labels"):
        label_matrix([("q",)], ["x", "y"])


def test_cells_separator_and_the_mark() -> None:
    assert split_cell(None, "|") == [] and split_cell(["a", " b ", ""], "|") == ["a", "b"]
    with pytest.raises(BadInputError, match="hold the separator"):
        check_separator(["a|b", "c"], "|")
    assert isinstance(reader_of({"multi_label": True}), LabelLists)
    assert isinstance(reader_of({}), ClassLabels) and isinstance(reader_of(None), ClassLabels)


@pytest.mark.parametrize(
    ("tags", "shown"), [([1, {"a": 2}], "1"), (["x", {"a": 2}], '{"a": 2}'), (["x", None], "null"), (3, "3")]
)
def test_a_json_label_cell_must_be_strings(tmp_path: Path, tags: object, shown: str) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"text": "a", "label": ["x"]}, {"text": "b", "label": tags}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(BadInputError, match="record 2") as err:
        read_multilabel_table(path)
    assert f"holds {shown}" in str(err.value) and "\n" not in str(err.value)


def test_a_quoted_separator_in_a_csv_label_list_is_refused(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": "food|x"}, {"text": "b", "label": 'food|"sci|tech"'}]
    with pytest.raises(BadInputError, match=r"record 2: the label list .* quotes a label \(\"sci\)"):
        read_multilabel_table(_csv(tmp_path / "t.csv", rows))
    rows = [{"text": "a", "label": 'x|5"-disk'}]  # a quote inside a label is an ordinary character
    assert read_multilabel_table(_csv(tmp_path / "u.csv", rows)).frame["label"].tolist() == [("x", '5"-disk')]
