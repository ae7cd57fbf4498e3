"""Commands built from option groups (cli.options): the options, their help, checks and aliases."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from cli.common import GptclfCommand, GptclfGroup, handle_errors
from cli.main import app as gptclf_app
from cli.options import Use, option_groups
from gptclf.option_groups import DecisionOptions, DeviceOptions, FetchOptions, InputOptions, OutputOptions
from gptclf.options import option_specs, show_value

#: What the toy verb was called with.
SEEN: dict[str, Any] = {}


@handle_errors
@option_groups
def verb(
    name: str = typer.Argument(..., help="A name."),
    source: Annotated[InputOptions, Use(help={"input_path": "A file to read"})] = InputOptions(),
    device: DeviceOptions = DeviceOptions(batch_size=8),
    fetch: FetchOptions = FetchOptions(),
    decide: Annotated[DecisionOptions, Use(only=("threshold",), required=("threshold",))] = DecisionOptions(),
    output: OutputOptions = OutputOptions(),
) -> None:
    """A toy verb that keeps what it is given."""
    SEEN.update(name=name, source=source, device=device, fetch=fetch, decide=decide, output=output)


def make_app() -> typer.Typer:
    app = typer.Typer(cls=GptclfGroup, add_completion=False)
    app.command("verb", cls=GptclfCommand)(verb)

    @app.command("other", cls=GptclfCommand)
    def other() -> None:  # a second command, so that `verb` stays a subcommand
        """Nothing."""

    return app


def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> tuple[int, str]:
    SEEN.clear()
    result = CliRunner().invoke(make_app(), ["verb", *args], env=env)
    return result.exit_code, result.stderr


def options_of(app: typer.Typer, name: str) -> dict[str, Any]:
    """The click options of the command ``name``, by parameter name."""
    command = get_command(app).commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_the_function_gets_one_instance_of_each_group() -> None:
    unset = {"GPTCLF_HOME": None, "GPTCLF_MIRROR": None}  # the tests' own home is in the environment
    code, err = invoke("x", "--threshold", "0.3", "--device", "cpu", "--batch-size", "4", "--json", env=unset)
    assert code == 0, err
    assert SEEN["name"] == "x" and SEEN["device"] == DeviceOptions(device="cpu", batch_size=4)
    assert SEEN["decide"] == DecisionOptions(threshold=0.3) and SEEN["output"] == OutputOptions(json_out=True)
    assert SEEN["source"] == InputOptions() and SEEN["fetch"] == FetchOptions()


def test_the_verbs_defaults_aliases_and_env_vars(tmp_path: Path) -> None:
    env = {"GPTCLF_HOME": str(tmp_path), "GPTCLF_MIRROR": "http://127.0.0.1:9"}
    code, err = invoke("x", "-i", "in.csv", "--threshold", "1", env=env)
    assert code == 0, err
    assert SEEN["source"].input_path == Path("in.csv")  # -i is --input
    assert SEEN["device"].batch_size == 8  # this verb's default, not the group's 32
    assert SEEN["fetch"] == FetchOptions(home=tmp_path, mirror="http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
        (["--precision", "fp8"], "--precision 'fp8': use one of auto, fp32, tf32, bf16, fp16"),
        (
            ["--retries", "-1", "--batch-size", "0"],  # every group's problems, in one line
            "--batch-size must be >= 1 (got 0); --retries must be >= 0 (got -1)",
        ),
        (["--threshold", "2"], "--threshold must be a probability in [0, 1] (got 2)"),
    ],
)
def test_a_bad_value_is_one_line_exit_2_before_the_verb_runs(args: list[str], message: str) -> None:
    code, err = invoke("x", "--threshold", "0.5", *args)
    assert code == 2 and SEEN == {}
    assert err.strip().splitlines() == [f"gptclf: error: {message}"]


def test_only_and_required_shape_what_the_command_takes() -> None:
    params = options_of(make_app(), "verb")
    assert "threshold" in params and params["threshold"].required
    assert not {"positive", "min_confidence", "no_calibration"} & set(params)
    code, err = invoke("x")
    assert code == 2 and "--threshold" in err


def test_each_groups_help_and_default_reach_the_help() -> None:
    params = options_of(make_app(), "verb")
    assert params["input_path"].opts == ["--input", "-i"] and params["json_out"].opts == ["--json"]
    assert params["input_path"].help.startswith("A file to read")  # this verb's wording
    assert "(default: 8)" in params["batch_size"].help  # this verb's default is the one shown
    for group in (DeviceOptions, FetchOptions, InputOptions, OutputOptions):
        for spec in option_specs(group):
            param = params[spec.name]
            base = spec.metadata["help"] if spec.name != "input_path" else "A file to read"
            assert param.help.startswith(base), spec.name
            assert param.envvar == spec.metadata.get("envvar")
            shown = spec.metadata.get("default_text") or show_value(param.default)
            assert shown is None or f"(default: {shown})" in param.help, spec.name
    rendered = CliRunner().invoke(make_app(), ["verb", "--help"], env={"COLUMNS": "300"}).stdout
    for words in ("--batch-size", "(default: 8)", "GPTCLF_HOME", "Text encoding of --input"):
        assert words in rendered


def test_the_real_verbs_take_their_groups() -> None:
    """download, calibrate, export and import are built from the groups: their options are the
    groups' (with the verb's wording), and a bad value is one line before anything runs."""
    calibrate = options_of(gptclf_app, "calibrate")
    assert {s.name for s in option_specs(DeviceOptions)} <= set(calibrate)
    assert calibrate["input_path"].opts == ["--input", "-i"] and "to fit on" in calibrate["input_path"].help
    download = options_of(gptclf_app, "download")
    assert download["home"].envvar == "GPTCLF_HOME" and download["retries"].default == 3
    assert "instead of paths" in download["json_out"].help
    for name in ("export", "import"):
        assert options_of(gptclf_app, name)["json_out"].opts == ["--json"]
    result = CliRunner().invoke(gptclf_app, ["download", "--retries", "-1", "--json"])
    assert result.exit_code == 2 and result.stderr.strip() == "gptclf: error: --retries must be >= 0 (got -1)"
    assert result.stdout == ""


def test_calibrate_refuses_a_bad_batch_size_before_reading_the_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(gptclf_app, ["calibrate", str(tmp_path / "nowhere"), "--batch-size", "0"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "gptclf: error: --batch-size must be >= 1 (got 0)"


def test_calibrate_reads_a_file_given_with_i(tmp_path: Path) -> None:
    from tests.cli.test_calibrate import CLASSES, over_confident_run
    from tests.finetune_helpers import prepared_folder

    data = prepared_folder(tmp_path, CLASSES, n=120)
    run = over_confident_run(tmp_path, data)
    args = ["calibrate", str(run), "-i", str(data / "test.csv"), "--json", "--device", "cpu"]
    result = CliRunner().invoke(gptclf_app, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["calibration"]["data"]["input"] == str(data / "test.csv")
