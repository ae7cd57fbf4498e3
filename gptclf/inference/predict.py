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

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tiktoken
import torch

from gptclf.data.long_texts import LongCounts, LongTexts, override, stored_long_texts, unused_options
from gptclf.device import Precision
from gptclf.engines.load import OrtClassifier, load_engine
from gptclf.engines.onnx_folder import OnnxExport, is_export, read_export
from gptclf.errors import BadInputError, GptclfError
from gptclf.inference.batching import TokenSource
from gptclf.inference.chunking import chunks, waiting_chunks
from gptclf.inference.longtexts import WindowedSource, WindowMap, piecewise_logits
from gptclf.inference.loop import run_batches
from gptclf.model.classifier import Classifier
from gptclf.model.tokenizer import encode_batch
from gptclf.option_groups import DecisionOptions, DeviceOptions, LongTextOptions
from gptclf.progress import Progress
from gptclf.rundir import LoadedRun, load_run
from gptclf.tasks.base import Prediction

#: Texts read, sorted and predicted together. Large enough that sorting by length saves most of the
#: padding, small enough that a chunk's texts, ids and logits stay a few megabytes. Also the most
#: windows run together, so a 100,000-token text costs no more memory than a chunk of short ones.
CHUNK_SIZE = 1024


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
    max_padding: float | None = None,
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
        max_padding: End a batch where padding would pass this share of its tokens; None:
            batches of ``batch_size`` (see :func:`gptclf.inference.batching.sorted_batches`).

    Returns:
        ``(logits, counts)``: (N, K) float32 logits on the CPU; the long texts and the windows.
    """

    def run(windows: list[list[int]], texts: WindowMap, shown: Progress) -> torch.Tensor:
        logits = torch.zeros(len(windows), len(model.classes), dtype=torch.float32)

        def keep(indices: Sequence[int], out: torch.Tensor) -> None:
            logits[torch.as_tensor(list(indices), dtype=torch.long)] = out.float().cpu()

        # The windows are batched as texts (a row each); the progress counts the texts they are of.
        run_batches(
            model,
            WindowedSource(TokenSource(windows, pad_to), texts),
            keep,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=shown,
            label="classifying",
            max_padding=max_padding,
        )
        return logits

    token_lists = encode_batch(enc, list(texts))
    long = long or LongTexts().resolved(max_length)
    return piecewise_logits(token_lists, max_length, long, run, len(model.classes), piece, progress)


def resolve_long_texts(run: LoadedRun | OnnxExport, given: LongTextOptions) -> tuple[LongTexts, list[str]]:
    """How ``run`` reads texts longer than its max length: what it stores, with the options on top;
    and a warning line for each option given that the mode in force does not use."""
    stored = stored_long_texts(run.info)
    g = given
    long = override(stored, run.max_length, g.long_texts, g.head_tokens, g.stride, g.aggregate)
    return long, unused_options(long.mode, given.given())


def open_run(path: Path) -> LoadedRun | OnnxExport:
    """A run directory, or a folder of ``gptclf export --format onnx``, read back.

    Raises:
        BadInputError: Neither, or a damaged one.
    """
    return read_export(path) if is_export(path) else load_run(path)


class Predictor:
    """A run loaded once, classifying any number of texts.

    What the probabilities and labels mean is the run's task's (:mod:`gptclf.tasks`): ``decider``
    is that task with the options of this predictor resolved against the rules the run stores.

    Attributes:
        run: The loaded run directory, or an ONNX export folder.
        decider: Logits -> probabilities, predictions, records and metrics (the run's task).
        model: What computes the logits: the run's classifier, its int8 copy, or an ONNX session.
        device: Where the model runs.
        precision: fp32 or the autocast type.
        n_texts: Texts predicted so far (over every call).
        n_truncated: Of those, texts longer than the run's ``max_length`` (cut, or read in windows).
        n_windows: Windows (model inputs) the texts took (one per text that fits).
        long_texts: How texts longer than ``max_length`` are read (resolved).
        max_padding: A forward pass ends where padding would pass this share of its tokens;
            None (predict: its chunks of 1,024 sorted texts leave little padding): passes of
            ``batch_size`` texts.
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
        chunk_size: int | None = None,
        threshold: float | None = None,
        positive: str | None = None,
        calibrated: bool = True,
        min_confidence: float | None = None,
        long_texts: LongTexts | None = None,
        verb: str = "predict",
    ) -> None:
        """Move the run's model to ``device``.

        Args:
            run: A run from :func:`gptclf.rundir.load_run`, or an export folder.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a torch device.
            precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
            engine: ``torch``, or ``onnx`` (ONNX Runtime; the one engine of an export folder).
            quantize: ``none``, or ``int8`` (dynamic quantization; CPU and fp32 only).
            batch_size: Texts per forward pass.
            chunk_size: Texts read and sorted together; bounds memory.
            threshold: ``--threshold`` (a two-class rule with ``positive``, or one threshold for
                every label of a multi-label run); None: what the run stores.
            positive: ``--positive``.
            calibrated: Divide the logits by the temperature the run stores before the softmax;
                False gives the raw probabilities (``--no-calibration``). Labels are always
                decided on the calibrated ones.
            min_confidence: Abstain on texts whose top calibrated probability is below this;
                None: what the run stores.
            long_texts: How texts longer than the run's ``max_length`` are read
                (:func:`resolve_long_texts`); None: as the run stores.
            verb: ``predict`` or ``evaluate`` (which options the task accepts).

        Raises:
            BadInputError: A bad device, precision, engine, quantization, batch size, chunk size,
                decision option or long-texts setting; an ONNX model that does not match its record.
        """
        # Name only the value that is wrong: the CLI never lets the user set the chunk size.
        if batch_size < 1:
            raise BadInputError(f"--batch-size must be >= 1 (got {batch_size})")
        chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
        if chunk_size < 1:
            raise BadInputError(f"chunk_size must be >= 1 (got {chunk_size})")
        self.run = run
        decide = DecisionOptions(threshold, positive, min_confidence, not calibrated)
        self.decider = run.task.decider(run.info, decide, verb)
        self.long_texts = (long_texts or stored_long_texts(run.info)).resolved(run.max_length)
        self.model, self.device, self.precision = load_engine(
            run, engine=engine, quantize=quantize, device=device, precision=precision
        )
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.n_texts = 0
        self.n_truncated = 0
        self.n_windows = 0
        self.max_padding: float | None = None

    @property
    def classes(self) -> list[str]:
        """The run's class names, in the order of the probabilities."""
        return self.run.classes

    def logits(
        self, texts: Sequence[str], progress: Progress | None = None, long: LongTexts | None = None
    ) -> torch.Tensor:
        """(N, K) float32 logits of ``texts`` in input order; counts texts and truncations.

        ``long`` reads the long texts of this call in another way than the predictor's
        (resolved, as :func:`resolve_long_texts` gives it; ``serve`` takes it per request).

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
            long=long or self.long_texts,
            # At least as many windows as texts: texts of one window each run in one piece, in the
            # same batches as before windows existed (and as finetune's evaluation runs them).
            piece=max(self.chunk_size, len(texts)),
            max_padding=self.max_padding,
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
        """(N, K) probabilities of (N, K) logits, as the run's task shows them."""
        return self.decider.probabilities(logits)

    def predict_chunks(
        self, texts: Iterable[str | tuple[Any, str]], pause: float | None = None
    ) -> Iterator[list[Prediction]]:
        """Classify ``texts`` lazily, one chunk of results at a time, in input order.

        At most one chunk (``chunk_size`` texts, fewer at the end) is pulled from ``texts`` before
        its results are yielded, and the next only when the caller asks: a stream of any length is
        classified in flat memory, and each chunk's results can be written before more is read.

        Args:
            texts: Texts, or ``(id, text)`` pairs (the id is passed on to the predictions; a plain
                text's id is its 0-based position), or ``(id, text, kept)`` triples whose ``kept``
                columns (a dict) go into the predictions' ``extra``.
            pause: Seconds without a new text after which the texts read so far are predicted
                as a short chunk, so a slow or interactive producer sees its results; None
                waits for a full chunk (best for files, whose chunks sort best when full).

        Raises:
            Whatever reading ``texts`` raises, once the results of every text before it are out.
        """
        pieces = waiting_chunks(texts, self.chunk_size, pause) if pause else chunks(texts, self.chunk_size)
        start = 0
        for chunk in pieces:
            ids, items, extras = zip(
                *(_split_item(start + i, item) for i, item in enumerate(chunk)), strict=True
            )
            preds = self.decider.predictions(start, ids, items, self.logits(list(items)))
            if any(e is not None for e in extras):
                preds = [dataclasses.replace(p, extra=e) for p, e in zip(preds, extras, strict=True)]
            yield preds
            start += len(chunk)

    def predict(self, texts: Iterable[str | tuple[Any, str]]) -> Iterator[Prediction]:
        """Classify ``texts`` lazily, one result per text in input order (see :meth:`predict_chunks`)."""
        for chunk in self.predict_chunks(texts):
            yield from chunk

    def records(self, texts: Iterable[str | tuple[Any, str]]) -> Iterator[dict[str, Any]]:
        """Classify ``texts`` lazily: each text's JSON record (what ``predict --format jsonl``
        writes), in input order."""
        for p in self.predict(texts):
            yield self.decider.record(p)

    def long_counts(self) -> LongCounts:
        """The texts predicted so far, the long ones among them and the windows they took."""
        return LongCounts(self.n_texts, self.n_truncated, self.n_windows)


