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
run.json. Messages and progress go to stderr. The work is :func:`gptclf.inference.calibrate.calibrate`;
this module parses, calls it and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import DATA_DIR, RUN_DIR, err_console, handle_errors, out_console
from cli.options import Use, option_groups
from gptclf.option_groups import DeviceOptions, InputOptions, OutputOptions, TargetOptions

#: calibrate's wording of its shared options.
_INPUT = Use(help={"input_path": "A labelled CSV/TSV/JSONL file to fit on instead of a split"})
_TARGET = Use(
    help={
        "target": "Also choose a decision: f1, precision=P, recall=R (threshold) or coverage=C (abstention)"
    }
)


@handle_errors
@option_groups
def calibrate(
    run: Path = RUN_DIR,
    split: str | None = typer.Option(
        None, "--split", help="Split of the prepared data to fit on (default validation)."
    ),
    data: Path | None = DATA_DIR,
    source: Annotated[InputOptions, _INPUT] = InputOptions(),
    device: DeviceOptions = DeviceOptions(),
    target: Annotated[TargetOptions, _TARGET] = TargetOptions(),
    output: OutputOptions = OutputOptions(),
) -> None:
    """Fit the temperature that makes a run's probabilities calibrated, and store it in run.json."""
    from gptclf.inference.calibrate import calibrate as run_calibrate
    from gptclf.inference.labelled import DataChoice
    from gptclf.progress import ConsoleProgress

    s = source
    choice = DataChoice(s.input_path, split, data, s.text_column, s.label_column, s.input_format, s.encoding)
    result = run_calibrate(run, choice, device, target, progress=ConsoleProgress(err_console))
    if output.json_out:
        record = {"run": str(result.run), **result.changes}
        sys.stdout.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        return
    c = result.calibration
    out_console.print(f"temperature  {c.temperature:.4f}", markup=False)
    if c.note:  # why T = 1 was kept, or that the fit reached a bound
        out_console.print(f"             {c.note}", markup=False)
    out_console.print(f"NLL          {c.val_nll_before:.4f} -> {c.val_nll_after:.4f}", markup=False)
    out_console.print(f"ECE          {c.val_ece_before:.4f} -> {c.val_ece_after:.4f}", markup=False)
    _print_choice(result.changes)
    err_console.print(f"gptclf: wrote the calibration into {result.run / 'run.json'}")


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
