"""make_plan: every rule is checked by the component that owns it, and all problems come at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptclf.errors import BadInputError
from gptclf.model.classifier import Classifier, parse_scope
from gptclf.model.config import resolve_model
from gptclf.model.weights import load_weights
from gptclf.training.plan import make_plan
from gptclf.training.settings import build_settings
from tests.finetune_helpers import TINY_SPEC


def _message(func: object, *args: object) -> str:
    with pytest.raises(BadInputError) as info:
        func(*args)  # type: ignore[operator]
    return str(info.value)


def test_the_plan_reports_each_owners_own_message(tmp_path: Path) -> None:
    """The plan says what the component that would fail later says, word for word, all at once."""
    _, tiny = resolve_model(TINY_SPEC)
    gpt = load_weights("random", tiny, "custom", seed=1)
    missing = str(tmp_path / "none.safetensors")
    owners = [
        _message(load_weights, "pretrained", tiny, "custom"),  # no pretrained weights for a custom size
        _message(parse_scope("last-blocks 3").trainable_blocks, tiny.n_layer),  # deeper than the model
        _message(Classifier, gpt, ["a", "b"], "max"),  # an unknown pooling
    ]
    plan = _message(
        make_plan, build_settings({"model": TINY_SPEC, "trainable": "last-blocks 3", "pooling": "max"})
    )
    assert all(plan.count(message) == 1 for message in owners), (plan, owners)
    missing_file = _message(load_weights, missing, tiny, "custom")
    assert missing_file in _message(make_plan, build_settings({"model": TINY_SPEC, "weights": missing}))
    assert missing_file in _message(make_plan, build_settings({"model": "gpt2-tiny", "weights": missing}))


def test_a_fitting_plan_keeps_the_nested_training_config() -> None:
    s = build_settings({"model": TINY_SPEC, "weights": "random", "device": "cpu", "epochs": 2})
    plan = make_plan(s)
    assert plan.train is s.train and plan.train.epochs == 2 and plan.max_length == 64


def test_a_local_folder_plans_with_its_own_shape(tmp_path: Path) -> None:
    """A resumed run re-resolves its saved --model DIR the same way: the folder's sizes."""
    from tests.hf_helpers import TINY_HF, hf_folder

    hf_folder(tmp_path / "base", "GPT2Model")
    plan = make_plan(build_settings({"model": str(tmp_path / "base"), "device": "cpu"}))
    assert plan.model_name == str((tmp_path / "base").resolve())
    assert (plan.config.n_layer, plan.config.n_positions, plan.config.layer_norm_epsilon) == (
        TINY_HF["n_layer"],
        TINY_HF["n_positions"],
        TINY_HF["layer_norm_epsilon"],
    )
    assert plan.max_length == TINY_HF["n_positions"]  # the folder's context
    (tmp_path / "base" / "model.safetensors").unlink()
    random_plan = make_plan(
        build_settings({"model": str(tmp_path / "base"), "weights": "random", "device": "cpu"})
    )
    assert random_plan.config == plan.config  # --weights random needs the config only
    assert "has no model.safetensors" in _message(
        make_plan, build_settings({"model": str(tmp_path / "base")})
    )


def test_the_default_cache_memory_is_a_small_ram_share_with_a_fallback_and_a_given_one_is_exact() -> None:
    from gptclf.training.settings import DEFAULT_CACHE_MEMORY, ram_share

    plan = make_plan(build_settings({"model": TINY_SPEC, "weights": "random", "device": "cpu"}))
    assert plan.cache_memory == min(DEFAULT_CACHE_MEMORY, ram_share()) and plan.cache_fallback == ram_share()
    given = make_plan(
        build_settings({"model": TINY_SPEC, "weights": "random", "device": "cpu", "cache_memory": "3GB"})
    )
    assert given.cache_memory == 3 << 30 and given.cache_fallback == 0  # no other RAM than what was asked


@pytest.mark.parametrize("size", ["1" + "0" * 400, "1" + "0" * 400 + "B", "\uff11\uff12", "1e400"])
def test_a_cache_memory_no_float_holds_or_in_other_digits_is_one_line(size: str) -> None:
    from gptclf.training.settings import parse_size

    with pytest.raises(BadInputError, match="is not a size"):
        parse_size(size)


def test_a_data_file_and_a_resume_without_out_are_said_as_such(tmp_path: Path) -> None:
    from gptclf.training.plan import out_dir

    table = tmp_path / "table.csv"
    table.write_text("text,label\n")
    with pytest.raises(BadInputError, match=r"--data .*table.csv: is a file, not a folder \(give a folder"):
        make_plan(build_settings({"data": str(table)}))
    with pytest.raises(BadInputError, match=r"--data .*absent: no such folder"):
        make_plan(build_settings({"data": str(tmp_path / "absent")}))
    # A new runs/<timestamp> names no run to continue (it said "nothing to resume for runs/2026...")
    with pytest.raises(BadInputError, match=r"^--resume needs --out RUN, the run to continue"):
        out_dir(build_settings({"resume": True}))
    assert out_dir(build_settings({"resume": True, "out": str(tmp_path / "run")})) == tmp_path / "run"


def test_a_cache_memory_over_the_machines_ram_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptclf.training import settings as settings_module

    monkeypatch.setattr(settings_module, "total_memory", lambda: 24 << 30)
    (line,) = build_settings({"cache_memory": "10TB"}).warnings()
    assert line.startswith("gptclf: warning: --cache-memory 10TB is more than this machine's RAM (24.0 GB)")
    assert build_settings({"cache_memory": "16GB"}).warnings() == []
    assert build_settings({"cache_memory": "lots"}).warnings() == []  # the plan says what is wrong
    assert build_settings({}).warnings() == []
    monkeypatch.setattr(settings_module, "total_memory", lambda: 0)  # the OS does not say
    assert build_settings({"cache_memory": "10TB"}).warnings() == []
