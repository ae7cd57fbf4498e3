"""How long a prepared set's texts are in GPT-2 tokens: percentiles, and how many exceed the
model's context (and a ``--max-length``), so that ``prepare`` can say before training how many texts
``--long-texts`` will cut or read in windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tiktoken

from gptclf.model.config import GPTConfig
from gptclf.model.tokenizer import encode_batch

#: The percentiles reported.
PERCENTILES = (50, 90, 95, 99)
#: GPT-2's context: every preset sees this many tokens.
CONTEXT = GPTConfig.n_positions


def length_report(
    enc: tiktoken.Encoding, texts: Sequence[str], max_length: int | None = None
) -> dict[str, Any]:
    """Token-length statistics of ``texts``: what labels.json records under ``lengths``.

    Returns:
        ``{"texts", "percentiles": {"p50", ...}, "max", "context", "over_context"}``, and
        ``max_length`` and ``over_max_length`` where ``max_length`` is given.
    """
    lengths = np.asarray([len(x) for x in encode_batch(enc, list(texts))], dtype=np.int64)
    if lengths.size == 0:
        lengths = np.zeros(1, dtype=np.int64)
    out: dict[str, Any] = {
        "texts": len(texts),
        "percentiles": {f"p{p}": int(np.percentile(lengths, p, method="higher")) for p in PERCENTILES},
        "max": int(lengths.max()),
        "context": CONTEXT,
        "over_context": int((lengths > CONTEXT).sum()),
    }
    if max_length is not None:
        out["max_length"] = max_length
        out["over_max_length"] = int((lengths > max_length).sum())
    return out


def describe_lengths(report: dict[str, Any]) -> str:
    """One line for stderr."""
    shown = ", ".join(f"{k} {v:,}" for k, v in report["percentiles"].items())
    line = (
        f"token lengths: {shown}, max {report['max']:,}; {report['over_context']:,} of "
        f"{report['texts']:,} texts exceed the context ({report['context']:,} tokens)"
    )
    if "max_length" in report:
        line += f", {report['over_max_length']:,} exceed --max-length {report['max_length']:,}"
    return line + " (see finetune --long-texts)"
