"""What ``gptclf tune`` leaves in ``RUN/tune/``: trials.csv, study.json and three pictures.

``trials.csv`` has one row per trial, in the order they were asked for: ``trial``, ``status``
(complete, pruned, failed; a trial stopped by a signal or kill -9 is ``interrupted`` and was run
again under a new number), ``value`` (the best validation metric of a complete trial), ``seconds``,
``rank`` (the torchrun rank that ran it; 0 in one process), one column per searched option (empty
where a trial did not sample it: ``lora_rank`` without LoRA), ``curve`` (the validation metric at
each evaluation, ``;``-separated: where a pruned trial stood when it was stopped) and ``error`` (why
a trial failed). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptclf.fileio import atomic_path, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import optuna

TRIALS_FILE = "trials.csv"
STUDY_FILE = "study.json"
PICTURES = {
    "history": "optimization_history.png",
    "importance": "param_importances.png",
    "lr": "metric_vs_lr.png",
}


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: the columns of trials.csv."""
    names: list[str] = []
    for t in study.trials:
        names += [n for n in t.params if n not in names]
    rows = []
    for t in study.trials:
        error = str(t.user_attrs.get("error", ""))
        status = (
            "interrupted"
            if error.startswith("interrupted")
            else _STATUS.get(t.state.name, t.state.name.lower())
        )
        row: dict[str, Any] = {
            "trial": t.number,
            "status": status,
            "value": t.value if status == "complete" else "",  # a pruned trial's stand is its curve
            "seconds": round(float(t.user_attrs.get("seconds", 0.0)), 3),
            "rank": t.user_attrs.get("rank", 0),  # the torchrun rank that ran it
        }
        row.update({n: t.params.get(n, "") for n in names})
        row["curve"] = ";".join(f"{v:.6g}" for v in t.user_attrs.get("curve", []))
        row["error"] = error
        rows.append(row)
    return rows


_STATUS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def write_report(folder: Path, study: optuna.Study, record: dict[str, Any]) -> list[str]:
    """Write trials.csv, study.json and (with matplotlib) the pictures into ``folder``.

    Returns:
        The pictures written (none without matplotlib or with fewer than two complete trials).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / TRIALS_FILE, buffer.getvalue())
    for name in PICTURES.values():
        (folder / name).unlink(missing_ok=True)  # never an older search's picture
    pictures = _pictures(folder, study, rows, record["metric"])
    atomic_write_json(folder / STUDY_FILE, {**record, "pictures": pictures})
    return pictures


def _pictures(folder: Path, study: optuna.Study, rows: list[dict[str, Any]], metric: str) -> list[str]:
    """The optimization history, the parameter importances and the metric against the learning rate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    done = [r for r in rows if r["status"] == "complete" and isinstance(r["value"], float)]
    if len(done) < 2:
        return []
    written = []
    minimize = metric == "val_loss"
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["trial"] for r in done]
    ys = [r["value"] for r in done]
    best, running = [], math.inf if minimize else -math.inf
    for y in ys:
        running = min(running, y) if minimize else max(running, y)
        best.append(running)
    ax.plot(xs, ys, "o", label="complete trial")
    ax.step(xs, best, where="post", label="best so far")
    ax.set(xlabel="Trial", ylabel=metric, title="Optimization history")
    ax.legend()
    written.append(_save(plt, fig, folder / PICTURES["history"]))
    importances = _importances(study)
    if importances:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set(xlabel=f"Importance for {metric} (fANOVA)", title="Parameter importances")
        written.append(_save(plt, fig, folder / PICTURES["importance"]))
    with_lr = [r for r in done if isinstance(r.get("lr"), float)]
    if len(with_lr) >= 2:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([r["lr"] for r in with_lr], [r["value"] for r in with_lr])
        ax.set_xscale("log")
        ax.set(xlabel="Learning rate", ylabel=metric, title=f"{metric} against the learning rate")
        written.append(_save(plt, fig, folder / PICTURES["lr"]))
    return written


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances; empty where they cannot be computed (too few trials, or
    parameters that never varied)."""
    import optuna

    try:
        with warnings.catch_warnings():  # "some regimes have less than 2 trials": stderr is ours
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def _save(plt: Any, fig: Any, path: Path) -> str:
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path.name
