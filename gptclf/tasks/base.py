"""The task seam: what differs between kinds of task, behind one :class:`Task` and its :class:`Decider`.

A run's task is chosen once, from run.json (:func:`gptclf.tasks.kinds.task_of`), and everything
that depends on the kind asks it: how labels are read and encoded, the loss and the step's
statistics, the metrics while training, what is chosen on validation after training, the fields of
run.json, the decision for a text and its prediction record, the metrics of ``evaluate`` and their
tables, and the ``problem_type`` of a transformers export. The training loop, the optimizer step,
the inference loop and the run directory only call these methods; none of them asks which kind a
run is. :mod:`gptclf.tasks.single_label` (softmax, cross-entropy) and
:mod:`gptclf.tasks.multi_label` (a sigmoid per label, binary cross-entropy) are the two kinds.

A third kind, next-token language modelling for continued pretraining
(:mod:`gptclf.tasks.language_model`), is one more subclass over a model whose output per block is
its summed next-token cross-entropy and the tokens it predicted right (:mod:`gptclf.model.lm`; the
targets are the block's own shifted ids, so its labels are each block's count of predicted tokens):
its loss is the mean token cross-entropy, its ``metrics`` loss, perplexity and next-token accuracy,
and anything classification-only is refused. The loop, the step and the inference loop run it
unchanged, since they see outputs, labels and sums only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from gptclf.errors import BadInputError
from gptclf.option_groups import DecisionOptions, TargetOptions


@dataclass(frozen=True)
class Prediction:
    """The prediction for one text.

    Attributes:
        index: 0-based position of the text in the input.
        text: The text as given (not truncated).
        label: The predicted class (single-label); None where the run abstained or has label sets.
        probs: Probability of every class, in the run's class order.
        id: The id the input gave the text (its ``id`` column), else ``index``.
        abstained: The top calibrated probability is below the run's ``min_confidence``.
        labels: The labels whose probability reaches their threshold (multi-label), in class order;
            None for a single-label run.
        extra: Columns of the input kept beside the result (``predict --keep-columns``), by name.
    """

    index: int
    text: str
    label: str | None
    probs: dict[str, float]
    id: Any = None
    abstained: bool = False
    labels: list[str] | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class LabelledFile:
    """A labelled file to read and how: its text and label columns, format and encoding."""

    path: Path
    text_column: str | None = None
    label_column: str | None = None
    fmt: str | None = None
    encoding: str = "utf-8"


@dataclass(frozen=True)
class ReportTable:
    """A table of a report, as plain text cells: the CLI renders it, any other caller may too.

    Attributes:
        title: Shown above the table.
        columns: Column headers.
        rows: One list of cells per row.
        left: How many leading columns are left-aligned (the rest are numbers, right-aligned).
        header: Whether the column headers are shown.
    """

    title: str
    columns: list[str]
    rows: list[list[str]]
    left: int = 1
    header: bool = True


@dataclass
class Finished:
    """What a task chooses on the validation split after training, and the kept weights' scores.

    Attributes:
        scores: ``test`` and ``validation`` metrics (None for a split without texts).
        calibration: The fitted temperature (single-label runs with validation data), else None.
        choices: The run.json keys chosen (a decision, an abstention level, thresholds).
        unmet: The message of a target the validation split cannot reach, else None.
        lines: What to tell the user about the choices, one line each.
    """

    scores: dict[str, dict[str, Any] | None]
    calibration: Any = None
    choices: dict[str, Any] = field(default_factory=dict)
    unmet: str | None = None
    lines: list[str] = field(default_factory=list)


class Decider(ABC):
    """A run's task with the options of one ``predict``/``evaluate`` resolved against what the run
    stores: logits in, probabilities, predictions, records and metrics out.

    Attributes:
        classes: The run's class names.
    """

    classes: list[str]

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) probabilities shown for (N, K) logits."""

    @abstractmethod
    def predictions(
        self, start: int, ids: Sequence[Any], texts: Sequence[str], logits: torch.Tensor
    ) -> list[Prediction]:
        """The predictions of a chunk of texts whose first is the ``start``-th of the input."""

    @abstractmethod
    def record(self, p: Prediction) -> dict[str, Any]:
        """The JSON record of a prediction (``predict --format jsonl``)."""

    @abstractmethod
    def columns(self) -> list[str]:
        """The CSV/TSV columns after ``id`` and ``text``."""

    @abstractmethod
    def cells(self, p: Prediction) -> list[Any]:
        """A prediction's CSV/TSV cells after ``id`` and ``text`` (probabilities rounded)."""

    @abstractmethod
    def shown_label(self, p: Prediction) -> str:
        """The label cell of the table format."""

    #: The table format's label column.
    label_header: ClassVar[str] = "label"

    @abstractmethod
    def label_width(self, shown: Sequence[str]) -> int:
        """The table's label column width for a chunk whose label cells are ``shown``."""

    @abstractmethod
    def report(self, logits: torch.Tensor, labels: Sequence[Any], long: dict[str, Any]) -> dict[str, Any]:
        """``evaluate``'s metrics of (N, K) logits against the true labels; ``long`` holds the
        long-text settings and counts (``long``, ``windows``) of the pass."""

    @abstractmethod
    def describe(self) -> str:
        """What the evaluation judges, for the line that starts it (``calibrated probabilities ...``)."""

    def error_report_probabilities(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The probabilities the error report and the pictures read; None: this task has neither."""
        return None


class Task(ABC):
    """One kind of task. Stateless: one instance per kind.

    Attributes:
        key: run.json's ``task`` value.
        name: How messages name the kind (``single-label``).
        problem_type: The ``problem_type`` of a transformers export.
        f1_key: The metric ``--min-f1`` gates and summaries call F1.
    """

    key: ClassVar[str]
    name: ClassVar[str]
    problem_type: ClassVar[str]
    f1_key: ClassVar[str]

    # --- labels -------------------------------------------------------------------------------
    def encode_labels(
        self, frame: pd.DataFrame, classes: Sequence[str], where: str | None = None
    ) -> list[Any]:
        """The model's targets of a frame's ``label`` column (a class index, or a 0/1 row).

        Raises:
            BadInputError: A label that is not a class of the run (named with ``where``, the file).
        """
        try:
            return self._encode(frame, classes)
        except BadInputError as exc:  # name the file: the bare message does not say where
            if where is None:
                raise
            raise BadInputError(f"{where}: {exc}") from None

    @abstractmethod
    def _encode(self, frame: pd.DataFrame, classes: Sequence[str]) -> list[Any]:
        """:meth:`encode_labels` without the file's name in its errors."""

    @abstractmethod
    def label_tensor(self, labels: Sequence[Any]) -> torch.Tensor:
        """Targets as the loss wants them."""

    @abstractmethod
    def read_labelled_file(
        self, file: LabelledFile, info: Mapping[str, Any]
    ) -> tuple[pd.DataFrame, dict[str, int]]:
        """A labelled file as a frame (``text``, ``label``, ``row``) and its dropped-row counts."""

    def labelled_frames(
        self, file: LabelledFile, info: Mapping[str, Any], dropped: Counter[str], chunk: int
    ) -> Iterator[pd.DataFrame]:
        """:meth:`read_labelled_file`'s frame in parts of about ``chunk`` rows, read as they are
        needed where the task can (the default: one part, the whole file); the dropped rows are
        counted into ``dropped`` by the time the parts end."""
        frame, counts = self.read_labelled_file(file, info)
        dropped.update(counts)
        yield frame

    # --- training -----------------------------------------------------------------------------
    @abstractmethod
    def loss_weights(self, labels: Sequence[Any], num_classes: int, mode: str) -> torch.Tensor | None:
        """The loss's weights for ``--class-weights mode`` from the training labels."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The loss summed over the texts of a micro-batch (float32)."""

    @abstractmethod
    def loss_denominator(self, weights: torch.Tensor | None, y: torch.Tensor) -> float:
        """What a group's summed loss is divided by: its texts, or their class weights."""

    @abstractmethod
    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How many texts of a micro-batch are predicted right."""

    @abstractmethod
    def metrics(self, logits: Any, labels: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
        """The metrics of a split while training (the history's and "best"'s)."""

    def history_extra(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Columns a history row gains beyond the common ones."""
        return {}

    @abstractmethod
    def settings_problems(self, *, target: str | None, positive: str | None, monitor: str) -> list[str]:
        """What keeps the finetune options from this task; empty: nothing."""

    @abstractmethod
    def finish(
        self, logits: dict[str, Any], labels: dict[str, Any], classes: Sequence[str], target: TargetOptions
    ) -> Finished:
        """Choose on validation after training and score the kept weights."""

    @abstractmethod
    def run_fields(self, data_meta: Mapping[str, Any]) -> dict[str, Any]:
        """The keys run.json stores for the task (``task`` and the kind's own), from the prepared
        folder's labels.json; ``data`` gains ``data_fields``."""

    def data_fields(self, data_meta: Mapping[str, Any]) -> dict[str, Any]:
        """Keys of run.json's ``data`` that the task needs later (a label separator)."""
        return {}

    def summary(self, result: Any) -> dict[str, Any]:
        """Keys a finetune summary (``--json``) gains for the task."""
        return {}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        """The finetune summary's lines for people that only the task knows."""
        return []

    # --- using a run --------------------------------------------------------------------------
    @abstractmethod
    def decider(
        self, info: Mapping[str, Any], decide: DecisionOptions | None = None, verb: str = "predict"
    ) -> Decider:
        """The run's stored rules with the options given on top (None: the stored one).

        Raises:
            BadInputError: An option this task does not take, or a bad value.
        """

    @abstractmethod
    def report_tables(self, metrics: Mapping[str, Any]) -> list[ReportTable]:
        """``evaluate``'s tables of its metrics, for people."""

    def check_calibrate(self, run: Path) -> None:  # noqa: B027 (a hook: most tasks calibrate)
        """Refuse ``calibrate`` where the task has no temperature to fit (raises BadInputError)."""

    #: Why ``--errors``/``--plots`` are skipped; None: this task writes them.
    no_error_report: ClassVar[str | None] = None

    # --- interop ------------------------------------------------------------------------------
    #: Whether adding one number to every logit changes nothing (softmax): an export may then fold
    #: the head's bias into the last layer norm centred.
    shift_invariant: ClassVar[bool] = True
    #: The run.json keys of the task's rules that an export carries in config.json's ``gptclf``.
    stored_fields: ClassVar[tuple[str, ...]] = ()
    #: The run.json keys a run of this task cannot be read without.
    required_fields: ClassVar[tuple[str, ...]] = ()
    #: transformers' pipeline ``function_to_apply`` for this task (None: its default).
    pipeline_function: ClassVar[str | None] = None

    def export_fields(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """More keys of config.json's ``gptclf`` object (e.g. what joins a label list)."""
        return {}

    def import_defaults(self, classes: Sequence[str]) -> dict[str, Any]:
        """run.json keys an imported run of this task has when config.json carries none."""
        return {}

    def import_data_fields(
        self, custom: Mapping[str, Any], classes: Sequence[str], source: str
    ) -> dict[str, Any]:
        """Keys of an imported run's ``data`` from config.json's ``gptclf`` object (raises
        BadInputError for labels the task cannot read back)."""
        return {}

    def card_lines(self, info: Mapping[str, Any]) -> list[str]:
        """Lines of an exported model card's decision section that only the task knows."""
        return []
