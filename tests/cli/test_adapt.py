"""``gptclf adapt`` from the command line: stdin, --json, finetune on its folder, one-line errors,
and a kill -9 or SIGTERM that --resume continues to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gptclf.rundir import work_dir
from gptclf.rundir.layout import CHECKPOINT_NAME
from gptclf.training.checkpoints import load_checkpoint
from tests.fault_helpers import cli, spawn, wait_for
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder
from tests.training.test_adapt import repetitive, text_file

TINY = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu", "--block-size", "32"]


@pytest.mark.slow
def test_stdin_texts_give_a_folder_that_finetune_takes_as_its_model(tmp_path: Path) -> None:
    install_tokenizer()
    from typer.testing import CliRunner

    from cli.main import app

    lm = tmp_path / "lm"
    args = ["adapt", "--input", "-", "--out", str(lm), *TINY, "--epochs", "2", "--lr", "3e-3", "--json"]
    result = CliRunner().invoke(app, args, input="\n".join(repetitive(200)) + "\n")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sources"][0]["source"] == "stdin" and summary["sources"][0]["texts"] == 200
    assert summary["perplexity_after"] < summary["perplexity_before"]
    assert "tokens/s" in result.stderr and "validation perplexity" in result.stderr
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    run = tmp_path / "run"
    code, _, stderr = cli("finetune", "--data", str(data), "--model", str(lm), "--device", "cpu",
                          "--epochs", "1", "--out", str(run))  # fmt: skip
    assert code == 0, stderr
    assert json.loads((run / "run.json").read_text())["model"]["name"] == str(lm.resolve())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "EMPTY"], "no texts"),
        (["--input", "SHORT"], "fewer than one block"),
        (["--input", "GOOD", "--block-size", "65"], "over the model's context"),
        (["--input", "GOOD", "--trainable", "head"], "no head"),
        (["--input", "GOOD", "--validation", "1"], "--validation"),
        (["--data", "MISSING"], "no such folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    install_tokenizer()
    files = {
        "EMPTY": text_file(tmp_path / "empty.txt", [""]),
        "SHORT": text_file(tmp_path / "short.txt", ["hi"]),
        "GOOD": text_file(tmp_path / "good.txt", repetitive(50)),
        "MISSING": str(tmp_path / "nowhere"),
    }
    out = tmp_path / "lm"
    code, stdout, stderr = cli("adapt", *TINY, *[files.get(a, a) for a in args], "--out", str(out))
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not out.exists() and not work_dir(out).exists()


def test_an_empty_out_is_refused_not_taken_for_the_working_folder(tmp_path: Path) -> None:
    install_tokenizer()
    texts = text_file(tmp_path / "good.txt", repetitive(50))
    code, stdout, stderr = cli("adapt", *TINY, "--input", texts, "--out", "", "--force")
    assert (
        code == 2
        and stdout == ""
        and stderr.strip()
        == ("gptclf: error: --out is empty: name the folder to write the model into, e.g. --out lm/mine")
    ), stderr


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_an_interrupted_adapt_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path: Path, how: int
) -> None:
    install_tokenizer()
    texts = text_file(tmp_path / "t.txt", repetitive(300))
    common = ["adapt", "--input", texts, *TINY, "--epochs", "2", "--lr", "3e-3", "--checkpoint-every", "2"]
    whole = spawn(*common, "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.wait(timeout=300) == 0, whole.stderr.read() if whole.stderr else ""
    out = tmp_path / "cut"
    proc = spawn(*common, "--out", str(out), cwd=tmp_path)
    checkpoint = work_dir(out) / CHECKPOINT_NAME
    assert wait_for(proc, checkpoint.is_file), "the run ended before its first checkpoint"
    os.kill(proc.pid, how)
    code = proc.wait(timeout=120)
    assert code == (-signal.SIGKILL if how == signal.SIGKILL else 128 + signal.SIGTERM)
    assert not out.exists() and checkpoint.is_file()  # no mixed folder: only the work folder, resumable
    steps = json.loads((tmp_path / "whole" / "config.json").read_text())["gptclf"]["steps"]
    assert load_checkpoint(checkpoint)["loop"]["step"] < steps  # stopped inside training
    code, _, stderr = cli("adapt", "--out", str(out), "--resume", "--epochs", "5")
    assert code == 2 and "cannot change these on --resume: --epochs 5 (the run used 2)" in stderr
    resumed = spawn("adapt", "--out", str(out), "--resume", cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
    told = resumed.stderr.read() if resumed.stderr else ""
    assert "resuming on the blocks saved when the run started (the inputs are not read again)" in told
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical
    assert (
        not work_dir(out).exists() and not (out / "corpus").exists() and not (out / CHECKPOINT_NAME).exists()
    )


@pytest.mark.slow
def test_two_torchrun_ranks_adapt_like_one_process_with_the_global_batch(tmp_path: Path) -> None:
    """2 gloo ranks of 4 blocks each train as one process of 8 (the shape of test_distributed's)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    install_tokenizer()
    texts = text_file(tmp_path / "t.txt", repetitive(300))
    common = ["adapt", "--input", texts, *TINY, "--epochs", "2", "--lr", "5e-5", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [*torchrun, "-m", "--", "cli.main", *common, "--batch-size", "4", "--out", str(ddp)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["out"] == str(ddp)  # rank 0 alone prints
    assert proc.stderr.count("trainable scope all") == 1  # and alone reports progress
    single = tmp_path / "single"
    code, stdout, stderr = cli(*common, "--batch-size", "8", "--out", str(single))
    assert code == 0, stderr
    a, b = _weights(ddp), _weights(single)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    got, want = json.loads(lines[0]), json.loads(stdout)
    assert got["steps"] == want["steps"]
    assert got["perplexity_after"] == pytest.approx(want["perplexity_after"], rel=1e-5)
