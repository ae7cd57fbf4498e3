"""The prepared-folder format (gptclf.data.prepared): the bytes written, reading back, the fingerprint."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from gptclf.data.prepare import prepare
from gptclf.data.prepared import read_prepared
from gptclf.errors import BadInputError
from tests.conftest import REPO, SMS_FILE, needs_shared_sms
from tests.data.test_rows import labelled
from tests.data.test_tables import write_csv

FIXTURES = REPO / "tests" / "fixtures" / "prepared"
FILES = ("train.csv", "validation.csv", "test.csv", "labels.json")


def test_the_format_is_byte_identical_to_the_one_written_before_the_reshaping(tmp_path: Path) -> None:
    """tests/fixtures/prepared/expected was written by the code before the data layer was split
    (quotes, CRLF, a lone CR, non-ASCII, dropped rows, oversampling): the same input and options
    must give the same bytes in every file, labels.json included."""
    prepare(
        tmp_path / "out",
        input_path=FIXTURES / "tricky.csv",
        text_column="body",
        label_column="y",
        balance="oversample",
        split="0.6,0.2,0.2",
        seed=5,
    )
    for name in FILES:
        assert (tmp_path / "out" / name).read_bytes() == (FIXTURES / "expected" / name).read_bytes(), name


# sha256 of the four files of the book recipe on the UCI file, as written before the reshaping.
BOOK_SHA256 = {
    "train.csv": "d7921d3ab0ba0a18adc60739daf2e7002d9f47f13128110951bb205493523a71",
    "validation.csv": "50db865e9e457aa91e3ad7de7ce384e875d85bd4e95c3e91b70e5bbacd5b89ae",
    "test.csv": "077374cb44a502f131efeedc5bef688e810f864209cf2035c843e01137b35ae0",
    "labels.json": "8a84c9082f483990be218de4aefb13f416228d40d1ad9afd635ca595d8bb23c9",
}


@needs_shared_sms
def test_the_book_recipe_writes_the_same_bytes_as_before(isolated_home: Path, tmp_path: Path) -> None:
    cached = isolated_home / "datasets" / "sms-spam" / "SMSSpamCollection"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(SMS_FILE, cached)
    result = CliRunner().invoke(
        app, ["prepare", "--dataset", "sms-spam", "--no-stratify", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    for name, digest in BOOK_SHA256.items():
        assert hashlib.sha256((tmp_path / "o" / name).read_bytes()).hexdigest() == digest, name


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


def test_write_then_read_gives_the_splits_back_exactly(tmp_path: Path) -> None:
    import pandas as pd

    from gptclf.data.prepared import prepared_fingerprint, write_prepared

    texts = ['a "quote", a comma', "line\nbreak", "lone\rreturn", "crlf\r\nend", "é 😀", " padded "]
    parts = {
        split: pd.DataFrame({"text": texts[i::3], "label": ["x", "y"][: len(texts[i::3])]})
        for i, split in enumerate(("train", "validation", "test"))
    }
    write_prepared(tmp_path / "out", parts, {"classes": ["x", "y"], "seed": 1})
    back = read_prepared(tmp_path / "out")
    assert back.classes == ["x", "y"] and back.meta["seed"] == 1
    assert back.meta["format"] == "gptclf-prepared/1"
    for split, part in parts.items():
        assert back.splits[split].to_dict("list") == part.to_dict("list")
        assert back.meta["files"][f"{split}.csv"]["rows"] == len(part)
    # The same content written again elsewhere has the same fingerprint; other meta, another.
    write_prepared(tmp_path / "again", parts, {"classes": ["x", "y"], "seed": 1})
    write_prepared(tmp_path / "other", parts, {"classes": ["x", "y"], "seed": 2})
    assert prepared_fingerprint(tmp_path / "out") == prepared_fingerprint(tmp_path / "again")
    assert prepared_fingerprint(tmp_path / "out") != prepared_fingerprint(tmp_path / "other")


# --- issue 21: a split streamed a chunk of rows at a time ---------------------------------------


def test_a_split_streamed_in_chunks_gives_read_prepareds_rows(tmp_path: Path) -> None:
    import pandas as pd

    from gptclf.data.prepared import iter_split, read_meta, split_rows, write_prepared

    texts = ['a "quote", a comma', "line\nbreak", "lone\rreturn", "crlf\r\nend", "é 😀", " padded ", "x", "y"]
    parts = {
        "train": pd.DataFrame({"text": texts, "label": ["x", "y"] * 4}),
        "validation": pd.DataFrame({"text": texts[:2], "label": ["x", "y"]}),
        "test": pd.DataFrame({"text": [], "label": []}),
    }
    write_prepared(tmp_path / "out", parts, {"classes": ["x", "y"], "seed": 1})
    meta, whole = read_meta(tmp_path / "out"), read_prepared(tmp_path / "out")
    frames = list(iter_split(tmp_path / "out", "train", meta, chunk=3))
    assert [len(f) for f in frames] == [3, 3, 2] and split_rows(meta, "train") == 8
    joined = pd.concat(frames, ignore_index=True)
    assert joined.to_dict("list") == whole.splits["train"].to_dict("list")
    assert list(iter_split(tmp_path / "out", "test", meta)) == []  # an empty split: no frame


def test_a_streamed_split_is_refused_before_any_row_when_its_file_changed(tmp_path: Path) -> None:
    from gptclf.data.prepared import iter_split, read_meta

    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"a": 20, "b": 20}))
    prepare(tmp_path / "out", input_path=path)
    meta = read_meta(tmp_path / "out")
    with open(tmp_path / "out" / "test.csv", "a", encoding="utf-8", newline="") as fh:
        fh.write("added by hand,a\r\n")
    frames = iter_split(tmp_path / "out", "test", meta, chunk=1)
    with pytest.raises(BadInputError, match=r"test\.csv does not match labels\.json"):
        next(frames)


@pytest.mark.parametrize(
    ("added", "phrase"),
    [
        (b"bad \xff\xfe text,a\r\n", r"after line \d+ it is not valid utf-8"),
        (b'"an unterminated quote,a\r\n', r"line \d+ is not valid CSV"),
        (b"one,a,field too many\r\n", r"line \d+ has 3 fields, not text,label"),
        (b"one more row,a\r\n", r"holds \d+ rows and labels\.json says \d+"),
    ],
)
def test_a_split_edited_together_with_its_checksum_is_one_line_either_way(
    tmp_path: Path, added: bytes, phrase: str
) -> None:
    import json

    from gptclf.data.prepared import iter_split, read_meta

    path = write_csv(tmp_path / "t.csv", ["text", "label"], labelled({"a": 20, "b": 20}))
    out = tmp_path / "out"
    prepare(out, input_path=path)
    with open(out / "test.csv", "ab") as fh:
        fh.write(added)
    meta = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    meta["files"]["test.csv"]["sha256"] = hashlib.sha256((out / "test.csv").read_bytes()).hexdigest()
    (out / "labels.json").write_text(json.dumps(meta), encoding="utf-8")
    for read in (lambda: read_prepared(out), lambda: list(iter_split(out, "test", read_meta(out)))):
        with pytest.raises(BadInputError, match=phrase) as caught:
            read()
        assert "\n" not in str(caught.value) and "run `gptclf prepare --force` again" in str(caught.value)


# --- issue 18: a replaced set is swapped in whole; a killed prepare leaves debris the next removes --


#: `gptclf prepare` whose last file's fsync (labels.json in the new folder) waits to be killed.
_PREPARE_STOPPED_IN_ITS_WRITE = """
import os, sys, time
real_fsync = os.fsync
def stuck(fd):
    if not os.readlink(f"/proc/self/fd/{fd}").endswith("labels.json"):
        return real_fsync(fd)
    sys.stderr.write("writing\\n"); sys.stderr.flush()
    time.sleep(600)
