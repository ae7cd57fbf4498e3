"""HTTP downloads into the cache: streaming, resume, retries, mirrors, verification, atomic rename.

A file is written to ``<name>.part`` (resumed with a ``Range`` request after an interruption) and
renamed to ``<name>`` only when complete and verified: tokenizer files by their known sha256;
weights by the sha256 and size the host states (the Hugging Face hub's redirect carries them in
``X-Linked-Etag``/``X-Linked-Size``; a plain server may give a 64-hex ``ETag``), else by size, and
always by the safetensors header (tensors, shapes, extent); the SMS archive by its CRC-32s and the
extracted file's sha256. A file already in the cache is re-checked cheaply (sha256 of small files,
header and extent of weights, never a multi-GB hash) and not fetched again when it passes.

Mirror rule (``--mirror URL|DIR``, env ``GPTCLF_MIRROR``): every file is taken from
``<mirror>/<its path on its primary public host>`` instead, e.g.
``<mirror>/openai-community/gpt2/resolve/main/model.safetensors``,
``<mirror>/gpt-2/encodings/main/vocab.bpe``, ``<mirror>/static/public/228/sms+spam+collection.zip``:
a mirror is made by copying files. A folder mirror is copied from, still verified and atomic.
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
from typing import IO, Any, NamedTuple
from urllib.parse import unquote, urlsplit

from gptclf import __version__
from gptclf.archive import SMS_FILE, SMS_SHA256, extract_sms_archive
from gptclf.config import PRESETS, GPTConfig, cache_home, canonical_preset, valid_model_names
from gptclf.errors import BadInputError, DownloadError
from gptclf.fileio import sha256_file
from gptclf.tokenizer import TOKENIZER_FILES, TOKENIZER_URL_DIR, tokenizer_dir
from gptclf.weights import check_safetensors_extent, verify_checkpoint, weights_file, weights_url_path

#: Base URLs of the hosts each kind of file comes from, primary first. The mirror rule uses the
#: path of a file's URL on the primary host.
WEIGHTS_HOSTS = ("https://huggingface.co", "https://hf-mirror.com")
TOKENIZER_HOSTS = (
    "https://openaipublic.blob.core.windows.net",
    "https://openaipublic.azureedge.net",  # the CDN name tiktoken used before moving to blob storage
)
SMS_HOSTS = (
    "https://archive.ics.uci.edu",
    # The Internet Archive's copy of the same URL; ``id_`` asks for the original bytes, unrewritten.
    "https://web.archive.org/web/2024id_/https://archive.ics.uci.edu",
)
SMS_URL_PATH = "static/public/228/sms+spam+collection.zip"
SMS_ARCHIVE = "sms+spam+collection.zip"

PUBLIC_HINT = (
    "check the network, or take the files from another host or a folder with --mirror URL|DIR "
    "(env GPTCLF_MIRROR)"
)
MIRROR_HINT = "a mirror holds each file at <mirror>/<its path on the public host>; check --mirror"

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Retry:
    """How hard to try one host before falling back to the next.

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


class Progress:
    """Receives download events. This base class ignores them, so library calls stay silent.

    The command line passes a subclass that draws a progress bar or prints plain lines on stderr.
    """

    def begin(self, label: str, total: int | None, done: int) -> None:
        """A transfer of ``label`` starts: ``total`` bytes if known, ``done`` already there."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes arrived."""

    def note(self, message: str) -> None:
        """Something worth telling a person (a retry, a restart)."""

    def end(self, label: str, path: Path, fetched: bool) -> None:
        """``label`` is in place at ``path``; ``fetched`` is False when it was already there."""


class _Fetched(NamedTuple):
    sha256: str  # of the bytes now in the .part file
    stated_sha256: str | None  # what the host says the file's sha256 is
    stated_size: int | None  # what the host says the file's size is


