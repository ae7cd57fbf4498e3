"""Settings of a finetuning run: typed dataclasses, TOML files, and command-line overrides.

Each option is declared once, as a field of :class:`TrainConfig` (how to train), of
:class:`FinetuneSettings` (everything else a run takes; it nests the TrainConfig) or of
:class:`gptclf.distributed.LaunchSettings` (how the processes of a run are started): type, default,
help and the simple rules on its value (see :mod:`gptclf.options`). The options finetune shares
with other verbs (device, precision, the --target) are those of :mod:`gptclf.option_groups`, taken
field by field (:func:`gptclf.options.reuse`) so that the recorded settings stay flat. The TOML
reading, the options and help of ``gptclf finetune`` and run.json's ``train`` record are derived
from those fields.

Precedence, lowest first: the defaults below, a ``--config FILE.toml``, the options given on the
command line. A TOML file's keys are the long option names (``batch-size`` or ``batch_size``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptclf.data.long_texts import AGGREGATES, MODES, LongTexts, unused_options
from gptclf.errors import BadInputError
from gptclf.model.classifier import POOLINGS
from gptclf.option_groups import DeviceOptions, TargetOptions
from gptclf.options import coerce, field_problems, option, option_names, option_specs, reuse

SCHEDULES = ("constant", "cosine")
MONITORS = ("val_loss", "val_acc", "val_f1", "val_micro_f1")
CLASS_WEIGHTS = ("none", "balanced")
PAD_TO = ("batch", "longest-train")
#: The largest --lr accepted: AdamW steps each weight by about lr, and weights of a GPT-2 are of
#: order 0.1, so an lr above 1 can only blow training up (usual values are 1e-5 .. 1e-3).
MAX_LR = 1.0

_DATA, _MODEL, _TRAIN, _RUN = "Data", "Model", "Training", "Run"


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`gptclf.training.loop.fit` trains; run.json records it under ``train``.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Texts per forward pass (per device under DDP).
        grad_accum: Forward passes per optimizer step; the effective batch is ``batch_size *
            grad_accum`` texts, drawn as one batch and split, so it matches one large batch.
        lr: AdamW learning rate (peak, after warmup).
        weight_decay: AdamW weight decay, applied to every trainable tensor as in the book.
        clip_grad: Clip the gradient's global norm to this value; None: no clipping.
        schedule: ``constant`` or ``cosine`` (a half cosine from ``lr`` after warmup that would
            reach 0 one step after the last, so that the last step still trains).
        warmup: Linear warmup: a number of steps (>= 1) or a fraction of all steps (< 1).
        eval_every: Also evaluate every this many optimizer steps; None: at epoch ends only.
        checkpoint_every: Also save a resumable checkpoint every this many optimizer steps; epoch
            ends always save one.
        early_stop: Stop after this many evaluations without improvement; None: never.
        monitor: ``val_loss``, ``val_acc``, ``val_f1`` or (multi-label) ``val_micro_f1``: what
            "best" means.
        class_weights: ``none`` or ``balanced`` (weights n / (K * count) in the loss).
        pad_to: ``batch`` (each batch to its own longest text) or ``longest-train`` (every text
            to the longest training text, as the book does).
        bucket: Group training texts of similar length into batches; derived from ``pad_to``:
            padding everything to one length makes grouping by length pointless, and plain
            shuffled batches are what the book's DataLoader draws, so the comparison stays faithful.
        eval_batch_size: Texts per forward pass when evaluating or building the cache.
    """

    epochs: int = option(5, "Epochs", _TRAIN, at_least=1)
    batch_size: int = option(8, "Texts per forward pass, per device", _TRAIN, at_least=1)
    grad_accum: int = option(1, "Forward passes per optimizer step", _TRAIN, at_least=1)
    lr: float = option(5e-5, "AdamW learning rate", _TRAIN, above=0.0, at_most=MAX_LR)
    weight_decay: float = option(0.1, "AdamW weight decay", _TRAIN)
    clip_grad: float | None = option(
        None, "Clip the gradient norm to this", _TRAIN, above=0.0, default_text="off"
    )
    schedule: str = option("constant", "Learning-rate schedule", _TRAIN, choices=SCHEDULES)
    warmup: float = option(0.0, "Warmup steps (>= 1) or fraction of all steps (< 1)", _TRAIN)
    eval_every: int | None = option(
        None, "Also evaluate every N steps", _TRAIN, at_least=1, default_text="epoch ends only"
    )
    checkpoint_every: int | None = option(
        None,
        "Also save a resumable checkpoint every N steps",
        _TRAIN,
        at_least=1,
        default_text="epoch ends only",
    )
    early_stop: int | None = option(
        None, "Stop after N evaluations without improvement", _TRAIN, at_least=1, default_text="never"
    )
    monitor: str = option("val_loss", "What the kept weights are best at", _TRAIN, choices=MONITORS)
    class_weights: str = option("none", "Class weights in the loss", _TRAIN, choices=CLASS_WEIGHTS)
    pad_to: str = option("batch", "How texts are padded (longest-train is the book's)", _DATA, choices=PAD_TO)
    bucket: bool = field(init=False, default=True)
    eval_batch_size: int = field(default=32, metadata={"at_least": 1})

    def __post_init__(self) -> None:
        object.__setattr__(self, "bucket", self.pad_to == "batch")  # frozen: set the derived field

    def problems(self) -> list[str]:
        """Everything wrong with these values, as messages naming the option."""
        out = field_problems(self)
        if 0 < self.lr <= MAX_LR and 0 <= self.weight_decay < math.inf and self.lr * self.weight_decay >= 1:
            # AdamW multiplies every weight by (1 - lr * weight_decay) per step: >= 1 zeroes or
            # flips them all, and training diverges.
            out.append(
                f"--weight-decay {self.weight_decay:g} with --lr {self.lr:g} scales the weights by "
                f"1 - lr * weight-decay <= 0 each step: keep weight-decay below 1 / lr"
            )
        if math.isfinite(self.warmup) and self.warmup >= 1 and not float(self.warmup).is_integer():
            out.append(f"--warmup must be a fraction (< 1) or a whole number of steps (got {self.warmup:g})")
        return out

    def warmup_steps(self, total_steps: int) -> int:
        """Warmup length in optimizer steps."""
        return round(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)

    def learning_rate(self, step: int, total: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based, ``< total``) of ``total`` steps.

        Linear warmup from ``lr / warmup`` up to ``lr`` at step ``warmup - 1``, then constant, or a
        half cosine from ``lr`` at step ``warmup`` that reaches 0 at step ``total``, one past the
        last step that runs. No step that runs has a learning rate of 0 (AdamW with lr 0 neither
        moves nor decays the weights, so such a step would be wasted), and the cosine part is
        PyTorch's ``CosineAnnealingLR(T_max=total - warmup)`` and Hugging Face's
        ``get_cosine_schedule_with_warmup`` (which, unlike this, also spends step 0 at lr 0).
        """
        warmup = self.warmup_steps(total)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: run.json's ``train`` record."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything ``gptclf finetune`` takes; field names are the long options with underscores.

    ``None`` means "derive it": ``classes`` from the prepared data, ``max_length`` from the model's
    context, ``cache_memory`` 256 MB (:func:`default_cache_memory`), ``out`` ``runs/<timestamp>``,
    ``home`` and ``mirror`` from the environment. The training options live in :attr:`train`; :meth:`option`
    reads any option by its name.
    """

    data: str | None = option(
        None, "Prepared folder (from `gptclf prepare`)", _DATA, default_text="the SMS set"
    )
    classes: list[str] | None = option(  # noqa: RUF009 - option() is a dataclasses.field
        None, "Class names in order, e.g. spam,ham", _DATA, default_text="those of the prepared data"
    )
    max_length: int | None = option(None, "Tokens kept per text", _DATA, default_text="the context")
    long_texts: str = option("truncate", "Texts longer than --max-length", _DATA, choices=MODES)
    head_tokens: int | None = option(
        None, "head-tail: tokens kept from the start", _DATA, default_text="a quarter of --max-length"
    )
    stride: int | None = option(
        None, "window: tokens between window starts", _DATA, default_text="half of --max-length"
    )
    aggregate: str = option("mean", "window: how the windows' logits are combined", _DATA, choices=AGGREGATES)
    model: str = option(
        "gpt2-small",
        "gpt2-small .. gpt2-xl, 124M .. 1558M, distilgpt2, n_layer=4,n_head=4,n_embd=256, or a "
        "Hugging Face GPT-2 folder",
        _MODEL,
    )
    weights: str = option("pretrained", "pretrained, random, or a safetensors path", _MODEL)
    trainable: str = option("last-block", "head, last-block, 'last-blocks N', all, lora", _MODEL)
    lora_rank: int = option(16, "LoRA rank", _MODEL)
    lora_alpha: float = option(16.0, "LoRA alpha", _MODEL)
    pooling: str = option(
        "last-token", "Where a text is read (last-position is the book's)", _MODEL, choices=POOLINGS
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = option(123, "Seed of every random step", _TRAIN)
    # Declared once with calibrate's (gptclf.option_groups), kept flat here so that the recorded
    # settings keep their keys. Checked against the classes by gptclf.tasks.decisions.check_target
    # once the data are read.
    target: str | None = reuse(TargetOptions, "target", panel=_RUN, default_text="none (argmax)")
    positive: str | None = reuse(TargetOptions, "positive", panel=_RUN)
    device: str = reuse(DeviceOptions, "device", panel=_RUN)
    precision: str = reuse(DeviceOptions, "precision", panel=_RUN)
    cache: bool = option(True, "Cache the frozen blocks' output", _RUN)
    cache_memory: str | None = option(
        None,
        "RAM for the cache, e.g. 2GB; beyond it a file in TMPDIR",
        _RUN,
        default_text="256MB (1/4 of RAM where TMPDIR lacks room)",
        int_as_text=True,
    )
    out: str | None = option(None, "Run directory", _RUN, default_text="runs/<timestamp>")
    force: bool = option(False, "Overwrite a non-empty run directory", _RUN)
    resume: bool = option(False, "Continue the interrupted run in --out", _RUN)
    home: str | None = option(None, "Cache folder", _RUN, default_text="$GPTCLF_HOME or ~/.cache/gptclf")
    mirror: str | None = option(None, "Download mirror URL or folder", _RUN, default_text="$GPTCLF_MIRROR")
    #: Which options were set by a config file or the command line (for messages and resume).
    given: frozenset[str] = field(default=frozenset(), compare=False)

    def option(self, name: str) -> Any:
        """The value of the option ``name`` (underscores), wherever it is nested."""
        return getattr(self.train if name in _TRAIN_NAMES else self, name)

    def with_options(self, values: dict[str, Any], given: frozenset[str] | None = None) -> FinetuneSettings:
        """A copy with the options ``values`` (by name) changed, and ``given`` if that is passed."""
        train = {k: v for k, v in values.items() if k in _TRAIN_NAMES}
        top = {k: v for k, v in values.items() if k not in _TRAIN_NAMES}
        return dataclasses.replace(
            self,
            **top,
            train=dataclasses.replace(self.train, **train),
            given=self.given if given is None else given,
        )

    def _cache_memory_warnings(self) -> list[str]:
        """A ``--cache-memory`` over the machine's RAM: a cache that big would be swapped or killed."""
        if self.cache_memory is None:
            return []
        try:
            asked = parse_size(self.cache_memory)
        except BadInputError:
            return []  # the plan says it is not a size
        ram = total_memory()
        if not ram or asked <= ram:
            return []
        return [
            f"gptclf: warning: --cache-memory {self.cache_memory} is more than this machine's RAM "
            f"({ram / 2**30:,.1f} GB): a cache past what RAM holds is swapped out or killed, where one "
            "in a file trains as fast (leave --cache-memory out for the default)"
        ]

    def long(self) -> LongTexts:
        """The long-texts settings, unresolved (:meth:`gptclf.data.long_texts.LongTexts.resolved`)."""
        return LongTexts(self.long_texts, self.head_tokens, self.stride, self.aggregate)

    def warnings(self) -> list[str]:
        """Options that were given (flag or config file) but have no effect, or ask for more RAM
        than the machine has, one line each."""
        long = {n: self.option(n) for n in ("head_tokens", "stride", "aggregate") if n in self.given}
        warnings = unused_options(self.long_texts, long)
        warnings += self._cache_memory_warnings()
        unused = [f"--{name.replace('_', '-')}" for name in ("lora_rank", "lora_alpha") if name in self.given]
        if not unused or self.trainable.strip() == "lora":
            return warnings
        verb = "applies" if len(unused) == 1 else "apply"
        return [
            f"gptclf: warning: {' and '.join(unused)} {verb} only with --trainable lora; "
            f"ignored for --trainable {self.trainable}",
            *warnings,
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (without ``given``), the training ones nested under ``train``."""
        out = dataclasses.asdict(self)
        out.pop("given")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], given: frozenset[str] = frozenset()) -> FinetuneSettings:
        """Inverse of :meth:`to_dict`; also reads the flat dicts of checkpoints from before the
        nesting (the training options beside the others)."""
        flat = {**{k: v for k, v in data.items() if k != "train"}, **data.get("train", {})}
        return FinetuneSettings().with_options({k: v for k, v in flat.items() if k in _INIT_NAMES}, given)


_TRAIN_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.init)
#: Every name :meth:`FinetuneSettings.with_options` takes: the options and TrainConfig's other fields.
_INIT_NAMES = option_names(FinetuneSettings) | _TRAIN_NAMES
_SPECS = {spec.name: spec for spec in option_specs(FinetuneSettings)}


def _coerce_all(values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """``values`` checked against their options' types (problems noted), unknown names left out."""
    out = {}
    for name, value in values.items():
        coerced, problem = coerce(_SPECS[name], value)
        if problem:
            problems.append(problem)
        out[name] = coerced
    return out


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML file ``path`` as a dict; ``what`` names it in the error (``config file``, ``--space``).

    Raises:
        BadInputError: The file is missing, unreadable or not TOML.
    """
    if str(path) == "-":
        raise BadInputError(f"{what} - : standard input is not read for a TOML file; give its path")
    if path.is_dir():
        raise BadInputError(f"{what} {path} is a folder: give the TOML file's path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"{what} {path} is not valid TOML ({exc})") from None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config into option values (underscore names), checking names and types.

    Raises:
        BadInputError: The file is missing or not TOML, has unknown keys (all named), or values
            of the wrong type.
    """
    raw = read_toml(Path(path), "config file")
    problems = []
    unknown = sorted(k for k in raw if k.replace("-", "_") not in _SPECS)
    if unknown:
        problems.append(f"unknown keys {', '.join(unknown)} (keys are finetune's long option names)")
    named: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in named:
            problems.append(f"{key} is given twice (with - and with _)")
        if name in _SPECS:
            named[name] = value
    values = _coerce_all(named, problems)
    if problems:
        raise BadInputError(f"config file {path}: " + "; ".join(problems))
    return values


def build_settings(options: dict[str, Any], config_file: Path | None = None) -> FinetuneSettings:
    """Merge defaults, a config file and explicitly given options (None values are "not given").

    Args:
        options: Option name (underscores) -> value as given on the command line.
        config_file: A TOML file whose values the options override.

    Raises:
        BadInputError: Unknown option names, values of the wrong type, or a bad config file.
    """
    merged = load_config_file(config_file) if config_file is not None else {}
    given_options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given_options) - set(_SPECS))
    if unknown:
        raise BadInputError(f"unknown finetune options: {', '.join(unknown)}")
    problems: list[str] = []
    merged.update(_coerce_all(given_options, problems))
    if problems:
        raise BadInputError("; ".join(problems))
    return FinetuneSettings().with_options(merged, given=frozenset(merged))


