"""The shared option groups (gptclf.option_groups): defaults, rules, and one declaration for all."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from gptclf import option_groups
from gptclf.option_groups import (
    DecisionOptions,
    DeviceOptions,
    FetchOptions,
    InputOptions,
    LongTextOptions,
    OutputOptions,
    TargetOptions,
)
from gptclf.options import option_specs
from tests.conftest import REPO

GROUPS = [
    DeviceOptions,
    FetchOptions,
    LongTextOptions,
    DecisionOptions,
    TargetOptions,
    InputOptions,
    OutputOptions,
]


def test_the_defaults_are_those_the_verbs_had() -> None:
    assert DeviceOptions() == DeviceOptions(device="auto", precision="auto", batch_size=32)
    assert FetchOptions() == FetchOptions(home=None, mirror=None, retries=3)
    assert LongTextOptions() == LongTextOptions(None, None, None, None)  # None: what the run stores
    assert DecisionOptions() == DecisionOptions(None, None, None, False)
    assert InputOptions().encoding == "utf-8" and InputOptions().input_path is None
    assert OutputOptions().json_out is False


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_is_frozen_and_its_defaults_pass_its_rules(group: type) -> None:
    instance = group()
    assert instance.problems() == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        instance.x = 1
    for spec in option_specs(group):
        assert spec.help.endswith(".") and spec.panel is None, spec.name


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        (DeviceOptions(batch_size=0), "--batch-size must be >= 1 (got 0)"),
        (DeviceOptions(precision="fp8"), "--precision 'fp8': use one of auto, fp32, tf32, bf16, fp16"),
        (FetchOptions(retries=-1), "--retries must be >= 0 (got -1)"),
        (LongTextOptions(long_texts="cut"), "--long-texts 'cut': use one of truncate, head-tail, window"),
        (LongTextOptions(aggregate="sum"), "--aggregate 'sum': use one of mean, max"),
        (DecisionOptions(threshold=1.5), "--threshold must be a probability in [0, 1] (got 1.5)"),
        (DecisionOptions(min_confidence=0.0), "--min-confidence must be a probability in (0, 1] (got 0)"),
    ],
)
def test_a_bad_value_is_the_message_the_verbs_gave(instance: object, message: str) -> None:
    assert instance.problems() == [message]  # type: ignore[attr-defined]


def test_the_names_the_rules_need_are_those_of_the_modules_that_use_them() -> None:
    from gptclf.data.long_texts import AGGREGATES, MODES
    from gptclf.device import PRECISIONS

    assert option_groups.PRECISIONS == PRECISIONS
    assert option_groups.LONG_TEXT_MODES == MODES and option_groups.AGGREGATES == AGGREGATES


def test_the_groups_import_no_torch() -> None:
    code = "import sys, gptclf.option_groups, cli.options; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_finetune_takes_device_precision_and_target_from_the_groups() -> None:
    from gptclf.training.settings import FinetuneSettings

    ours = {f.name: f for f in dataclasses.fields(FinetuneSettings)}
    for group, name in ((DeviceOptions, "device"), (DeviceOptions, "precision"), (TargetOptions, "target")):
        theirs = next(f for f in dataclasses.fields(group) if f.name == name)
        assert ours[name].default == theirs.default
        assert ours[name].metadata["help"] == theirs.metadata["help"]
        assert ours[name].metadata.get("choices") == theirs.metadata.get("choices")
        assert ours[name].metadata["panel"] == "Run"  # finetune's panel; the recorded key is the same


def test_fetch_options_expand_the_home_folder() -> None:
    assert FetchOptions(home=Path("~/x")).home_dir() == Path.home() / "x"
    assert FetchOptions().home_dir() is None
    assert LongTextOptions(stride=3).given() == {"head_tokens": None, "stride": 3, "aggregate": None}
