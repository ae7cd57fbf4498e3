"""The run directory is at every instant whole: absent, the old run, the new run, or an interrupted
run that --resume continues. Faults are real: SIGKILL and SIGTERM to child processes at moments
found by watching their files and output, full and read-only file systems."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from gptclf.errors import BadInputError, DiskFullError, Interrupted
from gptclf.progress import TrainProgress
from gptclf.rundir import RunBuild, WorkLock, check_out, work_dir
from gptclf.rundir.build import is_locked
from gptclf.training.finetune import finetune
from gptclf.training.settings import build_settings
from tests.fault_helpers import LEARN, TINY, accuracy, cli, fill, spawn, tmpfs, wait_for
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    install_tokenizer()
    return prepared_folder(tmp_path, ["spam", "ham"], n=200)


def train(data: Path, out: Path, *args: str) -> None:
    code, _, stderr = cli("finetune", "--data", str(data), *LEARN, "--out", str(out), *args)
    assert code == 0, stderr


def run_json(out: Path) -> dict[str, Any]:
    return json.loads((out / "run.json").read_text())


# --- item 1: a run folder is always one whole thing ----------------------------------------------


@pytest.mark.parametrize("moment", ["checkpoint.pt", "model.safetensors", "run.json", "metrics.json"])
@pytest.mark.slow
def test_force_over_a_run_killed_at_any_moment_leaves_a_whole_run(
    data: Path, tmp_path: Path, moment: str
) -> None:
    """Run B (classes in the other order) replaces run A with --force and is killed the instant
    ``moment`` appears in its work folder: --out is still A, whole, and --resume makes it B."""
    out = tmp_path / "run"
    train(data, out, "--classes", "spam,ham")
    before = (out / "run.json").read_bytes()
    (out / "notes.txt").write_text("my own notes")
    proc = spawn("finetune", "--data", str(data), *LEARN, "--classes", "ham,spam", "--out", str(out),
                 "--force", cwd=tmp_path)  # fmt: skip
    caught = wait_for(proc, lambda: (work_dir(out) / moment).is_file())
    proc.kill()
    _, stderr = proc.communicate()
    if caught:  # killed at that moment: --out is still A, whole
        assert (out / "run.json").read_bytes() == before and accuracy(out) > 0.75, stderr
        assert (out / "notes.txt").read_text() == "my own notes"
        code, _, stderr = cli("finetune", "--out", str(out), "--resume")
        assert code == 0, stderr
    else:  # on a loaded machine the poll can miss the last moments: then B finished, whole
        assert proc.returncode == 0, stderr
    assert run_json(out)["classes"] == ["ham", "spam"] and accuracy(out) > 0.75  # B, whole
    assert (out / "notes.txt").read_text() == "my own notes"  # the user's file survives the swap
    assert not work_dir(out).exists() and not (out / "checkpoint.pt").exists()


def test_commit_swaps_in_the_new_run_and_keeps_the_users_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name, text in {"run.json": "old", "curves.png": "old", "notes.txt": "mine"}.items():
        (out / name).write_text(text)
    (out / "extra").mkdir()
    (out / "extra" / "a.txt").write_text("kept too")
    notes: list[str] = []
    build = RunBuild.open(out, force=True, resume=False, note=notes.append)
    (build.path / "run.json").write_text("new")
    (build.path / "checkpoint.pt").write_text("state")
    build.commit()
    build.close()
    assert sorted(p.name for p in out.iterdir()) == ["extra", "notes.txt", "run.json"]
    assert (out / "run.json").read_text() == "new" and (out / "extra" / "a.txt").read_text() == "kept too"
    assert not work_dir(out).exists() and notes == []


def test_a_swap_without_exchange_that_was_cut_short_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where renameat2 is missing the swap is two renames; a kill between them leaves the old run
    aside, and the next run puts it back (the new run's work folder is still there to resume)."""
    import gptclf.rundir.build as rundir

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("old")
    build = RunBuild.open(out, force=True, resume=False, note=lambda _: None)
    (build.path / "run.json").write_text("new")
    (build.path / "checkpoint.pt").write_text("state")
    monkeypatch.setattr(rundir, "exchange_paths", lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(a: Any, b: Any) -> None:
        calls.append((a, b))
        if len(calls) == 2:  # as if killed right after the first rename
            raise KeyboardInterrupt
        real_rename(a, b)

    monkeypatch.setattr(rundir.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        build.commit()
    build.close()
    monkeypatch.setattr(rundir.os, "rename", real_rename)
    assert not out.exists()
    notes: list[str] = []
    check_out(out, force=False, resume=True)  # the interrupted run is found in its work folder
    RunBuild.open(out, force=False, resume=True, note=notes.append).close()
    assert (out / "run.json").read_text() == "old" and any("put back" in n for n in notes)


def test_a_second_finetune_on_the_same_out_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    work_dir(out).mkdir(parents=True)
    lock = WorkLock(work_dir(out))
    assert lock.acquire()
    try:
        with pytest.raises(BadInputError, match=rf"another process \(pid {os.getpid()}\) is writing"):
            check_out(out, force=True, resume=False)
    finally:
        lock.release()
    check_out(out, force=True, resume=False)  # a dead process's folder holds no lock


@pytest.mark.slow
def test_the_message_names_the_verb_that_holds_the_folder(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = spawn("finetune", "--data", str(data), *LEARN, "--out", str(out), cwd=tmp_path)
    try:
        assert wait_for(proc, lambda: is_locked(work_dir(out)))
        with pytest.raises(BadInputError, match=rf"`gptclf finetune` \(pid {proc.pid}\) is writing"):
            check_out(out, force=True, resume=False)
    finally:
        proc.kill()
        proc.wait()


# --- items 2 and 3: interrupts and kill -9 always leave something to resume -----------------------


class SignalOn(TrainProgress):
    """Sends this process ``signum`` when a step whose label starts with ``prefix`` begins."""

    def __init__(self, prefix: str, signum: int) -> None:
        self.prefix, self.signum = prefix, signum

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        if label.startswith(self.prefix):
            os.kill(os.getpid(), self.signum)


class CountSteps(TrainProgress):
    def __init__(self) -> None:
        self.steps = 0

    def step(self, epoch: int, step: int, loss: float) -> None:
        self.steps += 1


def settings(data: Path, out: Path, **kw: Any) -> Any:
    base = {"data": str(data), "out": str(out), "model": TINY_SPEC, "weights": "random", "device": "cpu"}
    return build_settings({**base, "trainable": "all", "lr": 2e-3, "epochs": 3, **kw})


@pytest.mark.slow
def test_a_signal_during_the_test_evaluation_keeps_the_training(data: Path, tmp_path: Path) -> None:
    straight = finetune(settings(data, tmp_path / "straight"))
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as info:
        finetune(settings(data, out), progress=SignalOn("evaluating the kept weights on the test", 15))
    assert info.value.exit_code == 143 and "training has finished" in str(info.value)
    assert not out.exists() and (work_dir(out) / "checkpoint.pt").is_file()
    steps = CountSteps()
    resumed = finetune(settings(data, out, resume=True), progress=steps)
    assert steps.steps == 0  # training is not done again: the resume only evaluates and writes
    strip = [
        [{k: v for k, v in r.items() if k != "elapsed"} for r in h.history.rows] for h in (resumed, straight)
    ]
    assert strip[0] == strip[1] and resumed.test == straight.test and accuracy(out) > 0.75


@pytest.mark.slow
def test_a_signal_while_the_run_is_written_lets_the_write_finish(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.training.run as module

    real = module.write_history

    def write_history(folder: Path, rows: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # in the middle of writing the run
        real(folder, rows)

    monkeypatch.setattr(module, "write_history", write_history)
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as info:
        finetune(settings(data, out))
    assert info.value.exit_code == 130 and "written completely" in str(info.value)
    assert {"model.safetensors", "run.json", "history.csv", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert accuracy(out) > 0.75 and not work_dir(out).exists()


@pytest.mark.slow
def test_sigterm_to_a_child_in_its_test_evaluation(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = spawn("finetune", "--data", str(data), *LEARN, "--out", str(out), cwd=tmp_path)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("evaluating the kept weights"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    if not out.exists():  # stopped in the evaluation: resuming evaluates, it does not train again
        code, _, stderr = cli("finetune", "--out", str(out), "--resume")
        assert code == 0 and "epoch 1/" not in stderr, stderr
    assert accuracy(out) > 0.75 and not work_dir(out).exists()


@pytest.mark.slow
def test_kill_9_after_an_epoch_leaves_a_checkpoint_and_resume_matches(data: Path, tmp_path: Path) -> None:
    out, straight = tmp_path / "run", tmp_path / "straight"
    proc = spawn("finetune", "--data", str(data), *LEARN, "--out", str(out), cwd=tmp_path)
    assert wait_for(proc, lambda: (work_dir(out) / "checkpoint.pt").is_file())  # epoch 1 has ended
    proc.kill()
    proc.wait()
    code, _, stderr = cli("finetune", "--out", str(out), "--resume")
    assert code == 0, stderr
    train(data, straight)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_with_nothing_to_resume_starts_the_named_run_and_clears_a_dead_builds_folder(
    data: Path, tmp_path: Path
) -> None:
    """A kill -9 before the first checkpoint leaves a work folder with nothing to resume in it; a
    scheduler that always passes --resume (with the whole command) starts the run again, said in a
    note, instead of exit 2 for good. ``--out RUN --resume`` alone names no run: still refused."""
    out = tmp_path / "run"
    code, _, stderr = cli("finetune", "--out", str(out), "--resume")
    assert code == 2 and "nothing to resume" in stderr and not out.exists(), stderr
    work = work_dir(out)
    work.mkdir()  # what a build killed while it cached the frozen blocks leaves: no checkpoint, no lock
    (work / "data").mkdir()
    code, _, stderr = cli("finetune", "--data", str(data), *LEARN, "--out", str(out), "--resume")
    assert code == 0, stderr
    assert f"nothing to resume for {out}" in stderr and "starting the run from the beginning" in stderr
    assert (out / "run.json").is_file() and not work.exists()
    # The finished run is not trained again by a --resume: that is a refusal, as before.
    code, _, stderr = cli("finetune", "--data", str(data), *LEARN, "--out", str(out), "--resume")
    assert code == 2 and "that run has finished" in stderr, stderr


# --- item 5: the output is checked before training; a disk that fills is one line -----------------


@pytest.mark.parametrize(
    "where", ["under-a-file", "proc", "read-only", "mount-point", "read-only-mount-point"]
)
def test_an_unwritable_out_is_refused_before_any_work(data: Path, tmp_path: Path, where: str) -> None:
    with contextlib.ExitStack() as stack:
        if where == "under-a-file":
            (tmp_path / "file").write_text("x")
            out = tmp_path / "file" / "run"
        elif where == "proc":
            out = Path("/proc/gptclf-run")
        elif where == "read-only":
            out = stack.enter_context(tmpfs(tmp_path / "ro", "1m", read_only=True)) / "run"
        else:  # the folder is itself a mount point: the run cannot be swapped in as it
            out = stack.enter_context(tmpfs(tmp_path / "mnt", "1m", read_only=where.startswith("read")))
        code, _, stderr = cli("finetune", "--data", str(data), *LEARN, "--out", str(out), "--force")
        if out.parent.is_dir() and where != "proc":
            assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert any(m in stderr for m in ("cannot write", "is a file", "not a folder", "mount point"))
    assert "epoch" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("resume", [False, True])
def test_a_dead_builds_folder_on_a_read_only_disk_is_one_line(
    data: Path, tmp_path: Path, resume: bool
) -> None:
    """A folder a killed build left where nothing can be written any more (remounted read-only, or
    no permission) cannot be cleared: one line naming the folder, exit 2 (it was a traceback)."""
    import subprocess

    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        out = mnt / "run"
        work_dir(out).mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        extra = ["--resume"] if resume else []
        code, _, stderr = cli("finetune", "--data", str(data), *LEARN, "--out", str(out), *extra)
        assert code == 2 and len(stderr.strip().splitlines()) <= 2, stderr  # a --resume says its note first
        assert stderr.strip().splitlines()[-1].startswith(f"gptclf: error: cannot write into {mnt}"), stderr
        assert "Traceback" not in stderr and work_dir(out).is_dir()


def test_the_space_check_counts_a_resumed_runs_checkpoint_as_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    from gptclf.training.run import check_space

    work = tmp_path / "work"
    work.mkdir()
    (work / "checkpoint.pt").write_bytes(b"x" * 10_000)  # the checkpoint of the stopped run
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(80_000, 25_000, 55_000))
    check_space(work, tmp_path / "run", 65_000)  # 65,000 in all, 10,000 of them already there
    with pytest.raises(DiskFullError, match="not enough space"):
        check_space(work, tmp_path / "run", 65_001 + 10_000)


def test_a_disk_too_small_for_the_run_is_refused_up_front(data: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "4m") as disk:
        code, _, stderr = cli("finetune", "--data", str(data), *LEARN, "--out", str(disk / "run"))
        assert code == 1 and "not enough space" in stderr and "MiB" in stderr, stderr
        assert sorted(p.name for p in disk.iterdir()) == []  # nothing left behind


@pytest.mark.slow
def test_a_disk_that_fills_during_training_keeps_the_last_checkpoint(data: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "100m") as disk:
        out = disk / "run"
        proc = spawn("finetune", "--data", str(data), *LEARN, "--out", str(out), cwd=tmp_path)
        assert wait_for(proc, lambda: (work_dir(out) / "checkpoint.pt").is_file())
        filler = fill(disk)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, stderr
        lines = stderr.strip().splitlines()
        assert "no space left" in lines[-1] and "Traceback" not in stderr
        assert not [p for p in work_dir(out).iterdir() if p.name.endswith(".tmp")]  # no half files
        filler.unlink()
        code, _, stderr = cli("finetune", "--out", str(out), "--resume")
        assert code == 0, stderr
    # (the tmpfs is gone with the context; the resume's success is what matters)


@pytest.mark.slow
def test_a_disk_that_fills_on_the_final_save_is_one_line(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import gptclf.rundir.files as checkpoint

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save = checkpoint.save_file
    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError, match=r"no space left on the disk of .*run \([\d,]+ bytes needed\)"):
        finetune(settings(data, out))
    assert not out.exists()
    assert not [p for p in work_dir(out).iterdir() if p.name.endswith(".tmp")]
    # Only the save is mended: monkeypatch.undo() would also undo the isolated cache of conftest.
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    resumed = finetune(settings(data, out, resume=True))  # the space freed: nothing is lost
    assert resumed.history.steps > 0 and (out / "model.safetensors").is_file()


# --- item 4: resume refuses other data instead of spinning -----------------------------------------


@pytest.mark.parametrize(
    "change", [["--split", "0.5,0.25,0.25", "--seed", "0"], ["--split", "0.7,0.15,0.15", "--seed", "7"]]
)
@pytest.mark.slow
def test_resume_refuses_re_prepared_data(data: Path, tmp_path: Path, change: list[str]) -> None:
    out = tmp_path / "run"
    proc = spawn("finetune", "--data", str(data), *LEARN, "--out", str(out), cwd=tmp_path)
    assert wait_for(proc, lambda: (work_dir(out) / "checkpoint.pt").is_file())
    proc.kill()
    proc.wait()
    source = tmp_path / "source.csv"
    code, _, stderr = cli("prepare", "--input", str(source), "--classes", "spam,ham", "--out", str(data),
                          "--force", *change)  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = cli("finetune", "--out", str(out), "--resume")
    assert code == 2 and "changed since the run was interrupted" in stderr, stderr
    assert (work_dir(out) / "checkpoint.pt").is_file()  # still there for the right data


# --- item 6: no debris -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_kill_during_the_final_save_leaves_nothing_the_next_run_keeps(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    def saving() -> bool:
        folder = work_dir(out)
        return folder.is_dir() and any(p.name.startswith(".model.safetensors") for p in folder.iterdir())

    for _ in range(20):  # the save is short: a child that finished before it was caught is tried again
        proc = spawn("finetune", "--data", str(data), *TINY, "--epochs", "1", "--out", str(out), "--force",
                     cwd=tmp_path)  # fmt: skip
        caught = wait_for(proc, saving)
        proc.kill()
        proc.wait()
        if caught:
            break
    else:
        raise AssertionError("no child was caught during its final save in 20 tries")
    code, _, stderr = cli("finetune", "--out", str(out), "--resume")
    assert code == 0, stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")] and not work_dir(out).exists()


@pytest.mark.slow
def test_a_dead_runs_work_folder_is_refused_or_discarded(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    work_dir(out).mkdir()
    (work_dir(out) / ".model.safetensors.1234.tmp").write_bytes(b"half")  # a crash before any checkpoint
    train(data, out, "--epochs", "1")  # an unlocked folder without a checkpoint is debris: removed
    assert not work_dir(out).exists()
    work_dir(out).mkdir()
    (work_dir(out) / "checkpoint.pt").write_bytes(b"x")
    code, _, stderr = cli("finetune", "--data", str(data), *TINY, "--out", str(tmp_path / "run"))
    assert code == 2 and "--resume" in stderr and "--force" in stderr, stderr
    code, _, stderr = cli(
        "finetune", "--data", str(data), *TINY, "--epochs", "1", "--out", str(out), "--force"
    )
    assert code == 0 and "removed" in stderr, stderr
    assert not work_dir(out).exists()


@pytest.mark.slow
def test_hidden_temporary_files_do_not_make_out_non_empty(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".model.safetensors.ab12cd.tmp").write_bytes(b"left by an older gptclf")
    train(data, out, "--epochs", "1")
    assert not (out / ".model.safetensors.ab12cd.tmp").exists()


@pytest.mark.parametrize("flag", ["--data", "--model"])
def test_finetune_refuses_an_out_that_would_replace_what_it_reads(
    data: Path, tmp_path: Path, flag: str
) -> None:
    from tests.hf_helpers import copy_hf_tokenizer, hf_folder

    if flag == "--model":
        source = tmp_path / "hf"
        hf_folder(source, kind="GPT2LMHeadModel")
        copy_hf_tokenizer(source)
        args = ["--data", str(data), "--model", str(source), "--weights", "random", "--device", "cpu"]
    else:
        source, args = data, ["--data", str(data), *TINY]
    before = sorted(p.name for p in source.iterdir())
    code, _, stderr = cli("finetune", *args, "--epochs", "1", "--out", str(source), "--force")
    assert code == 2 and "which this command reads" in stderr, stderr
    assert sorted(p.name for p in source.iterdir()) == before
