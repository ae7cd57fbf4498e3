"""The one decoding path (gptclf.data.decoding): encodings, byte-order marks, CRLF, binary input, and stdin
read exactly like a file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gptclf.data.tables import load_table, read_texts
from gptclf.errors import BadInputError


def test_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhello,a\n")
    assert load_table(path).frame["text"].tolist() == ["hello"]


def test_other_encoding_reads(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\ncaf\xe9,b\n")
    assert load_table(path, encoding="latin-1").frame["text"].tolist() == ["café"]


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


@pytest.mark.parametrize(("suffix", "pack"), [(".gz", "gzip"), (".bz2", "bz2"), (".xz", "lzma")])
def test_compressed_files_read_as_streams_whatever_their_name(tmp_path: Path, suffix: str, pack: str) -> None:
    import importlib

    data = b'text,label\nhello,a\n"two\nlines",b\n'
    packed = importlib.import_module(pack).compress(data)
    named = tmp_path / f"in.csv{suffix}"
    named.write_bytes(packed)
    plain = tmp_path / "in.csv"
    plain.write_bytes(data)
    want = load_table(plain).frame["text"].tolist()
    assert load_table(named).frame["text"].tolist() == want == ["hello", "two\nlines"]
    misnamed = tmp_path / "in2.csv"  # the bytes say it is compressed, not the name
    misnamed.write_bytes(packed)
    assert load_table(misnamed).frame["text"].tolist() == want
    assert list(read_texts(named, fmt=f"csv{suffix}")) == want


def test_damaged_compressed_data_is_one_clear_error(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress(b"text,label\n" + b"hello,a\n" * 1000)[:40])
    with pytest.raises(BadInputError, match=r"cut.csv.gz: the gzip data is damaged or cut short"):
        load_table(path)


def test_compressed_stdin_is_read_like_a_compressed_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    stdin_bytes(monkeypatch, gzip.compress(b"one\ntwo\n"))
    assert list(read_texts("-")) == ["one", "two"]
