"""``gptclf finetune``: train a GPT-2 classifier and write a run directory.

Every option defaults to "not given", so that a ``--config FILE.toml`` can set it and the command
line can still override the file; the defaults themselves live in
:class:`gptclf.runconfig.FinetuneSettings`. Progress and messages go to stderr, the summary to
stdout (one JSON object with ``--json``).

Under torchrun (``torchrun --nproc_per_node N -m cli.main finetune ...``) every process runs this
command; rank 0 draws progress and prints the summary, the others are silent. ``--devices N``
starts torchrun itself on this machine with the same options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.common import err_console, handle_errors, out_console
from gptclf.errors import BadInputError, Interrupted

if TYPE_CHECKING:
    from gptclf.finetune import FinetuneResult
    from gptclf.progress import TrainProgress
    from gptclf.runconfig import FinetuneSettings

_TRAIN = "Training"
_MODEL = "Model"
_DATA = "Data"
_RUN = "Run"


def _opt(*names: str, help: str, panel: str) -> Any:
    return typer.Option(None, *names, help=help, rich_help_panel=panel, show_default=False)


@handle_errors
def finetune(
    data: str | None = _opt(
        "--data", help="Prepared folder (from `gptclf prepare`); default: the SMS set.", panel=_DATA
    ),
    classes: str | None = _opt("--classes", help="Class names in order, e.g. spam,ham.", panel=_DATA),
    max_length: int | None = _opt(
        "--max-length", help="Tokens kept per text (default: the context).", panel=_DATA
    ),
    pad_to: str | None = _opt("--pad-to", help="batch (default) or longest-train (the book's).", panel=_DATA),
    model: str | None = _opt(
        "--model",
        help="gpt2-small (default) .. gpt2-xl, 124M .. 1558M, or n_layer=4,n_head=4,n_embd=256.",
        panel=_MODEL,
    ),
    weights: str | None = _opt(
        "--weights", help="pretrained (default), random, or a safetensors path.", panel=_MODEL
    ),
    trainable: str | None = _opt(
        "--trainable", help="head, last-block (default), 'last-blocks N', all, lora.", panel=_MODEL
    ),
    lora_rank: int | None = _opt("--lora-rank", help="LoRA rank (default: 16).", panel=_MODEL),
    lora_alpha: float | None = _opt("--lora-alpha", help="LoRA alpha (default: 16).", panel=_MODEL),
    pooling: str | None = _opt(
        "--pooling", help="last-token (default), last-position (the book's), mean.", panel=_MODEL
    ),
    epochs: int | None = _opt("--epochs", help="Epochs (default: 5).", panel=_TRAIN),
    batch_size: int | None = _opt(
        "--batch-size", help="Texts per forward pass, per device (default: 8).", panel=_TRAIN
    ),
    grad_accum: int | None = _opt(
        "--grad-accum", help="Forward passes per optimizer step (default: 1).", panel=_TRAIN
    ),
    lr: float | None = _opt("--lr", help="AdamW learning rate (default: 5e-5).", panel=_TRAIN),
    weight_decay: float | None = _opt(
        "--weight-decay", help="AdamW weight decay (default: 0.1).", panel=_TRAIN
    ),
    clip_grad: float | None = _opt(
        "--clip-grad", help="Clip the gradient norm to this (default: off).", panel=_TRAIN
    ),
    schedule: str | None = _opt("--schedule", help="constant (default) or cosine.", panel=_TRAIN),
    warmup: float | None = _opt(
        "--warmup", help="Warmup steps (>= 1) or fraction of all steps (< 1).", panel=_TRAIN
    ),
    eval_every: int | None = _opt(
        "--eval-every", help="Also evaluate every N steps (default: epoch ends).", panel=_TRAIN
    ),
    checkpoint_every: int | None = _opt(
        "--checkpoint-every",
        help="Also save a resumable checkpoint every N steps (default: epoch ends).",
        panel=_TRAIN,
    ),
    early_stop: int | None = _opt(
        "--early-stop", help="Stop after N evaluations without improvement.", panel=_TRAIN
    ),
    monitor: str | None = _opt("--monitor", help="val_loss (default), val_acc or val_f1.", panel=_TRAIN),
    class_weights: str | None = _opt("--class-weights", help="none (default) or balanced.", panel=_TRAIN),
    seed: int | None = _opt("--seed", help="Seed of every random step (default: 123).", panel=_TRAIN),
    device: str | None = _opt("--device", help="auto (default), cpu, cuda, cuda:N, mps.", panel=_RUN),
    precision: str | None = _opt("--precision", help="auto (default), fp32, bf16, fp16.", panel=_RUN),
    cache: bool | None = typer.Option(
        None,
        "--cache/--no-cache",
        help="Cache the frozen blocks' output (default: on).",
        rich_help_panel=_RUN,
        show_default=False,
    ),
    cache_memory: str | None = _opt(
        "--cache-memory", help="RAM for the cache, e.g. 2GB (default: 1/4 of RAM).", panel=_RUN
    ),
    out: str | None = _opt("--out", help="Run directory (default: runs/<timestamp>).", panel=_RUN),
    force: bool | None = typer.Option(
        None, "--force", help="Overwrite a non-empty run directory.", rich_help_panel=_RUN
    ),
    resume: bool | None = typer.Option(
        None, "--resume", help="Continue the interrupted run in --out.", rich_help_panel=_RUN
    ),
    home: str | None = _opt(
        "--home", help="Cache folder (default: $GPTCLF_HOME or ~/.cache/gptclf).", panel=_RUN
    ),
    mirror: str | None = _opt(
        "--mirror", help="Download mirror URL or folder (default: $GPTCLF_MIRROR).", panel=_RUN
    ),
    config: Path | None = _opt(
        "--config", help="TOML file of options; the command line overrides it.", panel=_RUN
    ),
    devices: int = typer.Option(
        1, "--devices", help="Data-parallel on N local processes (GPUs) via torchrun.", rich_help_panel=_RUN
    ),
    dist_timeout: float = typer.Option(
        300.0,
        "--dist-timeout",
        envvar="GPTCLF_DIST_TIMEOUT",
        help="Seconds a data-parallel process waits for the others before the job fails (default: 300).",
        rich_help_panel=_RUN,
        show_default=False,  # the help says it, as every other option's does
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Finetune GPT-2 as a classifier: `gptclf finetune --classes spam,ham` runs the book's SMS recipe."""
    options = dict(locals())  # first, so it holds exactly the parameters: the settings' field names
    config_file = options.pop("config")
    for name in ("json_output", "devices", "dist_timeout"):
        options.pop(name)
    from cli.download import progress_reporter
    from gptclf.distributed import process_group
    from gptclf.finetune import finetune as run_finetune
    from gptclf.progress import TrainProgress
    from gptclf.runconfig import build_settings, number_problems

    settings = build_settings(options, config_file)
    if timeout_problems := number_problems(("dist_timeout", dist_timeout, 0.0, None)):
        # Checked here, as it is no setting of the run; the training numbers' problems join the
        # line, so that one try shows everything wrong with the numbers.
        raise BadInputError("; ".join(timeout_problems + settings.train_config().problems()))
    if devices != 1:
        _launch(settings, devices, options, config_file, dist_timeout, json_output)
    with process_group(settings.device, dist_timeout) as shard:
        # Downloads get the same bar or lines as `gptclf download` (gpt2-xl is 6 GB).
        downloads = progress_reporter(err_console, only_fetched=True) if shard.is_main else None
        try:
            result = run_finetune(
                settings,
                progress=_progress(_warnings(settings)) if shard.is_main else TrainProgress(),
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


def _launch(
    settings: FinetuneSettings,
    devices: int,
    options: dict[str, Any],
    config: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Check the settings, then run this command under torchrun on ``devices`` local processes.

    Raises:
        typer.Exit: With torchrun's exit code.
    """
    from gptclf.distributed import launch, torchrun_env
    from gptclf.runplan import check_launch

    if torchrun_env() is not None:
        raise BadInputError("--devices starts torchrun itself: under torchrun, use its --nproc_per_node")
    out = check_launch(settings, devices)
    args = [] if config is None else ["--config", str(config)]
    for name, value in {**options, "out": str(out)}.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{name}")  # --cache/--no-cache, --force, --resume
        elif value is not None:
            args += [flag, str(value)]
    args += ["--dist-timeout", str(timeout), *(["--json"] if as_json else [])]
    raise typer.Exit(launch(devices, args))


def _warnings(settings: FinetuneSettings) -> list[str]:
    """Options that were given (flag or config file) but have no effect."""
    unused = [f"--{name.replace('_', '-')}" for name in ("lora_rank", "lora_alpha") if name in settings.given]
    if not unused or settings.trainable.strip() == "lora":
        return []
    verb = "applies" if len(unused) == 1 else "apply"
    return [
        f"gptclf: warning: {' and '.join(unused)} {verb} only with --trainable lora; "
        f"ignored for --trainable {settings.trainable}"
    ]


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


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_summary(result: FinetuneResult) -> None:
    """A few lines for people on stdout."""
    s = result.summary()
    lines = [f"run directory: {s['run_dir']}"]
    if result.test is not None:
        auc = f", ROC-AUC {_fmt(s['test_roc_auc'])}" if s["test_roc_auc"] is not None else ""
        lines.append(
            f"test: accuracy {_fmt(s['test_accuracy'])} on {result.test['n']} texts, "
            f"loss {_fmt(s['test_loss'])}, macro F1 {_fmt(s['test_macro_f1'])}{auc}"
        )
    if s["best_step"] is not None:
        lines.append(
            f"kept the weights of step {s['best_step']}: validation accuracy {_fmt(s['best_val_acc'])}, "
            f"loss {_fmt(s['best_val_loss'])}"
        )
    stop = " (stopped early)" if s["stopped_early"] else ""
    cache = result.cache
    blocks = f"{cache['blocks']} block{'' if cache['blocks'] == 1 else 's'}"
    where = f"cache of {blocks} in {cache['location']}" if cache["blocks"] else "no cache"
    lines.append(
        f"trained {s['steps']} steps{stop} in {result.timings['train']:.1f} s ({where}); "
        f"{s['trainable_params']:,} trainable parameters"
    )
    for line in lines:
        out_console.print(line, markup=False, highlight=False)
