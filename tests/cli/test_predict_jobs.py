"""``predict --input FILE --output OUT`` as a resumable job: kills at watched moments, SIGTERM,
``--resume`` refusals, locks and bad input (see :mod:`gptclf.inference.jobs`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gptclf.inference.jobs import FAULT_ENV, JOURNAL, RECORDS, work_dir
from gptclf.inference.predict import CHUNK_SIZE
from gptclf.rundir.build import WorkLock
from tests.cli.test_predict import invoke
from tests.conftest import REPO
from tests.fault_helpers import wait_for
from tests.inference.test_predict import make_run

#: Rows of the input: four whole chunks and a short one.
ROWS = 4 * CHUNK_SIZE + 37


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", max_length=12)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of ROWS texts with ids and a column to keep."""
    path = tmp_path_factory.mktemp("input") / "tickets.csv"
    words = ["free", "prize", "lunch", "call", "now", "meeting", "cash", "ok", "tomorrow", "win"]
    lines = ["ticket_id,body,team"]
    for i in range(ROWS):
        text = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 9))
        lines.append(f"t{i},{text} {i},team{i % 3}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def job_args(run_dir: Path, table: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(run_dir), "--input", str(table), "--text-column", "body", "--id-column", "ticket_id",
        "--keep-columns", "team", "--output", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def child(args: list[str], fault: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "predict", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(args: list[str]) -> tuple[int, str]:
    """``gptclf predict ARGS`` in a child with the same threads as the killed ones (the sums of a
    forward pass, and so the last digit of a probability, depend on the thread count)."""
    proc = child(args)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, " ".join(err.split())


def journal(out: Path) -> dict:
    return json.loads((work_dir(out) / JOURNAL).read_text())


@pytest.fixture(scope="module")
def outputs(run_dir: Path, table: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Uninterrupted jobs' outputs by format, made when first asked for."""

    class Made(dict[str, bytes]):
        def __missing__(self, fmt: str) -> bytes:
            out = tmp_path_factory.mktemp("ref") / f"out.{fmt}"
            code, err = finish(job_args(run_dir, table, out, "--format", fmt))
            assert code == 0, err
            assert not work_dir(out).exists()  # the work folder goes with the finished job
            self[fmt] = out.read_bytes()
            return self[fmt]

    return Made()


@pytest.fixture(params=["jsonl", "csv", "parquet"])
def reference(request: pytest.FixtureRequest, outputs: dict[str, bytes]) -> tuple[str, bytes]:
    """An uninterrupted job's output, per format."""
    if request.param == "parquet":
        pytest.importorskip("pyarrow")
    return request.param, outputs[request.param]


def test_an_uninterrupted_job_writes_what_stdout_gets(run_dir: Path, table: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    code, _, err = invoke(*job_args(run_dir, table, out))
    assert code == 0, err
    args = job_args(run_dir, table, out)
    at = args.index("--output")
    code, stdout, _ = invoke(*args[:at], *args[at + 2 :])
    assert code == 0
    assert out.read_text(encoding="utf-8") == stdout
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == ROWS
    assert records[CHUNK_SIZE]["id"] == f"t{CHUNK_SIZE}" and records[5]["team"] == "team2"


@pytest.mark.parametrize(
    "fault",
    ["written:2", "committed:3", "complete"],
    ids=["mid-chunk", "between-chunks", "at-the-rename"],
)
def test_a_kill_at_any_moment_then_resume_gives_the_uninterrupted_file(
    fault: str, reference: tuple[str, bytes], run_dir: Path, table: Path, tmp_path: Path
) -> None:
    fmt, expected = reference
    out = tmp_path / f"out.{fmt}"
    out.write_bytes(b"an older result\n")  # stays as it was until the new one is whole
    killed = child(job_args(run_dir, table, out, "--format", fmt), fault=fault)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"an older result\n"
    state = journal(out)
    assert state["complete"] == (fault == "complete")
    done = {"written:2": 1, "committed:3": 3, "complete": 5}[fault]
    assert state["chunks"] == done
    resumed = child(job_args(run_dir, table, out, "--format", fmt, "--resume"))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    if fault != "complete":
        assert f"resuming {out} after {state['rows']:,} rows" in " ".join(err.split())
    assert out.read_bytes() == expected
    assert not work_dir(out).exists()


def test_a_watched_kill_9_from_outside_resumes_byte_for_byte(
    reference: tuple[str, bytes], run_dir: Path, table: Path, tmp_path: Path
) -> None:
    fmt, expected = reference
    out = tmp_path / f"out.{fmt}"
    proc = child(job_args(run_dir, table, out, "--format", fmt))

    def two_chunks() -> bool:
        try:
            return journal(out)["chunks"] >= 2
        except (OSError, ValueError):
            return False

    assert wait_for(proc, two_chunks)
    proc.kill()
    proc.communicate(timeout=60)
    if proc.returncode == 0:  # it finished before the kill landed: nothing to resume, still right
        assert out.read_bytes() == expected
        return
    assert not out.exists()
    code, err = finish(job_args(run_dir, table, out, "--format", fmt, "--resume"))
    assert code == 0, err
    assert out.read_bytes() == expected


def test_sigterm_finishes_the_chunk_and_exits_143_with_the_journal_up_to_date(
    outputs: dict[str, bytes], run_dir: Path, table: Path, tmp_path: Path
) -> None:
    expected = outputs["jsonl"]
    out = tmp_path / "out.jsonl"
    proc = child(job_args(run_dir, table, out))
    assert wait_for(proc, lambda: (work_dir(out) / JOURNAL).exists())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the job ended before the signal")
    assert proc.returncode == 143
    assert "--resume" in err and "Traceback" not in err
    state = journal(out)
    written = (work_dir(out) / RECORDS).read_bytes()
    assert len(written) == state["bytes"]  # the chunk under way was finished, not cut
    assert written.count(b"\n") == state["rows"] == state["chunks"] * CHUNK_SIZE
    code, err = finish(job_args(run_dir, table, out, "--resume"))
    assert code == 0, err
    assert out.read_bytes() == expected


@pytest.mark.parametrize("change", ["option", "input", "run"])
def test_resume_refuses_a_changed_input_run_or_option(
    change: str, run_dir: Path, table: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    killed = child(job_args(run_dir, table, out), fault="committed:1")
    killed.communicate(timeout=300)
    before = journal(out)
    source, run, extra = table, run_dir, []
    if change == "option":
        extra = ["--batch-size", "7"]
    elif change == "input":
        source = tmp_path / "other.csv"
        source.write_bytes(table.read_bytes() + b"t-new,one more,team0\n")
    else:
        run = tmp_path / "run-copy"
        run.mkdir()
        for f in run_dir.iterdir():
            if f.is_file():
                (run / f.name).write_bytes(f.read_bytes())
    code, _, err = invoke(*job_args(run, source, out, "--resume", *extra))
    assert code == 2
    assert err.startswith("gptclf: error: --resume:") and "leave out --resume" in err
    word = {"option": "--batch-size was 32, now 7", "input": "the input", "run": "the run"}[change]
    assert word in err
    assert journal(out) == before  # the work is kept for a resume with the same settings
    assert not out.exists()


def test_without_resume_an_old_job_is_discarded_with_a_note(
    outputs: dict[str, bytes], run_dir: Path, table: Path, tmp_path: Path
) -> None:
    expected = outputs["csv"]
    out = tmp_path / "out.csv"
    child(job_args(run_dir, table, out, "--format", "csv"), fault="committed:2").communicate(timeout=300)
    code, err = finish(job_args(run_dir, table, out, "--format", "csv"))
    assert code == 0
    assert "is discarded (--resume would have continued it)" in err
    assert out.read_bytes() == expected


def test_resume_with_nothing_to_resume_starts_at_the_first_row(
    run_dir: Path, table: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    code, _, err = invoke(*job_args(run_dir, table, out, "--resume"))
    assert code == 0
    assert "nothing to resume" in err
    assert out.read_text().count("\n") == ROWS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-", "--output", "{out}", "--resume"], "--resume needs --input FILE and --output FILE"),
        (["--input", "-", "--output", "{out}", "--resume"], "stdin or arguments cannot be read again"),
        (["--input", "{table}", "--resume"], "results on stdout"),
        (["some text", "--output", "{out}", "--resume"], "--resume needs --input FILE"),
    ],
)
def test_resume_without_a_file_job_is_one_line_and_exit_2(
    args: list[str], message: str, run_dir: Path, table: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    filled = [a.format(out=out, table=table) for a in args]
    code, _, err = invoke(str(run_dir), *filled, stdin="a text\n")
    assert code == 2
    assert message in err
    assert not out.exists() and not work_dir(out).exists()


def test_a_second_job_on_the_same_output_is_refused(run_dir: Path, table: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    work_dir(out).mkdir()
    lock = WorkLock(work_dir(out))
    assert lock.acquire()
    try:
        code, _, err = invoke(*job_args(run_dir, table, out))
    finally:
        lock.release()
    assert code == 2
    assert "is writing" in err and "choose another --output" in err
    assert not out.exists()


def test_bad_input_midway_removes_the_work_and_writes_nothing(run_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    lines = [json.dumps({"body": f"text {i}", "ticket_id": i}) for i in range(2 * CHUNK_SIZE)]
    lines.append('{"body": "broken')
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = invoke(
        str(run_dir), "--input", str(source), "--text-column", "body", "--output", str(out), "--device", "cpu"
    )
    assert code == 2
    assert "line" in err
    assert not out.exists() and not work_dir(out).exists()


def test_a_sharded_job_resumes_within_its_part(run_dir: Path, table: Path, tmp_path: Path) -> None:
    whole = tmp_path / "part.jsonl"
    code, err = finish(job_args(run_dir, table, whole, "--shard", "2/2"))
    assert code == 0, err
    out = tmp_path / "resumed.jsonl"
    child(job_args(run_dir, table, out, "--shard", "2/2"), fault="committed:1").communicate(timeout=300)
    code, err = finish(job_args(run_dir, table, out, "--shard", "2/2", "--resume"))
    assert code == 0, err
    assert out.read_bytes() == whole.read_bytes()
    first = json.loads(out.read_text().splitlines()[0])
    assert first["id"] == f"t{2 * CHUNK_SIZE}"


# --- torchrun ----------------------------------------------------------------------------------


def _torchrun(args: list[str]) -> list[str]:
    """``gptclf predict ARGS`` under torchrun on 2 local gloo processes."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*run, "-m", "--", "gptclf", "predict", *args]  # python -m gptclf: the form


def _rank_threads() -> str:
    """The threads a rank of 2 gets here (the node's cores halved), for a single process to match."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return str(max(1, cores // 2))


def _env(threads: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    return env


@pytest.mark.slow
def test_two_torchrun_ranks_write_the_single_process_file_byte_for_byte(
    run_dir: Path, table: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    for fmt in ("jsonl", "parquet"):
        single, spread = tmp_path / f"single.{fmt}", tmp_path / f"spread.{fmt}"
        one = subprocess.run(
            [sys.executable, "-m", "cli.main", "predict", *job_args(run_dir, table, single, "--format", fmt)],
            capture_output=True, text=True, env=_env(_rank_threads()), timeout=300,
        )  # fmt: skip
        assert one.returncode == 0, one.stderr
        two = subprocess.run(
            _torchrun(job_args(run_dir, table, spread, "--format", fmt)),
            capture_output=True, text=True, env=_env("1"), timeout=300,
        )  # fmt: skip
        assert two.returncode == 0, two.stderr
        assert spread.read_bytes() == single.read_bytes()
        assert not work_dir(spread).exists()


@pytest.mark.slow
def test_a_killed_rank_ends_the_torchrun_job_and_it_resumes(run_dir: Path, tmp_path: Path) -> None:
    import time

    import psutil

    source = tmp_path / "big.txt"
    source.write_text("".join(f"message number {i} about lunch and prizes\n" for i in range(24 * CHUNK_SIZE)))
    args = [str(run_dir), "--input", str(source), "--device", "cpu"]
    single = tmp_path / "single.jsonl"
    one = subprocess.run(
        [sys.executable, "-m", "cli.main", "predict", *args, "--output", str(single)],
        capture_output=True, text=True, env=_env(_rank_threads()), timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        _torchrun([*args, "--output", str(out)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env("1"),
    )  # fmt: skip

    def two_rounds() -> bool:
        try:
            return journal(out)["chunks"] >= 4
        except (OSError, ValueError):
            return False

    assert wait_for(proc, two_rounds, timeout=600), proc.communicate()[1]
    victim = next(
        c for c in psutil.Process(proc.pid).children(recursive=True) if c.environ().get("RANK") == "1"
    )
    victim.kill()
    killed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.monotonic() - killed < 60, err
    assert not out.exists()
    state = journal(out)
    assert state["rows"] == state["chunks"] * CHUNK_SIZE  # whole chunks
    # Rank 0 says so in one line, unless torchrun, ending the job, killed it first (a loaded machine).
    ours = [line for line in err.splitlines() if line.startswith("gptclf: ")]
    assert all("--resume" in line for line in ours), err
    assert f"{os.sep}gptclf{os.sep}" not in err, err  # no traceback through gptclf's code
    again = subprocess.run(
        _torchrun([*args, "--output", str(out), "--resume"]),
        capture_output=True, text=True, env=_env("1"), timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"resuming {out} after {state['rows']:,} rows" in " ".join(again.stderr.split())
    assert out.read_bytes() == single.read_bytes()


def _peak_rss_mb(args: list[str]) -> float:
    """The peak RSS of ``gptclf predict ARGS`` in a child of its own (``os.wait4``: its rusage alone)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "predict", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env("1"),
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read() if proc.stderr else ""
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_a_parquet_job_ten_times_longer_peaks_within_ten_percent(run_dir: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    peaks = []
    for rows in (20_000, 200_000):
        source = tmp_path / f"in-{rows}.parquet"
        texts = [f"ticket {i} about {'prize' if i % 3 else 'lunch'} number {i % 97}" for i in range(rows)]
        pq.write_table(pa.table({"body": texts, "n": list(range(rows))}), source, row_group_size=8192)
        out = tmp_path / f"out-{rows}.parquet"
        args = [str(run_dir), "--input", str(source), "--text-column", "body", "--keep-columns", "n"]
        peaks.append(_peak_rss_mb([*args, "--output", str(out), "--device", "cpu"]))
        assert pq.ParquetFile(out).metadata.num_rows == rows
    assert peaks[1] <= 1.10 * peaks[0], peaks


# --- what a hostile user tried -------------------------------------------------------------------


@pytest.mark.parametrize("field", [("bytes", "abc"), ("fingerprint", None), ("chunks", "x"), ("bytes", -5)])
def test_a_damaged_journal_is_not_resumed_from(
    field: tuple[str, object], outputs: dict[str, bytes], run_dir: Path, table: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    child(job_args(run_dir, table, out, "--format", "csv"), fault="committed:2").communicate(timeout=300)
    state = journal(out)
    state[field[0]] = field[1]
    (work_dir(out) / JOURNAL).write_text(json.dumps(state))
    code, err = finish(job_args(run_dir, table, out, "--format", "csv", "--resume"))
    assert code == 0 and "nothing to resume" in err and "Traceback" not in err
    assert out.read_bytes() == outputs["csv"]


def test_damaged_parquet_work_is_one_line_before_any_text_is_classified(
    run_dir: Path, table: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "out.parquet"
    child(job_args(run_dir, table, out, "--format", "parquet"), fault="committed:2").communicate(timeout=300)
    records = work_dir(out) / RECORDS
    records.write_bytes(b"\0" * records.stat().st_size)
    code, err = finish(job_args(run_dir, table, out, "--format", "parquet", "--resume"))
    assert code == 2 and "is damaged" in err and "leave out --resume" in err
    assert not out.exists()


def test_a_finished_job_whose_file_is_gone_is_not_called_done(
    run_dir: Path, table: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "out.parquet"
    child(job_args(run_dir, table, out, "--format", "parquet"), fault="complete").communicate(timeout=300)
    (work_dir(out) / "assembled").unlink()
    code, err = finish(job_args(run_dir, table, out, "--format", "parquet", "--resume"))
    assert code == 2 and "its finished file is gone" in err


def test_the_input_or_a_looping_link_as_output_is_refused(run_dir: Path, table: Path, tmp_path: Path) -> None:
    source = tmp_path / "same.csv"
    source.write_bytes(table.read_bytes())
    code, _, err = invoke(
        str(run_dir), "--input", str(source), "--text-column", "body", "--output", str(source)
    )
    assert code == 2 and "is the input" in err
    assert source.read_bytes() == table.read_bytes()
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    code, _, err = invoke(str(run_dir), "--input", str(table), "--text-column", "body", "--output", str(loop))
    assert code == 2 and "cannot be followed" in err


@pytest.mark.slow
def test_a_job_whose_stderr_reader_has_gone_finishes_its_file(
    run_dir: Path, table: Path, tmp_path: Path
) -> None:
    """``gptclf predict ... --output OUT 2>&1 | head -1``: once the reader of stderr has gone, the
    progress and notes are dropped and the job finishes OUT, as with a closed stderr (it used to
    end with exit 1 on a broken pipe, leaving a job of 0 chunks)."""
    out, straight = tmp_path / "out.jsonl", tmp_path / "straight.jsonl"
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads the child's stderr: its first write is a broken pipe
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cli.main", "predict", *job_args(run_dir, table, out)],
            stdout=subprocess.PIPE, stderr=write_end, env=env, timeout=300, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stdout == b""
    assert finish(job_args(run_dir, table, straight))[0] == 0
    assert out.read_bytes() == straight.read_bytes() and not work_dir(out).exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_dead_jobs_folder_on_a_read_only_disk_is_one_line(
    run_dir: Path, table: Path, tmp_path: Path, resume: bool
) -> None:
    """An empty job folder a kill left where nothing can be written any more: one line naming the
    folder, exit 2 (it was a traceback), the folder left as it was."""
    from tests.fault_helpers import tmpfs

    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        out = mnt / "out.jsonl"
        work_dir(out).mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        code, _, err = invoke(*job_args(run_dir, table, out, *(["--resume"] if resume else [])))
        assert code == 2 and f"cannot write into {mnt}" in err and "Traceback" not in err, err
        assert work_dir(out).is_dir() and not out.exists()
