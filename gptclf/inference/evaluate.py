"""``evaluate``: a run's metrics on labelled texts (:mod:`gptclf.inference.labelled`), the metric
gates of CI jobs, and the verb's core (:func:`evaluate_run`), which returns data and never prints:
its messages go to the progress it is given, and ``cli.evaluate`` renders the rest.

Memory stays bounded by what the reports need: the texts are tokenised as they are read into two
bytes a token (the texts themselves kept, packed, only for the error report), the pass keeps the
(N, K) float32 logits, and the token ids are let go before the metrics are computed. The texts are
still classified in one length-sorted pass over all of them, so every batch, logit and metric is
the one a pass over a list of the texts gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptclf.data.long_texts import describe_counts
from gptclf.distributed import refuse_distributed
from gptclf.errors import BadInputError, GateError, GptclfError
from gptclf.inference.batching import TokenSource
from gptclf.inference.error_report import ErrorRow
from gptclf.inference.labelled import Compact, DataChoice, LabelledData
from gptclf.inference.loop import run_batches
from gptclf.inference.plots import SKIPPED_NOTE
from gptclf.inference.predict import Predictor, resolve_long_texts
from gptclf.inference.reports import Reports, misclassified, save_errors, save_plots
from gptclf.option_groups import DecisionOptions, DeviceOptions, LongTextOptions
from gptclf.progress import Progress
from gptclf.rundir import load_run


def evaluate(predictor: Predictor, data: LabelledData, progress: Progress | None = None) -> dict[str, Any]:
    """Metrics of the predictor's run on ``data`` (:func:`evaluate_with_logits` without the logits)."""
    return evaluate_with_logits(predictor, data, progress)[0]


