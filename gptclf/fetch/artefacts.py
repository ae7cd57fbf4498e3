"""What is downloaded, from where, how each file is verified and where it goes in the cache.

Each file is an :class:`Artefact`: its path on its public host(s), the hosts (primary first),
its place in the cache, and how it is verified: the tokenizer files by their known sha256; the
weights by the sha256 and size the host states (the Hugging Face hub's redirect carries them),
else by size, and always by the safetensors header (tensors, shapes, extent); the SMS archive by
its CRC-32s and the extracted file's sha256. :mod:`gptclf.fetch.http` does the fetching.

Mirror rule (``--mirror URL|DIR``, env ``GPTCLF_MIRROR``): every file is taken from
``<mirror>/<its path on its primary public host>`` instead, e.g.
``<mirror>/openai-community/gpt2/resolve/main/model.safetensors``,
``<mirror>/gpt-2/encodings/main/vocab.bpe``, ``<mirror>/static/public/228/sms+spam+collection.zip``:
a mirror is made by copying files. A folder mirror is copied from, still verified and atomic.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from gptclf.errors import BadInputError, DownloadError
from gptclf.fetch.archive import SMS_FILE, SMS_SHA256, extract_sms_archive
from gptclf.fetch.http import Retry, download_file
from gptclf.fileio import sha256_file
from gptclf.model.config import (
    HF_REPOS,
    PRESETS,
    GPTConfig,
    cache_home,
    canonical_preset,
    local_model_dir,
    valid_model_names,
)
from gptclf.model.tokenizer import TOKENIZER_FILES
from gptclf.model.weights import verify_checkpoint
from gptclf.progress import Progress

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
#: Path of the tokenizer files on OpenAI's public host (and, by the mirror rule, on a mirror).
TOKENIZER_URL_DIR = "gpt-2/encodings/main"
SMS_URL_PATH = "static/public/228/sms+spam+collection.zip"
SMS_ARCHIVE = "sms+spam+collection.zip"

PUBLIC_HINT = (
    "check the network, or take the files from another host or a folder with --mirror URL|DIR "
    "(env GPTCLF_MIRROR)"
)
MIRROR_HINT = "a mirror holds each file at <mirror>/<its path on the public host>; check --mirror"


@dataclass(frozen=True)
class Artefact:
    """One file to download.

    Attributes:
        label: Its name in messages and in ``gptclf download --json``.
        url_path: Its path on the primary public host (and, by the mirror rule, on a mirror).
        hosts: Public base URLs, primary first.
        dest: Where it goes in the cache.
        sha256: Its known sha256 (None: whatever the host states, if anything).
        check: A check of its content (raises ValueError to refuse it).
    """

    label: str
    url_path: str
    hosts: Sequence[str]
    dest: Path
    sha256: str | None = None
    check: Callable[[Path], None] | None = None


class Placed(NamedTuple):
    """A file in the cache: its label, its path, and whether this call fetched it."""

    label: str
    path: Path
    fetched: bool


def tokenizer_dir(home: Path | None = None) -> Path:
    """Cache folder of the tokenizer files: ``<home>/tokenizer``."""
    return (home or cache_home()) / "tokenizer"


def weights_file(preset: str, home: Path | None = None) -> Path:
    """Cache location of a preset's ``model.safetensors``: ``<home>/models/<preset>/``."""
    return (home or cache_home()) / "models" / preset / "model.safetensors"


def weights_url_path(preset: str) -> str:
    """Path of a preset's weights on the Hugging Face hub (and, by the mirror rule, on a mirror)."""
    return f"{HF_REPOS[preset]}/resolve/main/model.safetensors"


def sms_spam_path(home: Path | None = None) -> Path:
    """Where the SMS Spam Collection lives in the cache (no download)."""
    return (home or cache_home()) / "datasets" / "sms-spam" / SMS_FILE


