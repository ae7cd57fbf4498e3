"""How texts longer than ``max_length`` tokens are read: the settings and their counts.

:class:`LongTexts` holds the settings (``--long-texts truncate|head-tail|window``, ``--head-tokens``,
``--stride``, ``--aggregate``), checks them and resolves their defaults against a ``max_length``;
run.json records them under ``long_texts`` (a run without the key truncates), and export folders
carry them. :class:`LongCounts` counts how many texts of a set are longer than the length and how
they are read. The windows themselves are made and aggregated by :mod:`gptclf.inference.longtexts`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gptclf.errors import BadInputError

MODES = ("truncate", "head-tail", "window")
AGGREGATES = ("mean", "max")
#: run.json's key for the resolved settings.
INFO_KEY = "long_texts"


@dataclass(frozen=True)
class LongTexts:
    """How texts longer than ``max_length`` tokens are read.

    Attributes:
        mode: ``truncate`` (the first ``max_length`` tokens), ``head-tail`` (the first
            ``head_tokens`` and the last ``max_length - head_tokens``) or ``window``.
        head_tokens: Tokens taken from the start in ``head-tail``; None: a quarter of the length.
        stride: Tokens between the starts of two windows; None: half the length.
        aggregate: ``mean`` or ``max`` of the windows' logits.
    """

    mode: str = "truncate"
    head_tokens: int | None = None
    stride: int | None = None
    aggregate: str = "mean"

    def problems(self, max_length: int) -> list[str]:
        """Everything wrong with these settings for ``max_length``, one phrase each."""
        out = []
        if self.mode not in MODES:
            out.append(f"--long-texts {self.mode!r}: use one of {', '.join(MODES)}")
        if self.aggregate not in AGGREGATES:
            out.append(f"--aggregate {self.aggregate!r}: use one of {', '.join(AGGREGATES)}")
        if self.stride is not None and not 0 < self.stride <= max_length:
            out.append(f"--stride must be in 1..{max_length} (--max-length), got {self.stride}")
        if self.head_tokens is not None and not 0 <= self.head_tokens < max_length:
            out.append(
                f"--head-tokens must be in 0..{max_length - 1} (below --max-length {max_length}), "
                f"got {self.head_tokens}"
            )
        return out

    def resolved(self, max_length: int) -> LongTexts:
        """These settings checked, with the defaults filled in for ``max_length``.

        Raises:
            BadInputError: Every problem of :meth:`problems`, in one line.
        """
        problems = self.problems(max_length)
        if problems:
            raise BadInputError("; ".join(problems))
        head = max_length // 4 if self.head_tokens is None else self.head_tokens
        stride = max(1, max_length // 2) if self.stride is None else self.stride
        return replace(self, head_tokens=head, stride=stride)

    def fitted(self, max_length: int) -> LongTexts:
        """These (resolved) settings for a shorter ``max_length``: the stride and the head cut to fit
        (``--pad-to longest-train`` lowers the length to the longest training text)."""
        head = min(self.head_tokens or 0, max_length - 1)
        return replace(self, head_tokens=head, stride=min(self.stride or max_length, max_length))

    def to_dict(self) -> dict[str, Any]:
        """run.json's ``long_texts`` record."""
        return {
            "mode": self.mode,
            "head_tokens": self.head_tokens,
            "stride": self.stride,
            "aggregate": self.aggregate,
        }

    def describe(self) -> str:
        """The settings in a few words, for messages."""
        if self.mode == "window":
            return f"window (stride {self.stride}, {self.aggregate} of the windows' logits)"
        if self.mode == "head-tail":
            return f"head-tail (the first {self.head_tokens} tokens and the last ones)"
        return "truncate"


#: Which mode uses each number: given with another mode, it has no effect.
_USED_BY = {"head_tokens": "head-tail", "stride": "window", "aggregate": "window"}


def unused_options(mode: str, given: dict[str, Any]) -> list[str]:
    """Warnings (one line each) for the long-text options given that ``mode`` does not use.

    Args:
        mode: The mode in force (``truncate``, ``head-tail`` or ``window``).
        given: The options given by the user, by name (``head_tokens``, ``stride``, ``aggregate``);
            None values count as not given.
    """
    unused = [name for name, value in given.items() if value is not None and _USED_BY.get(name, mode) != mode]
    return [
        f"gptclf: warning: --{name.replace('_', '-')} applies only with --long-texts {_USED_BY[name]}; "
        f"ignored for --long-texts {mode}"
        for name in unused
    ]


def stored_long_texts(info: dict[str, Any]) -> LongTexts:
    """The settings a run recorded (run.json's ``long_texts``); a run without them truncates."""
    record = info.get(INFO_KEY) or {}
    return LongTexts(
        mode=record.get("mode", "truncate"),
        head_tokens=record.get("head_tokens"),
        stride=record.get("stride"),
        aggregate=record.get("aggregate", "mean"),
    )


def override(
    stored: LongTexts,
    max_length: int,
    mode: str | None = None,
    head_tokens: int | None = None,
    stride: int | None = None,
    aggregate: str | None = None,
) -> LongTexts:
    """``stored`` with the options given to ``evaluate`` or ``predict`` (None: not given), resolved.

    A mode given without its numbers gets their defaults for ``max_length``, not the stored ones
    of another mode.

    Raises:
        BadInputError: A bad value, in one line.
    """
    base = stored if mode is None or mode == stored.mode else LongTexts(mode, aggregate=stored.aggregate)
    given = {"head_tokens": head_tokens, "stride": stride, "aggregate": aggregate}
    return replace(base, **{k: v for k, v in given.items() if v is not None}).resolved(max_length)


@dataclass
class LongCounts:
    """What happened to the long texts of some texts.

    Attributes:
        texts: Texts seen.
        long: Of those, texts longer than ``max_length`` (cut or windowed).
        windows: Windows (model inputs) they became in all.
    """

    texts: int = 0
    long: int = 0
    windows: int = 0

    def add(self, other: LongCounts) -> None:
        self.texts += other.texts
        self.long += other.long
        self.windows += other.windows

    def to_dict(self) -> dict[str, int]:
        return {"texts": self.texts, "long": self.long, "windows": self.windows}


def describe_counts(counts: LongCounts, max_length: int, long: LongTexts, what: str = "texts") -> str:
    """One line for stderr: how many texts were longer than ``max_length`` and what became of them."""
    head = f"{counts.long:,} of {counts.texts:,} {what} were longer than {max_length} tokens"
    if long.mode == "window":
        windows = counts.windows - (counts.texts - counts.long)  # a text that fits is one window
        return f"{head} and were read in {windows:,} windows ({long.describe()})"
    if long.mode == "head-tail":
        tail = max_length - (long.head_tokens or 0)
        return f"{head} and were cut to their first {long.head_tokens} and last {tail} tokens (head-tail)"
    return f"{head} and were truncated (--long-texts window reads them whole)"