def with_progress(
    chunks: Iterable[list[Prediction]], progress: Progress, total: int | None
) -> Iterator[list[Prediction]]:
    """``chunks`` as they come, each counted on ``progress``: texts done, texts/s and, where the
    input's size is known (``total``), the ETA."""
    progress.begin("classifying", total=total, unit="texts")
    started, done = time.monotonic(), 0
    try:
        for chunk in chunks:
            done += len(chunk)
            rate = done / max(time.monotonic() - started, 1e-9)
            progress.advance(len(chunk), rate=f"{rate:,.1f} texts/s")
            yield chunk
    finally:
        progress.end()


def _split_item(position: int, item: str | tuple[Any, ...]) -> tuple[Any, str, dict[str, Any] | None]:
    """``(id, text, kept columns)`` of a text, an ``(id, text)`` pair or an ``(id, text, kept)`` triple."""
    if isinstance(item, str):
        return position, item, None
    return (item[0], item[1], item[2] if len(item) > 2 else None)


def text_stream(
    texts: list[str],
    input_path: str | None,
    text_column: str | None,
    id_column: str | None,
    input_format: str | None,
    encoding: str,
    keep_columns: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    skip: int = 0,
) -> Iterable[str | tuple[Any, ...]]:
    """The texts ``predict`` reads: ``texts`` given as arguments (a single ``-``: stdin), or the
    file ``input_path`` (``-``: stdin) with its text and id columns; checked before the run is loaded.
    ``skip``: the file's first rows (of the shard) are left out (a resumed job has them).

    Raises:
        BadInputError: Both or neither source, or file-only options without a file.
    """
    if texts == ["-"] and input_path is None:
        input_path = "-"
        texts = []
    if texts and input_path is not None:
        raise BadInputError("give texts as arguments or --input FILE, not both")
    if input_path is None:
        if not texts:
            raise BadInputError("nothing to classify: give texts as arguments, --input FILE, or - for stdin")
        given = {
            "--text-column": text_column, "--id-column": id_column, "--keep-columns": keep_columns,
            "--shard": shard,
        }  # fmt: skip
        stray = [f for f, v in given.items() if v]
        stray += ["--input-format"] if input_format is not None else []
        if stray:
            verb = "applies" if len(stray) == 1 else "apply"
            raise BadInputError(f"{', '.join(stray)} only {verb} to --input FILE or -")
        return texts
    from gptclf.data.tables import read_inputs

    # Stdin and files share one reader: --encoding, a BOM, CRLF and bad bytes are handled alike.
    source = input_path if input_path == "-" else Path(input_path)
    # Parts are whole chunks of the unsharded run: every chunk is sorted and batched as it would be
    # there, so the parts' records are byte for byte those of the whole input.
    records = read_inputs(
        source, text_column, id_column, fmt=input_format, encoding=encoding, keep=keep_columns,
        shard=shard, unit=CHUNK_SIZE, skip=skip,
    )  # fmt: skip
    # A file's first record is read now: a missing column, an empty, damaged or undecodable file is
    # one line before the run loads or the progress begins. Stdin's first line may be a while
    # coming: the run loads meanwhile.
    return records if source == "-" else _first_read(records)


