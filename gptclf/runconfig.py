"""Settings of a finetuning run: typed dataclasses, TOML files, and command-line overrides.

Precedence, lowest first: the defaults below, a ``--config FILE.toml``, the options given on the
command line. A TOML file's keys are the long option names (``batch-size`` or ``batch_size``).
The training part (:class:`TrainConfig`) is what :func:`gptclf.train.fit` needs and what run.json
records under ``train``.
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

from gptclf.errors import BadInputError

SCHEDULES = ("constant", "cosine")
MONITORS = ("val_loss", "val_acc", "val_f1")
CLASS_WEIGHTS = ("none", "balanced")
PAD_TO = ("batch", "longest-train")
#: The largest --lr accepted: AdamW steps each weight by about lr, and weights of a GPT-2 are of
#: order 0.1, so an lr above 1 can only blow training up (usual values are 1e-5 .. 1e-3).
MAX_LR = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`gptclf.train.fit` trains.

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
        monitor: ``val_loss``, ``val_acc`` or ``val_f1``: what "best" means.
        class_weights: ``none`` or ``balanced`` (weights n / (K * count) in the loss).
        pad_to: ``batch`` (each batch to its own longest text) or ``longest-train`` (every text
            to the longest training text, as the book does).
        bucket: Group training texts of similar length into batches; False gives plain shuffled
            batches (the book's DataLoader).
        eval_batch_size: Texts per forward pass when evaluating or building the cache.
    """

    epochs: int = 5
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.1
    clip_grad: float | None = None
    schedule: str = "constant"
    warmup: float = 0.0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    early_stop: int | None = None
    monitor: str = "val_loss"
    class_weights: str = "none"
    pad_to: str = "batch"
    bucket: bool = True
    eval_batch_size: int = 32

    def problems(self) -> list[str]:
        """Everything wrong with these values, as messages naming the option."""
        out = []
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                out.append(f"--{_dash(name)} must be >= 1 (got {getattr(self, name)})")
        out += number_problems(
            ("lr", self.lr, 0.0, MAX_LR),
            ("weight_decay", self.weight_decay, None, None),
            ("clip_grad", self.clip_grad, 0.0, None),
            ("warmup", self.warmup, None, None),
        )
        if 0 < self.lr <= MAX_LR and 0 <= self.weight_decay < math.inf and self.lr * self.weight_decay >= 1:
            # AdamW multiplies every weight by (1 - lr * weight_decay) per step: >= 1 zeroes or
            # flips them all, and training diverges.
            out.append(
                f"--weight-decay {self.weight_decay:g} with --lr {self.lr:g} scales the weights by "
                f"1 - lr * weight-decay <= 0 each step: keep weight-decay below 1 / lr"
            )
        if math.isfinite(self.warmup) and self.warmup >= 1 and not float(self.warmup).is_integer():
            out.append(f"--warmup must be a fraction (< 1) or a whole number of steps (got {self.warmup:g})")
        for name in ("eval_every", "checkpoint_every", "early_stop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"--{_dash(name)} must be >= 1 (got {value})")
        for name, allowed in (
            ("schedule", SCHEDULES),
            ("monitor", MONITORS),
            ("class_weights", CLASS_WEIGHTS),
            ("pad_to", PAD_TO),
        ):
            if getattr(self, name) not in allowed:
                out.append(f"--{_dash(name)} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
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
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything ``gptclf finetune`` takes; field names are the long options with underscores.

    ``None`` means "derive it": ``classes`` from the prepared data, ``max_length`` from the model's
    context, ``cache_memory`` a quarter of the RAM, ``out`` ``runs/<timestamp>``, ``home`` and
    ``mirror`` from the environment.
    """

    data: str | None = None
    classes: list[str] | None = None
    model: str = "gpt2-small"
    weights: str = "pretrained"
    trainable: str = "last-block"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    pooling: str = "last-token"
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    grad_accum: int = TrainConfig.grad_accum
    lr: float = TrainConfig.lr
    weight_decay: float = TrainConfig.weight_decay
    clip_grad: float | None = TrainConfig.clip_grad
    schedule: str = TrainConfig.schedule
    warmup: float = TrainConfig.warmup
    eval_every: int | None = TrainConfig.eval_every
    checkpoint_every: int | None = TrainConfig.checkpoint_every
    early_stop: int | None = TrainConfig.early_stop
    monitor: str = TrainConfig.monitor
    class_weights: str = TrainConfig.class_weights
    device: str = "auto"
    precision: str = "auto"
    max_length: int | None = None
    pad_to: str = TrainConfig.pad_to
    cache: bool = True
    cache_memory: str | None = None
    seed: int = 123
    out: str | None = None
    force: bool = False
    resume: bool = False
    home: str | None = None
    mirror: str | None = None
    #: Which options were set by a config file or the command line (for messages and resume).
    given: frozenset[str] = field(default=frozenset(), compare=False)

    def train_config(self) -> TrainConfig:
        """The training part; book-faithful padding also turns length bucketing off."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            lr=self.lr,
            weight_decay=self.weight_decay,
            clip_grad=self.clip_grad,
            schedule=self.schedule,
            warmup=self.warmup,
            eval_every=self.eval_every,
            checkpoint_every=self.checkpoint_every,
            early_stop=self.early_stop,
            monitor=self.monitor,
            class_weights=self.class_weights,
            pad_to=self.pad_to,
            # Padding everything to one length makes grouping by length pointless; plain shuffled
            # batches are what the book's loop draws, so the comparison stays faithful.
            bucket=self.pad_to == "batch",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (without ``given``)."""
        out = dataclasses.asdict(self)
        out.pop("given")
        return out


#: Option name (underscores) -> accepted Python types, for checking TOML values.
_SETTING_FIELDS = {f.name: f for f in dataclasses.fields(FinetuneSettings) if f.name != "given"}
_INT_FIELDS = {
    "lora_rank",
    "epochs",
    "batch_size",
    "grad_accum",
    "eval_every",
    "checkpoint_every",
    "early_stop",
    "max_length",
    "seed",
}
_FLOAT_FIELDS = {"lora_alpha", "lr", "weight_decay", "clip_grad", "warmup"}
_BOOL_FIELDS = {"cache", "force", "resume"}
_OPTIONAL_FIELDS = {"data", "classes", "clip_grad", "eval_every", "checkpoint_every", "early_stop"}
_OPTIONAL_FIELDS |= {"max_length", "cache_memory"}
_OPTIONAL_FIELDS |= {"out", "home", "mirror"}


def _dash(name: str) -> str:
    return name.replace("_", "-")


def number_problems(*checks: tuple[str, float | None, float | None, float | None]) -> list[str]:
    """Messages for numbers that are not finite or out of range.

    Args:
        checks: ``(name, value, above, at_most)``: the value (None: not given, fine) must be
            finite, ``> above`` (or ``>= 0`` where ``above`` is None) and ``<= at_most`` where
            that is given. NaN fails every comparison, so it is refused with the rest.
    """
    out = []
    for name, value, above, at_most in checks:
        if value is None:
            continue
        low_ok = value > above if above is not None else value >= 0
        if math.isfinite(value) and low_ok and (at_most is None or value <= at_most):
            continue
        rule = f"> {above:g}" if above is not None else ">= 0"
        rule += f" and <= {at_most:g}" if at_most is not None else " and finite"
        out.append(f"--{_dash(name)} must be {rule} (got {value:g})")
    return out


def _coerce(name: str, value: Any) -> tuple[Any, str | None]:
    """Check one value's type; return (value, problem)."""
    if value is None:
        return (None, None) if name in _OPTIONAL_FIELDS else (None, f"{_dash(name)} cannot be empty")
    if name == "classes":
        if isinstance(value, str):
            value = [c.strip() for c in value.split(",") if c.strip()]
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            return None, "classes must be a list of names or a comma-separated string"
        return value, None
    if name in _BOOL_FIELDS:
        return (value, None) if isinstance(value, bool) else (None, f"{_dash(name)} must be true or false")
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"{_dash(name)} must be an integer (got {value!r})"
        return value, None
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"{_dash(name)} must be a number (got {value!r})"
        return float(value), None
    if name == "cache_memory" and isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if not isinstance(value, str):
        return None, f"{_dash(name)} must be a string (got {value!r})"
    return value, None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config into option values (underscore names), checking names and types.

    Raises:
        BadInputError: The file is missing or not TOML, has unknown keys (all named), or values
            of the wrong type.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"config file {path} is not valid TOML ({exc})") from None
    values: dict[str, Any] = {}
    problems = []
    unknown = sorted(k for k in raw if k.replace("-", "_") not in _SETTING_FIELDS)
    if unknown:
        problems.append(f"unknown keys {', '.join(unknown)} (keys are finetune's long option names)")
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _SETTING_FIELDS:
            continue
        if name in values:
            problems.append(f"{key} is given twice (with - and with _)")
        coerced, problem = _coerce(name, value)
        if problem:
            problems.append(problem)
        values[name] = coerced
    if problems:
        raise BadInputError(f"config file {path}: " + "; ".join(problems))
    return values


def build_settings(options: dict[str, Any], config_file: Path | None = None) -> FinetuneSettings:
    """Merge defaults, a config file and explicitly given options (None values are "not given").

    Args:
        options: Option name (underscores) -> value as given on the command line.
        config_file: A TOML file whose values the options override.

    Raises:
        BadInputError: Unknown option names or a bad config file.
    """
    merged = load_config_file(config_file) if config_file is not None else {}
    given_options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given_options) - set(_SETTING_FIELDS))
    if unknown:
        raise BadInputError(f"unknown finetune options: {', '.join(unknown)}")
    merged.update(given_options)
    if isinstance(merged.get("classes"), str):
        merged["classes"], _ = _coerce("classes", merged["classes"])
    return FinetuneSettings(**merged, given=frozenset(merged))


#: A number, then optionally a unit: bytes (``B`` or nothing) or a prefix K/M/G/T with an optional
#: ``i`` and ``B`` (``G``, ``GB``, ``GiB``). Every accepted spelling has its prefix in ``_UNITS``.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?)?b?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a memory size: ``2GB``, ``512MB``, ``1.5G``, ``64MiB``, ``512B``, ``0``, or plain bytes.

    Units are binary (1 GB = 2**30 bytes), as memory is counted.

    Raises:
        BadInputError: Not a size.
    """
    match = _SIZE_RE.match(str(text))
    if not match:
        raise BadInputError(f"--cache-memory {text!r} is not a size: write e.g. 2GB, 512MB, 4096B or 0")
    number, prefix = match.groups()
    return int(float(number) * _UNITS[prefix and prefix.lower()])


def total_memory() -> int:
    """Physical memory of this machine in bytes (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def default_cache_memory() -> int:
    """Default ``--cache-memory``: a quarter of the RAM (1 GB when the OS does not say)."""
    return total_memory() // 4 or (1 << 30)
