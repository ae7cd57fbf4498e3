"""Load a run once and classify texts in batches, with every class's probability.

Texts are taken from any iterable, a chunk at a time (:data:`CHUNK_SIZE`): each chunk is tokenised,
sorted by length into batches padded only to their own longest text, run through the model, and its
results are yielded in input order before the next chunk is read. Memory therefore depends on the
chunk size, never on the length of the input, and a stream (stdin, a huge file) is never read whole.
With a ``pause``, a chunk also ends when the input has given nothing new for that long (a reader
thread feeds a bounded queue), so an interactive or slow producer sees its results at once.

The model is one of :mod:`gptclf.engines.load` (torch, torch int8, ONNX Runtime): every engine runs in the
same batches of the one inference loop, so streaming, formats and decisions are the same for all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import tiktoken
import torch

from gptclf.data.long_texts import LongCounts, LongTexts, stored_long_texts
from gptclf.device import Precision
from gptclf.engines.load import OrtClassifier, load_engine
from gptclf.engines.onnx_folder import OnnxExport
from gptclf.errors import BadInputError, GptclfError
from gptclf.inference.batching import TokenSource
from gptclf.inference.chunking import chunks, waiting_chunks
from gptclf.inference.longtexts import piecewise_logits
from gptclf.inference.loop import run_batches
from gptclf.model.classifier import Classifier
from gptclf.model.tokenizer import encode_batch
from gptclf.progress import Progress
from gptclf.rundir import LoadedRun
from gptclf.tasks.calibration import run_temperature
from gptclf.tasks.decisions import Decision, check_min_confidence

#: Texts read, sorted and predicted together. Large enough that sorting by length saves most of the
#: padding, small enough that a chunk's texts, ids and logits stay a few megabytes. Also the most
#: windows run together, so a 100,000-token text costs no more memory than a chunk of short ones.
CHUNK_SIZE = 1024


def make_decision(
    classes: Sequence[str],
    threshold: float | None,
    positive: str | None,
    stored: Decision | None = None,
) -> Decision | None:
    """Check ``--threshold`` / ``--positive`` against the run's classes.

    Args:
        classes: The run's class names.
        threshold: Probability in [0, 1], or None for the plain argmax.
        positive: Name of the positive class; required with ``threshold``.
        stored: The rule the run stores (:func:`gptclf.tasks.decisions.stored_decision`), used when
            neither option is given; the options replace it.

    Returns:
        The rule, or ``stored`` when neither option is given (None: predict the most probable class).

    Raises:
        BadInputError: Only one of the two options, a threshold outside [0, 1], a run with more than
            two classes, or a class the run does not have.
    """
    if threshold is None and positive is None:
        return stored
    problems = []
    if threshold is None:
        problems.append("--positive needs --threshold P")
    elif not 0.0 <= threshold <= 1.0:
        problems.append(f"--threshold must be a probability in [0, 1] (got {threshold})")
    if positive is None:
        problems.append(f"--threshold needs --positive CLASS (one of {', '.join(classes)})")
    elif positive not in classes:
        problems.append(f"--positive {positive!r} is not a class of this run ({', '.join(classes)})")
    if len(classes) != 2:
        problems.append(
            f"--threshold works for two classes only; this run has {len(classes)} ({', '.join(classes)})"
        )
    if problems:
        raise BadInputError("; ".join(problems))
    assert threshold is not None and positive is not None
    pos = list(classes).index(positive)
    return Decision(positive=pos, negative=1 - pos, threshold=float(threshold))


def compute_logits(
    model: Classifier | OrtClassifier,
    enc: tiktoken.Encoding,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    precision: Precision,
    pad_to: int | None = None,
    progress: Progress | None = None,
    long: LongTexts | None = None,
    piece: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, LongCounts]:
    """Class logits of ``texts``, in input order, through the one inference loop
    (:func:`gptclf.inference.loop.run_batches`: length-sorted batches, order restored).

    Args:
        model: The classifier (or an engine's stand-in for it), on ``device``, in eval mode.
        enc: GPT-2's tokenizer.
        texts: The texts; an empty one is read as the single token ``<|endoftext|>``.
        max_length: Tokens kept per text (the rest is cut).
        batch_size: Texts per forward pass (>= 1).
        device: Where the model is.
        precision: fp32, or the autocast type to run under.
        pad_to: Pad every batch to this length (a run trained with the book's fixed padding and
            ``last-position`` pooling reads position -1, so it must see the same padding).
        progress: Shows the pass.
        long: How texts longer than ``max_length`` are read (resolved; None: truncated).
        piece: The most windows run together (:func:`gptclf.inference.longtexts.piecewise_logits`).

    Returns:
        ``(logits, counts)``: (N, K) float32 logits on the CPU; the long texts and the windows.
    """

    def run(windows: list[list[int]], owners: torch.Tensor, shown: Progress) -> torch.Tensor:
        logits = torch.zeros(len(windows), len(model.classes), dtype=torch.float32)

        def keep(indices: Sequence[int], out: torch.Tensor) -> None:
            logits[torch.as_tensor(list(indices), dtype=torch.long)] = out.float().cpu()

        # The windows are batched as texts; the progress counts the texts they belong to.
        run_batches(
            model,
            TokenSource(windows, pad_to),
            keep,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=shown,
            label="classifying",
            owners=owners,
        )
        return logits

    token_lists = encode_batch(enc, list(texts))
    long = long or LongTexts().resolved(max_length)
    return piecewise_logits(token_lists, max_length, long, run, len(model.classes), piece, progress)


@dataclass(frozen=True)
class Prediction:
    """The prediction for one text.

    Attributes:
        index: 0-based position of the text in the input.
        text: The text as given (not truncated).
        label: The predicted class; None where the predictor abstained.
        probs: Probability of every class, in the run's class order (they sum to 1).
        id: The id the input gave the text (its ``id`` column), else ``index``.
        abstained: The top calibrated probability is below the predictor's ``min_confidence``.
    """

    index: int
    text: str
    label: str | None
    probs: dict[str, float]
    id: Any = None
    abstained: bool = False


class Predictor:
    """A run loaded once, classifying any number of texts.

    Attributes:
        run: The loaded run directory, or an ONNX export folder.
        model: What computes the logits: the run's classifier, its int8 copy, or an ONNX session.
        device: Where the model runs.
        precision: fp32 or the autocast type.
        n_texts: Texts predicted so far (over every call).
        n_truncated: Of those, texts longer than the run's ``max_length`` (cut, or read in windows).
        n_windows: Windows (model inputs) the texts took (one per text that fits).
        long_texts: How texts longer than ``max_length`` are read (resolved).
        calibrated: Whether the run's stored temperature is applied.
        temperature: What the logits are divided by before the softmax (1.0: raw probabilities).
    """

    def __init__(
        self,
        run: LoadedRun | OnnxExport,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        engine: str = "torch",
        quantize: str = "none",
        batch_size: int = 32,
        chunk_size: int = CHUNK_SIZE,
        decision: Decision | None = None,
        calibrated: bool = True,
        min_confidence: float | None = None,
        long_texts: LongTexts | None = None,
    ) -> None:
        """Move the run's model to ``device``.

        Args:
            run: A run from :func:`gptclf.rundir.load_run`.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a torch device.
            precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
            engine: ``torch``, or ``onnx`` (ONNX Runtime; the one engine of an export folder).
            quantize: ``none``, or ``int8`` (dynamic quantization; CPU and fp32 only).
            batch_size: Texts per forward pass.
            chunk_size: Texts read and sorted together; bounds memory.
            decision: A two-class threshold rule from :func:`make_decision`; None for the argmax.
            calibrated: Divide the logits by the temperature the run stores (run.json's
                ``calibration``; 1 for a run without one) before the softmax; False gives the
                raw probabilities (``--no-calibration``). The argmax is the same either way,
                and so is every label: the decision rules always read the calibrated ones.
            min_confidence: Abstain (label None) on texts whose top calibrated probability is
                below this, in (0, 1]; None never abstains.
            long_texts: How texts longer than the run's ``max_length`` are read (see
                :func:`gptclf.data.long_texts.override`); None: as the run stores (truncate for a run
                without ``long_texts``).

        Raises:
            BadInputError: A bad device, precision, engine, quantization, batch size, chunk size,
                min_confidence or long-texts setting; an ONNX model that does not match its record.
        """
        # Name only the value that is wrong: the CLI never lets the user set the chunk size.
        if batch_size < 1:
            raise BadInputError(f"--batch-size must be >= 1 (got {batch_size})")
        if chunk_size < 1:
            raise BadInputError(f"chunk_size must be >= 1 (got {chunk_size})")
        self.run = run
        self.min_confidence = check_min_confidence(min_confidence)
        self.long_texts = (long_texts or stored_long_texts(run.info)).resolved(run.max_length)
        self.model, self.device, self.precision = load_engine(
            run, engine=engine, quantize=quantize, device=device, precision=precision
        )
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.decision = decision
        self.calibrated = calibrated
        self.temperature = run_temperature(run.info) if calibrated else 1.0
        # Thresholds (stored or given) are chosen on calibrated probabilities, so the labels
        # are decided on those whatever is shown: --no-calibration changes no label.
        self.decision_temperature = run_temperature(run.info)
        self.n_texts = 0
        self.n_truncated = 0
        self.n_windows = 0

    @property
    def classes(self) -> list[str]:
        """The run's class names, in the order of the probabilities."""
        return self.run.classes

    def logits(self, texts: Sequence[str], progress: Progress | None = None) -> torch.Tensor:
        """(N, K) float32 logits of ``texts`` in input order; counts texts and truncations.

        Raises:
            GptclfError: A logit is NaN or infinite (broken weights): no probability or metric
                computed from it would mean anything, and NaN is not valid JSON.
        """
        out, counts = compute_logits(
            self.model,
            self.run.tokenizer,
            texts,
            max_length=self.run.max_length,
            batch_size=self.batch_size,
            device=self.device,
            precision=self.precision,
            pad_to=self.run.pad_length,
            progress=progress,
            long=self.long_texts,
            # At least as many windows as texts: texts of one window each run in one piece, in the
            # same batches as before windows existed (and as finetune's evaluation runs them).
            piece=max(self.chunk_size, len(texts)),
        )
        if not torch.isfinite(out).all():
            raise GptclfError(
                f"the model of {self.run.path} gives non-finite logits (NaN or inf): its weights are "
                "broken; finetune the run again or restore model.safetensors"
            )
        self.n_texts += len(texts)
        self.n_truncated += counts.long
        self.n_windows += counts.windows
        return out

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) class probabilities of (N, K) logits: ``softmax(logits / temperature)``."""
        return torch.softmax(logits / self.temperature, dim=1)

    def labels(self, probs: torch.Tensor) -> list[str | None]:
        """Predicted class of each row of (N, K) calibrated probabilities: the argmax, or the
        threshold rule; None where the top probability is below ``min_confidence``."""
        if self.decision is None:
            idx = probs.argmax(dim=1)
        else:
            d = self.decision
            idx = torch.where(probs[:, d.positive] >= d.threshold, d.positive, d.negative)
        names: list[str | None] = [self.classes[i] for i in idx.tolist()]
        if self.min_confidence is not None:
            unsure = (probs.max(dim=1).values < self.min_confidence).tolist()
            names = [None if out else name for name, out in zip(names, unsure, strict=True)]
        return names

    def predict_chunks(
        self, texts: Iterable[str | tuple[Any, str]], pause: float | None = None
    ) -> Iterator[list[Prediction]]:
        """Classify ``texts`` lazily, one chunk of results at a time, in input order.

        At most one chunk (``chunk_size`` texts, fewer at the end) is pulled from ``texts`` before
        its results are yielded, and the next only when the caller asks: a stream of any length is
        classified in flat memory, and each chunk's results can be written before more is read.

        Args:
            texts: Texts, or ``(id, text)`` pairs (the id is passed on to the predictions; a plain
                text's id is its 0-based position).
            pause: Seconds without a new text after which the texts read so far are predicted
                as a short chunk, so a slow or interactive producer sees its results; None
                waits for a full chunk (best for files, whose chunks sort best when full).

        Raises:
            Whatever reading ``texts`` raises, once the results of every text before it are out.
        """
        pieces = waiting_chunks(texts, self.chunk_size, pause) if pause else chunks(texts, self.chunk_size)
        start = 0
        for chunk in pieces:
            ids, items = zip(*(_split_item(start + i, item) for i, item in enumerate(chunk)), strict=True)
            logits = self.logits(list(items))
            labels = self.labels(torch.softmax(logits / self.decision_temperature, dim=1))
            rows = zip(ids, items, labels, self.probabilities(logits).tolist(), strict=True)
            yield [
                Prediction(
                    start + offset,
                    text,
                    label,
                    dict(zip(self.classes, row, strict=True)),
                    ident,
                    label is None,
                )
                for offset, (ident, text, label, row) in enumerate(rows)
            ]
            start += len(chunk)

    def predict(self, texts: Iterable[str | tuple[Any, str]]) -> Iterator[Prediction]:
        """Classify ``texts`` lazily, one result per text in input order (see :meth:`predict_chunks`)."""
        for chunk in self.predict_chunks(texts):
            yield from chunk


def _split_item(position: int, item: str | tuple[Any, str]) -> tuple[Any, str]:
    return (position, item) if isinstance(item, str) else item