def _first_read(items: Iterable[Any]) -> Iterator[Any]:
    """``items`` with its first item already read (an error in it raised here, not later)."""
    it = iter(items)
    try:
        first = next(it)
    except StopIteration:
        return iter(())
    return itertools.chain([first], it)


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> ``(K, N)``: the K-th (1-based) of N parts.

    Raises:
        BadInputError: Not two whole numbers with 1 <= K <= N.
    """
    k, slash, n = text.partition("/")
    if not slash or not k.strip().isdigit() or not n.strip().isdigit():
        raise BadInputError(f"--shard {text!r} is not K/N (for example 2/8: the second of 8 parts)")
    shard = int(k), int(n)
    if not 1 <= shard[0] <= shard[1]:
        raise BadInputError(f"--shard {text}: K must be between 1 and N (parts are numbered from 1)")
    return shard


def open_predictor(
    run: Path,
    *,
    engine: str | None = None,
    quantize: str = "none",
    device: DeviceOptions | None = None,
    decide: DecisionOptions | None = None,
    long: LongTextOptions | None = None,
    note: Callable[[str], None] | None = None,
) -> Predictor:
    """``predict``'s core: the run (or ONNX export folder) ``run`` loaded once, with the options
    resolved against what it stores; its :meth:`Predictor.predict_chunks` and
    :meth:`Predictor.records` turn texts into predictions and records, for any engine.

    Args:
        engine: ``torch`` or ``onnx``; None: torch, or onnx for an export folder.
        quantize: ``none`` or ``int8``.
        device, decide, long: The option groups (None: their defaults, the run's stored rules).
        note: Receives a line for people (an unused long-text option, an on-the-fly export).

    Raises:
        BadInputError: A bad run or option.
    """
    device, decide = device or DeviceOptions(), decide or DecisionOptions()
    say = note or (lambda line: None)
    loaded = open_run(run)
    long_texts, warnings = resolve_long_texts(loaded, long or LongTextOptions())
    for warning in warnings:  # given, but not used by the mode
        say(warning)
    exported = isinstance(loaded, OnnxExport)
    engine = engine or ("onnx" if exported else "torch")
    if engine == "onnx" and not exported:
        say("gptclf: exporting the run to ONNX first (`gptclf export` does it once)")
    # The run's stored rules are the defaults; the options replace them (the run's task says how).
    return Predictor(
        loaded, device=device.device, precision=device.precision, engine=engine, quantize=quantize,
        batch_size=device.batch_size, threshold=decide.threshold, positive=decide.positive,
        calibrated=not decide.no_calibration, min_confidence=decide.min_confidence, long_texts=long_texts,
    )  # fmt: skip
