"""The one decoding path of every input: the bytes of a file or of stdin (``-``) -> numbered lines.

Files and stdin are decoded alike: the encoding (UTF-8 by default, a byte-order mark dropped), CRLF
line ends, bytes the encoding cannot decode and NUL bytes (binary data) are handled in one place,
so a text reads the same whichever way it comes in. The formats (:mod:`gptclf.data.tables`) are built on
:func:`numbered_lines` and :func:`csv_lines`.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import io
import itertools
import lzma
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from gptclf.errors import BadInputError

#: The input name that means standard input.
STDIN = "-"
#: An input: a file, or :data:`STDIN`.
Source = Path | str

#: Compressed inputs, told by their first bytes (whatever the name says): magic -> (what, opener).
_COMPRESSIONS: dict[bytes, tuple[str, Any]] = {
    b"\x1f\x8b": ("gzip", gzip.open),
    b"BZh": ("bzip2", bz2.open),
    b"\xfd7zXZ\x00": ("xz", lzma.open),
}
#: The suffixes of compressed files (dropped from a name before its format is told from it).
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")

#: Where a line is cut after a ``\r`` that no ``\n`` follows.
_LONE_CR = re.compile(r"(?<=\r)(?!\n)(?!$)")


def is_stdin(source: Source) -> bool:
    """Whether ``source`` names standard input (``-``) rather than a file."""
    return str(source) == STDIN


def source_name(source: Source) -> str:
    """How messages name ``source``: ``stdin`` or the path."""
    return "stdin" if is_stdin(source) else str(source)


def check_file(path: Path) -> None:
    """Refuse a path that is not an existing file.

    Raises:
        BadInputError: ``path`` does not exist or is not a file.
    """
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    if not path.is_file():
        raise BadInputError(f"not a file: {path}")


def reading_encoding(encoding: str) -> str:
    """The codec to read ``encoding`` with: UTF-8 becomes utf-8-sig, so a byte-order mark never
    glues itself to the first column name or label.

    Raises:
        BadInputError: Python knows no such encoding.
    """
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise BadInputError(f"unknown encoding {encoding!r}") from None
    return "utf-8-sig" if name == "utf-8" else name


def decoded_lines(source: Source, encoding: str, offset: int = 0, first_line: int = 1) -> Iterator[str]:
    """The lines of a file or of stdin, decoded, each with its ``\\n`` (the last may have none).

    The bytes are decoded incrementally, line by line, so a line number is exact (for
    ASCII-compatible encodings) and a pipe's line is delivered as soon as it arrives. Only ``\\n``
    ends a line here; the callers strip a ``\\r`` before it, so CRLF input gives the same texts as
    LF input.

    ``offset``: a file is read from this byte on, the start of its line ``first_line`` (see
    :func:`line_offsets`; uncompressed files only), so a part of a file is read without the rest.

    Raises:
        BadInputError: A missing or empty file; bytes that ``encoding`` cannot decode, or a NUL
            (binary data), naming the line.
    """
    decoder = codecs.getincrementaldecoder(reading_encoding(encoding))()
    pending, line_no = "", first_line - 1
    with _open_bytes(source, offset) as fh:
        for raw in itertools.chain(fh, [None]):  # None: the end, where a cut-off sequence fails
            try:
                text = pending + (decoder.decode(b"", final=True) if raw is None else decoder.decode(raw))
            except UnicodeDecodeError:
                raise _decode_error(source, line_no + 1, encoding) from None
            *complete, pending = text.split("\n")
            lines = [line + "\n" for line in complete]
            if raw is None and pending:
                lines.append(pending)  # a last line without a line ending
            for line in lines:
                line_no += 1
                if "\0" in line:
                    raise BadInputError(
                        f"{source_name(source)}: line {line_no} holds a NUL byte: this is binary data, "
                        f"not {encoding} text (pass --encoding if it is text in another encoding)"
                    )
                yield line


def numbered_lines(
    source: Source, encoding: str, skip_blank: bool = True, offset: int = 0, first_line: int = 1
) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` without the line ending; only ``\\n`` (or ``\\r\\n``) ends a line, so
    a lone ``\\r`` or U+2028 inside a text stays in the text.

    Raises:
        BadInputError: As :func:`decoded_lines`.
    """
    for line_no, line in enumerate(decoded_lines(source, encoding, offset, first_line), start=first_line):
        line = line.removesuffix("\n").removesuffix("\r")
        if skip_blank and not line.strip():
            continue
        yield line_no, line