def tokenizer_artefacts(home: Path | None = None, hosts: Sequence[str] = TOKENIZER_HOSTS) -> list[Artefact]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe``, each verified by its known sha256."""
    folder = tokenizer_dir(home)
    return [
        Artefact(name, f"{TOKENIZER_URL_DIR}/{name}", hosts, folder / name, sha256=digest)
        for name, digest in TOKENIZER_FILES.items()
    ]


def weights_artefact(
    preset: str,
    home: Path | None = None,
    config: GPTConfig | None = None,
    hosts: Sequence[str] = WEIGHTS_HOSTS,
) -> Artefact:
    """A preset's ``model.safetensors``, verified by its header against ``config`` (default: the
    preset's shape) and by its extent; the host's stated sha256 and size are checked too.

    Raises:
        BadInputError: An unknown preset.
    """
    name = canonical_preset(preset)
    if name is None:
        raise BadInputError(f"unknown model {preset!r}: valid names are {', '.join(valid_model_names())}")
    cfg = config or PRESETS[name]

    def check(path: Path) -> None:
        verify_checkpoint(path, cfg)  # the header's tensors and shapes, and the file's extent

    return Artefact(f"{name} weights", weights_url_path(name), hosts, weights_file(name, home), check=check)


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


def fetch(
    artefact: Artefact,
    mirror: str | None = None,
    progress: Progress | None = None,
    retry: Retry | None = None,
) -> Placed:
    """Make sure ``artefact`` is in the cache, verified; fetch it from the mirror or its hosts.

    A fetched file is said as ``fetched <label>: <path>`` on ``progress``; one already present
    is not (that is no news to a run; ``gptclf download`` says it from the result).

    Raises:
        BadInputError: A mirror folder that does not exist.
        DownloadError: Every source failed, or the file failed verification.
    """
    progress = progress or Progress()
    resolved = resolve_mirror(mirror)
    public = [f"{host}/{artefact.url_path}" for host in artefact.hosts]
    sources = [mirror_location(public[0], resolved)] if resolved else list(public)
    fetched = download_file(
        sources,
        artefact.dest,
        sha256=artefact.sha256,
        check=artefact.check,
        progress=progress,
        retry=retry,
        label=artefact.label,
        hint=MIRROR_HINT if resolved else PUBLIC_HINT,
    )
    if fetched:
        progress.message(f"fetched {artefact.label}: {artefact.dest}")
    return Placed(artefact.label, artefact.dest, fetched)


def ensure_tokenizer(
    home: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    *,
    hosts: Sequence[str] = TOKENIZER_HOSTS,
    retry: Retry | None = None,
    placed: list[Placed] | None = None,
) -> Path:
    """Make sure GPT-2's ``encoder.json`` and ``vocab.bpe`` are in the cache, each by its sha256.

    Args:
        home: Cache folder (default :func:`gptclf.model.config.cache_home`).
        mirror: Mirror URL or folder (default env ``GPTCLF_MIRROR``; see :func:`resolve_mirror`).
        progress: Shows transfers and says what was fetched (default: silent).
        hosts: Public base URLs, primary first.
        retry: Retry policy per host.
        placed: Where each file's :class:`Placed` is appended, if given.

    Returns:
        The folder, ``<home>/tokenizer``.

    Raises:
        BadInputError: A mirror folder that does not exist.
        DownloadError: A file could not be fetched or has the wrong sha256.
    """
    for artefact in tokenizer_artefacts(home, hosts):
        _record(placed, fetch(artefact, mirror, progress, retry))
    return tokenizer_dir(home)


def ensure_weights(
    preset: str,
    home: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    *,
    config: GPTConfig | None = None,
    hosts: Sequence[str] = WEIGHTS_HOSTS,
    retry: Retry | None = None,
    placed: list[Placed] | None = None,
) -> Path:
    """Make sure a preset's ``model.safetensors`` is in the cache; download it if not.

    Arguments are those of :func:`ensure_tokenizer`, and: ``preset``, a preset or alias
    (``gpt2-small``, ``124M``, ...); ``config``, the shape the file must have (default: the
    preset's; tests use a tiny one).

    Returns:
        ``<home>/models/<preset>/model.safetensors``.

    Raises:
        BadInputError: An unknown preset, or a mirror folder that does not exist.
        DownloadError: The file could not be fetched or failed verification.
    """
    got = fetch(weights_artefact(preset, home, config, hosts), mirror, progress, retry)
    return _record(placed, got).path


def base_weights(
    model_name: str, home: Path | None = None, mirror: str | None = None, progress: Progress | None = None
) -> Path:
    """The pretrained weights of a run's base model: a local Hugging Face folder's own
    ``model.safetensors`` (nothing is fetched; :func:`gptclf.model.hfconfig.local_model` checked it), else
    the preset's file in the cache (:func:`ensure_weights`)."""
    folder = local_model_dir(model_name)
    if folder is not None:
        return folder / "model.safetensors"
    return ensure_weights(model_name, home, mirror, progress)


def ensure_sms_spam(
    home: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    *,
    hosts: Sequence[str] = SMS_HOSTS,
    retry: Retry | None = None,
    placed: list[Placed] | None = None,
) -> Path:
    """Make sure the SMS Spam Collection is in the cache: fetch the UCI zip and extract it.

    Arguments are those of :func:`ensure_tokenizer`. The zip stays beside the data.

    Returns:
        ``<home>/datasets/sms-spam/SMSSpamCollection``.

    Raises:
        BadInputError: A mirror folder that does not exist.
        DownloadError: The archive could not be fetched, is unsafe or does not hold the corpus.
    """
    target = sms_spam_path(home)
    if target.is_file() and sha256_file(target) == SMS_SHA256:
        return _record(placed, Placed(SMS_FILE, target, False)).path
    archive = Artefact(SMS_ARCHIVE, SMS_URL_PATH, hosts, target.parent / SMS_ARCHIVE)
    _record(placed, fetch(archive, mirror, progress, retry))
    try:
        extract_sms_archive(archive.dest, target.parent)
    except DownloadError:
        archive.dest.unlink(missing_ok=True)  # never trust this archive again: the next run refetches
        raise
    (progress or Progress()).message(f"fetched {SMS_FILE}: {target}")
    return _record(placed, Placed(SMS_FILE, target, True)).path


def _record(placed: list[Placed] | None, item: Placed) -> Placed:
    if placed is not None:
        placed.append(item)
    return item
