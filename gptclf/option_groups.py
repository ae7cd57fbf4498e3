"""The options several verbs share, each group declared once (:func:`gptclf.options.option` fields).

A verb takes a group as one parameter; :mod:`cli.options` expands it into its options on the
command line (flags, defaults, help, env vars) and hands the verb one checked instance, which it
passes down as it is: ``predict(..., device: DeviceOptions)``, never a list of keywords. A verb
that shows only some of a group's options, or words one help differently, says so where it takes
the group (:class:`cli.options.Use`); the declaration stays here.

The groups: :class:`DeviceOptions` (where and how fast the model runs), :class:`FetchOptions`
(the cache and where downloads come from), :class:`LongTextOptions` (how texts longer than a run's
max length are read), :class:`DecisionOptions` (how probabilities become labels), :class:`TargetOptions`
(what decision to choose on labelled texts), :class:`InputOptions` (a labelled file to read) and
:class:`OutputOptions` (how results are printed).

This module imports neither torch nor anything above the foundations (the CLI imports it before any
verb runs), so the few names the rules need are declared here, once: :data:`PRECISIONS`,
:data:`LONG_TEXT_MODES` and :data:`AGGREGATES` (``gptclf.device`` and ``gptclf.data.long_texts``
hold the same tuples; tests/test_option_groups.py keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptclf.options import OptionGroup, option

#: ``--precision``: the number formats (``auto`` picks one for the device; see :mod:`gptclf.device`).
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
#: ``--long-texts``: how a text longer than the max length is read (see :mod:`gptclf.data.long_texts`).
LONG_TEXT_MODES = ("truncate", "head-tail", "window")
#: ``--aggregate``: how the logits of a text's windows are combined.
AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class DeviceOptions(OptionGroup):
    """Where the model runs, in which number format, and how many texts go through it at once.

    The batch size is that of the verbs that run a finished model (evaluate, calibrate, predict):
    every one of them defaults to 32. ``finetune`` takes device and precision from here
    (:func:`gptclf.options.reuse`); its batch size is a training option (``TrainConfig``, 8 per
    device), recorded with the training settings, so it is not this one.

    Attributes:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (checked when it is resolved:
            whether it exists is a fact of the machine).
        precision: One of :data:`PRECISIONS`.
        batch_size: Texts per forward pass, at most.
    """

    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = option("auto", "Number format", choices=PRECISIONS)
    batch_size: int = option(
        32, "Texts per forward pass, at most (long texts go fewer: <= 256 tokens a text)", at_least=1
    )


@dataclass(frozen=True)
class FetchOptions(OptionGroup):
    """The cache folder and where downloads come from (``download``, and ``prepare --dataset``).

    Attributes:
        home: The cache folder; None: ``$GPTCLF_HOME`` (read by the command line) or
            ``~/.cache/gptclf``.
        mirror: A URL or folder laid out as the public hosts are; None: ``$GPTCLF_MIRROR`` (read
            by the command line) or the public hosts.
        retries: Retries per host after a network error.
    """

    home: Path | None = option(  # noqa: RUF009 - option() is a dataclasses.field
        None, "Cache folder", default_text="~/.cache/gptclf", envvar="GPTCLF_HOME", metavar="DIR"
    )
    mirror: str | None = option(
        None,
        "Take every file from <URL|DIR>/<its path on the public host> instead of the public hosts, "
        "e.g. DIR/openai-community/gpt2/resolve/main/model.safetensors",
        envvar="GPTCLF_MIRROR",
        metavar="URL|DIR",
    )
    retries: int = option(3, "Retries per host after a network error (backoff 1 s, 2 s, 4 s...)", at_least=0)

    def home_dir(self) -> Path | None:
        """``home`` with ``~`` expanded; None: the default cache."""
        return self.home.expanduser() if self.home is not None else None


@dataclass(frozen=True)
class LongTextOptions(OptionGroup):
    """How texts longer than a run's max length are read, for the verbs that use a finished run.

    Each is None when not given: the run's stored setting (run.json's ``long_texts``) holds. The
    ranges of ``head_tokens`` and ``stride`` depend on the run's max length, so they are checked
    where the run is read (:func:`gptclf.data.long_texts.override`).

    Attributes:
        long_texts: One of :data:`LONG_TEXT_MODES`.
        head_tokens: ``head-tail``: tokens kept from the start of a text.
        stride: ``window``: tokens between the starts of two windows.
        aggregate: ``window``: one of :data:`AGGREGATES`.
    """

    long_texts: str | None = option(
        None,
        "Texts longer than the run's max length",
        choices=LONG_TEXT_MODES,
        default_text="what the run was trained with",
    )
    head_tokens: int | None = option(None, "head-tail: tokens kept from the start of a text")
    stride: int | None = option(None, "window: tokens between the starts of two windows")
    aggregate: str | None = option(None, "window: how the windows' logits are combined", choices=AGGREGATES)

    def given(self) -> dict[str, int | str | None]:
        """The numbers that apply to one mode only, by name (for ``unused_options``' warnings)."""
        return {"head_tokens": self.head_tokens, "stride": self.stride, "aggregate": self.aggregate}


@dataclass(frozen=True)
class DecisionOptions(OptionGroup):
    """How a run's probabilities become labels; each replaces what the run stores (None: not given).

    Attributes:
        threshold: Two classes: ``positive`` when its probability is >= this; multi-label runs:
            one threshold for every label.
        positive: The positive class of ``threshold``.
        min_confidence: Abstain where the top calibrated probability is below this.
        no_calibration: Raw probabilities, without the run's temperature (the labels stay those
            of the calibrated ones).
    """

    threshold: float | None = option(
        None,
        "Two classes: predict --positive when its probability is >= P; multi-label runs: one "
        "threshold P for every label instead of the run's",
        probability="[0, 1]",
    )
    positive: str | None = option(None, "The positive class for --threshold")
    min_confidence: float | None = option(
        None,
        "Abstain (label null) where the top calibrated probability is below P, in (0, 1]",
        probability="(0, 1]",
    )
    no_calibration: bool = option(False, "Raw softmax probabilities, without the run's fitted temperature")


@dataclass(frozen=True)
class TargetOptions(OptionGroup):
    """A decision to choose on labelled texts (``calibrate``, and ``finetune`` on validation).

    Both are checked against the run's classes where they are known
    (:func:`gptclf.tasks.decisions.check_target`).

    Attributes:
        target: ``f1``, ``precision=P``, ``recall=R`` (a two-class threshold) or ``coverage=C``
            (an abstention level); None: none is chosen.
        positive: The positive class of a threshold target.
    """

    target: str | None = option(
        None, "Choose on validation: f1, precision=P, recall=R (threshold, with --positive) or coverage=C"
    )
    positive: str | None = option(None, "The positive class of a threshold --target")


@dataclass(frozen=True)
class InputOptions(OptionGroup):
    """A labelled file to read (``--input``) and how: columns, format, encoding.

    Attributes:
        input_path: A CSV, TSV, JSONL or SMS-format file; None: not given (the verb's other source).
        text_column: Its column (JSON key) of texts; None: ``text``.
        label_column: Its column of labels; None: ``label``.
        input_format: ``csv``, ``tsv``, ``jsonl`` or ``sms``; None: from the file name.
        encoding: Its text encoding.
    """

    input_path: Path | None = option(  # noqa: RUF009 - option() is a dataclasses.field
        None, "A labelled CSV/TSV/JSONL file to read instead of a split", flag="--input", aliases=("-i",)
    )
    text_column: str | None = option(None, "Text column of --input")
    label_column: str | None = option(None, "Label column of --input")
    input_format: str | None = option(
        None,
        "Format of --input (csv, tsv, jsonl, sms, parquet; .gz, .bz2, .xz read too)",
        default_text="from its name",
    )
    encoding: str = option("utf-8", "Text encoding of --input")


@dataclass(frozen=True)
class OutputOptions(OptionGroup):
    """How a verb prints its result on stdout.

    Attributes:
        json_out: One JSON object (one line) instead of lines for people.
    """

    json_out: bool = option(False, "Print one JSON object on stdout", flag="--json")