#: A number, then optionally a unit: bytes (``B`` or nothing) or a prefix K/M/G/T with an optional
#: ``i`` and ``B`` (``G``, ``GB``, ``GiB``). Every accepted spelling has its prefix in ``_UNITS``.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?)?b?\s*$", re.IGNORECASE | re.ASCII)
_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a memory size: ``2GB``, ``512MB``, ``1.5G``, ``64MiB``, ``512B``, ``0``, or plain bytes.

    Units are binary (1 GB = 2**30 bytes), as memory is counted.

    Raises:
        BadInputError: Not a size.
    """
    match = _SIZE_RE.match(str(text))
    problem = BadInputError(f"--cache-memory {text!r} is not a size: write e.g. 2GB, 512MB, 4096B or 0")
    if not match:
        raise problem
    number, prefix = match.groups()
    try:
        return int(float(number) * _UNITS[prefix and prefix.lower()])
    except (OverflowError, ValueError):  # more digits than a float holds: infinity
        raise problem from None


def total_memory() -> int:
    """Physical memory of this machine in bytes (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


#: Default ``--cache-memory``: the RAM a cache takes before the rest goes to a file. A file read a
#: batch at a time trains as fast (the OS keeps its pages in memory while memory is free: measured in
#: the README) without growing the process, so only small caches stay in RAM.
DEFAULT_CACHE_MEMORY = 256 << 20


def ram_share() -> int:
    """A quarter of the RAM (1 GB when the OS does not say): what the caches may take without
    ``--cache-memory`` where the spill folder lacks room for the file."""
    return total_memory() // 4 or (1 << 30)


def default_cache_memory() -> int:
    """Default ``--cache-memory``: :data:`DEFAULT_CACHE_MEMORY`, or the RAM share if smaller."""
    return min(DEFAULT_CACHE_MEMORY, ram_share())
