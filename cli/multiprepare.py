"""``gptclf prepare --multi-label``: the options' checks and the report (the work is
:func:`gptclf.data.prepare_multi.prepare_multilabel`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli.common import err_console
from gptclf.data.labelsets import iter_pairs
from gptclf.data.lengths import describe_lengths
from gptclf.data.prepare_multi import MultiPrepareSummary, prepare_multilabel
from gptclf.data.prepared import SPLITS
from gptclf.errors import BadInputError

#: Co-occurring pairs listed in the report (the most frequent); --json has them all.
_PAIRS_SHOWN = 5


def prepare_multi(
    out: Path, input_path: Path | None, options: dict[str, Any], multi: dict[str, Any], flags: dict[str, Any]
) -> None:
    """Prepare multi-label data; refuse ``--label-sep``/``--label-columns`` without ``--multi-label``.

    Raises:
        BadInputError: A bad option or input (nothing is written).
    """
    if not multi["multi_label"]:
        raise BadInputError("--label-sep and --label-columns go with --multi-label")
    if input_path is None or options["dataset"] is not None:
        raise BadInputError("--multi-label reads --input FILE (a CSV, TSV or JSONL file), not --dataset")

    def warn(line: str) -> None:
        err_console.print(f"gptclf: {line}", markup=False, highlight=False)

    summary = prepare_multilabel(
        out,
        input_path,
        fmt=options["fmt"],
        text_column=options["text_column"],
        label_column=options["label_column"],
        label_columns=multi["label_columns"],
        label_sep=multi["label_sep"],
        encoding=flags["encoding"],
        classes=options["classes"],
        balance=options["balance"],
        split=options["split"],
        seed=options["seed"],
        dedupe=flags["dedupe"],
        drop_unknown=flags["drop_unknown"],
        force=options["force"],
        warn=warn,
        tokenizer=flags["tokenizer"],
        max_length=flags["max_length"],
    )
    if flags["as_json"]:
        typer.echo(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        report(summary)


def report(summary: MultiPrepareSummary) -> None:
    """The per-label, per-split count table and notes, on stderr."""
    table = Table(title=f"prepared {summary.out} (multi-label)", title_justify="left")
    table.add_column("label")
    for name in (*SPLITS, "total"):
        table.add_column(name, justify="right")
    for name in (*summary.classes, "(none)"):
        row = [summary.counts[s][name] for s in SPLITS]
        table.add_row(name, *(f"{n:,}" for n in (*row, sum(row))))
    err_console.print(table)
    notes = [f"multi-label, iterative stratified split, seed {summary.seed}"]
    pairs = sorted(iter_pairs(summary.cooccurrence), key=lambda p: -p[2])
    if pairs:
        shown = ", ".join(f"{a}+{b} {n:,}" for a, b, n in pairs[:_PAIRS_SHOWN])
        notes.append(f"labels together: {shown}" + (" ..." if len(pairs) > _PAIRS_SHOWN else ""))
    if summary.rare_labels:
        notes.append(
            "too rare to be in every split: " + ", ".join(summary.rare_labels) + " (add rows that carry them)"
        )
    if summary.dropped:
        notes.append("dropped: " + ", ".join(f"{n:,} {reason}" for reason, n in summary.dropped.items()))
    if summary.duplicate_texts and not summary.dedupe:
        notes.append(f"{summary.duplicate_texts:,} rows repeat an earlier text (--dedupe drops them)")
    if summary.lengths is not None:
        notes.append(describe_lengths(summary.lengths))
    else:
        notes.append("token lengths not counted: GPT-2's tokenizer is not in the cache (`gptclf download`)")
    for note in notes:
        err_console.print(note, markup=False, highlight=False, soft_wrap=True)
