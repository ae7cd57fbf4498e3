"""run.json: its one schema, checked on every load, one line naming every wrong key."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from gptclf.errors import BadInputError
from gptclf.rundir import load_run, read_run_info, save_run
from tests.conftest import REPO
from tests.finetune_helpers import tiny_classifier
from tests.rundir.test_files import fake_tokenizer, info_for, saved_run


def test_incomplete_or_foreign_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        read_run_info(tmp_path / "nope")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"missing model\.safetensors, encoder\.json, vocab\.bpe"):
        read_run_info(tmp_path)
    for name in ("model.safetensors", "encoder.json", "vocab.bpe"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(BadInputError, match=r"format is missing .*: this is not a gptclf run\.json"):
        read_run_info(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format": "gptclf-run", "format_version": 99}))
    with pytest.raises(BadInputError, match="newer than this gptclf"):
        read_run_info(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_run_info(tmp_path)


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"  # a stable test id


DELETE = _Delete()


def edited(info: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``info`` with the dotted ``key`` set to ``value`` (or removed: DELETE)."""
    info = copy.deepcopy(info)
    *parents, last = key.split(".")
    target = info
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return info


#: (key, bad value, the key the message must name)
BAD_RUN_JSON = [
    ("max_length", "abc", "max_length must be an integer from 1 to model.config.n_positions (64)"),
    ("max_length", 0, "max_length must be"),
    ("max_length", -3, "max_length must be"),
    ("max_length", 100000, "max_length must be an integer from 1 to model.config.n_positions (64)"),
    ("max_length", 16.5, "max_length must be"),
    ("max_length", DELETE, "max_length is missing"),
    ("model.config.n_layer", "2", "model.config.n_layer must be an integer >= 1"),
    ("model.config.n_layer", True, "model.config.n_layer must be"),
    ("model.config.n_embd", 0, "model.config.n_embd must be"),
    ("model.config.dropout", 1.5, "model.config.dropout must be"),
    ("model.config.n_head", 3, "n_embd (32) must be divisible by n_head (3)"),
    ("model.config.n_lay", 2, "model.config must be an object of GPT-2 sizes"),
    ("model", [1, 2], "model must be an object"),
    ("model.config", DELETE, "model.config is missing"),
    ("model.config", "gpt2", "model.config must be"),
    ("format_version", "x", "format_version must be an integer from 1 to 1"),
    ("format", "other-tool", "format must be 'gptclf-run'"),
    ("data", "x", "data must be an object"),
    ("data.dir", 3, "data.dir must be a string or null"),
    ("classes", "a,b", "classes must be a list of at least 2 distinct non-empty strings"),
    ("classes", ["a", "a"], "classes must be"),
    ("classes", ["a", ""], "classes must be"),
    ("classes", ["a", 3], "classes must be"),
    ("classes", ["a"], "classes must be"),
    ("pooling", "max", "pooling must be one of last-token, last-position, mean"),
    ("pad_id", 0, "pad_id must be 50256"),
    ("pad_id", "50256", "pad_id must be 50256"),
    ("train.pad_length", "16", "train.pad_length must be null or an integer from max_length (16)"),
    ("train.pad_length", 8, "train.pad_length must be"),
    ("train", [], "train must be an object"),
    ("weights_sha256", "abc", "weights_sha256 must be 64"),
    ("", [1, 2, 3], "the file must hold a JSON object"),
    ("multi_label", "yes", "multi_label must be true or false"),
    (
        "thresholds",
        {"a": {"threshold": 0.5}, "b": {"threshold": 0.5}},
        "thresholds must be an object mapping",
    ),
]


def write_bad(run: Path, key: str, value: Any) -> None:
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(value if key == "" else edited(info, key, value)))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_run(tmp_path_factory.mktemp("good"))


