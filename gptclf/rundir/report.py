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
from gptclf.rundir.layout import CURVES_FILE, HISTORY_COLUMNS, HISTORY_FILE, METRICS_FILE


def history_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The history as CSV text: one row per evaluation, columns :data:`HISTORY_COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in HISTORY_COLUMNS])
    return buffer.getvalue()


def write_history(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``history.csv`` into ``run_dir``."""
    atomic_write_text(Path(run_dir) / HISTORY_FILE, history_csv(rows))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json`` (test and validation metrics, the best step, timings) into ``run_dir``."""
    atomic_write_json(Path(run_dir) / METRICS_FILE, metrics)


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
