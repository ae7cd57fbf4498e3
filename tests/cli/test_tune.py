"""`gptclf tune` end to end: the best run, one cache per cut, failed trials, signals, kill -9, bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.main import app
from gptclf.errors import TrainingError
from gptclf.inference import cache as cache_module
from gptclf.rundir import work_dir
from gptclf.training import trials as trials_module
from tests.conftest import REPO
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder

#: The tests that run a study need the tune extra (Optuna); the refusals before it do not.
needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="the tune extra is not installed"
)
TINY = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu"]
#: Two cuts (head: both blocks cached; last-block: one), a learning rate, the epochs fixed.
SPACE = '[lr]\nlow = 1e-3\nhigh = 3e-2\nlog = true\n[trainable]\nchoices = ["head", "last-block"]\n'
runner = CliRunner()


def tune(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["tune", *args])
    return result.exit_code, result.stdout, result.stderr


def read_trials(run: Path) -> list[dict[str, str]]:
    with (run / "tune" / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[list[str], Path]:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=80)
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    return ["--data", str(data), *TINY, "--space", str(space), "--epochs", "2", "--batch-size", "8"], tmp_path


@needs_optuna
@pytest.mark.slow
def test_the_best_trial_becomes_a_run_that_equals_a_finetune(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    common, tmp_path = setup
    builds: Counter[tuple[int, str]] = Counter()
    build = cache_module.FeatureCache.build

    def counting(model: Any, ids: Any, start_block: int, **kwargs: Any) -> Any:
        builds[(start_block, kwargs["label"].split(" the ")[-1])] += 1
        return build(model, ids, start_block, **kwargs)

    monkeypatch.setattr(cache_module.FeatureCache, "build", counting)
    out = tmp_path / "tuned"
    code, stdout, stderr = tune(*common, "--trials", "5", "--out", str(out), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    rows = read_trials(out)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert sum(summary["trials"].values()) == 5 and {r["status"] for r in rows} <= {"complete", "pruned"}
    # One cache per cut and split, whatever the number of trials at that cut.
    cuts = {2 if r["trainable"] == "head" else 1 for r in rows}
    assert set(builds.values()) == {1}
    assert {k for k in builds if k[1] != "test split"} == {
        (c, f"{s} split") for c in cuts for s in ("train", "validation")
    }
    best = summary["best_trial"]
    # The final run: every finetune file, run.json naming the trial, the test split evaluated.
    info = json.loads((out / "run.json").read_text())
    assert info["tune"]["trial"] == best["number"] and info["tune"]["metric"] == "val_loss"
    assert (out / "history.csv").is_file() and (out / "metrics.json").is_file()
    study = json.loads((out / "tune" / "study.json").read_text())
    assert study["best"] == best and study["final_run"]["identical_to_trial"] is True
    # The lowest cut of the space is built first and the head's cut on it (one block, not two).
    on = {b["blocks"]: b["built_on"] for b in study["cache_builds"]}
    assert on == ({1: 0} if cuts == {1} else {1: 0, 2: 1})
    assert study["final_run"]["how"].startswith("kept from the best trial")
    assert summary["retrained_identical"] is True and "; keeping its weights" in stderr
    best_row = next(r for r in rows if int(r["trial"]) == best["number"])
    assert float(best_row["value"]) == best["value"] and len(best_row["curve"].split(";")) == 2
    assert not work_dir(out).exists() and not (out / "tune.journal").exists()
    # A finetune with the best settings trains the same weights.
    params = best["params"]
    straight = tmp_path / "straight"
    result = runner.invoke(
        app,
        ["finetune", *[a for a in common if a not in ("--space", common[common.index("--space") + 1])],
         "--lr", repr(params["lr"]), "--trainable", params["trainable"], "--out", str(straight)],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    tuned, plain = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert tuned.keys() == plain.keys() and all(torch.equal(tuned[k], plain[k]) for k in plain)
    # evaluate and predict take it as any run.
    evaluated = runner.invoke(app, ["evaluate", str(out), "--split", "test", "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["final_run"]["test_accuracy"])
    predicted = runner.invoke(app, ["predict", str(out), "win a prize now", "--device", "cpu"])
    assert predicted.exit_code == 0 and json.loads(predicted.stdout)["label"] in ("spam", "ham")
    # A second search into the finished run needs --force; --resume has nothing to resume.
    code, _, stderr = tune(*common, "--trials", "2", "--out", str(out))
    assert code == 2 and "not empty" in stderr
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 2 and "nothing to resume" in stderr


@needs_optuna
@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "said"),
    [
        (TrainingError("the training loss became nan at step 3: lower --lr"), "the training loss became nan"),
        # a batch too big for the device: that trial's settings, not the search's
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory (CUDA out"),
        (MemoryError(), "out of memory (MemoryError)"),
    ],
)
def test_a_failed_trial_is_recorded_and_the_study_goes_on(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch, error: Exception, said: str
) -> None:
    common, tmp_path = setup
    fit = trials_module.fit
    calls = []

    def nan_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise error
        return fit(*args, **kwargs)

    monkeypatch.setattr(trials_module, "fit", nan_once)
    out = tmp_path / "tuned"
    code, stdout, stderr = tune(*common, "--trials", "4", "--pruner", "none", "--out", str(out), "--json")
    assert code == 0, stderr
    rows = read_trials(out)
    assert [r["status"] for r in rows] == ["complete", "failed", "complete", "complete"]
    assert said in rows[1]["error"] and rows[1]["value"] == ""
    assert json.loads(stdout)["trials"] == {"complete": 3, "pruned": 0, "failed": 1}
    assert f"trial 1: failed ({said}" in stderr


@needs_optuna
def test_no_disk_room_for_a_cache_ends_the_search_in_one_line_instead_of_failing_each_trial(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial with bad settings fails and the study goes on; a disk with no room for the cache
    would fail every trial that caches alike, so it ends the search (exit 2), kept for --resume."""
    from gptclf.inference import cache_plan

    common, tmp_path = setup
    monkeypatch.setattr(cache_plan, "spill_room", lambda spill_dir=None: 0)
    out = tmp_path / "tuned"
    code, _, stderr = tune(*common, "--trials", "3", "--cache-memory", "0", "--out", str(out))
    assert code == 2 and "the frozen-trunk cache needs" in stderr and "MiB on disk" in stderr, stderr
    assert "trial 0: failed" not in stderr and not out.exists()


