from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gptclf.distributed import DEFAULT_TIMEOUT, LaunchSettings
from gptclf.errors import BadInputError
from gptclf.model.classifier import parse_scope
from gptclf.model.config import resolve_model
from gptclf.options import dash, option_specs, show_value
from gptclf.training.settings import (
    FinetuneSettings,
    TrainConfig,
    build_settings,
    load_config_file,
    parse_size,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.toml"))


def test_there_are_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"sms-spam.toml", "general-csv.toml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_is_valid(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and "gptclf finetune --config configs/" in text  # says how to run it
    settings = build_settings({}, path)
    assert settings.given == frozenset(load_config_file(path))
    assert settings.train.problems() == []
    resolve_model(settings.model)
    parse_scope(settings.trainable, settings.lora_rank, settings.lora_alpha)


def test_the_sms_config_is_the_book_recipe() -> None:
    s = build_settings({}, CONFIG_DIR / "sms-spam.toml")
    assert (s.data, s.classes, s.model, s.trainable, s.seed) == (
        None,
        ["ham", "spam"],
        "gpt2-small",
        "last-block",
        123,
    )
    assert (s.train.epochs, s.train.batch_size, s.train.lr, s.train.weight_decay) == (5, 8, 5e-5, 0.1)


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('epochs = 2\nbatch_size = 4\nlr = 1e-4\nclasses = "a,b"\ncache = false\n')
    s = build_settings({"epochs": 7, "lr": None, "cache": None}, path)  # None: not given
    assert (s.train.epochs, s.train.batch_size, s.train.lr, s.classes, s.cache) == (
        7,
        4,
        1e-4,
        ["a", "b"],
        False,
    )
    assert s.train.weight_decay == FinetuneSettings().train.weight_decay  # neither: the default
    assert build_settings({"classes": "x, y"}).classes == ["x", "y"]


def test_unknown_keys_are_all_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("epochs = 2\nlearning-rate = 0.1\nbatchsize = 3\n")
    with pytest.raises(BadInputError, match="unknown keys batchsize, learning-rate"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('epochs = "five"', "epochs must be an integer"),
        ("lr = true", "lr must be a number"),
        ('cache = "no"', "cache must be true or false"),
        ("classes = [1, 2]", "classes must be a list of names"),
        ("epochs = 1\nepochs = 2", "not valid TOML"),
        ("batch-size = 2\nbatch_size = 3", "given twice"),
    ],
)
def test_bad_values(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(BadInputError, match=message):
        load_config_file(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        load_config_file(tmp_path / "none.toml")


def test_training_problems_are_collected() -> None:
    s = build_settings({"epochs": 0, "schedule": "linear", "monitor": "acc", "warmup": -1.0})
    problems = s.train.problems()
    assert len(problems) == 4 and any("--schedule 'linear'" in p for p in problems)


def test_book_padding_turns_bucketing_off() -> None:
    assert build_settings({}).train.bucket
    assert not build_settings({"pad_to": "longest-train"}).train.bucket


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GB", 2 << 30),
        ("512MB", 512 << 20),
        ("1.5G", 3 << 29),
        ("64MiB", 64 << 20),
        ("0", 0),
        ("1000", 1000),
        ("512B", 512),
        ("100b", 100),
        ("2 KiB", 2048),
        ("3kb", 3072),
        ("1t", 1 << 40),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "3ib", "2i", "1.5.3G", "GB", "", "-1G", "4 PB", "1e9"])
def test_bad_size(text: str) -> None:
    with pytest.raises(BadInputError, match=r"is not a size: write e\.g\. 2GB"):
        parse_size(text)


def test_checkpoint_every_is_a_checked_training_option(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("checkpoint-every = 50\n")
    assert build_settings({}, path).train.checkpoint_every == 50
    assert build_settings({}).train.checkpoint_every is None
    problems = build_settings({"checkpoint_every": 0}).train.problems()
    assert problems == ["--checkpoint-every must be >= 1 (got 0)"]
    path.write_text('checkpoint_every = "often"\n')
    with pytest.raises(BadInputError, match="checkpoint-every must be an integer"):
        load_config_file(path)


@pytest.mark.parametrize(("total", "warmup"), [(10, 2), (7, 0), (30, 0.1)])
def test_cosine_schedule_over_the_steps_that_run(total: int, warmup: float) -> None:
    cfg = TrainConfig(lr=1.0, warmup=warmup, schedule="cosine")
    w = cfg.warmup_steps(total)
    lrs = [cfg.learning_rate(s, total) for s in range(total)]  # steps 0 .. total - 1 run
    assert lrs[:w] == pytest.approx([(s + 1) / w for s in range(w)])  # warmup from lr / warmup
    assert all(lr > 0 for lr in lrs)  # no step is wasted at lr 0
    # After warmup: PyTorch's CosineAnnealingLR with T_max = total - warmup, step for step.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - w)
    reference = []
    for _ in range(w, total):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[w:] == pytest.approx(reference)
    assert lrs[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * (total - w - 1) / (total - w))))


