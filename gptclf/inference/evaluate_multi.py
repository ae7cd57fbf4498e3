"""``evaluate`` of a multi-label run: its labelled texts (a split, or a file whose label column
holds lists) and every multi-label metric (:func:`gptclf.tasks.multi_metrics.multilabel_metrics`) at the
thresholds predict applies (the run's, or ``--threshold P`` for all labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gptclf.data.labelsets import DEFAULT_SEP, label_matrix, read_multilabel_table
from gptclf.errors import BadInputError
from gptclf.inference.predict_multi import MultiPredictor
from gptclf.progress import Progress
from gptclf.tasks.multi_metrics import multilabel_metrics


def multi_labels(frame: pd.DataFrame, classes: list[str], where: str) -> list[list[int]]:
    """The (N, K) 0/1 rows of a frame whose ``label`` column holds tuples of names.

    Raises:
        BadInputError: A label that is not one of the run's, named with ``where``.
    """
    try:
        return label_matrix(frame["label"], classes)
    except BadInputError as exc:
        raise BadInputError(f"{where}: {exc}") from None


def multi_table(
    path: Path,
    text_column: str | None,
    label_column: str | None,
    fmt: str | None,
    encoding: str,
    sep: str = DEFAULT_SEP,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """A labelled file for a multi-label run: the label column holds lists joined by ``sep`` (the
    run's :func:`gptclf.data.labelsets.run_label_sep`; JSONL: JSON lists too); an empty cell is a text
    with no label. Returns the frame and the dropped counts."""
    table = read_multilabel_table(
        path, text_column=text_column, label_column=label_column, sep=sep, fmt=fmt, encoding=encoding
    )
    return table.frame, table.dropped


def evaluate_multi(
    predictor: MultiPredictor, texts: list[str], labels: list[list[int]], progress: Progress | None = None
) -> tuple[dict[str, Any], torch.Tensor]:
    """The metrics of a multi-label run on labelled texts, and the raw logits."""
    before = predictor.n_truncated
    logits = predictor.logits(texts, progress=progress)
    metrics = multilabel_metrics(logits, labels, predictor.classes, predictor.thresholds)
    return {"truncated": predictor.n_truncated - before, **metrics}, logits