os.fsync = stuck
from cli.main import app
app(sys.argv[1:])
"""


def _prepare_args(source: Path, out: Path, seed: str) -> list[str]:
    return ["prepare", "--input", str(source), "--text-column", "body", "--label-column", "y",
            "--split", "0.6,0.2,0.2", "--seed", seed, "--out", str(out), "--force"]  # fmt: skip


@pytest.mark.slow
def test_a_prepare_killed_while_it_writes_leaves_the_old_set_and_no_debris(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    source, out = FIXTURES / "tricky.csv", tmp_path / "d"
    assert CliRunner().invoke(app, _prepare_args(source, out, "1")).exit_code == 0
    (out / "notes.txt").write_text("mine")
    old = {name: (out / name).read_bytes() for name in FILES}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _PREPARE_STOPPED_IN_ITS_WRITE, *_prepare_args(source, out, "2")]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.strip() == "writing":
            break
    proc.kill()
    proc.wait()
    assert {name: (out / name).read_bytes() for name in FILES} == old  # the old set, whole
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and f"-{proc.pid}-" in left[0]  # named by the dead process
    result = CliRunner().invoke(app, _prepare_args(source, out, "2"))
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # removed by the next
    assert (out / "notes.txt").read_text() == "mine"  # the folder's other files stay
    assert {name: (out / name).read_bytes() for name in FILES} != old
    read_prepared(out)


def test_an_out_that_is_a_mount_point_is_one_line(tmp_path: Path) -> None:
    from tests.fault_helpers import tmpfs

    with tmpfs(tmp_path / "mnt", "1m") as mount:
        result = CliRunner().invoke(app, _prepare_args(FIXTURES / "tricky.csv", mount, "1"))
        assert list(mount.iterdir()) == []
    assert result.exit_code == 2 and "mount point" in result.stderr, result.stderr
