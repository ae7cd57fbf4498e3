"""``gptclf finetune``: train a GPT-2 classifier and write a run directory.

The options are built from the fields of :class:`gptclf.training.settings.FinetuneSettings` (with its
nested TrainConfig) and :class:`gptclf.distributed.LaunchSettings`: name, type, help, panel and the
default shown in the help come from there (:func:`gptclf.options.option_specs`), so that nothing is
declared twice. Every settings option defaults to "not given" (None) here, so that a ``--config
FILE.toml`` can set it and the command line can still override the file. Progress and messages go
to stderr, the summary to stdout (one JSON object with ``--json``).

Under torchrun (``torchrun --nproc_per_node N -m cli.main finetune ...``) every process runs this
command; rank 0 draws progress and prints the summary, the others are silent. ``--devices N``
starts torchrun itself on this machine with the same options.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.common import err_console, handle_errors, out_console
from cli.options import typer_parameter
from gptclf.distributed import LaunchSettings
from gptclf.errors import BadInputError, Interrupted
from gptclf.options import PANELS, OptionSpec, option_specs
from gptclf.training.settings import FinetuneSettings

if TYPE_CHECKING:
    from gptclf.progress import TrainProgress
    from gptclf.training.context import FinetuneResult

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _parameter(spec: OptionSpec, not_given: bool) -> inspect.Parameter:
    """The Typer parameter of one option; with ``not_given`` its default is None ("not given")."""
    return typer_parameter(spec, spec.default, spec.help, not_given=not_given)


def _signature() -> inspect.Signature:
    """The parameters of ``gptclf finetune``: the settings, --config, the launch options, --json."""
    config = typer.Option(
        None, "--config", help="TOML file of options; the command line overrides it.", rich_help_panel="Run"
    )
    params = [
        *(_parameter(spec, not_given=True) for spec in option_specs(FinetuneSettings)),
        inspect.Parameter("config", _KEYWORD, default=config, annotation=Path | None),
        *(_parameter(spec, not_given=False) for spec in option_specs(LaunchSettings)),
    ]
    params.sort(key=lambda p: PANELS.index(p.default.rich_help_panel))  # stable: fields' order within
    json_output = typer.Option(False, "--json", help="Print the summary as one JSON object.")
    params.append(inspect.Parameter("json_output", _KEYWORD, default=json_output, annotation=bool))
    return inspect.Signature(params)


@handle_errors
def finetune(
    *, config: Path | None, devices: int, dist_timeout: float, json_output: bool, **options: Any
) -> None:
    """Finetune GPT-2 as a classifier: `gptclf finetune --classes spam,ham` runs the book's SMS recipe."""
    from gptclf.distributed import process_group
    from gptclf.progress import ConsoleProgress, TrainProgress
    from gptclf.training.finetune import finetune as run_finetune
    from gptclf.training.finetune import launch_finetune
    from gptclf.training.settings import build_settings

    settings = build_settings(options, config)
    if launch_problems := LaunchSettings(devices, dist_timeout).problems():
        # Checked here, as they are no settings of the run; the training numbers' problems join
        # the line, so that one try shows everything wrong with the numbers.
        raise BadInputError("; ".join(launch_problems + settings.train.problems()))
    if devices != 1:
        raise typer.Exit(launch_finetune(settings, devices, options, config, dist_timeout, json_output))
    with process_group(settings.device, dist_timeout) as shard:
        # Downloads get the same bar or lines as `gptclf download` (gpt2-xl is 6 GB).
        downloads = ConsoleProgress(err_console) if shard.is_main else None
        try:
            result = run_finetune(
                settings,
                progress=_progress(settings.warnings()) if shard.is_main else TrainProgress(),
                download_progress=downloads,
                shard=shard,
            )
        except (BadInputError, Interrupted) as exc:
            if shard.is_main:
                raise
            # Every rank meets these alike (same settings, same agreed interrupt): rank 0 says it.
            raise typer.Exit(exc.exit_code) from None
    if not shard.is_main:
        return
    if json_output:
        typer.echo(json.dumps(result.summary()))
    else:
        _print_summary(result)


finetune.__signature__ = _signature()  # type: ignore[attr-defined]  # what Typer reads


def _progress(warnings: list[str]) -> TrainProgress:
    """Training progress on stderr that prints ``warnings`` before its first message.

    The run's first message comes once it has accepted every setting, so bad input stays one
    error line, and a warning does not precede an error that makes it moot.
    """
    from gptclf.progress import ConsoleProgress

    class WarnFirst(ConsoleProgress):
        def message(self, text: str) -> None:
            while warnings:
                super().message(warnings.pop(0))
            super().message(text)

    return WarnFirst(err_console)


def _print_summary(result: FinetuneResult) -> None:
    """A few lines for people on stdout."""
    from gptclf.progress import fmt_metric

    s = result.summary()
    lines = [f"run directory: {s['run_dir']}"]
    if result.test is not None:
        auc = f", ROC-AUC {fmt_metric(s['test_roc_auc'])}" if s["test_roc_auc"] is not None else ""
        lines.append(
            f"test: accuracy {fmt_metric(s['test_accuracy'])} on {result.test['n']} texts, "
            f"loss {fmt_metric(s['test_loss'])}, macro F1 {fmt_metric(s['test_macro_f1'])}{auc}"
        )
    lines += result.task.summary_lines(s)  # K labels: micro-F1 is the usual score
    if s["best_step"] is not None:
        lines.append(
            f"kept the weights of step {s['best_step']}: "
            f"validation accuracy {fmt_metric(s['best_val_acc'])}, loss {fmt_metric(s['best_val_loss'])}"
        )
    stop = " (stopped early)" if s["stopped_early"] else ""
    cache = result.cache
    blocks = f"{cache['blocks']} block{'' if cache['blocks'] == 1 else 's'}"
    places = {"memory": "in memory", "disk": "on disk", "gpu": "on the GPU"}
    at = " and ".join(places.get(part, part) for part in cache["location"].split("+"))
    where = f"cache of {blocks} {at}" if cache["blocks"] else "no cache"
    lines.append(
        f"trained {s['steps']} steps{stop} in {result.timings['train']:.1f} s ({where}); "
        f"{s['trainable_params']:,} trainable parameters"
    )
    for line in lines:
        out_console.print(line, markup=False, highlight=False)