#: ``FinetuneSettings.to_dict()`` as checkpoints written before the training options were nested
#: under ``train`` hold it (flat), from ``build_settings({"epochs": 3, "data": "/d",
#: "checkpoint_every": 7})`` of that version.
FLAT_SETTINGS = {
    "data": "/d", "classes": None, "model": "gpt2-small", "weights": "pretrained", "trainable": "last-block",
    "lora_rank": 16, "lora_alpha": 16.0, "pooling": "last-token", "epochs": 3, "batch_size": 8,
    "grad_accum": 1, "lr": 5e-05, "weight_decay": 0.1, "clip_grad": None, "schedule": "constant",
    "warmup": 0.0, "eval_every": None, "checkpoint_every": 7, "early_stop": None, "monitor": "val_loss",
    "class_weights": "none", "device": "auto", "precision": "auto", "max_length": None, "pad_to": "batch",
    "cache": True, "cache_memory": None, "seed": 123, "out": None, "force": False, "resume": False,
    "home": None, "mirror": None,
}  # fmt: skip


def test_training_options_are_nested_not_restated() -> None:
    """FinetuneSettings holds a TrainConfig instead of copies of its fields."""
    outer = {f.name for f in dataclasses.fields(FinetuneSettings)}
    inner = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not outer & inner
    s = build_settings({"epochs": 2, "pad_to": "longest-train", "seed": 5})
    assert isinstance(s.train, TrainConfig) and (s.train.epochs, s.train.pad_to, s.seed) == (
        2,
        "longest-train",
        5,
    )
    assert (s.option("epochs"), s.option("seed")) == (2, 5) and s.given == {"epochs", "pad_to", "seed"}


def test_settings_round_trip_and_old_flat_checkpoints() -> None:
    s = build_settings({"epochs": 3, "data": "/d", "checkpoint_every": 7})
    assert FinetuneSettings.from_dict(s.to_dict()) == s
    assert s.to_dict()["train"] == s.train.to_dict()  # run.json's train record is the nested part
    assert FinetuneSettings.from_dict(FLAT_SETTINGS) == s


def _all_options_toml() -> tuple[str, dict[str, object]]:
    """A TOML file setting every option to a value other than its default, and those values."""
    values: dict[str, object] = {}
    for spec in option_specs(FinetuneSettings):
        if spec.metadata.get("choices"):
            values[spec.name] = next(c for c in spec.metadata["choices"] if c != spec.default)
        elif spec.kind is bool:
            values[spec.name] = not spec.default
        elif spec.kind is int:
            values[spec.name] = 3 if spec.default != 3 else 4
        elif spec.kind is float:
            values[spec.name] = 0.25
        elif spec.kind is list:
            values[spec.name] = ["x", "y"]
        else:
            values[spec.name] = "some-text"
    lines = [f"{dash(name)} = {json.dumps(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n", values


def test_every_option_is_a_toml_key_of_its_declared_type(tmp_path: Path) -> None:
    """Types come from the annotations: every option set in TOML lands where its field is."""
    text, values = _all_options_toml()
    path = tmp_path / "all.toml"
    path.write_text(text)
    s = build_settings({}, path)
    assert {name: s.option(name) for name in values} == values and s.given == set(values)
    wrong = {name: "[1]" if isinstance(v, str | list) else '"x"' for name, v in values.items()}
    path.write_text("".join(f"{dash(name)} = {value}\n" for name, value in wrong.items()))
    with pytest.raises(BadInputError) as info:
        load_config_file(path)
    assert str(info.value).count("must be") == len(values)  # every wrong type named, in one message


def test_help_shows_the_field_defaults() -> None:
    """The default in each option's help is the field default, never a copy written by hand."""
    specs = option_specs(FinetuneSettings) + option_specs(LaunchSettings)
    assert {s.name for s in specs} >= {"epochs", "lr", "batch_size", "seed", "dist_timeout", "pooling"}
    shown = {s.name: s.help for s in specs}
    assert "(default: 5)" in shown["epochs"] and "(default: 5e-5)" in shown["lr"]
    assert "(default: 300)" in shown["dist_timeout"] and "(default: 123)" in shown["seed"]
    for spec in specs:
        if spec.default not in (None, False) and not spec.metadata.get("default_text"):
            assert f"(default: {show_value(spec.default)})" in spec.help, spec.name
    assert LaunchSettings().dist_timeout == DEFAULT_TIMEOUT


def test_a_toml_integer_is_a_cache_size(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("cache-memory = 0\n")
    assert build_settings({}, path).cache_memory == "0"


def test_a_callers_values_are_checked_like_a_files() -> None:
    """build_settings reads a library caller's values through the same typed path as TOML."""
    with pytest.raises(
        BadInputError, match=r"epochs must be an integer \(got '3'\); cache must be true or false"
    ):
        build_settings({"epochs": "3", "cache": "yes"})
    assert build_settings({"lr": 1}).train.lr == 1.0  # an integer is a number
