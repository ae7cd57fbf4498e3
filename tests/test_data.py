"""Loading without loss, balancing, splitting and the prepared folder (gptclf.data, gptclf.prepare)."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.data import (
    LoadedTable,
    label_ids,
    load_sms_spam,
    load_table,
    prepared_fingerprint,
    read_inputs,
    read_prepared,
    read_texts,
    resolve_format,
    split_tsv,
    tsv_line,
)
from gptclf.errors import BadInputError
from gptclf.prepare import min_rows_per_class, parse_classes, parse_split, prepare
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


def labelled(n_per_class: dict[str, int]) -> list[list[str]]:
    return [[f"{label} text {i}", label] for label, n in n_per_class.items() for i in range(n)]


def read_split(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["text", "label"]
    return [(r[0], r[1]) for r in rows[1:]]


# --- loading -------------------------------------------------------------------------------------


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


def test_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhello,a\n")
    assert load_table(path).frame["text"].tolist() == ["hello"]


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


def test_other_encoding_reads(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\ncaf\xe9,b\n")
    assert load_table(path, encoding="latin-1").frame["text"].tolist() == ["café"]


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


def stdin_bytes(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Make stdin a stream of ``data``, as a pipe would deliver it."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="ascii"))


def test_stdin_is_decoded_like_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A BOM, CRLF line ends, an empty line and Latin-1 bytes: the file and stdin give the same texts.
    data = b"\xef\xbb\xbfcaf\xc3\xa9 first\r\n\r\nsecond\ttab\r\nlast"
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    stdin_bytes(monkeypatch, data)
    assert list(read_texts("-")) == list(read_texts(path)) == ["café first", "", "second\ttab", "last"]
    latin = "caf\xe9\r\n".encode("latin-1")
    stdin_bytes(monkeypatch, latin)
    assert list(read_texts("-", encoding="latin-1")) == ["caf\xe9"]
    stdin_bytes(monkeypatch, b'text,label\r\n"a, b",x\r\n')
    assert list(read_texts("-", fmt="csv")) == ["a, b"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ok\ncaf\xe9\n", r"stdin: line 2 is not valid utf-8; pass --encoding"),
        (b"ok\nend cut off \xc3", r"stdin: line 2 is not valid utf-8"),
        (b"ok\nbin\x00\x01\x02ary\n", r"stdin: line 2 holds a NUL byte: this is binary data"),
        (bytes(range(256)) * 4, r"stdin: line 1 holds a NUL byte"),
    ],
)
def test_undecodable_or_binary_stdin_is_bad_input_naming_the_line(
    monkeypatch: pytest.MonkeyPatch, data: bytes, message: str
) -> None:
    stdin_bytes(monkeypatch, data)
    with pytest.raises(BadInputError, match=message):
        list(read_texts("-"))


def test_binary_file_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\nhi,a\n".encode("utf-16-le"))  # read as UTF-8: NULs
    with pytest.raises(BadInputError, match="line 1 holds a NUL byte"):
        load_table(path)
    assert load_table(path, encoding="utf-16-le").frame["text"].tolist() == ["hi"]


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
    with pytest.raises(BadInputError, match="--id-column needs a CSV, TSV or JSONL input"):
        read_inputs(txt, id_column="id")


def test_format_hints_name_the_flag_and_what_it_accepts(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        resolve_format(tmp_path / "data.bin", None)
    assert "pass --input-format (csv, tsv, jsonl, sms)" in str(info.value)
    with pytest.raises(BadInputError) as info:
        resolve_format(tmp_path / "data.bin", None, ("csv", "tsv", "jsonl", "sms", "txt"))
    assert "pass --input-format (csv, tsv, jsonl, sms, txt)" in str(info.value)
    assert resolve_format("-", None, ("csv", "txt")) == "txt"


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


def test_read_prepared_refuses_missing_and_mixed_sets(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"a": 20, "b": 20}))
    out = tmp_path / "out"
    prepare(out, input_path=path)
    (out / "test.csv").unlink()
    with pytest.raises(BadInputError, match=r"missing test.csv\); run `gptclf prepare"):
        read_prepared(out)
    prepare(out, input_path=path, force=True)
    other = tmp_path / "other"
    prepare(other, input_path=path, seed=1)
    (out / "train.csv").write_bytes((other / "train.csv").read_bytes())
    with pytest.raises(BadInputError, match=r"does not match labels\.json"):
        read_prepared(out)


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
