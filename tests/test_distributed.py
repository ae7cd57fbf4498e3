"""Data-parallel finetuning on CPU processes with gloo: equivalence, rank 0 writing, failures, launch."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.main import app
from gptclf.device import resolve_precision
from gptclf.distributed import Shard, process_group
from gptclf.inference.batching import LabelledSet
from gptclf.inference.cache import make_sources
from gptclf.model.classifier import parse_scope
from gptclf.rundir import work_dir
from gptclf.training.checkpoints import load_checkpoint
from gptclf.training.loop import fit
from gptclf.training.settings import TrainConfig
from tests.conftest import REPO
from tests.fault_helpers import entering_marks, outlast
from tests.finetune_helpers import (
    TINY_SPEC,
    install_tokenizer,
    max_diff,
    prepared_folder,
    synthetic_ids,
    tiny_classifier,
    trainable_state,
)

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)
#: A small lr: Adam moves a weight by about lr whatever the gradient, so float noise stays below 1e-5.
CFG = TrainConfig(epochs=2, lr=5e-5, eval_every=3)
#: (per-device batch, grad_accum) on 2 ranks. 43 texts: groups of 6 end with 1 text, which leaves
#: rank 1 nothing; groups of 8 end with 3 and use no_sync across the 2 micro-batches of a rank.
SPLITS = [(3, 1), (2, 2)]
TINY = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu", "--lr", "5e-5"]
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(
    cfg: TrainConfig, shard: Shard, cache_memory: int = 1 << 30
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Train the tiny classifier on cached states of 43 texts (in RAM, or on disk with a
    ``cache_memory`` of 0); the weights and the history rows."""
    model = tiny_classifier(["a", "b"], seed=7)
    train_ids, train_labels = synthetic_ids(43, 2, seed=1)
    val_ids, val_labels = synthetic_ids(17, 2, seed=2)
    sources = make_sources(
        model, {"train": train_ids, "val": val_ids}, scope=parse_scope("last-block"),
        use_cache=True, device=CPU, precision=FP32, cache_memory=cache_memory, batch_size=4, shard=shard,
    )  # fmt: skip
    assert sources["train"].location == ("disk" if cache_memory == 0 else "memory")  # type: ignore[attr-defined]
    train, val = LabelledSet(sources["train"], train_labels), LabelledSet(sources["val"], val_labels)
    history = fit(model, train, val, cfg, device=CPU, precision=FP32, seed=7, shard=shard)
    return trainable_state(model), history.rows


def _worker(rank: int, port: int, out: str, cache_memory: int = 1 << 30) -> None:
    """One of 2 ranks, joined through the same torchrun variables and code path as the CLI."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    with process_group("cpu", timeout=60) as shard:
        results = [
            _train(dataclasses.replace(CFG, batch_size=b, grad_accum=a), shard, cache_memory)
            for b, a in SPLITS
        ]
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_global_batch(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for n, (b, a) in enumerate(SPLITS):
        single_state, single_rows = _train(dataclasses.replace(CFG, batch_size=2 * b * a), Shard())
        for rank_state, rank_rows in (ranks[0][n], ranks[1][n]):
            assert max_diff(rank_state, single_state) < 1e-5
            assert len(rank_rows) == len(single_rows) >= 4  # every 3 steps and at the 2 epoch ends
            for got, want in zip(rank_rows, single_rows, strict=True):
                assert got["step"] == want["step"] and got["val_acc"] == want["val_acc"]
                for key in ("train_loss", "train_acc", "val_loss", "val_f1"):
                    assert got[key] == pytest.approx(want[key], abs=1e-6), key
        assert max_diff(ranks[0][n][0], ranks[1][n][0]) == 0.0  # every rank holds the same weights
    other, _ = _train(dataclasses.replace(CFG, batch_size=7), Shard())
    assert max_diff(other, ranks[0][0][0]) > 1e-5  # another global batch trains differently: can fail


@pytest.mark.slow
def test_two_ranks_summing_a_cache_on_disk_train_like_one_process_with_it_in_ram(tmp_path: Path) -> None:
    """Each rank computes its share of the cache into a file of zeros; the files are summed a chunk
    at a time (read, all-reduce, write back), giving the single-process cache."""
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path), 0), nprocs=2, start_method="spawn")
    b, a = SPLITS[0]
    single_state, single_rows = _train(dataclasses.replace(CFG, batch_size=2 * b * a), Shard())
    for rank in range(2):
        rank_state, rank_rows = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[0]
        assert max_diff(rank_state, single_state) < 1e-5
        assert [r["val_acc"] for r in rank_rows] == [r["val_acc"] for r in single_rows]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _torchrun(*program: str) -> list[str]:
    """torchrun on 2 local processes; ``--`` keeps torchrun from parsing gptclf's options."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program]


