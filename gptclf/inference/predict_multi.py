"""Predictions of a multi-label run: every label's sigmoid probability and the list of labels
whose probability reaches the label's threshold (possibly empty).

:class:`MultiPredictor` is a :class:`gptclf.inference.predict.Predictor` (the same loading, chunking,
batching and checks) whose probabilities are ``sigmoid(logits)`` and whose labels are sets. The
thresholds are the run's (run.json ``thresholds``, chosen on validation) unless one is given for
all labels (``--threshold P``). Calibration and the two-class rules are for softmax runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gptclf.data.long_texts import LongTexts
from gptclf.engines.onnx_folder import OnnxExport
from gptclf.errors import BadInputError
from gptclf.inference.chunking import chunks, waiting_chunks
from gptclf.inference.predict import CHUNK_SIZE, Predictor, _split_item
from gptclf.rundir import LoadedRun
from gptclf.tasks.multi_loss import stored_thresholds


@dataclass(frozen=True)
class MultiPrediction:
    """The prediction for one text of a multi-label run.

    Attributes:
        index: 0-based position of the text in the input.
        text: The text as given.
        labels: The labels whose probability reaches their threshold, in class order.
        probs: Every label's probability, in class order (independent: they need not sum to 1).
        id: The id the input gave the text, else ``index``.
    """

    index: int
    text: str
    labels: list[str]
    probs: dict[str, float]
    id: Any = None


def single_label_only(
    *, positive: str | None = None, min_confidence: float | None = None, no_calibration: bool = False
) -> None:
    """Refuse the options of softmax runs on a multi-label run, in one line.

    Raises:
        BadInputError: Naming the options given.
    """
    flags = {"--positive": positive is not None, "--min-confidence": min_confidence is not None}
    given = [flag for flag, on in {**flags, "--no-calibration": no_calibration}.items() if on]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise BadInputError(
            f"{', '.join(given)} {verb} to single-label runs; this run is multi-label "
            "(use --threshold P to set one threshold for every label)"
        )


def check_threshold(threshold: float | None) -> float | None:
    """``--threshold`` of a multi-label run: a probability in [0, 1], or None.

    Raises:
        BadInputError: Outside [0, 1].
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise BadInputError(f"--threshold must be a probability in [0, 1] (got {threshold})")
    return threshold


class MultiPredictor(Predictor):
    """A multi-label run loaded once.

    Attributes:
        thresholds: Each label's threshold, in class order.
    """

    def __init__(
        self,
        run: LoadedRun | OnnxExport,
        *,
        threshold: float | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        engine: str = "torch",
        quantize: str = "none",
        batch_size: int = 32,
        chunk_size: int = CHUNK_SIZE,
        long_texts: LongTexts | None = None,
    ) -> None:
        """Load the run's engine (:class:`gptclf.inference.predict.Predictor`'s ``engine``, ``quantize``: an
        ONNX export of a multi-label run gives the same logits); ``threshold`` replaces every
        stored threshold; ``long_texts`` how longer texts are read (None: as the run stores).

        Raises:
            BadInputError: A bad threshold, device, precision, batch size or chunk size.
        """
        check_threshold(threshold)
        super().__init__(
            run, device=device, precision=precision, engine=engine, quantize=quantize,
            batch_size=batch_size, chunk_size=chunk_size, calibrated=False, long_texts=long_texts,
        )  # fmt: skip
        k = len(run.classes)
        self.thresholds = [float(threshold)] * k if threshold is not None else stored_thresholds(run.info)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) independent label probabilities: ``sigmoid(logits)``."""
        return torch.sigmoid(logits.double()).float()

    def label_sets(self, probs: torch.Tensor) -> list[list[str]]:
        """Each row's labels: those whose probability reaches their threshold."""
        on = probs.double() >= torch.as_tensor(self.thresholds, dtype=torch.float64)[None, :]
        return [[c for c, yes in zip(self.classes, row, strict=True) if yes] for row in on.tolist()]

    def predict_chunks(  # type: ignore[override]
        self, texts: Iterable[str | tuple[Any, str]], pause: float | None = None
    ) -> Iterator[list[MultiPrediction]]:
        """Classify ``texts`` lazily, a chunk at a time, in input order (as
        :meth:`gptclf.inference.predict.Predictor.predict_chunks` does)."""
        pieces = waiting_chunks(texts, self.chunk_size, pause) if pause else chunks(texts, self.chunk_size)
        start = 0
        for chunk in pieces:
            ids, items = zip(*(_split_item(start + i, item) for i, item in enumerate(chunk)), strict=True)
            probs = self.probabilities(self.logits(list(items)))
            rows = zip(ids, items, self.label_sets(probs), probs.tolist(), strict=True)
            yield [
                MultiPrediction(
                    start + offset, text, labels, dict(zip(self.classes, row, strict=True)), ident
                )
                for offset, (ident, text, labels, row) in enumerate(rows)
            ]
            start += len(chunk)

    def predict(self, texts: Iterable[str | tuple[Any, str]]) -> Iterator[MultiPrediction]:  # type: ignore[override]
        """Classify ``texts`` lazily, one result per text in input order."""
        for chunk in self.predict_chunks(texts):
            yield from chunk
