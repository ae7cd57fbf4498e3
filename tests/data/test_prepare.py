"""`gptclf prepare` writes: --out checked before any work, a full disk is one line and no debris;
--input-format (and its old name --format); the streamed version writes the bytes the in-memory one
did, with memory flat in the number of rows."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_prepare import FILES, one_line, rows_of, run, snapshot, write_table
from tests.data.prepare_inputs import CASES, table_rows
from tests.data.prepare_inputs import write_table as write_input

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_out_under_a_file_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep me", encoding="utf-8")
    out = tmp_path / "file" / "sub" / "prepared"
    # The input is missing too: were the input read first, that would be the error.
    result = run("--input", tmp_path / "absent.csv", "--out", out)
    assert result.exit_code == 2, result.output
    assert f"is under {tmp_path / 'file'}, which is a file, not a folder" in one_line(result)
    assert "no such file" not in one_line(result) and "Traceback" not in result.output
    # Nor is the SMS set downloaded first (from a mirror that does not exist, which would fail).
    result = run("--dataset", "sms-spam", "--mirror", tmp_path / "no-mirror", "--out", out)
    assert result.exit_code == 2 and "which is a file" in one_line(result)
    assert (tmp_path / "file").read_text(encoding="utf-8") == "keep me"


def test_out_that_cannot_be_written_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    result = run("--input", tmp_path / "absent.csv", "--out", "/proc/gptclf-nowhere/prepared")
    assert result.exit_code == 2, result.output
    assert "--out /proc/gptclf-nowhere/prepared: cannot write into /proc" in one_line(result)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    table = write_table(tmp_path / "data.csv", rows_of({"pos": 30, "neg": 20}))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run("--input", table, "--out", locked / "prepared")
        assert result.exit_code == 2 and "cannot write into" in one_line(result)
    finally:
        locked.chmod(0o755)


def test_a_read_only_file_system_is_refused_even_for_root(tmp_path: Path) -> None:
    from tests.fault_helpers import tmpfs

    table = write_table(tmp_path / "data.csv", rows_of({"pos": 30, "neg": 20}))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        result = run("--input", table, "--out", disk / "prepared")
    assert result.exit_code == 2 and "cannot write into" in one_line(result), result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_disk_that_fills_during_the_write_is_one_line_and_leaves_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = write_table(tmp_path / "data.csv", rows_of({"pos": 30, "neg": 20}))
    work = tmp_path / "work"
    assert run("--input", table, "--out", work / "out").exit_code == 0
    before = snapshot(work)
    real_open = open

    class FullDisk(io.FileIO):
        """A file on a disk that fills halfway through the write."""

        def write(self, data: bytes) -> int:  # type: ignore[override]
            super().write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_on_a_full_disk(path: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode and Path(path).name == "validation.csv":  # train.csv fits, this does not
            return FullDisk(path, "wb")
        return real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("gptclf.data.prepared.open", open_on_a_full_disk, raising=False)
    result = run("--input", table, "--out", work / "out", "--force", "--seed", "7")
    assert result.exit_code == 1, result.output
    message = one_line(result)
    assert message.startswith(f"gptclf: error: no space left on the disk of {work / 'out'} (")
    assert "bytes needed" in message and "Traceback" not in result.output
    assert snapshot(work) == before  # the old set as it was, no temporary folder left beside it


def test_input_format_and_its_old_name(tmp_path: Path) -> None:
    table = write_table(tmp_path / "data.table", rows_of({"pos": 30, "neg": 20}))  # no known extension
    result = run("--input", table, "--out", tmp_path / "a")
    assert result.exit_code == 2 and "pass --input-format (csv, tsv, jsonl, sms, parquet)" in one_line(result)
    for flag, out in (("--input-format", "b"), ("--format", "c")):
        result = run("--input", table, flag, "csv", "--out", tmp_path / out)
        assert result.exit_code == 0, result.output
        assert all((tmp_path / out / name).is_file() for name in FILES)
    result = run("--input", table, "--input-format", "csv", "--format", "tsv", "--out", tmp_path / "d")
    assert result.exit_code == 2 and "old name of --input-format" in one_line(result)
    result = run("--dataset", "sms-spam", "--input-format", "csv", "--out", tmp_path / "e")
    assert result.exit_code == 2 and "--input-format, --text-column and --label-column go with --input" in (
        one_line(result)
    )


@pytest.mark.slow
def test_prepare_reads_a_known_dataset_from_its_file_and_never_fetches(tmp_path: Path) -> None:
    """`dataset` names what the file holds (format, default balance, the record in labels.json);
    the downloader is not even importable here, and nothing lands in a cache."""
    import json
    import subprocess
    import sys

    sms = tmp_path / "collection.txt"
    sms.write_text("".join(f"{'spam' if i % 4 == 0 else 'ham'}\tmessage {i}\n" for i in range(80)), "utf-8")
    code = (
        "import sys\n"
        "for name in ('gptclf.fetch.artefacts', 'gptclf.fetch.http', 'gptclf.download'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "from pathlib import Path\n"
        "from gptclf.data.prepare import prepare\n"
        f"prepare(Path({str(tmp_path / 'out')!r}), Path({str(sms)!r}), dataset='sms-spam', stratify=False)\n"
    )
    env = {**os.environ, "GPTCLF_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    labels = json.loads((tmp_path / "out" / "labels.json").read_text(encoding="utf-8"))
    assert list(labels["source"]) == ["dataset", "file", "sha256"]
    assert labels["source"]["dataset"] == "sms-spam" and labels["source"]["file"] == "collection.txt"
    assert labels["balance"] == "undersample" and labels["dropped"] == {"undersampled": 40}
    assert not (tmp_path / "home").exists()


def test_check_options_reports_every_problem_at_once_and_writes_nothing(tmp_path: Path) -> None:
    from gptclf.data.prepare import check_options
    from gptclf.errors import BadInputError

    (tmp_path / "file").write_text("keep me", encoding="utf-8")
    with pytest.raises(BadInputError) as info:
        check_options(
            tmp_path / "file",
            dataset="imdb",
            fmt="csv",
            balance="smote",
            split="0.9,0.9",
            classes="a,a",
            seed=-1,
        )
    message = str(info.value)
    for phrase in (
        "unknown dataset 'imdb'",
        "go with --input, not --dataset",
        "unknown --balance 'smote'",
        "--seed must be",
        "must sum to 1",
        "'a' more than once",
        "is a file, not a folder",
    ):
        assert phrase in message
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    options = check_options(tmp_path / "new", dataset="sms-spam", classes="spam,ham")
    assert options.balance == "undersample" and options.classes == ["spam", "ham"]
    assert check_options(tmp_path / "new").balance == "none"
    assert not (tmp_path / "new").exists()


# --- streaming: the same bytes as the in-memory version, flat memory ----------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_files_are_byte_identical_to_the_in_memory_version(case: str, tmp_path: Path) -> None:
    """tests/fixtures/prepare_sha256.json holds what the pandas version (before prepare streamed its
    input) wrote for each case: every option combination must still give those bytes."""
    from gptclf.data.labels import LabelLists
    from gptclf.data.prepare import prepare
    from gptclf.model.tokenizer import load_tokenizer
    from tests.conftest import BPE_DIR

    (n, k, seed, multi, fmt), options = CASES[case]
    path = write_input(tmp_path / f"data.{fmt}", table_rows(n, k, seed, multi), fmt)
    kwargs: dict[str, Any] = dict(options)
    if kwargs.pop("multi_label", False):
        kwargs["labels"] = LabelLists()
    if "max_length" in kwargs:
        kwargs["tokenizer"] = load_tokenizer(BPE_DIR)
    prepare(tmp_path / "out", path, **kwargs)
    expected = json.loads((FIXTURES / "prepare_sha256.json").read_text(encoding="utf-8"))[case]
    found = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted((tmp_path / "out").iterdir())}
    assert found == expected


def _peak_rss_of_prepare(table: Path, out: Path) -> int:
    """Peak RSS (bytes) of a fresh process that prepares ``table`` (oversampled, deduplicated)."""
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from gptclf.data.prepare import prepare\n"
        "prepare(Path(sys.argv[1]), Path(sys.argv[2]), balance='oversample', dedupe=True)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), str(table)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) * 1024  # Linux reports KiB


@pytest.mark.slow
def test_peak_memory_stays_flat_in_the_number_of_rows(tmp_path: Path) -> None:
    """10x the rows, about the same peak RSS (the pandas version took 2.2x from 10k to 100k rows)."""
    small = write_input(tmp_path / "small.csv", table_rows(20_000, 3, 1), "csv")
    large = write_input(tmp_path / "large.csv", table_rows(200_000, 3, 1), "csv")
    peak_small = _peak_rss_of_prepare(small, tmp_path / "out-small")
    peak_large = _peak_rss_of_prepare(large, tmp_path / "out-large")
    assert peak_large < 1.3 * peak_small, (peak_small, peak_large)
