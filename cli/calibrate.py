"""``gptclf calibrate RUN``: refit a run's temperature on labelled data, without retraining.

The texts (a split of the prepared data, ``validation`` by default, or a labelled file) go through
the model once; the temperature that minimises their NLL (:mod:`gptclf.tasks.calibration`) replaces the
run's ``calibration`` in run.json, which is rewritten atomically. No other file changes, so the
recorded ``weights_sha256`` stays valid. Bad input (no such data, labels that are not classes of the
run) is refused before run.json is touched.

With ``--target`` (and ``--positive`` for a threshold) a decision is also chosen on the same texts
calibrated probabilities (:mod:`gptclf.tasks.decisions`) and stored with the temperature in the same one
rewrite: ``decision`` (two classes: ``f1``, ``precision=P``, ``recall=R``) or ``abstain``
(``coverage=C``). A target the texts cannot reach is exit 3 with the best value reached, and
nothing is stored (not the temperature either).

Stdout: the temperature (with the one-line reason when T = 1 was kept or the fit reached a bound)
and the NLL and ECE before and after, or with ``--json`` one object (``run`` and the
``calibration`` written, and the ``decision`` or ``abstain`` chosen); the same ``note`` lines are in
run.json. Messages and progress go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from cli.common import (
    BATCH_SIZE,
    DATA_DIR,
    DEVICE,
    ENCODING,
    INPUT_FORMAT,
    JSON_OUT,
    LABEL_COLUMN,
    PRECISION,
    RUN_DIR,
    TEXT_COLUMN,
    err_console,
    handle_errors,
    out_console,
)


@handle_errors
def calibrate(
    run: Path = RUN_DIR,
    split: str | None = typer.Option(
        None, "--split", help="Split of the prepared data to fit on (default validation)."
    ),
    data: Path | None = DATA_DIR,
    input_path: Path | None = typer.Option(
        None, "--input", "-i", help="A labelled CSV/TSV/JSONL file to fit on instead of a split."
    ),
    text_column: str | None = TEXT_COLUMN,
    label_column: str | None = LABEL_COLUMN,
    input_format: str | None = INPUT_FORMAT,
    encoding: str = ENCODING,
    batch_size: int = BATCH_SIZE,
    device: str = DEVICE,
    precision: str = PRECISION,
    positive: str | None = typer.Option(
        None, "--positive", help="The positive class of a threshold --target (two classes)."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Also choose a decision: f1, precision=P, recall=R (threshold) or coverage=C (abstention).",
    ),
    json_out: bool = JSON_OUT,
) -> None:
    """Fit the temperature that makes a run's probabilities calibrated, and store it in run.json."""
    from gptclf.distributed import refuse_distributed
    from gptclf.errors import write_error
    from gptclf.fileio import check_writable
    from gptclf.inference.evaluate import DataChoice
    from gptclf.inference.predict import Predictor
    from gptclf.progress import ConsoleProgress
    from gptclf.rundir import load_run, update_run_info
    from gptclf.tasks.calibration import fit_temperature
    from gptclf.tasks.decisions import check_target, choose

    refuse_distributed("calibrate")  # one process writes run.json
    choice = DataChoice(input_path, split, data, text_column, label_column, input_format, encoding)
    choice.check()
    loaded = load_run(run)
    try:  # run.json is rewritten at the end: a read-only or full disk is found out before the fit
        check_writable(loaded.path)
    except OSError as exc:
        raise write_error(exc, loaded.path) from None
    if loaded.info.get("multi_label") is True:  # a temperature and a two-class threshold mean nothing there
        from gptclf.errors import BadInputError

        raise BadInputError(
            f"{loaded.path} is a multi-label run: calibrate fits softmax runs; its per-label thresholds "
            "were chosen on validation by finetune (evaluate/predict --threshold P sets one for all)"
        )
    chosen = check_target(target, positive, loaded.classes)  # before the model runs
    labelled = choice.load(loaded, "validation", "calibrate on")
    predictor = Predictor(loaded, device=device, precision=precision, batch_size=batch_size)
    err_console.print(f"gptclf: fitting the temperature on {len(labelled.texts)} texts on {predictor.device}")
    # The model's raw logits, whatever the run stores: a refit replaces the calibration, never stacks.
    logits = predictor.logits(labelled.texts, progress=ConsoleProgress(err_console))
    calibration = fit_temperature(logits, labelled.labels, labelled.source)
    changes = {"calibration": calibration.to_dict()}
    if chosen is not None:  # raises GateError for a target out of reach: then nothing is stored
        changes |= choose(logits, labelled.labels, calibration.temperature, loaded.classes, chosen, positive)
    try:
        update_run_info(loaded.path, changes)
    except OSError as exc:  # the disk filled since the check: run.json is as it was
        raise write_error(exc, loaded.path) from None
    if json_out:
        record = {"run": str(loaded.path), **changes}
        sys.stdout.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        return
    c = calibration
    out_console.print(f"temperature  {c.temperature:.4f}", markup=False)
    if c.note:  # why T = 1 was kept, or that the fit reached a bound
        out_console.print(f"             {c.note}", markup=False)
    out_console.print(f"NLL          {c.val_nll_before:.4f} -> {c.val_nll_after:.4f}", markup=False)
    out_console.print(f"ECE          {c.val_ece_before:.4f} -> {c.val_ece_after:.4f}", markup=False)
    _print_choice(changes)
    err_console.print(f"gptclf: wrote the calibration into {loaded.path / 'run.json'}")


def _print_choice(changes: dict[str, Any]) -> None:
    """The decision or abstention level chosen, with what it gives on the texts (stdout)."""
    if "decision" in changes:
        d, v = changes["decision"], changes["decision"]["validation"]
        out_console.print(
            f"threshold    {d['threshold']:.4f} on p({d['positive']}) for {d['target']}: precision "
            f"{v['precision']:.4f}, recall {v['recall']:.4f}, F1 {v['f1']:.4f}",
            markup=False,
        )
        if "note" in d:  # the target is met by labelling every text positive
            out_console.print(f"             {d['note']}", markup=False)
    if "abstain" in changes:
        a, v = changes["abstain"], changes["abstain"]["validation"]
        out_console.print(
            f"abstain      below {a['min_confidence']:.4f} for {a['target']}: coverage "
            f"{v['coverage']:.4f}, accuracy on the covered {v['accuracy']:.4f}",
            markup=False,
        )
