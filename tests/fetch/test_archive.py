"""Safe extraction of the SMS archive: the data and readme only, no zip-slip, no zip bombs."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from gptclf.errors import DownloadError
from gptclf.fetch.archive import extract_sms_archive


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


DATA = b"ham\tHello there\nspam\tWIN a prize\n"


def test_extraction_takes_the_data_and_readme_only(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"SMSSpamCollection": DATA, "readme": b"about", "other.txt": b"x"}))
    out = tmp_path / "out"
    path = extract_sms_archive(archive, out, sha256=sha(DATA))
    assert path == out / "SMSSpamCollection"
    assert path.read_bytes() == DATA
    assert sorted(p.name for p in out.iterdir()) == ["SMSSpamCollection", "readme"]  # no temp left


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "sub/../../evil", "C:/evil", "..\\evil"])
def test_zip_slip_is_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"SMSSpamCollection": DATA, name: b"pwned"}))
    out = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match="would land outside"):
        extract_sms_archive(archive, out, sha256=None)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "deep" / "evil").exists()


def test_archive_that_expands_too_far_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"SMSSpamCollection": b"0" * 5000}))  # compresses to a few bytes
    with pytest.raises(DownloadError, match="more than the 1,000-byte limit"):
        extract_sms_archive(archive, tmp_path / "out", sha256=None, max_bytes=1000)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (make_zip({"readme": b"no data"}), "holds no SMSSpamCollection"),
        (make_zip({"SMSSpamCollection": b"edited"}), "has sha256"),
        (b"this is not a zip", "not a readable zip"),
    ],
)
def test_wrong_archives_are_refused(tmp_path: Path, content: bytes, error: str) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(content)
    with pytest.raises(DownloadError, match=error):
        extract_sms_archive(archive, tmp_path / "out", sha256=sha(DATA))
    assert not (tmp_path / "out" / "SMSSpamCollection").exists()
