"""What every command shares: one-line usage errors with exit 2, and the help of flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import REPO

runner = CliRunner()
COMMANDS = ["download", "prepare", "finetune", "evaluate", "predict"]


def _flat(text: str) -> str:
    """Help text with rich's box lines and wrapping removed."""
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["gptclf", *COMMANDS])
def test_flags_show_no_bool_metavar(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    assert "--help" in result.stdout and "<bool>" not in result.stdout


def test_dist_timeout_shows_its_default_once() -> None:
    result = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "160"})
    help_text = _flat(result.stdout)
    assert "--dist-timeout" in help_text and help_text.count("default: 300") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["finetune", "--epochs", "abc"], "Invalid value for '--epochs'"),
        (["finetune", "--no-such-option"], "No such option: --no-such-option"),
        (["predict"], "Missing argument"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["evaluate", "--split"], "Option '--split' requires an argument"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("gptclf: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "--help" in result.stderr  # where to look next
    assert result.stdout == ""


@pytest.mark.slow
def test_usage_error_in_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "finetune", "--batch-size", "eight"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("gptclf: error: Invalid value for '--batch-size'")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_version_help_and_bare_gptclf_keep_their_exit_codes() -> None:
    assert runner.invoke(app, ["--version"]).exit_code == 0
    assert runner.invoke(app, ["finetune", "--help"]).exit_code == 0
    bare = runner.invoke(app, [])
    assert bare.exit_code == 2 and "finetune" in bare.stdout  # no arguments: the help, as before


# --- issue 18: results that cannot be written, and closed standard streams --------------------------


def _gptclf(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output="stdout" not in kwargs,
                          text=True, env=env, timeout=120, **kwargs)  # type: ignore[call-overload]  # fmt: skip


RUN_V1 = str(REPO / "tests" / "fixtures" / "run-v1")


@pytest.mark.parametrize(
    "args",
    [["evaluate", RUN_V1], ["evaluate", RUN_V1, "--json"], ["predict", RUN_V1, "hello"],
     ["calibrate", "{copy}", "--json"]],
    ids=["evaluate", "evaluate-json", "predict", "calibrate-json"],
)  # fmt: skip
@pytest.mark.slow
def test_results_on_a_full_disk_are_one_line_exit_1(args: list[str], tmp_path: Path) -> None:
    import shutil

    copy = str(shutil.copytree(RUN_V1, tmp_path / "run"))  # calibrate writes into its run
    args = [a.replace("{copy}", copy) for a in args]
    with open("/dev/full", "w") as full:
        done = _gptclf([*args, "--device", "cpu"], stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "no space left" in done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_closed_standard_streams_are_one_line() -> None:
    closed_out = _gptclf(["predict", RUN_V1, "hi"], stdout=None, stderr=subprocess.PIPE,
                         preexec_fn=lambda: os.close(1))  # fmt: skip
    assert closed_out.returncode == 2 and "standard output is closed" in closed_out.stderr
    closed_in = _gptclf(["predict", RUN_V1, "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        preexec_fn=lambda: os.close(0))  # fmt: skip
    assert closed_in.returncode == 2 and "standard input is closed" in closed_in.stderr
    unused_in = _gptclf(["predict", RUN_V1, "hi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        preexec_fn=lambda: os.close(0))  # fmt: skip
    assert unused_in.returncode == 0 and '"text": "hi"' in unused_in.stdout