class _SourceError(Exception):
    """One source failed; ``transient`` failures are retried, the others move to the next source."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def resolve_mirror(mirror: str | None) -> str | None:
    """The mirror to use: ``mirror``, else env ``GPTCLF_MIRROR``, else None (the public hosts).

    Returns:
        An ``http(s)://`` base URL without a trailing slash, or an absolute folder path
        (``file://`` URLs become paths), or None.

    Raises:
        BadInputError: The mirror is a folder that does not exist.
    """
    value = (mirror or os.environ.get("GPTCLF_MIRROR") or "").strip()
    if not value:
        return None
    if value.startswith(("http://", "https://")):
        return value.rstrip("/")
    if value.startswith("file://"):
        value = urllib.request.url2pathname(urlsplit(value).path)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise BadInputError(
            f"mirror folder {path} does not exist: give an http(s):// URL or a folder that holds "
            "each file at <mirror>/<its path on the public host>"
        )
    return str(path.resolve())


def mirror_location(public_url: str, mirror: str) -> str | Path:
    """Where the mirror rule puts a file: ``<mirror>/<path of public_url>``.

    Args:
        public_url: The file's URL on its primary public host.
        mirror: A mirror as returned by :func:`resolve_mirror`.

    Returns:
        A URL for a URL mirror, a path for a folder mirror.
    """
    path = urlsplit(public_url).path.lstrip("/")
    if mirror.startswith(("http://", "https://")):
        return f"{mirror}/{path}"
    return Path(mirror) / unquote(path)  # a %-escape in a URL is a plain character in a file name


def _sources(public_urls: Sequence[str], mirror: str | None) -> list[str | Path]:
    """The places to fetch a file from, in order: the mirror alone, or every public host."""
    return [mirror_location(public_urls[0], mirror)] if mirror else list(public_urls)


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
    hint: str = PUBLIC_HINT,
) -> bool:
    """Fetch a file to ``dest`` from the first source that delivers it, verified, atomically.

    Args:
        urls: Sources in order: ``http(s)://`` URLs or local file paths (copied).
        dest: Final location. The download goes to ``<dest>.part`` and is renamed when verified.
        sha256: Known sha256; when None, the one the host states (if any) is used.
        size: Known size in bytes; when None, the one the host states (if any) is used.
        check: Extra check of the file's content; raises BadInputError or ValueError to refuse it.
        progress: Receives progress events (default: silent).
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
            progress.note(f"{exc}; fetching it again")
            dest.unlink()
        else:
            progress.end(label, dest, fetched=False)
            return False
    dest.parent.mkdir(parents=True, exist_ok=True)
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
        want_sha = sha256 or got.stated_sha256
        want_size = size if size is not None else got.stated_size
        try:
            _verify(part, got.sha256, want_sha, want_size, check, label)
        except DownloadError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{exc} (from {source}); the download was removed") from None
        os.replace(part, dest)
        progress.end(label, dest, fetched=True)
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
    """Copy a file from a folder mirror into ``part`` (from scratch: local copies are fast)."""
    if not src.is_file():
        raise _SourceError("no such file", transient=False)
    digest = hashlib.sha256()
    progress.begin(label, src.stat().st_size, 0)
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
            progress.note(f"{label}: {exc}; retrying in {delay:g} s")
            time.sleep(delay)


def _attempt_http(url: str, part: Path, timeout: float, progress: Progress, label: str) -> _Fetched:
    """One GET of ``url``, appending to ``part`` from where it ends (a ``Range`` request)."""
    offset = _size(part)
    headers = {"User-Agent": f"gptclf/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    linked = _LinkedHeaders()
    opener = urllib.request.build_opener(linked)
    try:
        resp = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
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
                progress.note(f"{label}: the host does not resume downloads; starting again")
            offset, total = 0, length
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        progress.begin(label, total, offset)
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
    # http.client returns b"" rather than raising when a server closes before Content-Length.
    if length is not None and received < length:
        closed = f"connection closed after {offset + received:,} of {offset + length:,} bytes"
        raise _SourceError(closed, transient=True)
    return _Fetched(digest.hexdigest(), stated_sha, stated_size if stated_size is not None else total)


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


def _fetch_public(
    url_path: str,
    hosts: Sequence[str],
    dest: Path,
    mirror: str | None,
    progress: Progress | None,
    retry: Retry | None,
    **checks: Any,
) -> bool:
    """Fetch the file at ``url_path`` on the public ``hosts`` (or on the mirror) to ``dest``."""
    resolved = resolve_mirror(mirror)
    sources = _sources([f"{host}/{url_path}" for host in hosts], resolved)
    hint = MIRROR_HINT if resolved else PUBLIC_HINT
    return download_file(sources, dest, progress=progress, retry=retry, hint=hint, **checks)


def ensure_weights(
    preset: str,
    home: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    *,
    config: GPTConfig | None = None,
    hosts: Sequence[str] = WEIGHTS_HOSTS,
    retry: Retry | None = None,
) -> Path:
    """Make sure a preset's ``model.safetensors`` is in the cache; download it if not.

    Args:
        preset: A preset or alias (``gpt2-small``, ``124M``, ...).
        home: Cache folder (default :func:`gptclf.config.cache_home`).
        mirror: Mirror URL or folder (default env ``GPTCLF_MIRROR``; see :func:`resolve_mirror`).
        progress: Receives progress events (default: silent).
        config: Shape the file must have (default: the preset's); tests use a tiny one.
        hosts: Public base URLs, primary first.
        retry: Retry policy per host.

    Returns:
        ``<home>/models/<preset>/model.safetensors``.

    Raises:
        BadInputError: An unknown preset, or a mirror folder that does not exist.
        DownloadError: The file could not be fetched or failed verification.
    """
    name = canonical_preset(preset)
    if name is None:
        raise BadInputError(f"unknown model {preset!r}: valid names are {', '.join(valid_model_names())}")
    cfg = config or PRESETS[name]

    def check(path: Path) -> None:
        verify_checkpoint(path, cfg)
        check_safetensors_extent(path)

    dest = weights_file(name, home)
    _fetch_public(
        weights_url_path(name), hosts, dest, mirror, progress, retry, check=check, label=f"{name} weights"
    )
    return dest


def ensure_tokenizer(
    home: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    *,
    hosts: Sequence[str] = TOKENIZER_HOSTS,
    retry: Retry | None = None,
) -> Path:
    """Make sure GPT-2's ``encoder.json`` and ``vocab.bpe`` are in the cache, each by its sha256.

    Arguments are those of :func:`ensure_weights`. Returns the folder, ``<home>/tokenizer``.

    Raises:
        BadInputError: A mirror folder that does not exist.
        DownloadError: A file could not be fetched or has the wrong sha256.
    """
    folder = tokenizer_dir(home)
    for name, digest in TOKENIZER_FILES.items():
        url_path = f"{TOKENIZER_URL_DIR}/{name}"
        _fetch_public(url_path, hosts, folder / name, mirror, progress, retry, sha256=digest)
    return folder


def sms_spam_path(home: Path | None = None) -> Path:
    """Where the SMS Spam Collection lives in the cache (no download)."""
    return (home or cache_home()) / "datasets" / "sms-spam" / SMS_FILE


def ensure_sms_spam(
    home: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    *,
    hosts: Sequence[str] = SMS_HOSTS,
    retry: Retry | None = None,
) -> Path:
    """Make sure the SMS Spam Collection is in the cache: fetch the UCI zip and extract it.

    Arguments are those of :func:`ensure_weights`. The zip stays beside the data.

    Returns:
        ``<home>/datasets/sms-spam/SMSSpamCollection``.

    Raises:
        BadInputError: A mirror folder that does not exist.
        DownloadError: The archive could not be fetched, is unsafe or does not hold the corpus.
    """
    progress = progress or Progress()
    target = sms_spam_path(home)
    if target.is_file() and sha256_file(target) == SMS_SHA256:
        progress.end(SMS_FILE, target, fetched=False)
        return target
    archive = target.parent / SMS_ARCHIVE
    _fetch_public(SMS_URL_PATH, hosts, archive, mirror, progress, retry)
    try:
        extract_sms_archive(archive, target.parent)
    except DownloadError:
        archive.unlink(missing_ok=True)  # never trust this archive again: the next run refetches
        raise
    progress.end(SMS_FILE, target, fetched=True)
    return target
