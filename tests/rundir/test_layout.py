"""The run directory's names are one set: what a run writes is what the work folder knows as a run's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptclf.inference.plots import write_run_plots
from gptclf.rundir import (
    HISTORY_COLUMNS,
    RUN_FILES,
    history_csv,
    save_run,
    write_curves,
    write_history,
    write_metrics,
)
from gptclf.rundir.build import user_entries
from gptclf.rundir.layout import CHECKPOINT_NAME, TUNE_DIR, TUNE_JOURNAL
from tests.conftest import REPO
from tests.finetune_helpers import tiny_classifier
from tests.rundir.test_files import fake_tokenizer, info_for

ROWS = [{"epoch": 1, "step": 2, "train_loss": 0.5, "val_loss": 0.7, "train_acc": 0.8, "val_acc": 0.7}]


@pytest.mark.slow
def test_every_file_a_run_writes_is_a_run_file_and_nothing_else_is(tmp_path: Path) -> None:
    """The work folder carries the user's own files into a new run and never an old run's: every
    name the writers produce must be known to it as a run's, or an old run's file would survive."""
    pytest.importorskip("matplotlib")
    model = tiny_classifier(["a", "b"])
    run = tmp_path / "run"
    save_run(run, model, info_for(model), fake_tokenizer(tmp_path))
    write_history(run, ROWS)
    write_metrics(run, {"test": {}})
    assert write_curves(run, ROWS, steps_per_epoch=2)
    assert write_run_plots(run, np.random.default_rng(0).normal(size=(20, 2)), [0, 1] * 10, ["a", "b"], {})
    torch.save({}, run / CHECKPOINT_NAME)
    written = {p.name for p in run.iterdir()}
    assert written | {TUNE_DIR, TUNE_JOURNAL} == RUN_FILES  # a search's own: tests/cli/test_tune.py
    assert user_entries(run) == []
    (run / "notes.txt").write_text("mine")
    assert user_entries(run) == ["notes.txt"]


@pytest.mark.slow
def test_the_run_directory_does_not_load_the_trainer() -> None:
    """The history's columns belong to the run-directory format: writing or reading a run needs
    nothing of the training loop (a fresh interpreter, so that no other test's imports count)."""
    code = "import sys, gptclf.rundir; print('gptclf.training.loop' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert history_csv(ROWS).splitlines()[0] == ",".join(HISTORY_COLUMNS)
