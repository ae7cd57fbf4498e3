"""Settings of ``gptclf adapt``: each option declared once, as a field of :class:`AdaptSettings`.

The options it shares with ``finetune`` (the model, the weights, LoRA, the seed, the run folder's
flags, the device) are finetune's declarations (:func:`gptclf.options.reuse`); the training options
are :class:`gptclf.training.settings.TrainConfig`'s, less those that only a classifier has
(:data:`ADAPT_TRAIN`). :func:`adapt_plan` checks every setting that needs no data, all problems in
one line, and resolves them into the objects a run needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptclf.device import Precision, resolve_device, resolve_precision
from gptclf.distributed import local_job
from gptclf.errors import BadInputError
from gptclf.model.classifier import TrainableScope, parse_scope
from gptclf.model.config import GPTConfig
from gptclf.model.hfconfig import resolve_base_model
from gptclf.model.weights import weights_problems
from gptclf.option_groups import DeviceOptions, InputOptions
from gptclf.options import OptionSpec, coerce, field_problems, option, option_specs, reuse
from gptclf.training.plan import attempt, data_folder_problem  # attempt: note a BadInputError, go on
from gptclf.training.settings import FinetuneSettings, TrainConfig

_DATA, _MODEL, _TRAIN, _RUN = "Data", "Model", "Training", "Run"
#: The TrainConfig options ``adapt`` takes (the others choose among classes, or pad texts).
ADAPT_TRAIN = (
    "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "clip_grad", "schedule", "warmup",
    "eval_every", "checkpoint_every", "early_stop",
)  # fmt: skip
#: How ``adapt`` words the help of TrainConfig options whose unit is a block, not a text.
ADAPT_HELP = {
    "batch_size": "Blocks per forward pass, per device",
    "early_stop": "Stop after N evaluations without a lower validation loss",
}
#: Settings a resumed run may change: where and how fast it runs, not what it computes.
RESUME_CHANGEABLE = frozenset({"device", "precision", "checkpoint_every", "home", "mirror", "out", "resume"})


@dataclass(frozen=True)
class AdaptSettings:
    """Everything ``gptclf adapt`` takes; field names are the long options with underscores.

    ``None`` means "not given" or "derive it": ``block_size`` is the model's context,
    ``max_tokens`` all of them.
    """

    input: list[str] | None = option(  # noqa: RUF009 - option() is a dataclasses.field
        None,
        "Texts: TXT (one a line), CSV/TSV/JSONL/Parquet (--text-column), - for stdin; repeat for more",
        _DATA,
        aliases=("-i",),
        metavar="FILE",
    )
    data: str | None = option(
        None, "Prepared folder: its train and validation texts and the rows prepare set aside", _DATA
    )
    source: str | None = option(
        None,
        "With --data: the file it was prepared from, for the rows prepare set aside",
        _DATA,
        default_text="the cached copy of a known dataset",
    )
    text_column: str | None = reuse(InputOptions, "text_column", panel=_DATA, help="Text column of --input")
    input_format: str | None = reuse(InputOptions, "input_format", panel=_DATA)
    encoding: str = reuse(InputOptions, "encoding", panel=_DATA)
    block_size: int | None = option(
        None, "Tokens per training block", _DATA, default_text="the model's context", at_least=2
    )
    max_tokens: int | None = option(
        None, "Use at most N tokens of text", _DATA, default_text="all", at_least=2
    )
    validation: float = option(
        0.1, "Share of the texts held out to measure perplexity", _DATA, probability="[0, 1)"
    )
    model: str = reuse(FinetuneSettings, "model")
    weights: str = reuse(FinetuneSettings, "weights")
    trainable: str = option(
        "all", "all, 'last-blocks N' or lora (the tied output layer trains with all only)", _MODEL
    )
    lora_rank: int = reuse(FinetuneSettings, "lora_rank")
    lora_alpha: float = reuse(FinetuneSettings, "lora_alpha")
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = reuse(FinetuneSettings, "seed")
    device: str = reuse(DeviceOptions, "device", panel=_RUN)
    precision: str = reuse(DeviceOptions, "precision", panel=_RUN)
    out: str | None = option(None, "The Hugging Face GPT-2 folder to write", _RUN, default_text="required")
    force: bool = reuse(FinetuneSettings, "force", help="Overwrite a non-empty --out")
    resume: bool = reuse(FinetuneSettings, "resume", help="Continue the interrupted adapt of --out")
    home: str | None = reuse(FinetuneSettings, "home")
    mirror: str | None = reuse(FinetuneSettings, "mirror")
    #: Which options were given (for messages and resume).
    given: frozenset[str] = field(default=frozenset(), compare=False)

    def option(self, name: str) -> Any:
        """The value of the option ``name``, wherever it is nested."""
        return getattr(self.train if name in ADAPT_TRAIN else self, name)

    def with_options(self, values: dict[str, Any], given: frozenset[str] | None = None) -> AdaptSettings:
        """A copy with the options ``values`` (by name) changed, and ``given`` if that is passed."""
        train = {k: v for k, v in values.items() if k in ADAPT_TRAIN}
        top = {k: v for k, v in values.items() if k not in ADAPT_TRAIN}
        return dataclasses.replace(
            self,
            **top,
            train=dataclasses.replace(self.train, **train),
            given=self.given if given is None else given,
        )

    def problems(self) -> list[str]:
        """What is wrong before any file is read (every problem, each naming its option)."""
        out = field_problems(self) + self.train.problems()
        if not self.input and self.data is None and not self.resume:
            out.append("give the texts to adapt on: --input FILE (- for stdin) or --data DIR")
        if self.out is None:
            out.append("--out LMDIR is required: the folder to write the adapted model into")
        # A resumed run reads its blocks from its work folder, not from --data.
        if self.data is not None and not self.resume and (problem := data_folder_problem(self.data)):
            out.append(problem)
        if self.source is not None and self.data is None:
            out.append("--source names the file a prepared folder was made from: it needs --data")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (without ``given``), the training ones nested under ``train``."""
        out = dataclasses.asdict(self)
        out.pop("given")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], given: frozenset[str] = frozenset()) -> AdaptSettings:
        """Inverse of :meth:`to_dict`."""
        flat = {**{k: v for k, v in data.items() if k != "train"}, **data.get("train", {})}
        return cls().with_options({k: v for k, v in flat.items() if k in _SPECS}, given)


