"""The ``calibrate`` verb: refit a run's temperature on labelled texts and store it in run.json.

The texts (a split of the prepared data, ``validation`` by default, or a labelled file) go through
the model once; the temperature that minimises their NLL (:mod:`gptclf.tasks.calibration`) replaces
the run's ``calibration`` in run.json, rewritten atomically. No other file changes, so the recorded
``weights_sha256`` stays valid. With a target (:class:`gptclf.option_groups.TargetOptions`) a decision
is chosen on the same texts' calibrated probabilities (:mod:`gptclf.tasks.decisions`) and stored in
the same one rewrite: ``decision`` (a two-class threshold) or ``abstain`` (an abstention level).

Everything that can be refused is refused before run.json is touched: bad data, labels that are not
classes of the run, a run folder that cannot be written (found out before the fit), a target the
texts cannot reach (:class:`gptclf.errors.GateError`, exit 3: then nothing is stored, not the
temperature either). Nothing is printed: messages go to the progress, the result is returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptclf.distributed import refuse_distributed
from gptclf.errors import write_error
from gptclf.fileio import check_writable
from gptclf.inference.labelled import DataChoice
from gptclf.inference.predict import Predictor
from gptclf.option_groups import DeviceOptions, TargetOptions
from gptclf.progress import Progress
from gptclf.rundir import load_run, update_run_info
from gptclf.tasks.calibration import Calibration, fit_temperature
from gptclf.tasks.decisions import check_target, choose

#: The split calibrate fits on when neither a split nor a file is named.
DEFAULT_SPLIT = "validation"


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` did.

    Attributes:
        run: The run directory whose run.json was rewritten.
        calibration: The temperature fitted, with the NLL and ECE before and after.
        decision: The two-class threshold chosen (run.json's ``decision``), or None.
        abstain: The abstention level chosen (run.json's ``abstain``), or None.
        changes: The top-level keys written into run.json, as written (``calibration``, and
            ``decision`` or ``abstain``).
        texts: How many labelled texts the fit saw.
        device: The device the model ran on.
    """

    run: Path
    calibration: Calibration
    decision: dict[str, Any] | None = None
    abstain: dict[str, Any] | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    texts: int = 0
    device: str = ""


def calibrate(
    run: Path,
    data: DataChoice | None = None,
    device: DeviceOptions | None = None,
    target: TargetOptions | None = None,
    progress: Progress | None = None,
) -> CalibrationResult:
    """Fit the temperature of ``run`` on labelled texts (and choose a decision), and store them.

    Args:
        run: A run directory written by ``finetune`` (or ``import``).
        data: The labelled texts; None: the validation split of the prepared folder the run
            recorded.
        device: Device, precision and batch size of the pass over the texts.
        target: A decision to choose on the same texts, with its positive class; None: none.
        progress: Gets the line that starts the fit and the pass's progress.

    Returns:
        The calibration and the decision chosen, as written into run.json.

    Raises:
        BadInputError: Bad options or data, a multi-label run, a run folder that cannot be written;
            run.json is as it was.
        DiskFullError: The disk is full (before the fit, or at the write): run.json is as it was.
        GateError: The target cannot be reached on these texts; nothing is stored.
    """
    data = data if data is not None else DataChoice()
    device = (device if device is not None else DeviceOptions()).check()
    target = (target if target is not None else TargetOptions()).check()
    progress = progress if progress is not None else Progress()
    refuse_distributed("calibrate")  # one process writes run.json
    data.check()
    loaded = load_run(run)
    try:  # run.json is rewritten at the end: a read-only or full disk is found out before the fit
        check_writable(loaded.path)
    except OSError as exc:
        raise write_error(exc, loaded.path) from None
    loaded.task.check_calibrate(loaded.path)  # a task without a temperature (multi-label) refuses
    chosen = check_target(target.target, target.positive, loaded.classes)  # before the model runs
    labelled = data.load(loaded, DEFAULT_SPLIT, "calibrate on")
    predictor = Predictor(
        loaded, device=device.device, precision=device.precision, batch_size=device.batch_size
    )
    progress.message(f"gptclf: fitting the temperature on {len(labelled.texts)} texts on {predictor.device}")
    # The model's raw logits, whatever the run stores: a refit replaces the calibration, never stacks.
    logits = predictor.logits(labelled.texts, progress=progress)
    calibration = fit_temperature(logits, labelled.labels, labelled.source)
    changes: dict[str, Any] = {"calibration": calibration.to_dict()}
    if chosen is not None:  # raises GateError for a target out of reach: then nothing is stored
        changes |= choose(
            logits, labelled.labels, calibration.temperature, loaded.classes, chosen, target.positive
        )
    try:
        update_run_info(loaded.path, changes)
    except OSError as exc:  # the disk filled since the check: run.json is as it was
        raise write_error(exc, loaded.path) from None
    return CalibrationResult(
        run=loaded.path,
        calibration=calibration,
        decision=changes.get("decision"),
        abstain=changes.get("abstain"),
        changes=changes,
        texts=len(labelled.texts),
        device=str(predictor.device),
    )