def evaluate_with_logits(
    predictor: Predictor, data: LabelledData, progress: Progress | None = None
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics of the predictor's run on ``data``, and the raw logits they come from.

    Args:
        predictor: The loaded run, on its device and precision, with its decision options.
        data: Texts and true labels.
        progress: Shows the pass.

    Returns:
        A JSON-ready dict: ``run``, ``source``, then what the run's task reports
        (:meth:`gptclf.tasks.base.Decider.report`: for a single-label run ``calibration``,
        ``truncated``, ``long_texts``, every metric of
        :func:`gptclf.tasks.metrics.classification_metrics` of the probabilities the predictor
        gives, and the decision rules' report; for a multi-label run ``truncated`` and every metric
        at the thresholds predict applies); and the (N, K) raw logits in ``data`` order, for the
        error report and the pictures.
    """
    before, windows_before = predictor.n_truncated, predictor.n_windows
    if data.tokens is None:
        logits = _texts_logits(predictor, data.texts, progress)
    else:
        logits = _tokens_logits(predictor, data, progress)
        data.tokens = None  # not needed any more: the metrics' arrays take the room
    n_long = predictor.n_truncated - before
    long = {**predictor.long_texts.to_dict(), "long": n_long, "windows": predictor.n_windows - windows_before}
    progress = progress or Progress()
    progress.begin("computing the metrics")
    try:
        report = predictor.decider.report(logits, data.labels, long)
    finally:
        progress.end()
    return {"run": str(predictor.run.path), "source": data.source, **report}, logits


#: Texts given to the predictor at a time when they are read in pieces or windows (a list of
#: them, their windows and token ids are held only for a chunk), and the characters a chunk may
#: hold: long documents end a chunk sooner (each token of a text being tokenised is a Python int).
TEXT_CHUNK = 65_536
TEXT_CHUNK_CHARS = 1 << 24


def _text_chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    """``texts`` in lists of at most :data:`TEXT_CHUNK` texts, a list ending once its texts reach
    :data:`TEXT_CHUNK_CHARS` characters."""
    chunk: list[str] = []
    size = 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if len(chunk) == TEXT_CHUNK or size >= TEXT_CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _texts_logits(predictor: Predictor, texts: Sequence[str], progress: Progress | None) -> torch.Tensor:
    """(N, K) float32 logits of ``texts`` from :meth:`Predictor.logits`, a chunk at a time
    (:func:`_text_chunks`; texts that fit in one chunk go in one call: the same batches as
    before), shown as one pass."""
    chunks = _text_chunks(texts)
    first = next(chunks, [])
    second = next(chunks, None)
    if second is None:
        return predictor.logits(first, progress=progress)
    progress = progress or Progress()
    progress.begin("classifying", total=len(texts), unit="texts")
    try:
        parts = [predictor.logits(chunk, progress=_Within(progress)) for chunk in (first, second)]
        del first, second
        parts.extend(predictor.logits(chunk, progress=_Within(progress)) for chunk in chunks)
        return torch.cat(parts)
    finally:
        progress.end()


class _Within(Progress):
    """A chunk's pass shown as part of the whole one: its begin and end are the whole's."""

    def __init__(self, whole: Progress) -> None:
        self.whole = whole

    def advance(self, n: int = 1, **fields: object) -> None:
        self.whole.advance(n, **fields)

    def message(self, text: str) -> None:
        self.whole.message(text)


def _tokens_logits(predictor: Predictor, data: LabelledData, progress: Progress | None) -> torch.Tensor:
    """(N, K) float32 logits of texts tokenised already (``data.tokens``, cut to the run's length),
    as :meth:`Predictor.logits` gives them for the texts under ``--long-texts truncate``: one
    length-sorted pass over all of them, the same batches; counts texts and truncations.

    Raises:
        GptclfError: A logit is NaN or infinite (broken weights).
    """
    tokens = data.tokens
    assert tokens is not None
    logits = torch.zeros(len(tokens), len(predictor.classes), dtype=torch.float32)

    def keep(indices: Sequence[int], out: torch.Tensor) -> None:
        logits[torch.as_tensor(list(indices), dtype=torch.long)] = out.float().cpu()

    run_batches(
        predictor.model,  # type: ignore[arg-type]
        TokenSource(tokens, predictor.run.pad_length),
        keep,
        batch_size=predictor.batch_size,
        device=predictor.device,
        precision=predictor.precision,
        progress=progress,
        label="classifying",
        max_padding=predictor.max_padding,
    )
    if not torch.isfinite(logits).all():
        raise GptclfError(
            f"the model of {predictor.run.path} gives non-finite logits (NaN or inf): its weights are "
            "broken; finetune the run again or restore model.safetensors"
        )
    predictor.n_texts += len(tokens)
    predictor.n_truncated += data.cut
    predictor.n_windows += len(tokens)
    return logits


@dataclass(frozen=True)
class Gates:
    """Minimum metric values for CI jobs (``--min-accuracy``, ``--min-f1``: the F1 the run's task
    names, macro F1 or, for a multi-label run, micro-F1; the accuracy is then the exact match).

    Attributes:
        min_accuracy: Lowest acceptable accuracy, or None.
        min_f1: Lowest acceptable F1 (:attr:`gptclf.tasks.base.Task.f1_key`), or None.
    """

    min_accuracy: float | None = None
    min_f1: float | None = None

    def __post_init__(self) -> None:
        bad = [
            f"{flag} must be in [0, 1] (got {value})"
            for flag, value in (("--min-accuracy", self.min_accuracy), ("--min-f1", self.min_f1))
            if value is not None and not 0.0 <= value <= 1.0
        ]
        if bad:
            raise BadInputError("; ".join(bad))

    def failures(self, metrics: dict[str, Any], f1: str = "macro_f1") -> list[str]:
        """One phrase per gate that ``metrics`` does not meet (``f1``: the key ``--min-f1`` gates)."""
        out = []
        for flag, key, floor in (
            ("--min-accuracy", "accuracy", self.min_accuracy),
            ("--min-f1", f1, self.min_f1),
        ):
            if floor is not None and metrics[key] < floor:
                out.append(f"{key} {metrics[key]:.4f} is below {flag} {floor:.4f}")
        return out

    def check(self, metrics: dict[str, Any], f1: str = "macro_f1") -> None:
        """Raise when a gate is not met (``f1``: the key ``--min-f1`` gates).

        Raises:
            GateError: One line naming every failed metric, its value and its threshold.
        """
        failed = self.failures(metrics, f1)
        if failed:
            raise GateError("metric gate not met: " + "; ".join(failed))


@dataclass
class Evaluation:
    """What :func:`evaluate_run` found.

    Attributes:
        metrics: The JSON-ready metrics (:func:`evaluate_with_logits`).
        logits: The (N, K) raw logits, in the data's order.
        predictor: The run, loaded, with its decision options.
        data: The labelled texts.
        errors: The misclassified texts, most confident first, where the report was asked for.
        written: The report files written (the error report, the pictures).
        skipped: Why reports asked for were skipped (a task without them, no matplotlib), one line each.
    """

    metrics: dict[str, Any]
    logits: torch.Tensor
    predictor: Predictor
    data: LabelledData
    errors: list[ErrorRow] | None = None
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def check_gates(self, gates: Gates) -> None:
        """Raise GateError when ``gates`` are not met (the task says which F1 ``--min-f1`` gates)."""
        gates.check(self.metrics, self.predictor.run.task.f1_key)


def evaluate_run(
    run: Path,
    choice: DataChoice,
    *,
    device: DeviceOptions | None = None,
    decide: DecisionOptions | None = None,
    long: LongTextOptions | None = None,
    reports: Reports | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Evaluate the run ``run`` on the labelled texts ``choice`` names (default: the test split of
    the data it was trained on), at the decision rules it stores, and write the reports asked for.

    Everything that needs no model (the data choice, the report places) is checked first; messages
    for people (an unused long-text option, another prepared folder, dropped rows, the pass) go to
    ``progress``.

    Raises:
        BadInputError: Bad options, data or run (nothing written).
        GptclfError: Non-finite logits; a report that cannot be written.
    """
    device, decide = device or DeviceOptions(), decide or DecisionOptions()
    reports, progress = reports or Reports(), progress or Progress()
    refuse_distributed("evaluate")  # a single-process verb: several copies would print N times
    reports.check()  # before the model runs: nothing written
    choice.check()
    loaded = load_run(run)
    long_texts, warnings = resolve_long_texts(loaded, long or LongTextOptions())
    for warning in warnings:  # given, but not used by the mode
        progress.message(warning)
    task = loaded.task
    # Judged as predict applies them: the run's stored decision and abstention (or thresholds).
    predictor = Predictor(
        loaded, device=device.device, precision=device.precision, batch_size=device.batch_size,
        threshold=decide.threshold, calibrated=not decide.no_calibration, long_texts=long_texts,
        verb="evaluate",
    )  # fmt: skip
    wants_errors = task.no_error_report is None and reports.wants_errors
    # Read a chunk at a time: truncated texts tokenised as read; texts read in pieces or windows
    # kept packed, and given to the predictor a chunk at a time.
    compact = Compact(
        loaded.tokenizer, loaded.max_length, keep_texts=wants_errors, progress=progress,
        tokenise=long_texts.mode == "truncate",
    )  # fmt: skip
    data = choice.load(loaded, "test", "evaluate", read_ids=wants_errors, compact=compact)
    for line in _doubts(data.source):
        progress.message(line)
    progress.message(
        f"gptclf: evaluating {data.size} texts on {predictor.device} ({predictor.precision.name}), "
        + predictor.decider.describe()
    )
    metrics, logits = evaluate_with_logits(predictor, data, progress)
    if predictor.n_truncated:
        progress.message(f"gptclf: {describe_counts(predictor.long_counts(), loaded.max_length, long_texts)}")
    out = Evaluation(metrics, logits, predictor, data)
    if task.no_error_report is not None:
        if asked := reports.asked():
            out.skipped.append(f"gptclf: {', '.join(asked)} skipped: {task.no_error_report}")
    elif wants_errors:
        progress.begin("finding the misclassified texts")
        try:
            out.errors = misclassified(predictor.decider, data, logits)
        finally:
            progress.end()
    return out


def write_error_report(evaluation: Evaluation, path: Path) -> str:
    """Write the misclassified texts to ``path`` (``--errors``); the line for people."""
    rows = evaluation.errors or []
    save_errors(path, rows, evaluation.predictor.classes)
    return f"gptclf: wrote {len(rows)} misclassified texts to {path}"


def write_plot_report(evaluation: Evaluation, folder: Path) -> str:
    """Write the pictures into ``folder`` (``--plots``); the line for people (also when matplotlib
    is missing and nothing was written)."""
    e = evaluation
    written = save_plots(folder, e.predictor.run, e.data, e.logits)  # type: ignore[arg-type]
    if written is None:
        return f"gptclf: plots {SKIPPED_NOTE}"
    return f"gptclf: wrote {len(written)} plots to {folder}"


def _doubts(source: dict[str, Any]) -> list[str]:
    """What may make these numbers misleading: another prepared folder, dropped rows."""
    lines = []
    if source.get("same_as_training") is False:
        lines.append(
            "gptclf: warning: this prepared folder is not the one the run was trained on "
            "(its fingerprint differs), so its split may overlap the training texts"
        )
    dropped = sum(source.get("dropped", {}).values())
    if dropped:
        rows = "row without a text or a label was" if dropped == 1 else "rows without a text or a label were"
        lines.append(f"gptclf: {dropped} {rows} skipped")
    return lines
