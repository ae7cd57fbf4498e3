"""``evaluate``'s report files: ``--errors FILE`` (every misclassified text,
:mod:`gptclf.inference.error_report`) and ``--plots DIR`` (:mod:`gptclf.inference.plots`).

Their places are checked before the model runs (:meth:`Reports.check`), by writing: permission
bits say nothing of a read-only mount or a full disk. A failure to write is one line that names
the flag and the place (exit 2, or 1 for a full disk).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptclf.errors import BadInputError, write_error
from gptclf.fileio import check_writable
from gptclf.inference.error_report import ErrorRow, error_format, error_rows, write_errors
from gptclf.inference.labelled import LabelledData
from gptclf.inference.plots import plot_inputs, write_plots
from gptclf.rundir import LoadedRun
from gptclf.tasks.base import Decider


@dataclass(frozen=True)
class Reports:
    """The report files asked for.

    Attributes:
        errors: ``--errors FILE`` (.jsonl, .csv or .tsv), or None.
        show_errors: ``--show-errors N``: how many of the most confident errors to show.
        plots: ``--plots DIR``, or None.
    """

    errors: Path | None = None
    show_errors: int = 0
    plots: Path | None = None

    @property
    def wants_errors(self) -> bool:
        """Whether the misclassified texts are needed (written or shown)."""
        return self.errors is not None or self.show_errors > 0

    def asked(self) -> list[str]:
        """The flags given, for the note of a task that has no such reports."""
        flags = {"--errors": self.errors is not None, "--show-errors": self.show_errors > 0}
        return [flag for flag, on in {**flags, "--plots": self.plots is not None}.items() if on]

    def check(self) -> None:
        """Refuse report destinations that cannot be written, before the model runs.

        Raises:
            BadInputError: A bad --errors name or folder, a negative --show-errors, a --plots file,
                a place that cannot be written.
            DiskFullError: A full disk.
        """
        if self.show_errors < 0:
            raise BadInputError(f"--show-errors must be >= 0 (got {self.show_errors})")
        path, plots = self.errors, self.plots
        if path is not None:
            error_format(path)
            if path.is_dir():
                raise BadInputError(f"--errors {path} is a folder: name the file to write")
            if not path.parent.is_dir():
                raise BadInputError(f"--errors {path}: the folder {path.parent} does not exist")
        if plots is not None and plots.exists() and not plots.is_dir():
            raise BadInputError(f"--plots {plots} is a file: name a folder (it is created if missing)")
        if path is not None:
            _check_writable("--errors", path, path.parent)
        if plots is not None:
            _check_writable("--plots", plots, plots)


def misclassified(decider: Decider, data: LabelledData, logits: torch.Tensor) -> list[ErrorRow]:
    """Every misclassified text, most confident first, judged on the probabilities the metrics judge.

    Only the misclassified texts' ids are looked up (:meth:`LabelledData.ids_of`: a file's ``id``
    column is read again for them alone)."""
    shown = decider.error_report_probabilities(logits)
    assert shown is not None  # only asked of a task that has an error report
    probs = shown.double().numpy()
    wrong = np.flatnonzero(probs.argmax(axis=1) != np.asarray(data.labels, dtype=np.int64)).tolist()
    ids = _Looked(dict(zip(wrong, data.ids_of(wrong), strict=True)), data.size)
    return error_rows(probs, data.labels, decider.classes, data.texts, ids)


class _Looked(Sequence[Any]):
    """The ids of some texts by position, as the sequence of every text's id that
    :func:`~gptclf.inference.error_report.error_rows` reads (only at those positions)."""

    def __init__(self, found: dict[int, Any], size: int) -> None:
        self.found, self.size = found, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.found[i]


def save_errors(path: Path, rows: list[ErrorRow], classes: list[str]) -> None:
    """Write the error report (atomically) to ``path``.

    Raises:
        BadInputError, DiskFullError, GptclfError: Writing failed (one line naming --errors).
    """
    with _writing("--errors", path, path.parent):
        write_errors(path, rows, classes)


def save_plots(folder: Path, run: LoadedRun, data: LabelledData, logits: torch.Tensor) -> list[Path] | None:
    """Write the pictures into ``folder``; None: matplotlib is missing (nothing written).

    Raises:
        BadInputError, DiskFullError, GptclfError: Writing failed (one line naming --plots).
    """
    source = data.source
    title = f"{source['split']} split" if "split" in source else Path(source["input"]).name
    inputs = plot_inputs(logits.numpy(), data.labels, run.classes, run.info, title)
    with _writing("--plots", folder, _nearest_existing(folder)):
        return write_plots(folder, inputs)


def _check_writable(flag: str, target: Path, folder: Path) -> None:
    """Write, sync and remove a small file in ``folder`` (or the nearest of its ancestors that
    exists, for a folder still to be made).

    Raises:
        BadInputError: The place cannot be written (read-only, no permission, under a file).
        DiskFullError: The disk is full.
    """
    home = _nearest_existing(folder)
    if not home.is_dir():
        raise BadInputError(f"{flag} {target}: {home} is a file, not a folder")
    with _writing(flag, target, home):
        check_writable(home)


def _nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (the folders below it are made by a write)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def _writing(flag: str, target: Path, folder: Path) -> Iterator[None]:
    """Turn an ``OSError`` of writing ``target`` into ``folder`` into its one-line error.

    Raises:
        DiskFullError: A full disk or quota (exit 1).
        BadInputError: A place that cannot be written (exit 2).
        GptclfError: Any other failure to write (exit 1).
    """
    try:
        yield
    except OSError as exc:
        error = write_error(exc, folder)
        raise type(error)(f"{flag} {target}: {error}") from None
