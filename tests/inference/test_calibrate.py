"""The calibrate verb's core (gptclf.inference.calibrate): it returns what it wrote, prints nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gptclf.errors import BadInputError, GateError
from gptclf.inference.calibrate import CalibrationResult, calibrate
from gptclf.inference.labelled import DataChoice
from gptclf.option_groups import DeviceOptions, TargetOptions
from gptclf.progress import Progress
from gptclf.rundir import load_run
from tests.cli.test_calibrate import CLASSES, over_confident_run
from tests.conftest import REPO
from tests.finetune_helpers import prepared_folder

CPU = DeviceOptions(device="cpu", precision="fp32")


class Recorder(Progress):
    """Keeps the messages a verb sends to its progress."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return over_confident_run(tmp_path, prepared_folder(tmp_path, CLASSES, n=120))


def test_it_returns_what_it_wrote_and_prints_nothing(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = json.loads((run / "run.json").read_text())
    progress = Recorder()
    result = calibrate(run, device=CPU, progress=progress)
    assert capsys.readouterr() == ("", "")  # neither stdout nor stderr: the CLI renders
    assert isinstance(result, CalibrationResult) and result.run == load_run(run).path
    assert result.calibration.temperature > 1.0 and result.decision is None and result.abstain is None
    assert result.changes == {"calibration": result.calibration.to_dict()}
    assert json.loads((run / "run.json").read_text()) == {**before, **result.changes}
    assert result.calibration.data["split"] == "validation" and result.texts == result.calibration.data["n"]
    assert progress.messages[0] == f"gptclf: fitting the temperature on {result.texts} texts on cpu"


def test_a_target_chooses_a_decision_stored_in_the_same_write(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = calibrate(run, device=CPU, target=TargetOptions(target="f1", positive="spam"))
    assert capsys.readouterr() == ("", "")
    assert result.decision is not None and result.decision["positive"] == "spam"
    assert set(result.changes) == {"calibration", "decision"}
    stored = json.loads((run / "run.json").read_text())
    assert stored["decision"] == result.decision and stored["calibration"] == result.changes["calibration"]


def test_a_labelled_file_is_read_through_the_data_choice(run: Path, tmp_path: Path) -> None:
    source = tmp_path / "held_out.csv"
    shutil.copy(tmp_path / "prepared" / "test.csv", source)
    result = calibrate(run, DataChoice(input_path=source), device=CPU)
    assert result.calibration.data["input"] == str(source)


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"device": DeviceOptions(device="cpu", batch_size=0)}, BadInputError, "--batch-size must be >= 1"),
        ({"target": TargetOptions(target="recall=0.9")}, BadInputError, "--positive"),
        ({"data": DataChoice(split="dev")}, BadInputError, "unknown split 'dev'"),
        ({"target": TargetOptions(target="precision=1.0", positive="ham")}, GateError, "cannot be reached"),
    ],
    ids=["bad batch size", "threshold without positive", "unknown split", "target out of reach"],
)
def test_a_refusal_leaves_run_json_as_it_was(
    run: Path, kwargs: dict[str, object], error: type[Exception], phrase: str
) -> None:
    before = (run / "run.json").read_bytes()
    options = {"device": CPU, **kwargs}
    with pytest.raises(error, match=phrase):
        calibrate(run, **options)  # type: ignore[arg-type]
    assert (run / "run.json").read_bytes() == before


def test_a_multi_label_run_is_refused_before_the_model_runs(tmp_path: Path) -> None:
    run = shutil.copytree(REPO / "tests" / "fixtures" / "run-ml", tmp_path / "run")
    before = (run / "run.json").read_bytes()
    progress = Recorder()
    with pytest.raises(BadInputError, match="is a multi-label run: calibrate fits softmax runs"):
        calibrate(run, device=CPU, progress=progress)
    assert progress.messages == [] and (run / "run.json").read_bytes() == before
