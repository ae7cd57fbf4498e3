"""The search space of `gptclf tune`: the default, files of ranges and choices, conditions, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptclf.errors import BadInputError
from gptclf.training.search_space import DEFAULT_SPACE, Param, load_space, sample, without_fixed

REPO = Path(__file__).resolve().parents[2]


class FakeTrial:
    """Takes the low end of every range and the last choice, recording what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, object]] = []

    def suggest_categorical(self, name: str, choices: list[object]) -> object:
        self.asked.append((name, tuple(choices)))
        return choices[-1]

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        self.asked.append((name, (low, high, log)))
        return low

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.asked.append((name, (low, high, log)))
        return low


WITH_LORA = REPO / "configs" / "spaces" / "with-lora.toml"


def test_the_config_files_are_the_default_space_and_it_with_lora() -> None:
    assert load_space(REPO / "configs" / "spaces" / "default.toml") == DEFAULT_SPACE
    with_lora = {p.name: p for p in load_space(WITH_LORA)}
    assert with_lora.keys() == {p.name for p in DEFAULT_SPACE} | {"lora_rank"}
    assert with_lora["trainable"].choices == ("head", "last-block", "last-blocks 2", "lora")
    for path in (REPO / "configs" / "spaces").glob("*.toml"):  # each says how to run it
        assert f"--space configs/spaces/{path.name}" in path.read_text(encoding="utf-8")


def test_the_default_space_searches_what_the_issue_names() -> None:
    names = {p.name for p in DEFAULT_SPACE}
    assert names == {"lr", "epochs", "weight_decay", "trainable", "pooling", "class_weights", "batch_size"}
    lr = next(p for p in DEFAULT_SPACE if p.name == "lr")
    assert lr.log and lr.low == 1e-5 and lr.high == 1e-3
    trainable = next(p for p in DEFAULT_SPACE if p.name == "trainable")
    assert trainable.choices == ("head", "last-block", "last-blocks 2")  # the cuts a cache serves


def test_lora_rank_is_sampled_only_for_lora() -> None:
    space = load_space(WITH_LORA)
    values = sample(space, FakeTrial(), {})  # the last choice of trainable is lora
    assert values["trainable"] == "lora" and values["lora_rank"] == 16
    assert values["epochs"] == 2 and isinstance(values["epochs"], int) and values["lr"] == 1e-5
    assert "lora_rank" not in sample(DEFAULT_SPACE, FakeTrial(), {})
    fixed = without_fixed(space, frozenset({"trainable"}))
    assert "lora_rank" not in sample(fixed, FakeTrial(), {"trainable": "head"})
    assert sample(fixed, FakeTrial(), {"trainable": "lora"})["lora_rank"] == 16


def test_a_space_file_of_ranges_choices_and_conditions(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text(
        "[learning-rate]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n".replace("learning-rate", "lr")
        + '[trainable]\nchoices = ["head", "lora"]\n'
        + '[lora_alpha]\nlow = 8.0\nhigh = 32.0\nwhen = { trainable = "lora" }\n'
        + "[epochs]\nchoices = [1, 3]\n"
    )
    space = load_space(path)
    assert space == (
        Param("lr", 1e-4, 1e-2, log=True),
        Param("trainable", choices=("head", "lora")),
        Param("lora_alpha", 8.0, 32.0, when=("trainable", "lora")),
        Param("epochs", choices=(1, 3)),
    )
    assert "lr log-uniform in [0.0001, 0.01]" in space[0].describe()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[learning_rate]\nlow = 1\nhigh = 2\n", "learning_rate is not a finetune option"),
        ('[out]\nchoices = ["a"]\n', "out cannot be searched"),
        ("[lr]\nlow = 1e-3\nhigh = 1e-5\n", r"\[lr\] is an empty range \(low 0.001 > high 1e-05\)"),
        ("[pooling]\nchoices = []\n", r"\[pooling\] choices must be a non-empty list"),
        # Each bad value once: the first check that refuses it (others said it again in other words)
        (
            '[pooling]\nchoices = ["last-token", "middle"]\n',
            r"\[pooling\] --pooling 'middle': use one of [-a-z, ]+$",
        ),
        ("[lr]\nlow = nan\nhigh = 1e-3\n", r"\[lr\] --lr must be > 0 and <= 1 \(got nan\)$"),
        ('[trainable]\nchoices = ["last-blocks x"]\n', "trainable"),
        ("[weight_decay]\nlow = 0.0\nhigh = 0.1\nlog = true\n", "log = true needs low > 0"),
        ("[lr]\nlow = 1e-5\nhigh = 5.0\n", "lr"),
        ('[epochs]\nlow = "two"\nhigh = 4\n', "epochs must be an integer"),
        ("[epochs]\nlow = 1\n", "needs low and high, or choices"),
        ("[epochs]\nlow = 1\nhigh = 3\nstep = 1\n", "unknown keys step"),
        ("lr = 1e-4\n", "must be a table"),
        (
            '[lora_rank]\nchoices = [4]\nwhen = { trainable = "lora" }\n',
            "when names trainable, which is not searched",
        ),
        (
            '[trainable]\nchoices = ["head"]\n[lora_rank]\nchoices = [4]\nwhen = { trainable = "lora" }\n',
            "not one of",
        ),
        ("", "searches nothing"),
        ("[lr\n", "not valid TOML"),
    ],
)
def test_bad_space_files_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(content)
    with pytest.raises(BadInputError, match=message) as info:
        load_space(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"--space {path}")


def test_a_folder_or_stdin_for_a_space_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=f"--space {tmp_path} is a folder: give the TOML file's path"):
        load_space(tmp_path)
    with pytest.raises(BadInputError, match="standard input is not read for a TOML file"):
        load_space(Path("-"))


def test_every_problem_of_a_file_is_named_at_once(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text("[nope]\nlow = 1\nhigh = 2\n[lr]\nlow = 1e-2\nhigh = 1e-4\n")
    with pytest.raises(BadInputError, match=r"nope is not a finetune option.*empty range"):
        load_space(path)


def test_a_missing_space_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        load_space(tmp_path / "none.toml")
