"""SIGINT and SIGTERM stop every verb with one line, 130 or 143, and nothing left behind.

Real signals go to real child processes at watched moments: the start-up handlers are seen in
/proc/PID/status before the signal is sent, and the run-time moments are files the child writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fault_helpers import wait_for
from tests.hf_helpers import copy_hf_tokenizer, hf_folder
from tests.inference.test_predict import make_run

VERBS = [
    ["download", "--model", "gpt2-small"],
    ["prepare", "--dataset", "sms-spam", "--out", "x"],
    ["finetune", "--out", "x"],
    ["evaluate", "run"],
    ["predict", "run", "some text"],
    ["calibrate", "run"],
    ["export", "run", "--out", "x"],
    ["import", "hf", "--out", "x"],
]
pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc"),
    pytest.mark.slow,
]


def child(*args: str, cwd: Path, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """``gptclf ARGS`` as the console script runs it, with a temporary folder of the test's own."""
    (cwd / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(cwd / "tmp")}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
    )  # fmt: skip


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask & (1 << (sig - 1)))


def stopped(proc: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("args", VERBS, ids=[v[0] for v in VERBS])
def test_a_signal_while_starting_is_one_line(tmp_path: Path, args: list[str], sig: int) -> None:
    proc = child(*args, cwd=tmp_path)
    # SIGTERM is caught only once gptclf's first lines ran; `import torch` takes a second or more after.
    assert wait_for(proc, lambda: catches(proc.pid, signal.SIGTERM)), proc.communicate()
    code, stderr = stopped(proc, sig)
    assert code == 128 + sig, stderr
    assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr, stderr
    assert "interrupted" in stderr and "nothing was written" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and not any((tmp_path / "tmp").iterdir())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", max_length=12)


def interrupt_when(proc: subprocess.Popen[str], seen: Callable[[], bool], sig: int) -> tuple[int, str]:
    """Send ``sig`` at the moment ``seen()`` becomes true; the child's exit code and stderr."""
    assert wait_for(proc, seen), proc.communicate()
    return stopped(proc, sig)


def one_line(code: int, stderr: str, sig: int) -> None:
    assert code == 128 + sig, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("gptclf: "), stderr


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_predict_into_a_file_leaves_no_file(run_dir: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out.jsonl"
    proc = child("predict", str(run_dir), "-", "--output", str(out), cwd=tmp_path, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write("first text\n")
    proc.stdin.flush()  # stdin stays open: the child waits for more while its output is temporary
    code, stderr = interrupt_when(proc, lambda: bool(hidden(tmp_path)) and catches(proc.pid, sig), sig)
    one_line(code, stderr, sig)
    assert not out.exists() and hidden(tmp_path) == []


def test_predict_with_the_onnx_engine_removes_its_temporary_export(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install '.[onnx]')")
    proc = child("predict", str(run_dir), "a text", "--engine", "onnx", cwd=tmp_path)
    temp = tmp_path / "tmp"

    def exporting() -> bool:
        return any(d.name.startswith("gptclf-onnx-") and any(d.iterdir()) for d in temp.iterdir())

    code, stderr = interrupt_when(proc, exporting, signal.SIGTERM)
    one_line(code, stderr, signal.SIGTERM)
    assert [d.name for d in temp.iterdir() if d.name.startswith("gptclf-")] == []  # torch's own may stay


@pytest.mark.parametrize("fmt", ["transformers", "onnx"])
def test_export_leaves_neither_the_folder_nor_its_work_folder(
    run_dir: Path, tmp_path: Path, fmt: str
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install '.[onnx]')")
    out = tmp_path / "exported"
    for _ in range(20):  # a tiny export is quick: a child that finished first is tried again
        proc = child("export", str(run_dir), "--format", fmt, "--out", str(out), "--force", cwd=tmp_path)
        caught = wait_for(proc, lambda: bool(hidden(tmp_path)))
        code, stderr = stopped(proc, signal.SIGTERM)
        if caught and code != 0:
            break
    else:
        raise AssertionError("no export was caught while it wrote, in 20 tries")
    one_line(code, stderr, signal.SIGTERM)
    assert hidden(tmp_path) == [] and not out.exists()


def test_import_leaves_neither_the_run_nor_its_work_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    hf_folder(folder, num_labels=2, id2label={0: "a", 1: "b"})
    copy_hf_tokenizer(folder)
    out = tmp_path / "imported"
    for _ in range(20):
        proc = child("import", str(folder), "--out", str(out), "--force", cwd=tmp_path)
        caught = wait_for(proc, lambda: bool(hidden(tmp_path)))
        code, stderr = stopped(proc, signal.SIGTERM)
        if caught and code != 0:
            break
    else:
        raise AssertionError("no import was caught while it wrote, in 20 tries")
    one_line(code, stderr, signal.SIGTERM)
    assert hidden(tmp_path) == [] and not out.exists()


# --- kill -9: what a killed predict leaves, the next one removes --------------------------------------


def test_a_killed_predicts_output_file_is_removed_by_the_next(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = child("predict", str(run_dir), "-", "--output", str(out), cwd=tmp_path, stdin=subprocess.PIPE)
    assert wait_for(proc, lambda: bool(hidden(tmp_path)))  # waiting on stdin, its output temporary
    proc.kill()
    proc.wait()
    left = hidden(tmp_path)
    assert len(left) == 1 and f"-{proc.pid}-" in left[0]
    other = tmp_path / "other.jsonl"  # another file of the same folder
    again = child("predict", str(run_dir), "text", "--output", str(other), cwd=tmp_path)
    assert again.wait(timeout=120) == 0
    assert hidden(tmp_path) == [] and other.is_file() and not out.exists()


def test_a_killed_predicts_temporary_onnx_export_is_removed_by_the_next(
    run_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install '.[onnx]')")
    temp = tmp_path / "tmp"
    proc = child("predict", str(run_dir), "a text", "--engine", "onnx", cwd=tmp_path)

    def exporting() -> bool:
        return any(d.name.startswith("gptclf-onnx-") and any(d.iterdir()) for d in temp.iterdir())

    assert wait_for(proc, exporting)
    proc.kill()
    proc.wait()
    assert [d.name for d in temp.iterdir() if d.name.startswith(f"gptclf-onnx-{proc.pid}-")]
    again = child("predict", str(run_dir), "a text", "--engine", "onnx", cwd=tmp_path)
    assert again.wait(timeout=300) == 0
    assert [d.name for d in temp.iterdir() if d.name.startswith("gptclf-onnx-")] == []
