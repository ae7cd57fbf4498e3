"""What finetune does differently for multi-label data: its option checks and stored thresholds."""

from __future__ import annotations

import numpy as np

from gptclf.training.run_multi import multi_choices, multi_scores, settings_problems, threshold_lines


def test_two_class_rules_and_micro_f1_monitor_fit_only_their_kind_of_data() -> None:
    assert settings_problems(multi_label=True, target=None, positive=None, monitor="val_micro_f1") == []
    assert (
        "--target and --positive"
        in settings_problems(multi_label=True, target="f1", positive=None, monitor="val_loss")[0]
    )
    assert (
        "val_micro_f1 is for multi-label"
        in settings_problems(multi_label=False, target=None, positive=None, monitor="val_micro_f1")[0]
    )
    assert settings_problems(multi_label=False, target="f1", positive="spam", monitor="val_f1") == []


def test_thresholds_come_from_validation_and_the_scores_use_them() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((40, 2)) < 0.4).astype(int)
    logits = rng.normal(size=(40, 2)) + 2 * truth - 1.5  # probabilities mostly below 0.5
    data = {"validation": logits, "test": logits}
    labels = {"validation": truth.tolist(), "test": truth.tolist()}
    choices = multi_choices(data, labels, ["x", "y"])
    assert choices["multi_label"] is True and all(r["chosen"] for r in choices["thresholds"].values())
    scores = multi_scores(data, labels, ["x", "y"])
    assert scores["test"] is not None
    used = [scores["test"]["per_class"][n]["threshold"] for n in ("x", "y")]
    assert used == [choices["thresholds"][n]["threshold"] for n in ("x", "y")] and used != [0.5, 0.5]
    assert "threshold of x:" in threshold_lines(choices["thresholds"])[0]
    alone = multi_choices({"test": logits}, {"test": truth.tolist()}, ["x", "y"])  # no validation split
    assert [r["threshold"] for r in alone["thresholds"].values()] == [0.5, 0.5]
