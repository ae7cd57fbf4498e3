"""``gptclf adapt``: continue GPT-2's pretraining on unlabelled texts; write a Hugging Face folder.

The options are built from the fields of :class:`gptclf.training.adapt_settings.AdaptSettings`
(:func:`gptclf.training.adapt_settings.adapt_option_specs`), so nothing is declared twice; every
option defaults to "not given" (None), so that ``--resume`` can tell what was given again. The
work is :func:`gptclf.training.adapt.adapt`; this module parses, calls it and prints. Progress
and messages go to stderr, the summary to stdout (one JSON object with ``--json``).

Under torchrun (``torchrun --nproc_per_node N -m cli.main adapt ...``) every process runs this
command; rank 0 draws progress and prints the summary, the others are silent.
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any

import typer

from cli.common import err_console, handle_errors, out_console
from cli.options import typer_parameter
from gptclf.distributed import LaunchSettings
from gptclf.errors import BadInputError, Interrupted
from gptclf.options import PANELS, OptionSpec, help_text, option_specs

if TYPE_CHECKING:
    from gptclf.training.adapt import AdaptResult

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _parameter(spec: OptionSpec) -> inspect.Parameter:
    """The Typer parameter of one option, "not given" by default; ``--input`` may be repeated."""
    from gptclf.training.adapt_settings import ADAPT_HELP

    text = (
        help_text(ADAPT_HELP[spec.name], spec.metadata, spec.default)
        if spec.name in ADAPT_HELP
        else spec.help
    )
    if spec.name == "input":
        info = typer.Option(
            None, "--input", *spec.metadata["aliases"], help=text, rich_help_panel=spec.panel,
            metavar=spec.metadata["metavar"], show_default=False,
        )  # fmt: skip
        return inspect.Parameter("input", _KEYWORD, default=info, annotation=list[str] | None)
    return typer_parameter(spec, spec.default, text, not_given=True)


def _signature() -> inspect.Signature:
    """The parameters of ``gptclf adapt``: the settings, --dist-timeout and --json."""
    from gptclf.training.adapt_settings import adapt_option_specs

    params = [_parameter(spec) for spec in adapt_option_specs()]
    timeout = next(s for s in option_specs(LaunchSettings) if s.name == "dist_timeout")
    params.append(typer_parameter(timeout, timeout.default, timeout.help))
    params.sort(key=lambda p: PANELS.index(p.default.rich_help_panel))  # stable: fields' order within
    json_output = typer.Option(False, "--json", help="Print the summary as one JSON object.")
    params.append(inspect.Parameter("json_output", _KEYWORD, default=json_output, annotation=bool))
    return inspect.Signature(params)


@handle_errors
def adapt(*, dist_timeout: float, json_output: bool, **options: Any) -> None:
    """Continue GPT-2's pretraining on your own unlabelled texts; write a Hugging Face GPT-2 folder."""
    from gptclf.distributed import process_group
    from gptclf.progress import ConsoleProgress, TrainProgress
    from gptclf.training.adapt import adapt as run_adapt
    from gptclf.training.adapt_settings import build_adapt_settings

    settings = build_adapt_settings(options)
    if problems := LaunchSettings(1, dist_timeout).problems():
        raise BadInputError("; ".join(problems))
    with process_group(settings.device, dist_timeout) as shard:
        quiet = not shard.is_main
        try:
            result = run_adapt(
                settings,
                progress=TrainProgress() if quiet else ConsoleProgress(err_console),
                download_progress=None if quiet else ConsoleProgress(err_console),
                shard=shard,
            )
        except (BadInputError, Interrupted) as exc:
            if shard.is_main:
                raise
            raise typer.Exit(exc.exit_code) from None  # every rank meets these alike: rank 0 says it
    if quiet:
        return
    if json_output:
        typer.echo(json.dumps(result.summary(), allow_nan=False))
    else:
        _print_summary(result)


adapt.__signature__ = _signature()  # type: ignore[attr-defined]  # what Typer reads


def _print_summary(result: AdaptResult) -> None:
    """A few lines for people on stdout."""
    s = result.summary()
    blocks = s["blocks"]
    lines = [f"model folder: {s['out']}"]
    lines += [
        f"read {src['texts']:,} texts ({src['tokens']:,} tokens) from {src['source']}" for src in s["sources"]
    ]
    lines.append(
        f"trained on {blocks['train']:,} blocks of {blocks['block_size']} tokens "
        f"({blocks['train_tokens']:,} tokens), validated on {blocks['validation_tokens']:,} tokens"
    )
    if s["perplexity_before"] is not None:
        lines.append(
            f"validation perplexity {s['perplexity_before']:,.2f} -> {s['perplexity_after']:,.2f} "
            f"(kept the weights of step {s['best_step']})"
        )
    stop = " (stopped early)" if s["stopped_early"] else ""
    lines.append(
        f"trained {s['steps']} steps{stop} in {s['train_seconds']:.1f} s, "
        f"{s['tokens_per_second']:,.0f} tokens/s; "
        f"{s['trainable_params']:,} trainable parameters"
    )
    for line in lines:
        out_console.print(line, markup=False, highlight=False)
