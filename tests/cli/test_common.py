"""What every command shares: one-line usage errors with exit 2, and the help of flags."""

from __future__ import annotations

import os
import subprocess
import sys

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
