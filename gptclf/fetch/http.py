"""A general download client: stream, ``Range`` resume, retries with backoff, verification, rename.

A file is written to ``<name>.part`` (resumed with a ``Range`` request after an interruption) and
renamed to ``<name>`` only when complete and verified: by a known sha256 or size, else by what the
host states (a Hugging Face style redirect carries them in ``X-Linked-Etag``/``X-Linked-Size``; a
plain server may give a 64-hex ``ETag``), and by a content check the caller gives. A file already
in place is re-checked (without a full hash unless a sha256 is known) and not fetched again when it
passes. Sources are tried in order; a local path is copied, still verified and atomic.

This module knows nothing about what it downloads: :mod:`gptclf.fetch.artefacts` says which files come
from where and how each is verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, NamedTuple

from gptclf import __version__
from gptclf.errors import DownloadError, write_error
from gptclf.fileio import sha256_file
from gptclf.progress import BYTES, Progress

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Retry:
    """How hard to try one source before falling back to the next.

    Attributes:
        retries: Retries after a connection error, timeout or 5xx reply (0: try once). The count
            starts again whenever an attempt moved the download forward, so a flaky link that
            keeps dropping still finishes a large file.
        backoff: Seconds before the first retry; doubled for each further one.
        timeout: Seconds to wait for a connection or for data before the attempt fails.
    """

    retries: int = 3
    backoff: float = 1.0
    timeout: float = 30.0


class _Fetched(NamedTuple):
    sha256: str  # of the bytes now in the .part file
    stated_sha256: str | None  # what the host says the file's sha256 is
    stated_size: int | None  # what the host says the file's size is


class _SourceError(Exception):
    """One source failed; ``transient`` failures are retried, the others move to the next source."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def download_file(
    urls: Sequence[str | Path],
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    check: Callable[[Path], None] | None = None,
    progress: Progress | None = None,
    retry: Retry | None = None,
    label: str | None = None,
    hint: str = "check the network",
) -> bool:
    """Fetch a file to ``dest`` from the first source that delivers it, verified, atomically.

    Args:
        urls: Sources in order: ``http(s)://`` URLs or local file paths (copied).
        dest: Final location. The download goes to ``<dest>.part`` and is renamed when verified.
        sha256: Known sha256; when None, the one the host states (if any) is used.
        size: Known size in bytes; when None, the one the host states (if any) is used.
        check: Extra check of the file's content; raises BadInputError or ValueError to refuse it.
        progress: Shows each transfer as a step in bytes, and says retries (default: silent).
        retry: Retry policy per source (default :class:`Retry`).
        label: Name of the file in messages (default ``dest.name``).
        hint: What to suggest when every source fails.

    Returns:
        True if the file was fetched, False if ``dest`` was already present and passed the checks.

    Raises:
        DownloadError: Every source failed (one line naming the URL and ``hint``), or the file
            failed verification (then it is removed).
    """
    dest = Path(dest)
    progress = progress or Progress()
    retry = retry or Retry()
    label = label or dest.name
    if dest.is_file():
        try:
            _verify(dest, sha256_file(dest) if sha256 else None, sha256, size, check, label)
        except DownloadError as exc:
            progress.message(f"{exc}; fetching it again")
            dest.unlink()
        else:
            return False
    try:  # a cache folder under a file (--home FILE), read-only or full: one line, not a traceback
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, dest.parent) from None
    part = dest.with_name(dest.name + ".part")
    failures: list[tuple[str, str]] = []
    for source in urls:
        try:
            if isinstance(source, Path) or not source.startswith(("http://", "https://")):
                got = _copy_local(Path(source), part, progress, label)
            else:
                got = _fetch_http(source, part, retry, progress, label)
        except _SourceError as exc:
            failures.append((str(source), str(exc)))
            continue
        want_size = size if size is not None else got.stated_size
        try:
            _verify(part, got.sha256, sha256 or got.stated_sha256, want_size, check, label)
        except DownloadError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{exc} (from {source}); the download was removed") from None
        os.replace(part, dest)
        return True
    (first, why), *others = failures
    tried = "".join(f"; also tried {url}: {reason}" for url, reason in others)
    raise DownloadError(f"could not download {first}: {why}{tried}. Hint: {hint}")


def _verify(
    path: Path,
    actual_sha: str | None,
    want_sha: str | None,
    want_size: int | None,
    check: Callable[[Path], None] | None,
    label: str,
) -> None:
    """Raise DownloadError unless ``path`` has the wanted size, sha256 and content."""
    got_size = path.stat().st_size
    if want_size is not None and got_size != want_size:
        raise DownloadError(f"{label} has {got_size:,} bytes, expected {want_size:,}")
    if want_sha and actual_sha != want_sha.lower():
        raise DownloadError(f"{label} has sha256 {actual_sha}, expected {want_sha.lower()}")
    if check is not None:
        try:
            check(path)
        except ValueError as exc:  # BadInputError is a ValueError
            raise DownloadError(f"{label} failed its check: {exc}") from None