@needs_optuna
@pytest.mark.slow
def test_the_caches_notes_are_said_as_finetune_says_them(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TMPDIR that cannot be used is said once (the cache's file goes elsewhere), as finetune
    says it; the trials themselves stay silent."""
    common, tmp_path = setup
    monkeypatch.setenv("TMPDIR", str(tmp_path / "absent"))
    out = tmp_path / "tuned"
    code, _, stderr = tune(*common, "--trials", "2", "--cache-memory", "0", "--out", str(out))
    assert code == 0, stderr
    passed_over = f"TMPDIR={tmp_path / 'absent'} cannot be written"
    said = [line for line in stderr.splitlines() if line.startswith(passed_over)]
    assert len(said) == 1, stderr  # once, not once a build


class _Killed(BaseException):
    """Stands for a kill -9 between two draws of a trial: nothing after it runs, the journal keeps
    the trial running with the settings it had drawn."""


@needs_optuna
@pytest.mark.slow
@pytest.mark.parametrize("killed_at", ["lr", "trainable"])
def test_a_trial_killed_while_drawing_runs_again_with_what_it_had_drawn(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch, killed_at: str
) -> None:
    """Killed before its first draw (lr), a trial has nothing to run again: a new one takes its
    place. Killed after it (before trainable), it runs again with its lr, the rest drawn anew, and
    says so."""
    from gptclf.training.search_space import Param

    common, tmp_path = setup
    out = tmp_path / "tuned"
    draw = Param.sample
    seen: dict[str, Any] = {}

    def killed(self: Param, trial: Any) -> Any:
        if trial.number == 1 and self.name == killed_at:
            seen.update(trial.params)
            raise _Killed
        return draw(self, trial)

    monkeypatch.setattr(Param, "sample", killed)
    with pytest.raises(_Killed):
        tune(*common, "--trials", "3", "--pruner", "none", "--out", str(out))
    monkeypatch.setattr(Param, "sample", draw)
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 0, stderr
    rows = read_trials(out)
    assert rows[1]["status"] == "interrupted"
    if killed_at == "lr":
        assert not seen
        assert "trial 1 was starting when the search stopped: a new trial takes its place" in stderr
    else:
        assert set(seen) == {"lr"} and float(rows[2]["lr"]) == seen["lr"]  # run again with its lr
        again = (
            "trial 1 was running when the search stopped: it runs again with the settings it had drawn "
            f"(lr {seen['lr']:.3g}; the others are drawn anew)"
        )
        assert again in stderr
    assert [r["status"] for r in rows].count("complete") == 3


@needs_optuna
def test_resume_with_no_search_to_resume_starts_the_named_search(setup: tuple[list[str], Path]) -> None:
    """Killed before it saved its settings, a search has nothing to resume: the whole command with
    --resume starts it (a scheduler that always resumes is not stuck); --out RUN --resume alone
    names no search and is refused, saying what would start it."""
    common, tmp_path = setup
    out = tmp_path / "tuned"
    work_dir(out).mkdir()  # what a kill in the first moments leaves: no settings.json, no journal
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 2 and "no interrupted tune search (the whole command with --resume starts it)" in stderr
    code, _, stderr = tune(*common, "--trials", "2", "--out", str(out), "--resume")
    assert code == 0, stderr
    assert f"nothing to resume for {out} ({work_dir(out)} holds no search): starting the search" in stderr
    assert len(read_trials(out)) == 2 and not work_dir(out).exists()


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "tune", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip


def _wait_for(proc: subprocess.Popen[str], prefix: str) -> list[str]:
    """The stderr lines up to the first that starts with ``prefix``."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line {prefix!r} in {''.join(seen)}")


@needs_optuna
@pytest.mark.slow
def test_sigterm_stops_after_the_epoch_and_resume_continues(setup: tuple[list[str], Path]) -> None:
    common, tmp_path = setup
    out = tmp_path / "tuned"
    proc = _start([*common, "--trials", "4", "--pruner", "none", "--out", str(out)])
    before = _wait_for(proc, "trial 1:")
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 143, rest
    # The signal lands in trial 2's first epoch (it is run again), or, now and then, in the few
    # milliseconds before it starts (nothing to run again): both keep every finished trial.
    between = "SIGTERM: stopped between trials; 2 of 4 trials are done" in rest
    assert between or "SIGTERM: stopped trial 2 after 1 evaluation(s)" in rest, rest
    assert "continue with `gptclf tune --out" in rest
    assert not out.exists() and (work_dir(out) / "tune.journal").is_file()
    code, _, stderr = tune("--out", str(out), "--resume", "--lr", "0.5")
    assert code == 2 and "cannot change these on --resume: --lr 0.5 (the study searches it)" in stderr
    code, _, stderr = tune("--out", str(out), "--resume", "--epochs", "3")  # fixed: the value it used
    assert code == 2 and "cannot change these on --resume: --epochs 3 (the search used 2)" in stderr
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 0, stderr
    rows = read_trials(out)
    done = [line for line in before if line.startswith("trial ")]
    if between:
        assert [r["status"] for r in rows] == ["complete"] * 4
    else:
        assert [r["status"] for r in rows] == ["complete", "complete", "interrupted", "complete", "complete"]
        assert rows[3]["lr"] == rows[2]["lr"] and rows[3]["trainable"] == rows[2]["trainable"]  # run again
    assert all(f"val_loss {float(r['value']):.4f}" in line for r, line in zip(rows[:2], done, strict=True))


@needs_optuna
@pytest.mark.slow
@pytest.mark.parametrize("epochs", [2, 1])
def test_a_signal_ends_a_trial_after_its_epoch_unless_that_was_its_last(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch, epochs: int
) -> None:
    """SIGTERM during trial 1's first epoch: with 2 epochs the trial stops after it (and runs again
    on --resume); with 1 it completes and counts, and the search stops before trial 2 (a 1-epoch
    trial thrown away at its end would be all lost work)."""
    import os

    from gptclf.training import trials as trials_module

    common, tmp_path = setup
    out = tmp_path / "tuned"
    fit = trials_module.fit
    calls: list[int] = []

    def signalled(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # trial 1, before its first step
            os.kill(os.getpid(), signal.SIGTERM)
        return fit(*args, **kwargs)

    monkeypatch.setattr(trials_module, "fit", signalled)
    code, _, stderr = tune(
        *common, "--epochs", str(epochs), "--trials", "3", "--pruner", "none", "--out", str(out)
    )
    assert code == 143, stderr
    if epochs == 2:
        assert "SIGTERM: stopped trial 1 after 1 evaluation(s); 1 of 3 trials are done" in stderr
    else:
        assert (
            "trial 1: val_loss" in stderr
            and "SIGTERM: stopped between trials; 2 of 3 trials are done" in stderr
        )
    monkeypatch.setattr(trials_module, "fit", fit)
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 0, stderr
    statuses = [r["status"] for r in read_trials(out)]
    assert statuses == (
        ["complete", "interrupted", "complete", "complete"] if epochs == 2 else ["complete"] * 3
    )


@needs_optuna
@pytest.mark.slow
def test_kill_9_loses_at_most_the_running_trial(setup: tuple[list[str], Path]) -> None:
    common, tmp_path = setup
    out = tmp_path / "tuned"
    proc = _start([*common, "--trials", "4", "--pruner", "none", "--out", str(out)])
    _wait_for(proc, "trial 0:")
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists() and (work_dir(out) / "tune.journal").is_file()
    # A copy whose journal is garbled in the middle is refused in one line, the copy kept.
    damaged = tmp_path / "damaged"
    shutil.copytree(work_dir(out), work_dir(damaged))
    journal = work_dir(damaged) / "tune.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([lines[0], b"{not json\n", *lines[1:]]))
    code, _, stderr = tune("--out", str(damaged), "--resume")
    assert code == 2 and "is damaged" in stderr and "--force" in stderr and len(stderr.splitlines()) == 1
    assert journal.is_file()
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 0, stderr
    rows = read_trials(out)
    finished = [r for r in rows if r["status"] != "interrupted"]
    assert len(finished) == 4 and rows[0]["status"] == "complete"  # trial 0 was kept, not run again
    assert [r["trial"] for r in finished] == sorted((r["trial"] for r in finished), key=int)
    if len(rows) == 5:  # trial 1 was running at the kill: it ran again (with its settings, if it had any)
        assert rows[1]["status"] == "interrupted" and rows[1]["lr"] in ("", rows[2]["lr"])
        assert "trial 1 was running when the search stopped" in stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trials", "0"], "--trials must be >= 1"),
        (["--timeout", "1s"], "--timeout 1s cannot fit one trial"),
        (["--timeout", "soon"], "is not a duration"),
        (
            ["--metric", "val_micro_f1"],
            "--metric val_micro_f1 is for multi-label data (prepare --multi-label): use val_macro_f1",
        ),
        (["--metric", "accuracy"], "--metric"),
        (["--lr", "1e-4"], "--lr fixed on the command line and searched by --space"),
        (["--monitor", "val_acc"], "--monitor val_acc differs from --metric val_loss"),
        (["--pruner", "hyperband"], "--pruner"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    setup: tuple[list[str], Path], extra: list[str], message: str
) -> None:
    common, tmp_path = setup
    out = tmp_path / "tuned"
    code, stdout, stderr = tune(*common, *extra, "--out", str(out))
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and stdout == ""
    assert not out.exists() and not work_dir(out).exists()


def test_bad_data_and_space_are_one_line(tmp_path: Path) -> None:
    install_tokenizer()
    out = tmp_path / "tuned"
    empty = tmp_path / "not-prepared"
    empty.mkdir()
    space = tmp_path / "space.toml"
    cases = [
        ([], "needs --data DIR"),
        (["--data", str(empty)], "not-prepared"),
        (["--data", str(tmp_path / "nowhere")], "no such folder"),
    ]
    for extra, message in cases:
        code, _, stderr = tune(*TINY, *extra, "--out", str(out))
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    for content, message in [
        ("[warmth]\nlow = 1\nhigh = 2\n", "warmth is not a finetune option"),
        ("[lr]\nlow = 1e-2\nhigh = 1e-4\n", "empty range"),
        (
            "[max_length]\nlow = 1\nhigh = 100000\n",
            "--space: max_length = 100000: --max-length must be in 1..64",
        ),
        ('[trainable]\nchoices = ["head", "last-blocks 3"]\n', "--space: trainable = 'last-blocks 3'"),
        (  # LoRA's rank checked with LoRA: a rank over the width (32) is no trial at all
            '[trainable]\nchoices = ["head", "lora"]\n[lora-rank]\nchoices = [8, 99999999999999999]\n'
            'when = { trainable = "lora" }\n',
            "--space: lora_rank = 99999999999999999: --lora-rank 99999999999999999 is over the model's "
            "width (32)",
        ),
        (  # LoRA's rank searched where no trial trains LoRA: twenty trials of one model
            "[lora-rank]\nchoices = [4, 8]\n",
            "--space searches lora-rank, which only --trainable lora reads, but no trial trains LoRA "
            "(trainable last-block)",
        ),
        (
            '[trainable]\nchoices = ["head", "last-block"]\n[lora-rank]\nchoices = [4, 8]\n',
            "but no trial trains LoRA (trainable one of head, last-block)",
        ),
        (
            '[lora-rank]\nchoices = [99999999999999999]\n[trainable]\nchoices = ["lora"]\n',
            "--lora-rank 99999999999999999 is over the model's width (32)",
        ),
    ]:
        space.write_text(content)
        code, _, stderr = tune("--data", str(data), *TINY, "--space", str(space), "--out", str(out))
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists() and not work_dir(out).exists()


@pytest.mark.slow
def test_torchrun_spreads_the_trials_over_the_ranks(setup: tuple[list[str], Path]) -> None:
    common, tmp_path = setup
    out = tmp_path / "tuned"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*torchrun, "-m", "--", "cli.main", "tune", *common, "--trials", "6", "--pruner", "none",
         "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["run_dir"] == str(out)  # rank 0 alone prints
    rows = read_trials(out)
    # Both ranks ran trials of the one study; the count may pass --trials by the trials in flight.
    assert 6 <= len(rows) <= 7 and {r["status"] for r in rows} == {"complete"}
    assert {r["rank"] for r in rows} == {"0", "1"}
    assert json.loads((out / "run.json").read_text())["tune"]["trial"] in {int(r["trial"]) for r in rows}


@needs_optuna
@needs_optuna
@pytest.mark.slow
def test_a_signal_in_the_kept_runs_evaluation_names_no_checkpoint_and_resumes(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final run keeps the best trial's weights in memory, with no checkpoint.pt: a SIGTERM in
    its test evaluation says how to go on without naming a file that is not there."""
    import os
    import signal

    from gptclf.training import run as run_module

    common, tmp_path = setup
    out = tmp_path / "tuned"
    batched_logits = run_module.batched_logits
    sent: list[int] = []

    def signalled(*args: Any, **kwargs: Any) -> Any:
        if not sent:  # before the first batch: the guard's check runs before each one
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return batched_logits(*args, **kwargs)

    monkeypatch.setattr(run_module, "batched_logits", signalled)
    code, _, stderr = tune(*common, "--trials", "2", "--pruner", "none", "--out", str(out))
    assert code == 143 and sent, stderr
    assert "checkpoint.pt" not in stderr and "stopped before the kept weights were evaluated" in stderr
    assert f"continue with `gptclf tune --out {out} --resume` (it trains the best trial's settings" in stderr
    assert not (work_dir(out) / "checkpoint.pt").exists()
    monkeypatch.setattr(run_module, "batched_logits", batched_logits)
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 0 and "trained once more: the same weights as the trial" in stderr, stderr


def test_a_stopped_final_run_resumes_with_tune_on_the_data_and_space_it_searched(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptclf.errors import Interrupted
    from gptclf.training import tune as tune_module

    common, tmp_path = setup
    out = tmp_path / "tuned"
    train_run = tune_module.train_run

    def stopped(*args: Any, **kwargs: Any) -> Any:
        raise Interrupted(f"SIGTERM at step 1 of 9: continue with `gptclf finetune --out {out} --resume`", 15)

    monkeypatch.setattr(tune_module, "train_run", stopped)
    code, _, stderr = tune(*common, "--trials", "2", "--pruner", "none", "--out", str(out))
    # The way on is tune's --resume: finetune's would make a run without tune/'s report.
    assert code == 143 and f"continue with `gptclf tune --out {out} --resume`" in stderr, stderr
    assert "gptclf finetune" not in stderr
    monkeypatch.setattr(tune_module, "train_run", train_run)
    settings_file = work_dir(out) / "tune" / "settings.json"
    saved = settings_file.read_text()
    # The space is saved with the study: an edited --space file does not change a resumed search.
    (tmp_path / "space.toml").write_text("not toml [[[")
    code, _, stderr = tune("--out", str(out), "--resume", "--data", str(tmp_path / "elsewhere"))
    assert code == 2 and "cannot change these on --resume: --data" in stderr, stderr
    # A damaged settings.json is one line, no traceback.
    settings_file.write_text("{not json")
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 2 and "settings.json are damaged" in stderr and len(stderr.strip().splitlines()) == 1
    settings_file.write_text(saved)
    # Prepared data that changed since the search is refused, as finetune refuses it.
    data = Path(common[common.index("--data") + 1])
    shutil.copytree(data, tmp_path / "kept")
    other = tmp_path / "other"
    other.mkdir()
    shutil.rmtree(data)
    shutil.copytree(prepared_folder(other, ["spam", "ham"], n=80, seed=1), data)  # prepared again
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 2 and "changed since the search was interrupted" in stderr, stderr
    shutil.rmtree(data)
    shutil.copytree(tmp_path / "kept", data)
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 0, stderr
    assert len(read_trials(out)) == 2 and (out / "tune" / "study.json").is_file()


def test_a_bad_space_file_is_not_also_blamed_for_fixed_options(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    space = tmp_path / "space.toml"
    space.write_text('[lr]\nlow = "a"\nhigh = 1e-3\n')
    out = tmp_path / "tuned"
    code, _, stderr = tune(
        "--data", str(data), *TINY, "--epochs", "1", "--space", str(space), "--out", str(out)
    )
    assert code == 2 and "lr must be a number" in stderr, stderr
    assert "--epochs fixed on the command line" not in stderr  # the default space is not the one given
    assert not out.exists() and not work_dir(out).exists()


@needs_optuna
def test_a_full_disk_under_the_journal_is_one_line_and_resumes(
    setup: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from optuna.storages.journal import JournalFileBackend

    common, tmp_path = setup
    out = tmp_path / "tuned"
    append = JournalFileBackend.append_logs
    calls = []

    def full(self: Any, logs: Any) -> None:
        calls.append(1)
        if len(calls) > 12:  # some way into the search: an append with no file name in its error
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", full)
    code, _, stderr = tune(*common, "--trials", "3", "--pruner", "none", "--out", str(out))
    assert code == 1 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert f"no space left on the disk of {work_dir(out)}" in last and "standard output" not in last
    assert f"`gptclf tune --out {out} --resume`" in last and not out.exists()
    monkeypatch.setattr(JournalFileBackend, "append_logs", append)
    code, _, stderr = tune("--out", str(out), "--resume")
    assert code == 0, stderr
    assert sum(r["status"] != "interrupted" for r in read_trials(out)) == 3
