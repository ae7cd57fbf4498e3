"""Which task a run or a prepared folder is: chosen once, here, from its record.

run.json names it in ``task``; runs from before the seam (and labels.json, whose format is
unchanged) mark multi-label with ``multi_label: true`` and say nothing for single-label.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gptclf.errors import BadInputError
from gptclf.tasks.base import Task
from gptclf.tasks.multi_label import MultiLabel
from gptclf.tasks.single_label import SingleLabel

#: Every task kind, by its run.json ``task`` value.
TASKS: dict[str, Task] = {task.key: task for task in (SingleLabel(), MultiLabel())}


def task_of(record: Mapping[str, Any] | None) -> Task:
    """The task of a run.json or labels.json record (absent keys: single-label, as before the seam).

    Raises:
        BadInputError: A ``task`` this gptclf does not know.
    """
    record = record or {}
    marked = MultiLabel.key if record.get("multi_label") is True else SingleLabel.key
    key = record.get("task", marked)
    if key not in TASKS:
        raise BadInputError(f"unknown task {key!r}: this gptclf knows {', '.join(TASKS)}; upgrade gptclf")
    if "multi_label" in record and key != marked:  # two records of the kind that disagree
        raise BadInputError(
            f"task is {key} but multi_label is {json.dumps(record['multi_label'])}: the two disagree"
        )
    return TASKS[key]


def task_of_problem_type(problem_type: str | None) -> Task:
    """The task of a transformers config's ``problem_type`` (absent or regression: single-label)."""
    for task in TASKS.values():
        if task.problem_type == problem_type:
            return task
    return TASKS[SingleLabel.key]