@pytest.fixture
def bad_run(good_run: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A copy of a good run with one bad run.json value (the weights hard-linked, not copied)."""
    run = tmp_path / "run"
    run.mkdir()
    for file in good_run.iterdir():
        (run / file.name).hardlink_to(file) if file.name != "run.json" else None
    (run / "run.json").write_text((good_run / "run.json").read_text())
    write_bad(run, *request.param[:2])
    return run


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("bad_run", BAD_RUN_JSON, indirect=True, ids=lambda c: f"{c[0]}={c[1]!r}")
def test_read_run_info_refuses_a_bad_value_naming_the_key(
    bad_run: Path, request: pytest.FixtureRequest
) -> None:
    expected = request.node.callspec.params["bad_run"][2]
    with pytest.raises(BadInputError) as caught:
        read_run_info(bad_run)
    assert expected in one_line(str(caught.value))
    assert "run.json" in str(caught.value) and "train the run again" in str(caught.value)


@pytest.mark.parametrize("verb", ["predict", "evaluate"])
@pytest.mark.parametrize("bad_run", BAD_RUN_JSON, indirect=True, ids=lambda c: f"{c[0]}={c[1]!r}")
def test_cli_refuses_a_bad_run_json_with_one_line(
    bad_run: Path, verb: str, request: pytest.FixtureRequest
) -> None:
    expected = request.node.callspec.params["bad_run"][2]
    args = [verb, str(bad_run), *(["some text"] if verb == "predict" else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exception, result.stderr)
    assert isinstance(result.exception, SystemExit)  # not an escaped ValueError/KeyError/...
    assert result.stdout == "" and expected in one_line(result.stderr)


def test_all_problems_of_a_run_json_are_named_at_once(good_run: Path, tmp_path: Path) -> None:
    info = json.loads((good_run / "run.json").read_text())
    bad = edited(edited(edited(info, "max_length", 0), "pooling", "max"), "classes", ["x", "x"])
    (tmp_path / "run").mkdir()
    for file in good_run.iterdir():
        (tmp_path / "run" / file.name).write_bytes(file.read_bytes())
    (tmp_path / "run" / "run.json").write_text(json.dumps(bad))
    with pytest.raises(BadInputError) as caught:
        read_run_info(tmp_path / "run")
    message = one_line(str(caught.value))
    assert all(k in message for k in ("max_length must", "pooling must", "classes must"))


@pytest.mark.slow
def test_a_real_process_prints_one_line_for_a_bad_run_json(good_run: Path, tmp_path: Path) -> None:
    """Through the installed entry point: no traceback reaches the user."""
    run = tmp_path / "run"
    run.mkdir()
    for file in good_run.iterdir():
        (run / file.name).write_bytes(file.read_bytes())
    write_bad(run, "max_length", "abc")
    code = "from cli.main import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "predict", str(run), "hello"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "max_length must be an integer" in one_line(proc.stderr)


def test_a_run_listing_a_class_twice_is_refused(tmp_path: Path) -> None:
    run = saved_run(tmp_path, classes=("spam", "ham"))
    write_bad(run, "classes", ["spam", "spam"])
    with pytest.raises(BadInputError, match=r"classes must be a list of at least 2 distinct"):
        load_run(run)


def test_save_run_refuses_to_write_an_invalid_run_json(tmp_path: Path) -> None:
    model = tiny_classifier(["a", "b"])
    info = edited(info_for(model), "max_length", 1000)  # more than TINY's 64 positions
    with pytest.raises(ValueError, match="max_length must be"):
        save_run(tmp_path / "run", model, info, fake_tokenizer(tmp_path))
    assert not (tmp_path / "run").exists()


def test_a_multi_label_run_json_loads_and_its_thresholds_are_checked(tmp_path: Path) -> None:
    from tests.finetune_helpers import install_tokenizer

    run = saved_run(tmp_path, tokenizer=install_tokenizer())
    info = json.loads((run / "run.json").read_text())
    good = {"a": {"threshold": 0.3, "chosen": True}, "b": {"threshold": 0.5, "chosen": False}}
    (run / "run.json").write_text(json.dumps({**info, "multi_label": True, "thresholds": good}))
    assert load_run(run).task.name == "multi-label" and read_run_info(run)["thresholds"] == good
    for bad in ({"a": {"threshold": 1.5}, "b": {"threshold": 0.5}}, {"a": {"threshold": 0.5}}):
        (run / "run.json").write_text(json.dumps({**info, "multi_label": True, "thresholds": bad}))
        with pytest.raises(BadInputError, match="thresholds must be"):
            read_run_info(run)
    (run / "run.json").write_text(json.dumps(info))  # absent: a single-label run, as before
    assert load_run(run).task.name == "single-label"