def _same_run(a: Path, b: Path) -> None:
    """Same files, weights within 1e-5, validation and test metrics within 1e-6."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for split in ("validation", "test"):
        for key in ("loss", "accuracy", "macro_f1"):
            assert ma[split][key] == pytest.approx(mb[split][key], abs=1e-6)


@pytest.mark.slow
def test_torchrun_writes_one_run_equal_to_a_single_process_run(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    # --monitor is a prefix of torchrun's --monitor-interval: the reason for the "--" before the program.
    common = ["--data", str(data), *TINY, "--epochs", "2", "--monitor", "val_acc", "--json"]
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        _torchrun("-m", "--", "cli.main", "finetune", *common, "--batch-size", "4", "--out", str(ddp)),
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["run_dir"] == str(ddp)  # rank 0 alone prints
    assert proc.stderr.count("trainable scope last-block") == 1  # and alone reports progress
    single = tmp_path / "single"
    result = runner.invoke(app, ["finetune", *common, "--batch-size", "8", "--out", str(single)])
    assert result.exit_code == 0, result.stderr
    _same_run(ddp, single)
    assert json.loads((ddp / "run.json").read_text())["train"]["batch_size"] == 4  # per device


def _rank_pid(launcher: psutil.Process, rank: int) -> int | None:
    """The pid of the worker of ``rank`` among the launcher's children (None while starting)."""
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child.pid
        except psutil.Error:  # gone or not readable: not the worker we want
            continue
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_its_checkpoint_resumes(tmp_path: Path) -> None:
    """SIGKILL rank 1 after rank 0 saved the first epoch's checkpoint; resume through --devices 2."""
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=300)
    common = ["--data", str(data), *TINY, "--epochs", "3"]
    run = tmp_path / "run"
    script = Path(sys.executable).with_name("gptclf")  # the console script beside this interpreter
    gptclf = str(script) if script.is_file() else shutil.which("gptclf")
    if gptclf is None:
        pytest.skip("the gptclf console script is not installed")
    timeout = ["--dist-timeout", "9"]  # were a collective to wait for the dead rank
    proc = subprocess.Popen(
        _torchrun("--", gptclf, "finetune", *common, "--batch-size", "2", "--out", str(run), *timeout),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    launcher, deadline = psutil.Process(proc.pid), time.monotonic() + 600  # a bound, not a guess: busy cores
    while not (work_dir(run) / "checkpoint.pt").is_file():
        assert proc.poll() is None, f"the job ended before its first checkpoint: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "no checkpoint in 10 minutes"
        time.sleep(0.02)
    victim = _rank_pid(launcher, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - killed < 45, stderr
    assert not run.exists()  # the run is built beside --out and swapped in only when complete
    state = load_checkpoint(work_dir(run) / "checkpoint.pt")  # intact
    assert state["world_size"] == 2 and state["loop"]["group"] == 0 and state["loop"]["epoch"] >= 1

    code = runner.invoke(app, ["finetune", "--out", str(run), "--resume"])
    assert code.exit_code == 2 and "2 process(es)" in code.stderr  # the world size must match
    again = ["--out", str(run), "--resume", "--monitor", "val_loss"]  # as it was; through the launcher
    resumed = runner.invoke(app, ["finetune", *again, "--devices", "2"])
    assert resumed.exit_code == 0, resumed.stderr
    assert not (run / "checkpoint.pt").exists()
    single = tmp_path / "single"
    straight = runner.invoke(app, ["finetune", *common, "--batch-size", "4", "--out", str(single)])
    assert straight.exit_code == 0, straight.stderr
    _same_run(run, single)


def test_devices_checks_settings_before_it_starts_processes(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["finetune", *TINY, "--devices", "2", "--epochs", "0", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--epochs must be >= 1" in result.stderr
    result = runner.invoke(app, ["finetune", *TINY, "--devices", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--devices must be >= 1" in result.stderr
    assert not (tmp_path / "x").exists()


def test_evaluate_refuses_several_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "runs in one process" in result.stderr


@pytest.mark.parametrize("args", [["some text"], ["--input", "in.txt"], ["--input", "-", "--output", "o"]])
def test_predict_under_torchrun_needs_a_file_in_and_a_file_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["predict", str(tmp_path), *args])
    assert result.exit_code == 2
    assert "under torchrun (2 processes) predict needs --input FILE and --output FILE" in result.stderr


def _slow_barrier_worker(rank: int, port: int, out: str) -> None:
    """Rank 0 "saves" for longer than the collective timeout after rank 1 is seen waiting at the barrier."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    marker = Path(out, "rank1-waiting")
    with process_group("cpu", timeout=1) as shard:
        if shard.is_main:
            outlast(marker, 3)  # rank 1 waits three times --dist-timeout, counted from its arrival
            shard.slow_barrier()
        else:
            entering_marks(shard.slow_barrier, marker)()
        total = shard.all_sum(torch.ones(1))  # the group still works afterwards
    Path(out, f"rank{rank}.json").write_text(json.dumps([shard.local_world_size, float(total)]))


@pytest.mark.slow
def test_slow_barrier_outlasts_the_collective_timeout(tmp_path: Path) -> None:
    Shard().slow_barrier()  # a single process does not wait
    args = (_free_port(), str(tmp_path))
    mp.start_processes(_slow_barrier_worker, args=args, nprocs=2, start_method="spawn")
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [2, 2.0]


def test_local_world_size_comes_from_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptclf.distributed import local_world_size
    from gptclf.errors import BadInputError

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_world_size(4) == 4 and Shard().local_world_size == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_world_size(4) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "x")
    with pytest.raises(BadInputError, match="LOCAL_WORLD_SIZE"):
        local_world_size(4)
