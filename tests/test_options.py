"""Declared options (gptclf.options): the rules on values, the help, groups and reused fields."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest

from gptclf.errors import BadInputError
from gptclf.options import (
    OptionGroup,
    field_problems,
    help_text,
    option,
    option_specs,
    probability_problems,
    reuse,
)


@dataclass(frozen=True)
class Sample(OptionGroup):
    size: int = option(4, "How many", at_least=1)
    share: float | None = option(None, "A share", probability="(0, 1]")
    rate: float = option(0.5, "A rate", above=0.0, at_most=1.0)
    mode: str = option("a", "Which way", choices=("a", "b"))
    input_path: str | None = option(None, "A file", flag="--input", aliases=("-i",))


def test_each_rule_is_one_message_naming_the_option_as_it_is_typed() -> None:
    bad = Sample(size=0, share=0.0, rate=2.0, mode="c", input_path="x")
    assert bad.problems() == [
        "--size must be >= 1 (got 0)",
        "--share must be a probability in (0, 1] (got 0)",
        "--rate must be > 0 and <= 1 (got 2)",
        "--mode 'c': use one of a, b",
    ]
    with pytest.raises(BadInputError) as info:
        bad.check()
    assert str(info.value) == "; ".join(bad.problems())  # one line, every problem
    good = Sample(share=1.0)
    assert good.check() is good and field_problems(good) == []


@pytest.mark.parametrize(
    ("interval", "value", "ok"),
    [
        ("[0, 1]", 0.0, True),
        ("[0, 1]", 1.0, True),
        ("(0, 1]", 0.0, False),
        ("[0, 1)", 1.0, False),
        ("(0, 1)", 0.5, True),
        ("[0, 1]", math.nan, False),
        ("[0, 1]", -0.1, False),
        ("[0, 1]", None, True),
    ],
)
def test_probabilities_are_checked_against_their_interval(
    interval: str, value: float | None, ok: bool
) -> None:
    problems = probability_problems("threshold", value, interval)
    assert problems == ([] if ok else [f"--threshold must be a probability in {interval} (got {value:g})"])


def test_the_help_appends_choices_and_the_default() -> None:
    mode = next(s for s in option_specs(Sample) if s.name == "mode")
    assert mode.help == "Which way: a, b (default: a)."
    assert help_text("Which way", mode.metadata, "b") == "Which way: a, b (default: b)."
    assert help_text("A flag", {}, False) == "A flag."  # an off flag shows no default
    assert help_text("A folder", {"default_text": "the cache"}, None) == "A folder (default: the cache)."


def test_a_panel_is_optional_and_unknown_rules_are_refused() -> None:
    assert next(s for s in option_specs(Sample) if s.name == "size").panel is None
    with pytest.raises(AssertionError):
        option(1, "x", "Nowhere")
    with pytest.raises(AssertionError):
        option(1, "x", at_leest=1)
    with pytest.raises(AssertionError):
        option(0.5, "x", probability="[0, 2]")


def test_a_reused_field_keeps_the_declaration_and_takes_the_changes() -> None:
    @dataclass(frozen=True)
    class Flat:
        size: int = reuse(Sample, "size", panel="Run")
        mode: str = reuse(Sample, "mode", default="b")

    fields = {f.name: f for f in dataclasses.fields(Flat)}
    assert fields["size"].metadata["help"] == "How many" and fields["size"].metadata["panel"] == "Run"
    assert fields["size"].metadata["at_least"] == 1 and Flat().size == 4
    assert Flat().mode == "b" and fields["mode"].metadata["choices"] == ("a", "b")
    problems = field_problems(Flat(size=0, mode="z"))
    assert problems == ["--size must be >= 1 (got 0)", "--mode 'z': use one of a, b"]
