"""``gptclf download``: GPT-2 weights, the tokenizer files and datasets into the cache.

Progress and what was fetched or skipped go to stderr (a rich bar on a terminal, plain periodic
lines otherwise); the final paths go to stdout, one per line, or as one JSON object with ``--json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

from cli.common import err_console, handle_errors
from gptclf.config import cache_home, canonical_preset, valid_model_names
from gptclf.download import Progress, Retry, ensure_sms_spam, ensure_tokenizer, ensure_weights, resolve_mirror
from gptclf.errors import BadInputError

#: Datasets ``--dataset`` knows, and the function that puts each in the cache.
DATASETS = {"sms-spam": ensure_sms_spam}


class _Reporter(Progress):
    """Says on stderr what was fetched or skipped, and keeps a record of it for ``--json``.

    ``only_fetched`` leaves files already present unsaid: a finetune run checks its files every
    time, and only a download is news there.
    """

    def __init__(self, console: Console, only_fetched: bool = False) -> None:
        self.console = console
        self.only_fetched = only_fetched
        self.files: list[dict[str, Any]] = []

    def say(self, message: str) -> None:
        # markup off: paths and URLs may hold [brackets]; soft wrap: log lines stay whole
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self.say(message)

    def end(self, label: str, path: Path, fetched: bool) -> None:
        self.files.append({"name": label, "path": str(path), "fetched": fetched})
        if fetched or not self.only_fetched:
            self.say(f"fetched {label}: {path}" if fetched else f"already present: {label}: {path}")


class LineReporter(_Reporter):
    """Plain lines for logs and CI: one as a file starts, then every 10% or every 10 seconds."""

    def begin(self, label: str, total: int | None, done: int) -> None:
        self._label, self._total, self._done = label, total, done
        self._start, self._start_done = time.monotonic(), done
        self._last_time, self._last_tenth = self._start, self._tenth()
        size = _human(total) if total is not None else "size unknown"
        self.say(f"resuming {label} at {_human(done)} ({size})" if done else f"downloading {label} ({size})")

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        now = time.monotonic()
        tenth = self._tenth()
        if tenth > self._last_tenth or now - self._last_time >= 10:
            self._last_time, self._last_tenth = now, tenth
            rate = (self._done - self._start_done) / max(now - self._start, 1e-9)
            share = f"{100 * self._done // self._total}% " if self._total else ""
            self.say(f"{self._label}: {share}{_human(self._done)} at {_human(rate)}/s")

    def _tenth(self) -> int:
        return 10 * self._done // self._total if self._total else 0


class BarReporter(_Reporter):
    """A rich progress bar on the terminal: bytes, rate and time left, one file at a time."""

    def __init__(self, console: Console, only_fetched: bool = False) -> None:
        super().__init__(console, only_fetched)
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def begin(self, label: str, total: int | None, done: int) -> None:
        if self._bar is None:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,  # the "fetched ..." line replaces the finished bar
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)
        elif self._task is not None:  # a retry of the same file
            self._bar.reset(self._task, total=total, completed=done, description=label)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, nbytes)

    def end(self, label: str, path: Path, fetched: bool) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._task = None, None
        super().end(label, path, fetched)


def progress_reporter(console: Console = err_console, only_fetched: bool = False) -> _Reporter:
    """The reporter for ``console`` (stderr): a live bar on a terminal, plain lines otherwise.

    Args:
        console: Where progress goes.
        only_fetched: Say nothing about files that were already present (``finetune``).
    """
    kind = BarReporter if console.is_terminal else LineReporter
    return kind(console, only_fetched)


def _human(n: float) -> str:
    """Bytes in decimal units, as rich's DownloadColumn shows them."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@handle_errors
def download(
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        metavar="NAME",
        help="GPT-2 weights to fetch: gpt2-small, gpt2-medium, gpt2-large, gpt2-xl (or 124M, 355M, "
        "774M, 1558M). Repeat for several.",
    ),
    dataset: list[str] | None = typer.Option(
        None, "--dataset", "-d", metavar="NAME", help="Dataset to fetch: sms-spam. Repeat for several."
    ),
    tokenizer: bool = typer.Option(
        True, "--tokenizer/--no-tokenizer", help="Fetch GPT-2's tokenizer files too."
    ),
    mirror: str | None = typer.Option(
        None,
        "--mirror",
        metavar="URL|DIR",
        envvar="GPTCLF_MIRROR",
        help="Take every file from <URL|DIR>/<its path on the public host> instead of the public "
        "hosts, e.g. DIR/openai-community/gpt2/resolve/main/model.safetensors.",
    ),
    home: Path | None = typer.Option(
        None,
        "--home",
        metavar="DIR",
        envvar="GPTCLF_HOME",
        help="Cache folder (default: ~/.cache/gptclf).",
    ),
    retries: int = typer.Option(
        3, "--retries", min=0, help="Retries per host after a network error (backoff 1 s, 2 s, 4 s...)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of paths."),
) -> None:
    """Download GPT-2 weights, the tokenizer files and datasets into the cache.

    With neither --model nor --dataset: the tokenizer and gpt2-small (what the default finetune needs).
    Files already present and verified are not fetched again; an interrupted download resumes.
    Paths go to stdout, one per line (--json: one JSON object); progress goes to stderr.
    """
    problems = []
    presets: list[str] = []
    for name in model or []:
        preset = canonical_preset(name.strip())
        if preset is None:
            problems.append(f"unknown model {name!r} (valid: {', '.join(valid_model_names())})")
        elif preset not in presets:
            presets.append(preset)
    datasets = list(dict.fromkeys(d.strip() for d in dataset or []))
    for name in datasets:
        if name not in DATASETS:
            problems.append(f"unknown dataset {name!r} (valid: {', '.join(DATASETS)})")
    if problems:
        raise BadInputError("; ".join(problems))
    if not presets and not datasets:
        presets = ["gpt2-small"]
    resolved = resolve_mirror(mirror)  # a missing mirror folder stops us before any download
    cache = home.expanduser() if home is not None else cache_home()
    reporter = progress_reporter()
    retry = Retry(retries=retries)

    result: dict[str, Any] = {"home": str(cache), "tokenizer": None, "datasets": {}, "models": {}}
    if tokenizer:
        result["tokenizer"] = str(ensure_tokenizer(cache, resolved, reporter, retry=retry))
    for name in datasets:
        result["datasets"][name] = str(DATASETS[name](cache, resolved, reporter, retry=retry))
    for preset in presets:
        result["models"][preset] = str(ensure_weights(preset, cache, resolved, reporter, retry=retry))
    result["files"] = reporter.files

    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    paths = [result["tokenizer"], *result["datasets"].values(), *result["models"].values()]
    for path in paths:
        if path is not None:
            typer.echo(path)