def csv_lines(source: Source, encoding: str) -> Iterator[str]:
    """Decoded lines cut where ``open(newline="")`` cuts them (``\\n``, ``\\r\\n`` and a lone
    ``\\r``), which is what the csv module expects; a quoted field spans them whole.

    Raises:
        BadInputError: As :func:`decoded_lines`.
    """
    for line in decoded_lines(source, encoding):
        if "\r" in line:
            yield from _LONE_CR.split(line)
        else:
            yield line


#: Encodings in which every line ends in the byte ``\n`` and no other character holds that byte,
#: so a file's lines can be found by their bytes (:func:`line_offsets`).
_BYTE_LINES = re.compile(r"^(utf[-_]?8(-sig)?|ascii|latin[-_]?1|iso8859.*|cp125\d|mac-roman)$")


def lines_by_bytes(path: Path, encoding: str) -> bool:
    """Whether ``path``'s lines can be found in its bytes: an uncompressed file in an encoding
    where ``\n`` is one byte no other character holds (UTF-8, ASCII, Latin-1, cp1252, ...)."""
    try:
        name = codecs.lookup(encoding).name
        with open(path, "rb") as fh:
            head = fh.read(6)
    except (LookupError, OSError):
        return False
    compressed = any(head.startswith(magic) for magic in _COMPRESSIONS)
    return not compressed and _BYTE_LINES.match(name) is not None


def line_offsets(path: Path, every: int) -> tuple[int, list[int]]:
    """One pass over ``path``'s bytes (no decoding): its number of lines (a last line without a
    line ending counted) and the byte offset of every ``every``-th line's start (lines 0, every,
    2 * every, ...), for :func:`decoded_lines`' ``offset``."""
    offsets, lines, position, last = [0], 0, 0, b"\n"
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            start = 0
            while True:
                found = block.find(b"\n", start)
                if found < 0:
                    break
                lines += 1
                if lines % every == 0:
                    offsets.append(position + found + 1)
                start = found + 1
            position += len(block)
            last = block[-1:]
    lines += last != b"\n"
    return lines, offsets


def _open_bytes(source: Source, offset: int = 0) -> contextlib.AbstractContextManager[Iterable[bytes]]:
    """The bytes of a file or of stdin, for :func:`decoded_lines` to decode; gzip, bzip2 and xz
    data (told by its first bytes, whatever the name) decompressed as a stream.

    Stdin gets a reader of its own on the same descriptor (not ``sys.stdin.buffer``), so that a
    reader thread blocked on it cannot hold the lock that the interpreter takes to close
    ``sys.stdin`` at exit. Where stdin has no descriptor (a test harness), its buffer is used.
    """
    if is_stdin(source):
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            return _maybe_compressed(sys.stdin.buffer, source, close=False)
        return _maybe_compressed(open(fd, "rb", closefd=False), source, close=True)
    path = Path(source)
    check_file(path)
    if path.stat().st_size == 0:
        raise BadInputError(f"{path} is empty")
    fh = open(path, "rb")  # noqa: SIM115 (closed by _maybe_compressed)
    if offset:
        fh.seek(offset)
    return _maybe_compressed(fh, source, close=True)


@contextlib.contextmanager
def _maybe_compressed(raw: IO[bytes], source: Source, close: bool) -> Iterator[Iterable[bytes]]:
    try:
        if not hasattr(raw, "peek"):  # a harness's stdin (BytesIO): buffered here, to peek at
            raw = io.BufferedReader(raw)  # type: ignore[arg-type]
        head = raw.peek(6)[:6]  # type: ignore[attr-defined]
        found = [(what, opener) for magic, (what, opener) in _COMPRESSIONS.items() if head.startswith(magic)]
        if not found:
            yield raw
            return
        what, opener = found[0]
        stream = opener(raw, "rb")
        try:
            yield _unpacked(stream, source, what)
        finally:
            stream.close()
    finally:
        if close:
            raw.close()


def _unpacked(stream: IO[bytes], source: Source, what: str) -> Iterator[bytes]:
    """The lines of a decompressing stream; damaged or cut-short data is one clear error."""
    try:
        yield from stream
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise BadInputError(
            f"{source_name(source)}: the {what} data is damaged or cut short ({exc}); "
            "compress the file again or pass it uncompressed"
        ) from None


def _decode_error(source: Source, line_no: int, encoding: str) -> BadInputError:
    return BadInputError(
        f"{source_name(source)}: line {line_no} is not valid {encoding}; pass --encoding with the "
        "input's encoding (for example --encoding latin-1)"
    )
