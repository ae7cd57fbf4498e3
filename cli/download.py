"""``gptclf download``: GPT-2 weights, the tokenizer files and datasets into the cache.

Progress and what was fetched or skipped go to stderr (a rich bar on a terminal, plain periodic
lines otherwise); the final paths go to stdout, one per line, or as one JSON object with ``--json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import err_console, handle_errors
from cli.options import Use, option_groups
from gptclf.errors import BadInputError
from gptclf.fetch.artefacts import (
    Placed,
    base_weights,
    ensure_sms_spam,
    ensure_tokenizer,
    ensure_weights,
    resolve_mirror,
)
from gptclf.fetch.http import Retry
from gptclf.model.config import cache_home, canonical_preset, local_model_dir, valid_model_names
from gptclf.model.hfconfig import local_model
from gptclf.option_groups import FetchOptions, OutputOptions
from gptclf.progress import ConsoleProgress

#: Datasets ``--dataset`` knows, and the function that puts each in the cache.
DATASETS = {"sms-spam": ensure_sms_spam}
#: download's wording of --json: its other output is paths.
_OUTPUT = Use(help={"json_out": "Print one JSON object instead of paths"})


def _wanted(models: list[str], datasets: list[str]) -> tuple[list[str], list[str]]:
    """The presets (or local Hugging Face folders, checked: nothing to fetch for them) and datasets
    asked for, each once; gpt2-small (what the default finetune needs) when neither is.

    Raises:
        BadInputError: Naming every unknown model and dataset (a folder's own problem alone).
    """
    problems = []
    presets: list[str] = []
    for name in models:
        preset = canonical_preset(name.strip())
        folder = local_model_dir(name)
        if folder is not None:
            preset = local_model(folder)[0]  # not a GPT-2 gptclf runs: its one line, exit 2
        if preset is None:
            problems.append(
                f"unknown model {name!r} (valid: {', '.join(valid_model_names())}, "
                "or a Hugging Face GPT-2 folder)"
            )
        elif preset not in presets:
            presets.append(preset)
    names = list(dict.fromkeys(d.strip() for d in datasets))
    problems += [f"unknown dataset {n!r} (valid: {', '.join(DATASETS)})" for n in names if n not in DATASETS]
    if problems:
        raise BadInputError("; ".join(problems))
    return (presets or ([] if names else ["gpt2-small"])), names


@handle_errors
@option_groups
def download(
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        metavar="NAME",
        help="GPT-2 weights to fetch: gpt2-small, gpt2-medium, gpt2-large, gpt2-xl (or 124M, 355M, "
        "774M, 1558M), distilgpt2; a local Hugging Face GPT-2 folder is checked, not fetched. Repeat "
        "for several.",
    ),
    dataset: list[str] | None = typer.Option(
        None, "--dataset", "-d", metavar="NAME", help="Dataset to fetch: sms-spam. Repeat for several."
    ),
    tokenizer: bool = typer.Option(
        True, "--tokenizer/--no-tokenizer", help="Fetch GPT-2's tokenizer files too."
    ),
    fetch: FetchOptions = FetchOptions(),
    output: Annotated[OutputOptions, _OUTPUT] = OutputOptions(),
) -> None:
    """Download GPT-2 weights, the tokenizer files and datasets into the cache.

    With neither --model nor --dataset: the tokenizer and gpt2-small (what the default finetune needs).
    Files already present and verified are not fetched again; an interrupted download resumes.
    Paths go to stdout, one per line (--json: one JSON object); progress goes to stderr.
    """
    presets, datasets = _wanted(model or [], dataset or [])
    resolved = resolve_mirror(fetch.mirror)  # a missing mirror folder stops us before any download
    cache = fetch.home_dir() or cache_home()
    progress = ConsoleProgress(err_console)
    placed: list[Placed] = []
    retry = Retry(retries=fetch.retries)

    def place(ensure: Callable[..., Path], *args: str) -> str:
        # The library says what it fetched; this verb, whose job is the cache, also says what
        # was already there.
        before = len(placed)
        path = ensure(*args, cache, resolved, progress, retry=retry, placed=placed)
        for item in placed[before:]:
            if not item.fetched:
                progress.message(f"already present: {item.label}: {item.path}")
        return str(path)

    result: dict[str, Any] = {"home": str(cache), "tokenizer": None, "datasets": {}, "models": {}}
    if tokenizer:
        result["tokenizer"] = place(ensure_tokenizer)
    for name in datasets:
        result["datasets"][name] = place(DATASETS[name])
    for preset in presets:
        if local_model_dir(preset) is not None:  # a checked local folder: its own file, no fetch
            result["models"][preset] = str(base_weights(preset))
            progress.message(f"local model: {preset}")
            continue
        result["models"][preset] = place(ensure_weights, preset)
    result["files"] = [{"name": p.label, "path": str(p.path), "fetched": p.fetched} for p in placed]

    if output.json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    paths = [result["tokenizer"], *result["datasets"].values(), *result["models"].values()]
    for path in paths:
        if path is not None:
            typer.echo(path)
