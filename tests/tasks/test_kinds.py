"""A run's task is chosen once from its record; records that disagree, or lack its keys, are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gptclf.errors import BadInputError
from gptclf.rundir import load_run
from gptclf.tasks.kinds import task_of
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"


def test_the_task_field_or_the_old_mark_chooses_the_kind() -> None:
    assert task_of({}).name == "single-label" and task_of(None).name == "single-label"
    assert task_of({"multi_label": True}).name == "multi-label"
    assert task_of({"task": "multi_label", "multi_label": True}).name == "multi-label"
    with pytest.raises(BadInputError, match="unknown task 'bogus'"):
        task_of({"task": "bogus"})
    with pytest.raises(BadInputError, match="task is single_label but multi_label is true"):
        task_of({"task": "single_label", "multi_label": True})


@pytest.mark.parametrize(
    ("fixture", "change", "drop", "message"),
    [
        ("run-ml", {"task": "single_label"}, None, "task is single_label but multi_label is true"),
        ("run-v1", {"task": "multi_label"}, None, "thresholds is missing"),
        ("run-ml", {}, "thresholds", "thresholds is missing"),
    ],
)
def test_a_run_json_whose_task_records_disagree_is_one_line(
    tmp_path: Path, fixture: str, change: dict[str, str], drop: str | None, message: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / fixture, run)
    info = {**json.loads((run / "run.json").read_text()), **change}
    info.pop(drop or "", None)
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(BadInputError, match=message):
        load_run(run)