def _copy_local(src: Path, part: Path, progress: Progress, label: str) -> _Fetched:
    """Copy a file from a folder into ``part`` (from scratch: local copies are fast)."""
    if not src.is_file():
        raise _SourceError("no such file", transient=False)
    digest = hashlib.sha256()
    progress.begin(label, src.stat().st_size, unit=BYTES)
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)
                digest.update(chunk)
                progress.advance(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise _SourceError(str(exc), transient=False) from None
    finally:
        progress.end()
    return _Fetched(digest.hexdigest(), None, None)


def _fetch_http(url: str, part: Path, retry: Retry, progress: Progress, label: str) -> _Fetched:
    """Fetch ``url`` into ``part``, resuming and retrying transient failures with backoff."""
    failures = 0
    while True:
        before = _size(part)
        try:
            return _attempt_http(url, part, retry.timeout, progress, label)
        except _SourceError as exc:
            if not exc.transient:
                raise
            if _size(part) > before:
                failures = 0  # it moved forward: a flaky link, not a dead one
            if failures >= retry.retries:
                raise
            delay = retry.backoff * 2**failures
            failures += 1
            progress.message(f"{label}: {exc}; retrying in {delay:g} s")
            time.sleep(delay)


def _attempt_http(url: str, part: Path, timeout: float, progress: Progress, label: str) -> _Fetched:
    """One GET of ``url``, appending to ``part`` from where it ends (a ``Range`` request)."""
    offset = _size(part)
    linked = _LinkedHeaders()
    resp = _open(url, part, offset, timeout, linked)
    if isinstance(resp, _Fetched):
        return resp
    with resp:
        stated_sha = (
            linked.sha256
            or _etag_sha256(resp.headers.get("X-Linked-Etag"))
            or _etag_sha256(resp.headers.get("ETag"))
        )
        stated_size = linked.size if linked.size is not None else _int(resp.headers.get("X-Linked-Size"))
        length = _int(resp.headers.get("Content-Length"))
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _SourceError("the host sent the wrong range; starting again", True)
        else:  # 200: the host ignored the Range header and sends the whole file
            if offset:
                progress.message(f"{label}: the host does not resume downloads; starting again")
            offset, total = 0, length
        digest = _sha256_of(part) if offset else hashlib.sha256()
        progress.begin(label, total, unit=BYTES, done=offset)
        try:
            received = _receive(resp, part, offset, digest, progress)
        finally:
            progress.end()
    # http.client returns b"" rather than raising when a server closes before Content-Length.
    if length is not None and received < length:
        closed = f"connection closed after {offset + received:,} of {offset + length:,} bytes"
        raise _SourceError(closed, transient=True)
    return _Fetched(digest.hexdigest(), stated_sha, stated_size if stated_size is not None else total)


def _open(
    url: str, part: Path, offset: int, timeout: float, linked: _LinkedHeaders
) -> http.client.HTTPResponse | _Fetched:
    """Send the GET; a ``416`` for a ``.part`` that is already whole gives its :class:`_Fetched`."""
    headers = {"User-Agent": f"gptclf/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    opener = urllib.request.build_opener(linked)
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            total = _content_range(exc.headers.get("Content-Range"))[1]
            if total == offset:  # the .part is whole: the last run stopped before the rename
                return _Fetched(sha256_file(part), linked.sha256, linked.size or total)
            part.unlink()
            raise _SourceError("the partial file does not fit the remote one; starting again", True) from None
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise _SourceError(f"HTTP {exc.code} {exc.reason}", transient) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout
        raise _SourceError(_reason(exc), transient=True) from None


def _receive(
    resp: http.client.HTTPResponse, part: Path, offset: int, digest: hashlib._Hash, progress: Progress
) -> int:
    """Append the body to ``part`` (``offset`` bytes already there); returns the bytes received."""
    received = 0
    with open(part, "ab" if offset else "wb") as fh:
        try:
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            lost = f"connection lost after {offset + received:,} bytes ({_reason(exc)})"
            raise _SourceError(lost, transient=True) from None
        finally:
            fh.flush()
            os.fsync(fh.fileno())
    return received


class _LinkedHeaders(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the ``X-Linked-Etag``/``X-Linked-Size`` of the redirect responses.

    The Hugging Face hub states a file's sha256 and size only on its redirect to the storage host,
    whose own reply does not carry them, so they must be read before the redirect is followed.
    """

    def __init__(self) -> None:
        self.sha256: str | None = None
        self.size: int | None = None

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        self.sha256 = _etag_sha256(headers.get("X-Linked-Etag")) or self.sha256
        size = _int(headers.get("X-Linked-Size"))
        self.size = size if size is not None else self.size
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _sha256_of(path: Path) -> hashlib._Hash:
    """A running sha256 fed with the bytes already in ``path``, to continue with the rest."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest


def _etag_sha256(value: str | None) -> str | None:
    """The sha256 in an ETag-like header, if it is one (weak ETags do not name exact bytes)."""
    if not value or value.startswith("W/"):
        return None
    value = value.strip().strip('"').lower()
    return value if _SHA256_RE.fullmatch(value) else None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``bytes 100-199/200`` or ``bytes */200``."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not match:
        return None, None
    return _int(match.group(1)), _int(match.group(2))


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc  # URLError wraps the socket error in .reason
    return str(reason) or type(reason).__name__
