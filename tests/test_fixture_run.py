"""A run directory written before the architecture change (tests/fixtures/run-v1, made by
tests/fixtures/make_run_v1.py) still loads, predicts and evaluates the same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUN = FIXTURES / "run-v1"
EXPECTED = json.loads((FIXTURES / "run-v1.expected.json").read_text())


def test_an_old_run_predicts_the_same_probabilities(tmp_path: Path) -> None:
    run = shutil.copytree(RUN, tmp_path / "run")  # a copy: nothing may be written into the fixture
    result = CliRunner().invoke(app, ["predict", str(run), *EXPECTED["texts"], "--format", "jsonl",
                                      "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == EXPECTED["predict"]


def test_an_old_run_evaluates_to_the_same_metrics(tmp_path: Path) -> None:
    run = shutil.copytree(RUN, tmp_path / "run")
    result = CliRunner().invoke(app, ["evaluate", str(run), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    # Every number it gave then is the same now (later versions may report more metrics beside),
    # counts exactly and means to float32's rounding: summation order differs between CPU kernels.
    for key, then in EXPECTED["evaluate"].items():
        if isinstance(then, float):
            assert metrics[key] == pytest.approx(then, rel=1e-6), key
        else:
            assert metrics[key] == then, key