def adapt_option_specs() -> list[OptionSpec]:
    """The options of ``gptclf adapt``, in declaration order (TrainConfig's in :data:`ADAPT_TRAIN`)."""
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    return [s for s in option_specs(AdaptSettings) if s.name not in train or s.name in ADAPT_TRAIN]


_SPECS = {spec.name: spec for spec in adapt_option_specs()}


def build_adapt_settings(options: dict[str, Any]) -> AdaptSettings:
    """The settings of the options given (None values are "not given"), checked for type and range.

    Raises:
        BadInputError: Unknown names, wrong types, or values out of range (all in one line).
    """
    given = {k: v for k, v in options.items() if v is not None and v != []}
    unknown = sorted(set(given) - set(_SPECS))
    if unknown:
        raise BadInputError(f"unknown adapt options: {', '.join(unknown)}")
    problems: list[str] = []
    values = {}
    for name, value in given.items():
        values[name], problem = coerce(_SPECS[name], value) if name != "input" else (list(value), None)
        if problem:
            problems.append(problem)
    if problems:
        raise BadInputError("; ".join(problems))
    return AdaptSettings().with_options(values, given=frozenset(values))


@dataclass(frozen=True)
class AdaptPlan:
    """The settings resolved into what a run needs."""

    model_name: str
    config: GPTConfig
    scope: TrainableScope
    device: torch.device
    precision: Precision
    block_size: int
    home: Path | None


def adapt_plan(settings: AdaptSettings) -> AdaptPlan:
    """Check every setting that needs no data, and resolve it.

    Raises:
        BadInputError: Listing every problem found (nothing is written).
    """
    problems = settings.problems()
    resolved = attempt(problems, resolve_base_model, settings.model, settings.weights)
    scope = attempt(problems, parse_scope, settings.trainable, settings.lora_rank, settings.lora_alpha)
    if scope is not None and scope.kind == "head":
        problems.append(
            "--trainable head: a language model has no head of its own (its output layer is the token "
            "embedding): use all, 'last-blocks N' or lora"
        )
    device = attempt(problems, resolve_device, settings.device, local_job())
    precision = attempt(problems, resolve_precision, settings.precision, device) if device else None
    problems += weights_problems(settings.weights, resolved[0] if resolved else None)
    block_size = 0
    if resolved is not None:
        cfg = resolved[1]
        problems += scope.problems(cfg.n_layer, cfg.n_embd) if scope else []
        block_size = cfg.n_positions if settings.block_size is None else settings.block_size
        if block_size > cfg.n_positions:
            problems.append(
                f"--block-size {block_size} is over the model's context ({cfg.n_positions} tokens)"
            )
    if problems:
        raise BadInputError("; ".join(problems))
    home = Path(settings.home).expanduser() if settings.home else None
    return AdaptPlan(resolved[0], resolved[1], scope, device, precision, block_size, home)
