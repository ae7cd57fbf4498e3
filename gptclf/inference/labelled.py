"""Labelled texts for the verbs that judge a run: a split of its prepared data or a labelled file.

A run records the prepared folder it was trained on (``run.json``: ``data.dir``), so
``evaluate RUN --split test`` finds the test split again; ``data_dir`` overrides it. A labelled file
(CSV, TSV, JSONL) is read with the same loader that ``prepare`` uses; its labels must be classes of
the run, read and encoded by the run's task (:meth:`gptclf.tasks.base.Task.read_labelled_file`).
``evaluate`` and ``calibrate`` share :class:`DataChoice`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gptclf.data.decoding import is_stdin
from gptclf.data.prepared import SPLITS, prepared_fingerprint, read_prepared
from gptclf.data.tables import read_inputs
from gptclf.errors import BadInputError
from gptclf.rundir import LoadedRun
from gptclf.tasks.base import LabelledFile, Task
from gptclf.tasks.kinds import task_of


@dataclass
class LabelledData:
    """Texts with their true class indices, and where they came from.

    Attributes:
        texts: The texts.
        labels: Index of each text's class in the run's classes.
        source: JSON-ready description of the data: ``{"split", "data", "same_as_training"}`` for
            a split (``same_as_training``: the folder's fingerprint is the one run.json recorded;
            None when the run recorded none), ``{"input", "dropped"}`` for a file.
        ids: Each text's id for the error report: a file's ``id`` column (see :func:`file_data`),
            else its 0-based record position; None: the positions in ``texts`` (a split).
    """

    texts: list[str]
    labels: list[int]
    source: dict[str, Any]
    ids: list[Any] | None = None


def _labelled(
    frame: pd.DataFrame,
    task: Task,
    classes: list[str],
    where: str,
    source: dict[str, Any],
    purpose: str = "evaluate",
) -> LabelledData:
    """Texts and targets of a (text, label) frame, encoded by the run's task and checked against
    the run's classes (a class index, or a 0/1 row over the labels)."""
    if frame.empty:
        raise BadInputError(f"{where} has no rows to {purpose}")
    return LabelledData(frame["text"].astype(str).tolist(), task.encode_labels(frame, classes, where), source)


def recorded_data_dir(run: LoadedRun) -> Path:
    """The prepared folder a run was trained on, as recorded in its run.json.

    A relative path is taken from the working directory first, then from the run directory.

    Raises:
        BadInputError: The run records no folder, or it is gone.
    """
    recorded = (run.info.get("data") or {}).get("dir")
    if not recorded:
        raise BadInputError(
            f"{run.path / 'run.json'} records no prepared data folder: pass --data DIR or --input FILE"
        )
    path = Path(recorded)
    for candidate in (path, run.path / path):
        if candidate.is_dir():
            return candidate
    raise BadInputError(
        f"the data folder this run was trained on ({recorded}) is not there any more: "
        "pass --data DIR (a folder written by `gptclf prepare`) or --input FILE"
    )


def split_data(
    run: LoadedRun, split: str = "test", data_dir: Path | None = None, purpose: str = "evaluate"
) -> LabelledData:
    """One split of a prepared folder (``data_dir``, or the one the run was trained on).

    ``purpose`` names what the texts are for in the message about an empty split.

    Raises:
        BadInputError: An unknown split, no folder, or labels that are not classes of the run.
    """
    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    directory = Path(data_dir) if data_dir is not None else recorded_data_dir(run)
    prepared = read_prepared(directory)
    held = task_of(prepared.meta)
    if held.key != run.task.key:
        raise BadInputError(
            f"this run is {run.task.name} and {directory} holds {held.name} data: "
            "pass the data the run was trained on"
        )
    recorded = (run.info.get("data") or {}).get("fingerprint")
    # A test split from a different prepare run may overlap the texts this run was trained on.
    same = None if not recorded else recorded == prepared_fingerprint(directory)
    source = {"split": split, "data": str(directory), "same_as_training": same}
    where = f"the {split} split of {directory}"
    return _labelled(prepared.splits[split], run.task, run.classes, where, source, purpose)


def file_data(
    run: LoadedRun,
    path: Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
    purpose: str = "evaluate",
    read_ids: bool = False,
) -> LabelledData:
    """A labelled CSV, TSV or JSONL file (columns found as ``prepare`` finds them, or named).

    ``purpose`` names what the texts are for in the message about an empty file.

    Rows without a text or a label are dropped by the loader and counted in ``source["dropped"]``.
    Each text's id is its 0-based record position (dropped records counted, as ``predict``
    counts them); with ``read_ids``, a column (JSON key) named ``id`` gives it instead, as
    ``predict`` reads it (the file is read a second time, so only when an error report wants it).

    Raises:
        BadInputError: An unreadable file, missing columns, or labels that are not classes of the run.
    """
    frame, dropped = run.task.read_labelled_file(
        LabelledFile(path, text_column, label_column, fmt, encoding), run.info
    )  # label lists for a multi-label run: an empty one is a text without a label
    source = {"input": str(path), "dropped": dict(dropped)}
    data = _labelled(frame, run.task, run.classes, str(path), source, purpose)
    positions = (frame["row"] - 1).tolist()  # row is the 1-based record number
    data.ids = _record_ids(path, text_column, fmt, encoding, positions) if read_ids else positions
    return data


def _record_ids(
    path: Path, text_column: str | None, fmt: str | None, encoding: str, positions: list[int]
) -> list[Any]:
    """The ``id`` column's value of the records at ``positions``, read as ``predict`` reads ids.

    Without an ``id`` column (or from stdin, which cannot be read twice) the positions are the ids.
    """
    if is_stdin(path):
        return positions
    every = [i for i, _ in read_inputs(path, text_column, fmt=fmt, encoding=encoding)]
    return [every[p] for p in positions]


@dataclass(frozen=True)
class DataChoice:
    """Which labelled texts a verb reads: a file (``--input``, with its columns, format and
    encoding) or a split of a prepared folder (``--split``, ``--data``). Checked before the run is
    loaded (:meth:`check`), then read (:meth:`load`): ``evaluate`` and ``calibrate`` share it."""

    input_path: Path | None = None
    split: str | None = None
    data: Path | None = None
    text_column: str | None = None
    label_column: str | None = None
    fmt: str | None = None
    encoding: str = "utf-8"

    def check(self) -> None:
        """Refuse a file together with a split, and file-only flags without a file.

        Raises:
            BadInputError: Naming the flags.
        """
        if self.input_path is not None and (self.split is not None or self.data is not None):
            raise BadInputError("--input FILE replaces --split/--data: give one or the other")
        file_only = {"--text-column": self.text_column, "--label-column": self.label_column,
                     "--input-format": self.fmt}  # fmt: skip
        stray = [flag for flag, value in file_only.items() if value is not None and self.input_path is None]
        if stray:
            raise BadInputError(f"{', '.join(stray)} only apply to --input FILE")

    def load(self, run: LoadedRun, default_split: str, purpose: str, read_ids: bool = False) -> LabelledData:
        """The labelled texts: the file, or the split (``default_split`` when none was named)."""
        if self.input_path is None:
            return split_data(run, self.split or default_split, self.data, purpose=purpose)
        return file_data(
            run,
            self.input_path,
            text_column=self.text_column,
            label_column=self.label_column,
            fmt=self.fmt,
            encoding=self.encoding,
            purpose=purpose,
            read_ids=read_ids,
        )
