"""Safe extraction of the SMS Spam Collection archive: no zip-slip, no zip bombs, atomic."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from gptclf.errors import DownloadError
from gptclf.fileio import sha256_file

SMS_FILE = "SMSSpamCollection"
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_EXTRAS = ("readme",)  # extracted beside the data when the archive has it
MAX_ARCHIVE_BYTES = 100_000_000  # the SMS archive expands to 0.5 MB; anything near this is hostile
_CHUNK = 1 << 20


def extract_sms_archive(
    archive: Path, folder: Path, *, sha256: str | None = SMS_SHA256, max_bytes: int = MAX_ARCHIVE_BYTES
) -> Path:
    """Extract ``SMSSpamCollection`` (and ``readme``) from the top level of the UCI zip, safely.

    The whole archive is refused if any member's path would land outside ``folder`` (absolute,
    a drive letter, ``..``) or if it would expand past ``max_bytes``. Files are extracted into a
    temporary folder beside the target and renamed into place, the data file last.

    Args:
        archive: The zip file.
        folder: Where the files go.
        sha256: Expected sha256 of the extracted ``SMSSpamCollection`` (None: not checked).
        max_bytes: Cap on the archive's total uncompressed size.

    Returns:
        The path of the extracted ``SMSSpamCollection``.

    Raises:
        DownloadError: The archive is unreadable, unsafe, too large or lacks the data file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                if not _member_is_safe(info.filename):
                    raise DownloadError(
                        f"refusing {archive.name}: member {info.filename!r} would land outside {folder}"
                    )
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise DownloadError(
                    f"refusing {archive.name}: it would expand to {total:,} bytes, "
                    f"more than the {max_bytes:,}-byte limit"
                )
            names = {info.filename for info in infos}
            if SMS_FILE not in names:
                raise DownloadError(f"{archive.name} holds no {SMS_FILE} at its top level")
            wanted = [n for n in SMS_EXTRAS if n in names] + [SMS_FILE]  # data last: marks completion
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=folder) as tmp:
                for name in wanted:
                    with zf.open(name) as src, open(Path(tmp) / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)  # zipfile checks each CRC-32 at the end
                        dst.flush()
                        os.fsync(dst.fileno())
                actual = sha256_file(Path(tmp) / SMS_FILE)
                if sha256 and actual != sha256:
                    raise DownloadError(
                        f"{archive.name}: its {SMS_FILE} has sha256 {actual}, expected {sha256}"
                    )
                for name in wanted:
                    os.replace(Path(tmp) / name, folder / name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DownloadError(f"{archive} is not a readable zip archive ({exc})") from None
    return folder / SMS_FILE


def _member_is_safe(name: str) -> bool:
    """False for zip member names that could write outside the extraction folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return not (posix.is_absolute() or ".." in posix.parts or PureWindowsPath(name).drive)
