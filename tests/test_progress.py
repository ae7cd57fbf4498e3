"""One progress mechanism: plain lines off a terminal, a live bar on one, training mapped onto it."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from gptclf import progress as progress_module
from gptclf.progress import BYTES, ConsoleProgress, Progress, TrainProgress
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder

runner = CliRunner()


def plain() -> tuple[ConsoleProgress, io.StringIO]:
    """A ConsoleProgress on a console that is no terminal, and what it wrote."""
    buf = io.StringIO()
    return ConsoleProgress(Console(file=buf, force_terminal=False, width=200)), buf


class Clock:
    """A stand-in for time.monotonic that the test moves on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_plain_lines_at_begin_then_at_most_every_interval(clock: Clock) -> None:
    shown, buf = plain()
    shown.begin("caching the frozen blocks", 1000, unit="texts")
    for _ in range(9):
        clock.now += 5
        shown.advance(100)  # 45 s in steps of 5 s: one line after 30 s, not nine
    shown.end()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "caching the frozen blocks (1,000 texts)"
    assert len(lines) == 2, lines
    assert lines[1].startswith("caching the frozen blocks: 600/1,000 texts (30s elapsed, ETA 20s)")


def test_downloads_print_every_tenth_and_say_resumes(clock: Clock) -> None:
    shown, buf = plain()
    shown.begin("vocab.bpe", 1_000_000, unit=BYTES, done=500_000)
    for _ in range(5):
        clock.now += 1
        shown.advance(100_000)
    shown.end()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "resuming vocab.bpe at 500.0 kB (1.0 MB)"
    assert [line.split(" ")[1] for line in lines[1:]] == ["60%", "70%", "80%", "90%", "100%"]
    assert lines[-1] == "vocab.bpe: 100% 1.0 MB at 100.0 kB/s"  # the rate leaves out the resumed part


def test_training_events_map_onto_one_step() -> None:
    class Steps(TrainProgress):
        def __init__(self) -> None:
            self.calls: list[tuple[object, ...]] = []

        def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
            self.calls.append(("begin", label, total, unit, done))

        def advance(self, n: int = 1, **fields: object) -> None:
            self.calls.append(("advance", n, fields))

        def end(self) -> None:
            self.calls.append(("end",))

        def message(self, text: str) -> None:
            self.calls.append(("message", text))

    seen = Steps()
    seen.start(total_steps=10, done_steps=4, epochs=2)  # a resumed run
    seen.step(epoch=2, step=6, loss=0.25)
    row = {"epoch": 2, "step": 6, "train_loss": 0.25, "val_loss": None, "val_acc": 0.5, "val_f1": None}
    seen.evaluated(row)
    seen.close()
    assert seen.calls == [
        ("begin", "training", 10, "steps", 4),
        ("advance", 2, {"epoch": "2/2", "loss": 0.25}),
        ("advance", 0, {"val_acc": 0.5}),
        ("message", "epoch 2/2 step 6/10: train loss 0.2500, val loss n/a, val acc 0.5000, val F1 n/a"),
        ("end",),
    ]


def test_the_base_classes_stay_silent(capsys: pytest.CaptureFixture[str]) -> None:
    for silent in (Progress(), TrainProgress()):
        silent.begin("x", 3, unit="texts")
        silent.advance(1, loss=0.1)
        silent.message("hello")
        silent.end()
    quiet = TrainProgress()
    quiet.start(3, 0, 1)
    quiet.step(1, 1, 0.5)
    quiet.evaluated({"epoch": 1, "step": 1})
    quiet.close()
    assert capsys.readouterr() == ("", "")


def test_a_live_bar_draws_steps_and_keeps_messages() -> None:
    buf = io.StringIO()
    shown = ConsoleProgress(Console(file=buf, force_terminal=True, width=120))
    assert shown.live
    shown.begin("encoder.json", 2000, unit=BYTES)
    shown.advance(1000)
    shown.message("fetched encoder.json: /tmp/x")
    shown.begin("training", 4, unit="steps")  # a new step ends the last one
    shown.advance(2, epoch="1/1", loss=0.5)
    shown.end()
    shown.end()  # ending twice is harmless (an error path may end a step already ended)
    assert "fetched encoder.json: /tmp/x" in buf.getvalue()
    assert shown._bar is None


@pytest.mark.slow
def test_finetune_shows_the_cache_build_and_the_test_evaluation(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    args = ["finetune", "--data", str(data), "--model", TINY_SPEC, "--weights", "random", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("caching the frozen blocks of the train split (") for line in lines), lines
    assert any(line.startswith("evaluating the kept weights on the test split (") for line in lines), lines


@pytest.mark.slow
def test_evaluate_shows_its_pass_off_a_terminal(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    args = ["finetune", "--data", str(data), "--model", TINY_SPEC, "--weights", "random", "--device", "cpu"]
    assert runner.invoke(app, [*args, "--epochs", "1", "--out", str(tmp_path / "run")]).exit_code == 0
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.stderr
    # the plain line that begins the pass (stderr is no terminal), e.g. "classifying (6 texts)"
    passes = [line for line in result.stderr.splitlines() if re.fullmatch(r"[a-z ]+ \(\d+ texts\)", line)]
    assert passes, result.stderr
