"""Reading labelled tables and text streams without loss (gptclf.data.tables): the SMS format, CSV, TSV
and its escapes, JSONL, ids, and the format hints."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.data.tables import (
    load_sms_spam,
    load_table,
    read_inputs,
    read_texts,
    resolve_format,
    split_tsv,
    tsv_line,
)
from gptclf.errors import BadInputError
from tests.conftest import SMS_FILE, needs_shared_sms


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_sms_format_splits_on_first_tab_and_keeps_quotes(tmp_path: Path) -> None:
    path = tmp_path / "sms.txt"
    path.write_bytes(b'ham\t"Quoted start\nspam \tcall now\tor\ttabs\r\n\nham\tlone\rreturn\n')
    table = load_sms_spam(path)
    assert table.frame["text"].tolist() == ['"Quoted start', "call now\tor\ttabs", "lone\rreturn"]
    assert table.frame["label"].tolist() == ["ham", "spam", "ham"]
    assert table.frame["row"].tolist() == [1, 2, 3]  # the blank line is no record
    assert table.dropped == {}
    assert list(read_texts(path, fmt="sms")) == table.frame["text"].tolist()


def test_sms_line_without_tab_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "sms.txt"
    path.write_text("ham\tok\nno tab here\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="line 2 has no tab"):
        load_sms_spam(path)


@needs_shared_sms
def test_real_sms_file_loads_every_line() -> None:
    table = load_sms_spam(SMS_FILE)
    assert len(table.frame) == 5574
    assert table.frame["label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}
    assert table.dropped == {}
    quoted = [t for t in table.frame["text"] if t.startswith('"')]
    assert len(quoted) == 54
    assert int(table.frame["text"].duplicated().sum()) == 403
    # By extension-less name, through the generic loader, and streamed.
    assert len(load_table(SMS_FILE).frame) == 5574
    assert sum(1 for _ in read_texts(SMS_FILE)) == 5574


def test_csv_with_named_columns_quotes_and_newlines(tmp_path: Path) -> None:
    rows = [
        ["1", 'say "hi", then\nleave', " pos "],
        ["2", "   ", "neg"],
        ["3", "fine", ""],
        ["4", "NA", "neg"],
    ]
    path = write_csv(tmp_path / "t.csv", ["id", "body", "sentiment"], rows)
    table = load_table(path, text_column="body", label_column="sentiment")
    assert table.frame.to_dict("list") == {
        "text": ['say "hi", then\nleave', "NA"],  # "NA" is a text, not a missing value
        "label": ["pos", "neg"],
        "row": [1, 4],
    }
    assert table.dropped == {"empty text": 1, "missing label": 1}


def test_tsv_has_no_quoting(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text('text\tlabel\n"starts with a quote\ta\nplain\tb\n', encoding="utf-8")
    assert load_table(path).frame["text"].tolist() == ['"starts with a quote', "plain"]


def test_jsonl_values_and_missing_key(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"text": "a", "label": 1}, {"text": None, "label": 0}, {"text": "b", "label": True}],
    )
    table = load_table(path)
    assert table.frame["label"].tolist() == ["1", "true"]
    assert table.dropped == {"empty text": 1}
    write_jsonl(path, [{"text": "a", "label": "x"}, {"text": "b", "class": "y"}])
    with pytest.raises(BadInputError, match=r"line 2 has no key 'label' \(keys there: text, class\)"):
        load_table(path)


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        ("missing.csv", None, {}, "no such file"),
        ("empty.csv", b"", {}, "is empty"),
        ("header.csv", b"text,label\n", {}, "has no rows"),
        ("cols.csv", b"body,y\nhi,a\n", {}, r"no column 'text' \(columns: body, y\)"),
        ("fields.csv", b"text,label\nhi,a,extra\n", {}, "line 2 has 3 fields"),
        ("quote.csv", b'text,label\n"open,a\n', {}, "malformed CSV"),
        ("latin.csv", b"text,label\nok,a\ncaf\xe9,b\n", {}, r"line 3 is not valid utf-8; pass --encoding"),
        ("bad.jsonl", b'{"text": "a", "label": "b"}\n{oops\n', {}, "line 2 is not valid JSON"),
        ("list.jsonl", b"[1, 2]\n", {}, "line 1 is not a JSON object"),
        ("data.bin", b"x", {}, "cannot tell the format"),
        ("texts.txt", b"x\n", {}, "has no labels"),
        ("t.csv", b"text,label\na,b\n", {"fmt": "xml"}, "unknown format 'xml'"),
        ("t.csv", b"text,label\na,b\n", {"encoding": "klingon"}, "unknown encoding"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes | None, kwargs: dict, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        load_table(path, **kwargs)


def test_read_texts_keeps_every_line_and_streams(tmp_path: Path) -> None:
    txt = tmp_path / "in.txt"
    txt.write_text("first\n\n  \nlast", encoding="utf-8")
    assert list(read_texts(txt)) == ["first", "", "  ", "last"]
    path = write_csv(tmp_path / "in.csv", ["text", "label"], [["a\nb", "x"], ["", "y"]])
    assert list(read_texts(path)) == ["a\nb", ""]
    jsonl = write_jsonl(tmp_path / "in.jsonl", [{"body": "x"}, {"body": 5}])
    assert list(read_texts(jsonl, text_column="body")) == ["x", "5"]
    # A generator: a problem far down the file surfaces only when the stream gets there.
    big = tmp_path / "big.csv"
    big.write_bytes(b"text\n" + b"ok\n" * 100_000 + b"\xff\n")
    texts = read_texts(big)
    assert next(texts) == "ok"
    with pytest.raises(BadInputError, match="line 100002 is not valid utf-8"):
        list(texts)
    with pytest.raises(BadInputError, match="no such file"):
        read_texts(tmp_path / "absent.txt")


TRICKY = ["tab\there", "line\nbreak", "carriage\rreturn", 'a "quote', "back\\slash", "lit\\t\\n", "\\", ""]


def test_tsv_escapes_read_back_exactly(tmp_path: Path) -> None:
    # The writer's convention (predict --format tsv) is the reader's: tabs, newlines, CRs, quotes
    # and backslashes survive the round trip, and each record is one line.
    lines = tsv_line(["text", "label"]) + "".join(tsv_line([t, "x"]) for t in TRICKY)
    assert lines.count("\n") == len(TRICKY) + 1
    path = tmp_path / "t.tsv"
    path.write_text(lines, encoding="utf-8", newline="")
    assert list(read_texts(path)) == TRICKY
    table = load_table(path)
    assert table.frame["text"].tolist() == [t for t in TRICKY if t]
    # A backslash before any other character is kept (Windows paths in hand-made files).
    assert split_tsv("C:\\data\\x\tb") == ["C:\\data\\x", "b"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab\\\t\n\rtnr\"'"), max_size=12), min_size=1, max_size=4))
def test_tsv_line_and_split_tsv_are_inverse(fields: list[str]) -> None:
    line = tsv_line(fields)
    assert "\n" not in line[:-1] and "\r" not in line
    assert split_tsv(line[:-1]) == fields


def test_ids_come_from_an_id_column_or_the_position(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", ["id", "text"], [["a7", "x"], ["b8", "y"]])
    assert list(read_inputs(path)) == [("a7", "x"), ("b8", "y")]
    assert list(read_inputs(path, detect_id=False)) == [(0, "x"), (1, "y")]
    jsonl = write_jsonl(tmp_path / "in.jsonl", [{"key": 5, "text": "x"}, {"key": None, "text": "y"}])
    assert list(read_inputs(jsonl, id_column="key")) == [(5, "x"), (None, "y")]
    assert list(read_inputs(jsonl)) == [(0, "x"), (1, "y")]
    write_jsonl(jsonl, [{"id": 1, "text": "x"}, {"text": "y"}])
    with pytest.raises(BadInputError, match="line 2 has no key 'id'"):
        list(read_inputs(jsonl))
    txt = tmp_path / "in.txt"
    txt.write_text("x\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="--id-column needs a CSV, TSV, JSONL or Parquet input"):
        read_inputs(txt, id_column="id")


def test_format_hints_name_the_flag_and_what_it_accepts(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        resolve_format(tmp_path / "data.bin", None)
    assert "pass --input-format (csv, tsv, jsonl, sms, parquet)" in str(info.value)
    with pytest.raises(BadInputError) as info:
        resolve_format(tmp_path / "data.bin", None, ("csv", "tsv", "jsonl", "sms", "txt"))
    assert "pass --input-format (csv, tsv, jsonl, sms, txt)" in str(info.value)
    assert resolve_format("-", None, ("csv", "txt")) == "txt"


def test_a_compression_suffix_does_not_hide_the_format() -> None:
    from gptclf.data.tables import resolve_format

    assert resolve_format(Path("a.csv.gz"), None) == "csv"
    assert resolve_format(Path("a.JSONL.XZ"), None) == "jsonl"
    assert resolve_format(Path("SMSSpamCollection.bz2"), None) == "sms"
    assert resolve_format("-", "tsv.gz") == "tsv"
    with pytest.raises(BadInputError, match="cannot tell the format"):
        resolve_format(Path("a.gz"), None)


def _parquet(path: Path, columns: dict[str, list[object]], row_group_size: int = 4) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_tables_read_row_group_by_row_group_like_the_other_formats(tmp_path: Path) -> None:
    from gptclf.data import tables
    from gptclf.data.tables import parquet_rows, read_inputs

    texts = [f"text {i}" for i in range(10)] + ["", None]
    path = _parquet(
        tmp_path / "t.parquet",
        {"body": texts, "label": ["a", "b"] * 6, "ticket": list(range(100, 112)), "score": [0.5] * 12},
    )
    table = load_table(path, text_column="body")
    assert table.frame["text"].tolist() == texts[:10] and table.dropped == {"empty text": 2}
    assert parquet_rows(path) == 12
    got = list(read_inputs(path, "body", "ticket", keep=["score", "label"]))
    assert got[0] == (100, "text 0", {"score": 0.5, "label": "a"})
    assert [g[1] for g in got] == [*texts[:10], "", ""]
    # Row groups of 4 rows, read 3 rows at a time: still every row once, in order.
    old = tables.PARQUET_BATCH
    try:
        tables.PARQUET_BATCH = 3
        assert [i for i, _ in read_inputs(path, "body", "ticket")] == list(range(100, 112))
    finally:
        tables.PARQUET_BATCH = old


@pytest.mark.parametrize(
    ("columns", "args", "words"),
    [
        ({"body": [1, 2]}, {"text_column": "body"}, "column 'body' holds int64, not text"),
        ({"body": ["a", "b"]}, {}, "has no column 'text' (columns: body)"),
    ],
)
def test_bad_parquet_inputs_are_one_line(tmp_path: Path, columns: dict, args: dict, words: str) -> None:
    from gptclf.data.tables import read_inputs

    path = _parquet(tmp_path / "t.parquet", columns)
    with pytest.raises(BadInputError, match=re.escape(words)):
        list(read_inputs(path, **args))


def test_a_file_that_is_not_parquet_and_parquet_on_stdin_are_refused(tmp_path: Path) -> None:
    from gptclf.data.tables import read_inputs

    fake = tmp_path / "t.parquet"
    fake.write_text("text\nhello\n")
    with pytest.raises(BadInputError, match="is not a Parquet file"):
        list(read_inputs(fake))
    with pytest.raises(BadInputError, match="Parquet cannot be read from stdin"):
        list(read_inputs("-", fmt="parquet"))
    txt = tmp_path / "t.txt"
    txt.write_text("a\n")
    with pytest.raises(BadInputError, match="--keep-columns needs a CSV, TSV, JSONL or Parquet input"):
        list(read_inputs(txt, keep=["x"]))


# --- issue 21: a text file's shards found by byte offsets ------------------------------------------


def test_line_offsets_count_lines_and_find_every_nth_start(tmp_path: Path) -> None:
    from gptclf.data.decoding import line_offsets

    path = tmp_path / "t.txt"
    path.write_bytes(b"a\r\n\nccc\ndd")  # CRLF, a blank line, a last line without its line end
    assert line_offsets(path, 2) == (4, [0, 4])
    path.write_bytes(b"a\nb\n")
    assert line_offsets(path, 1) == (2, [0, 2, 4])


def test_a_text_shard_is_read_from_its_own_bytes_with_the_true_row_numbers(tmp_path: Path) -> None:
    from gptclf.data.tables import read_inputs

    lines = [f"texte n°{i}" if i % 5 else "" for i in range(53)]  # blank lines are texts too
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))  # a BOM, CRLF, no last line end
    whole = list(read_inputs(path))
    assert whole == list(enumerate(lines))
    parts = [list(read_inputs(path, shard=(k, 4), unit=5)) for k in range(1, 5)]
    assert [row for part in parts for row in part] == whole
    assert [len(p) for p in parts] == [10, 15, 15, 13]  # 11 blocks of 5 over 4 parts: 2, 3, 3, 3
    resumed = list(read_inputs(path, shard=(2, 4), unit=5, skip=5))
    assert resumed == parts[1][5:]


def test_a_text_shard_never_decodes_the_bytes_before_it(tmp_path: Path) -> None:
    """The part after a bad line reads fine, so it was read from its offset, not decoded from the
    start; a bad line inside a part is named by its true line number."""
    from gptclf.data.tables import read_inputs

    path = tmp_path / "t.txt"
    rows = [b"good %d" % i for i in range(20)]
    rows[3] = b"bad \xff byte"
    path.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(BadInputError, match="line 4 is not valid utf-8"):
        list(read_inputs(path))
    assert list(read_inputs(path, shard=(2, 2), unit=5)) == [(i, f"good {i}") for i in range(10, 20)]
    rows[3], rows[13] = b"good 3", b"bad \xff byte"
    path.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(BadInputError, match="line 14 is not valid utf-8"):
        list(read_inputs(path, shard=(2, 2), unit=5))
