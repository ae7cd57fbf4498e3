"""What a finished training run writes besides its weights: history.csv, metrics.json, curves.png.

All three are written atomically. The PNG needs matplotlib (the ``plot`` extra); without it the
run simply has no picture.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptclf.fileio import atomic_path, atomic_write_json, atomic_write_text
from gptclf.rundir.layout import CURVES_FILE, HISTORY_COLUMNS, HISTORY_FILE, METRICS_FILE, MULTI_COLUMNS


def history_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The history as CSV text: one row per evaluation, columns :data:`HISTORY_COLUMNS`, and
    :data:`MULTI_COLUMNS` after them where the rows have them (multi-label runs): a reader of
    the older columns reads them as before."""
    columns = HISTORY_COLUMNS + tuple(c for c in MULTI_COLUMNS if any(c in row for row in rows))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return buffer.getvalue()


def write_history(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``history.csv`` into ``run_dir``."""
    atomic_write_text(Path(run_dir) / HISTORY_FILE, history_csv(rows))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json`` (test and validation metrics, the best step, timings) into ``run_dir``."""
    atomic_write_json(Path(run_dir) / METRICS_FILE, metrics)


def _plot_micro_f1(ax: Any, steps: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    """The validation micro-F1 of a multi-label run, on the accuracy panel."""
    points = [
        (s, r["val_micro_f1"]) for s, r in zip(steps, rows, strict=True) if r.get("val_micro_f1") is not None
    ]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, ":", marker="s", markersize=3, label="Validation micro-F1")
        ax.set_title("Exact-match accuracy and micro-F1")


def write_curves(run_dir: Path, rows: Sequence[dict[str, Any]], steps_per_epoch: float) -> bool:
    """Plot loss and accuracy over training into ``curves.png``, as the book's figures do.

    Left: training and validation loss; right: training and validation accuracy; the x axis is
    the optimizer step, with the epoch on a second axis above.

    Returns:
        False (and writes nothing) when matplotlib is not installed or there is nothing to plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; must be chosen before pyplot is imported
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not rows:
        return False
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
        for split, style in (("train", "-"), ("val", "-.")):
            points = [
                (s, r[f"{split}_{key}"])
                for s, r in zip(steps, rows, strict=True)
                if r.get(f"{split}_{key}") is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                label = "Training" if split == "train" else "Validation"
                ax.plot(xs, ys, style, marker="o", markersize=3, label=f"{label} {title.lower()}")
        if key == "acc":  # multi-label: accuracy is the exact match; micro-F1 is the usual score
            _plot_micro_f1(ax, steps, rows)
        ax.set_xlabel("Optimizer step")
        ax.set_ylabel(title)
        ax.legend()
        if steps_per_epoch > 0:
            top = ax.secondary_xaxis(
                "top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch)
            )
            top.set_xlabel("Epoch")
    fig.tight_layout()
    try:
        with atomic_path(Path(run_dir) / CURVES_FILE) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return True
