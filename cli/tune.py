"""``gptclf tune``: search finetune's settings on the validation split and keep the best run.

The options are finetune's (each one given is a fixed setting of every trial, and leaves the
search space) and the search's own (:class:`gptclf.training.tune_settings.TuneOptions`), all declared once
as dataclass fields. Progress and one line per trial go to stderr; the summary to stdout (one JSON
object with ``--json``).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import typer

from cli.common import handle_errors, out_console
from cli.finetune import _parameter, _progress
from gptclf.distributed import LaunchSettings
from gptclf.options import PANELS, option_names, option_specs
from gptclf.training.settings import FinetuneSettings
from gptclf.training.tune_settings import TuneOptions

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_SEARCH = option_names(TuneOptions)


def _signature() -> inspect.Signature:
    """finetune's options and --config, the search's options, --json."""
    config = typer.Option(
        None,
        "--config",
        help="TOML file of finetune options; the command line overrides it.",
        rich_help_panel="Run",
    )
    params = [
        *(_parameter(spec, not_given=True) for spec in option_specs(FinetuneSettings)),
        inspect.Parameter("config", _KEYWORD, default=config, annotation=Path | None),
        *(_parameter(spec, not_given=True) for spec in option_specs(TuneOptions)),
        *(_parameter(s, not_given=False) for s in option_specs(LaunchSettings) if s.name == "dist_timeout"),
    ]
    params.sort(key=lambda p: PANELS.index(p.default.rich_help_panel))
    json_output = typer.Option(False, "--json", help="Print the summary as one JSON object.")
    params.append(inspect.Parameter("json_output", _KEYWORD, default=json_output, annotation=bool))
    return inspect.Signature(params)


@handle_errors
def tune(*, config: Path | None, dist_timeout: float, json_output: bool, **options: Any) -> None:
    """Search learning rate, epochs, scope, pooling, ... on validation; --out gets the best run."""
    from cli.common import err_console
    from gptclf.distributed import process_group
    from gptclf.errors import BadInputError, Interrupted
    from gptclf.progress import ConsoleProgress, TrainProgress
    from gptclf.training.settings import build_settings
    from gptclf.training.tune import tune as run_tune
    from gptclf.training.tune_settings import TuneSettings

    search = {k: v for k, v in options.items() if k in _SEARCH}
    finetune = {k: v for k, v in options.items() if k not in _SEARCH}
    given = {k: v for k, v in search.items() if v is not None}
    settings = TuneSettings(build_settings(finetune, config), TuneOptions(**given), frozenset(given))
    # Under torchrun every rank runs trials of the one study; rank 0 speaks and writes the run.
    with process_group(settings.finetune.device, dist_timeout) as shard:
        try:
            result = run_tune(
                settings,
                progress=_progress(settings.finetune.warnings()) if shard.is_main else TrainProgress(),
                download_progress=ConsoleProgress(err_console) if shard.is_main else None,
                shard=shard,
            )
        except (BadInputError, Interrupted) as exc:
            if shard.is_main:
                raise
            raise typer.Exit(exc.exit_code) from None  # every rank meets these alike: rank 0 says it
    if result is None:  # not rank 0
        return
    if json_output:
        typer.echo(json.dumps(result.summary()))
        return
    s = result.summary()
    best = s["best_trial"]
    counts = s["trials"]
    final = s["final_run"]
    lines = [
        f"run directory: {s['run_dir']} (the best trial's settings; tune/trials.csv has every trial)",
        f"trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed; "
        f"{s['cache_builds']} cache build(s) shared by them; {s['seconds']:.1f} s",
        f"best: trial {best['number']}, {s['metric']} {best['value']:.4f}: "
        + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items()
        ),
    ]
    if final.get("test_accuracy") is not None:
        acc, loss = final["test_accuracy"], final["test_loss"]
        lines.append(f"test (never seen by the search): accuracy {acc:.4f}, loss {loss:.4f}")
    for line in lines:
        out_console.print(line, markup=False, highlight=False)


tune.__signature__ = _signature()  # type: ignore[attr-defined]  # what Typer reads
