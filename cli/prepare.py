"""``gptclf prepare``: raw labelled data -> train/validation/test CSVs and labels.json.

A per-class, per-split count table and what was dropped go to stderr; ``--json`` prints the same
summary as one JSON object on stdout instead. The work is :func:`gptclf.data.prepare.prepare`; this is
the recipe around it: check the options, fetch ``--dataset`` (:func:`gptclf.fetch.artefacts.ensure_sms_spam`)
unless ``--input`` names the file, then prepare that file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import err_console, handle_errors
from cli.options import Use, option_groups
from gptclf.data.labels import PrepareSummary, label_reader
from gptclf.data.prepare import DEFAULT_SPLIT, PrepareRequest, prepare_request
from gptclf.data.prepared import SPLITS
from gptclf.errors import BadInputError
from gptclf.fetch.artefacts import ensure_sms_spam
from gptclf.option_groups import FetchOptions, InputOptions, OutputOptions
from gptclf.progress import ConsoleProgress

DEFAULT_OUT = Path("data/prepared")


#: prepare's wording of its shared options, and the ones it shows.
_INPUT = Use(
    help={
        "input_path": "A labelled CSV, TSV, JSONL or SMS-format file",
        "text_column": "Column (JSON key) with the texts; default: text",
        "label_column": "Column (JSON key) with the labels; default: label",
    }
)
_FETCH = Use(
    only=("home", "mirror"), help={"mirror": "Where to download --dataset from instead of the public hosts"}
)
_OUTPUT = Use(help={"json_out": "Print the summary as one JSON object on stdout"})


@handle_errors
@option_groups
def prepare(
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", metavar="NAME", help="Known dataset: sms-spam (downloaded if missing)."
    ),
    source: Annotated[InputOptions, _INPUT] = InputOptions(),
    old_format: str | None = typer.Option(None, "--format", hidden=True),  # the old name, kept working
    classes: str | None = typer.Option(
        None,
        "--classes",
        metavar="A,B,...",
        help="Class names in order (index = position); default: the sorted distinct labels.",
    ),
    drop_unknown: bool = typer.Option(
        False, "--drop-unknown", help="Drop rows whose label is not in --classes instead of failing."
    ),
    balance: str | None = typer.Option(
        None,
        "--balance",
        metavar="MODE",
        help="undersample (every class down to the smallest), oversample (training split only, "
        "up to the largest class) or none; default: undersample for sms-spam, none for --input.",
    ),
    split: str = typer.Option(
        DEFAULT_SPLIT,
        "--split",
        metavar="TRAIN,VAL[,TEST]",
        help="Split fractions; with two, test gets the rest.",
    ),
    stratify: bool = typer.Option(
        True,
        "--stratify/--no-stratify",
        help="Keep each class's proportion in every split; --no-stratify: the book's shuffled split.",
    ),
    seed: int = typer.Option(123, "--seed", help="Seed of every random step; same seed, same files."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Drop rows whose text appeared earlier."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", metavar="DIR", help="Folder to write."),
    force: bool = typer.Option(False, "--force", help="Replace a prepared set already in --out."),
    fetch: Annotated[FetchOptions, _FETCH] = FetchOptions(),
    output: Annotated[OutputOptions, _OUTPUT] = OutputOptions(),
    multi_label: bool = typer.Option(
        False, "--multi-label", help="Each text carries any number of the labels (none included)."
    ),
    label_sep: str | None = typer.Option(
        None, "--label-sep", metavar="SEP", help="With --multi-label: separator of a label list; default |."
    ),
    label_columns: str | None = typer.Option(
        None,
        "--label-columns",
        metavar="A,B,...",
        help="With --multi-label: one 0/1 column per label instead of a label column.",
    ),
    max_length: int | None = typer.Option(
        None,
        "--max-length",
        help="Also count the texts longer than this many tokens (as finetune would cut).",
    ),
) -> None:
    """Turn labelled data into train.csv, validation.csv, test.csv and labels.json.

    The book's recipe: gptclf prepare --dataset sms-spam --no-stratify (747/747, 1045/149/300).
    Any bad input stops with one line and exit code 2, and leaves --out as it was.
    """
    src = source
    if old_format is not None and src.input_format not in (None, old_format):
        raise BadInputError("--format is the old name of --input-format: give one of them")
    fmt = src.input_format or old_format
    if max_length is not None and max_length < 1:
        raise BadInputError(f"--max-length must be >= 1 (got {max_length})")
    labels = label_reader(multi_label, label_sep, label_columns)  # --multi-label: lists of labels
    request = PrepareRequest(
        dataset=dataset, fmt=fmt, text_column=src.text_column, label_column=src.label_column,
        encoding=src.encoding, classes=classes, balance=balance, split=split, stratify=stratify, seed=seed,
        dedupe=dedupe, drop_unknown=drop_unknown, force=force, max_length=max_length, labels=labels,
    )  # fmt: skip
    # Everything that needs no data is refused before the dataset is downloaded, in one message.
    problems = (
        []
        if (dataset is None) != (src.input_path is None)
        else ["give either --dataset sms-spam or --input FILE"]
    )
    try:
        request.check(out)
    except BadInputError as exc:
        problems.append(str(exc))
    if problems:
        raise BadInputError("; ".join(problems))
    input_path = src.input_path
    if input_path is None:
        input_path = ensure_sms_spam(fetch.home_dir(), fetch.mirror, ConsoleProgress(err_console))

    def warn(line: str) -> None:
        err_console.print(f"gptclf: {line}", markup=False, highlight=False)

    tokenizer = _cached_tokenizer(fetch.home_dir())
    progress = ConsoleProgress(err_console)  # rows read and written, with rates and an ETA
    summary = prepare_request(out, input_path, request, tokenizer=tokenizer, warn=warn, progress=progress)
    if output.json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        _report(summary)


def _cached_tokenizer(home: Path | None) -> Any:
    """GPT-2's tokenizer from the cache, to count token lengths; None when absent.

    Nothing is downloaded for it: prepare needs no tokenizer, only its length report does.
    """
    from gptclf.fetch.artefacts import tokenizer_dir
    from gptclf.model.tokenizer import load_tokenizer

    folder = tokenizer_dir(home)
    try:
        return load_tokenizer(folder)
    except BadInputError:
        return None


def _report(summary: PrepareSummary) -> None:
    """The count table and notes, on stderr."""
    table = Table(title=f"prepared {summary.out}{summary.kind_note}", title_justify="left")
    table.add_column(summary.first_column)
    for name in (*SPLITS, "total"):
        table.add_column(name, justify="right")
    for name, row, total in summary.rows():
        table.add_row(name, *(f"{n:,}" for n in (*row, sum(row))), style="bold" if total else None)
    err_console.print(table)
    notes = summary.notes()
    if summary.lengths is not None:
        from gptclf.data.lengths import describe_lengths

        notes.append(describe_lengths(summary.lengths))
    else:
        notes.append("token lengths not counted: GPT-2's tokenizer is not in the cache (`gptclf download`)")
    for note in notes:
        err_console.print(note, markup=False, highlight=False, soft_wrap=True)
