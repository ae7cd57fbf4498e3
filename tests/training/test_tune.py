"""The tune core's small rules: the cut the caches are built on, what a trial is handed."""

from __future__ import annotations

from pathlib import Path

from gptclf.training.search_space import DEFAULT_SPACE, Param
from gptclf.training.settings import FinetuneSettings
from gptclf.training.tune import base_cut


def test_the_base_cut_is_the_lowest_of_several_cuts_the_space_can_ask_for() -> None:
    fixed = FinetuneSettings()
    assert base_cut(DEFAULT_SPACE, fixed, 12) == 10  # head 12, last-block 11, last-blocks 2: 10
    two = (Param("trainable", choices=("head", "last-block", "lora", "all")),)
    assert base_cut(two, fixed, 12) == 11  # lora and all have no cache
    one = (Param("trainable", choices=("head", "lora")),)
    assert base_cut(one, fixed, 12) == 0  # one cut: nothing to share
    assert base_cut((), fixed, 12) == 0  # --trainable fixed: one cut
    assert base_cut((Param("trainable", choices=("last-blocks 4", "head")),), fixed, 2) == 0  # 4 > 2 blocks


def test_trials_are_handed_no_test_text(tmp_path: Path) -> None:
    """The search never looks at the test split: a trial's runner holds train and validation as
    prepared, and an empty test split."""
    from gptclf.data.prepared import read_prepared
    from gptclf.training.trials import TRIAL_SPLITS, TrialRunner
    from tests.finetune_helpers import prepared_folder

    prepared = read_prepared(prepared_folder(tmp_path, ["spam", "ham"], n=60))
    assert len(prepared.splits["test"]) > 0
    runner = TrialRunner(prepared, ["spam", "ham"], None, None, None, None, None, tmp_path, tmp_path)  # type: ignore[arg-type]
    assert TRIAL_SPLITS == ("train", "validation") and len(runner.splits["test"]) == 0
    for name in TRIAL_SPLITS:
        assert runner.splits[name].equals(prepared.splits[name])
