"""The model behind the server: a run loaded once, its batcher, and a request's records.

:class:`Service` is what every endpoint asks. It holds the :class:`~gptclf.inference.predict.Predictor`
that ``gptclf predict`` uses, opened with the server's options (:class:`ServeSettings`), and turns a
checked request into the records ``predict --format jsonl`` writes for the same texts and options:
the request's options are resolved against the run exactly as the CLI resolves its flags (the run's
task builds the decider; :func:`~gptclf.inference.predict.resolve_long_texts` reads the long-text
options), and its texts go through the :class:`~gptclf.serving.batcher.Batcher` with those of
other requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptclf.data.long_texts import LongTexts
from gptclf.engines.load import OrtClassifier
from gptclf.errors import BadInputError
from gptclf.inference.longtexts import window_count
from gptclf.inference.predict import Predictor, open_predictor, resolve_long_texts
from gptclf.model.tokenizer import encode_batch
from gptclf.option_groups import DecisionOptions, DeviceOptions, LongTextOptions
from gptclf.serving.batcher import Batcher, BatchStats
from gptclf.serving.requests import ClassifyRequest, RequestError, field_words, with_options
from gptclf.tasks.base import Decider

#: Texts per forward pass by default (``--batch-size``), whatever ``--max-batch-size`` gathers.
PASS_SIZE = 64
#: A forward pass ends where padding would pass this share of its tokens (a pass pads to its
#: own longest text; requests' texts come in random lengths, not sorted over 1,024 as predict's).
MAX_PADDING = 0.25
#: Where ``--workers`` hands the settings to each worker process (JSON).
SETTINGS_ENV = "GPTCLF_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServeSettings:
    """Everything a server process needs to open the run and serve it.

    Attributes:
        run: A run directory, or a folder of ``gptclf export --format onnx``.
        engine: ``torch`` or ``onnx``; None: torch, or onnx for an export folder.
        quantize: ``none`` or ``int8``.
        device: Device, precision, and the most texts per forward pass: a gathered batch is
            sorted by length and cut into passes of at most this many texts, a pass ending where
            padding would pass :data:`MAX_PADDING` of its tokens (one pass over 32 texts of random
            lengths would mostly compute padding).
        decide: The decision options every request starts from (the run's stored rules by default).
        long: The long-text options every request starts from.
        max_batch_size: The most texts in one forward pass, gathered across requests.
        max_wait_ms: How long a batch waits for more texts after its first.
        max_queue: The most texts waiting for a batch; beyond it requests get 503.
        max_texts: The most texts in one request (413 beyond).
        max_body_bytes: The largest request body (413 beyond).
        max_windows: With ``--long-texts window``, the most windows (model inputs) one request's
            texts may take (413 beyond); None: ``max_texts``, as many as the largest request of
            texts that fit.
        request_timeout: Seconds a request may wait for its results (504 beyond).
        api_key_file: A file holding the bearer token every /v1 and /metrics request must send.
        threads: torch's CPU threads in this process; None: torch's default.
    """

    run: str
    engine: str | None = None
    quantize: str = "none"
    device: DeviceOptions = field(default_factory=lambda: DeviceOptions(batch_size=PASS_SIZE))
    decide: DecisionOptions = field(default_factory=DecisionOptions)
    long: LongTextOptions = field(default_factory=LongTextOptions)
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 4096
    max_texts: int = 1024
    max_body_bytes: int = 1 << 20
    max_windows: int | None = None
    request_timeout: float = 60.0
    api_key_file: str | None = None
    threads: int | None = None

    def problems(self) -> list[str]:
        """What is wrong with the numbers (each names its flag)."""
        out = []
        for flag, value, least in (
            ("--max-batch-size", self.max_batch_size, 1),
            ("--max-queue", self.max_queue, 1),
            ("--max-texts", self.max_texts, 1),
            ("--max-body-bytes", self.max_body_bytes, 64),
            ("--max-windows", self.max_windows if self.max_windows is not None else 1, 1),
        ):
            if value < least:
                out.append(f"{flag} must be >= {least} (got {value})")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            out.append(f"--max-wait-ms must be a number >= 0 (got {self.max_wait_ms})")
        if not (math.isfinite(self.request_timeout) and self.request_timeout > 0):
            out.append(f"--request-timeout must be a number of seconds > 0 (got {self.request_timeout})")
        if self.max_texts > self.max_queue:
            out.append(f"--max-texts ({self.max_texts}) must be at most --max-queue ({self.max_queue})")
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        raw = json.loads(text)
        groups = {"device": DeviceOptions, "decide": DecisionOptions, "long": LongTextOptions}
        return cls(**{k: groups[k](**v) if k in groups else v for k, v in raw.items()})


def read_api_key(path: str) -> str:
    """The bearer token in ``path`` (its first line, without surrounding white space).

    Raises:
        BadInputError: The file cannot be read, or holds no token.
    """
    try:
        key = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"--api-key-file {path}: cannot read it ({exc.__class__.__name__})") from None
    if not key or not key[0].strip():
        raise BadInputError(f"--api-key-file {path} is empty: write the token on its first line")
    if len(key[0].strip()) < 16:
        raise BadInputError(f"--api-key-file {path}: the token is under 16 characters; use a long random one")
    return key[0].strip()


class Service:
    """A run loaded once, serving requests through one batcher.

    Attributes:
        settings: The server's settings.
        predictor: The run and its engine (shared with ``gptclf predict``).
        batcher: Gathers the texts of concurrent requests.
    """

    def __init__(
        self, settings: ServeSettings, predictor: Predictor | None = None, stats: BatchStats | None = None
    ):
        """Open the run (unless ``predictor`` is the run already opened).

        Raises:
            BadInputError: A bad run, engine or option (the CLI's message).
        """
        problems = settings.problems()
        if problems:
            raise BadInputError(problems[0])
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        self.settings = settings
        if predictor is None:
            passes = min(settings.device.batch_size, settings.max_batch_size)
            device = dataclasses.replace(settings.device, batch_size=passes)
            predictor = open_predictor(
                Path(settings.run), engine=settings.engine, quantize=settings.quantize, device=device,
                decide=settings.decide, long=settings.long,
            )  # fmt: skip
        self.predictor = predictor
        predictor.max_padding = MAX_PADDING
        self.api_key = read_api_key(settings.api_key_file) if settings.api_key_file else None
        self.stats = stats or BatchStats()
        self.batcher: Batcher | None = None

    def start(self) -> None:
        """Start the batcher on the running event loop."""
        s = self.settings
        self.batcher = Batcher(
            self._compute, max_batch=s.max_batch_size, max_wait=s.max_wait_ms / 1000,
            max_queue=s.max_queue, stats=self.stats,
        )  # fmt: skip
        self.batcher.start()

    def _compute(self, texts: list[str], long: LongTexts) -> Any:
        return self.predictor.logits(texts, long=long)

    def resolve(self, request: ClassifyRequest) -> tuple[Decider, LongTexts, list[str]]:
        """The request's decider and long-text setting (the server's options with the request's on
        top), and a warning for each long-text number the mode in force does not use. Built anew for
        each request (it costs microseconds): no client can grow a cache of option combinations.

        Raises:
            RequestError: 422, an option the run refuses (the CLI's reason, in the request's words).
        """
        run = self.predictor.run
        try:
            decide = with_options(self.settings.decide, request.decide).check()
            decider = run.task.decider(run.info, decide, "predict")
            given = with_options(self.settings.long, request.long).check()
            long, warnings = resolve_long_texts(run, given)
        except BadInputError as exc:
            raise RequestError(422, field_words(str(exc))) from None
        return (
            decider,
            long.resolved(run.max_length),
            [field_words(w.removeprefix("gptclf: warning: ")) for w in warnings],
        )

    async def classify(self, request: ClassifyRequest) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of the request's texts, in order (``predict --format jsonl``'s), and the
        warnings ``predict`` would print for the same options.

        Raises:
            RequestError: A bad option (422).
            QueueFull, Draining, TimeoutError: From the batcher.
        """
        decider, long, warnings = self.resolve(request)
        if long.mode == "window":
            await self._check_windows(request.texts, long)
        assert self.batcher is not None, "the service is not started"
        logits = await self.batcher.submit(request.texts, long, timeout=self.settings.request_timeout)
        ids = request.ids if request.ids is not None else list(range(len(request.texts)))
        return [decider.record(p) for p in decider.predictions(0, ids, request.texts, logits)], warnings

    async def _check_windows(self, texts: list[str], long: LongTexts) -> None:
        """Refuse (413) texts whose windows pass ``max_windows``: a few long texts read with a small
        stride would otherwise hold the model for minutes, every other client waiting."""
        limit = self.settings.max_windows or self.settings.max_texts
        run = self.predictor.run
        lengths = await asyncio.to_thread(lambda: [len(ids) for ids in encode_batch(run.tokenizer, texts)])
        total = sum(window_count(n, run.max_length, long) for n in lengths)
        if total > limit:
            raise RequestError(
                413,
                f"these texts take {total} windows of {run.max_length} tokens; the server takes at most "
                f"{limit} a request (--max-windows): send fewer or shorter texts, or a larger stride",
            )

    def model_info(self) -> dict[str, Any]:
        """``GET /v1/model``: what the server classifies with."""
        p, info = self.predictor, self.predictor.run.info
        long = p.long_texts
        return {
            "classes": p.classes,
            "task": p.run.task.key,
            "max_length": p.run.max_length,
            "engine": "onnx" if isinstance(p.model, OrtClassifier) else "torch",
            "quantize": self.settings.quantize,
            "device": str(p.device),
            "precision": p.precision.name,
            "decision": info.get("decision"),
            "calibration": info.get("calibration"),
            "abstain": info.get("abstain"),
            "thresholds": info.get("thresholds"),
            "long_texts": dataclasses.asdict(long),
            "max_batch_size": self.settings.max_batch_size,
            "batch_size": p.batch_size,
            "max_wait_ms": self.settings.max_wait_ms,
            "pid": os.getpid(),
        }
