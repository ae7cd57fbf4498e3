"""Pictures of a run on a labelled set: what ``evaluate --plots DIR`` and ``finetune`` (test split) write.

One PNG per kind (names: :data:`gptclf.rundir.layout.PLOT_FILES`), written as one set (all or none):

- ``confusion_matrix.png``: counts, rows the true class, columns the predicted one (argmax), shaded
  by the share of the true class's texts, so a rare class's errors show as clearly as a common one's.
- ``roc.png`` and ``precision_recall.png`` (two classes): the curves of the positive class's
  calibrated probability, with the decision threshold marked (run.json ``decision``, else 0.5).
- ``reliability.png``: accuracy against confidence in the 15 ECE bins, before (softmax of the raw
  logits) and after calibration (softmax(logits / T), the run's temperature).
- ``per_class_f1.png``: each class's F1, with its support.

They need matplotlib (the ``plot`` extra); without it :func:`write_plots` returns None and writes
nothing, and the caller says so in one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptclf.fileio import fsync_folder, remove_stale_temp_files, temp_dir_for
from gptclf.rundir.layout import PLOT_FILES
from gptclf.tasks.calibration import run_temperature
from gptclf.tasks.metrics import (
    ECE_BINS,
    average_precision,
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
    roc_auc,
    softmax,
)

#: Pixels per inch of the PNGs: small files, readable on a screen.
DPI = 100
#: The threshold marked when the run stores no decision: the argmax of two classes.
DEFAULT_THRESHOLD = 0.5
#: The one line a caller prints when matplotlib is missing.
SKIPPED_NOTE = "skipped: matplotlib is not installed (pip install gptclf[plot])"


@dataclass(frozen=True)
class PlotInputs:
    """What the pictures show.

    Attributes:
        logits: (N, K) raw logits.
        labels: (N,) true class indices.
        classes: Class names, index order.
        temperature: The run's calibration temperature (1.0: none).
        positive: Two classes: index of the positive class of the ROC and PR curves.
        threshold: Two classes: the decision threshold on the positive class's calibrated probability.
        title: What the set is (e.g. ``"test split"``), shown in every title.
    """

    logits: np.ndarray
    labels: np.ndarray
    classes: Sequence[str]
    temperature: float = 1.0
    positive: int = 1
    threshold: float = DEFAULT_THRESHOLD
    title: str = ""


def plots_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules (how tests hide it)
        return False


def plot_inputs(
    logits: Any, labels: Sequence[int], classes: Sequence[str], info: Mapping[str, Any], title: str = ""
) -> PlotInputs:
    """:class:`PlotInputs` with the run's temperature and decision (run.json ``info``)."""
    decision = info.get("decision") or {}
    positive = 1
    if len(classes) == 2 and decision.get("positive") in classes:
        positive = list(classes).index(decision["positive"])
    threshold = decision.get("threshold", DEFAULT_THRESHOLD) if len(classes) == 2 else DEFAULT_THRESHOLD
    return PlotInputs(
        logits=np.asarray(logits, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.int64),
        classes=list(classes),
        temperature=run_temperature(info),
        positive=positive,
        threshold=float(threshold),
        title=title,
    )


def plot_names(n_classes: int) -> list[str]:
    """The file names :func:`write_plots` writes for a task of ``n_classes`` classes."""
    two = n_classes == 2
    return [name for kind, name in PLOT_FILES.items() if two or kind not in ("roc", "precision_recall")]


def write_run_plots(
    folder: Path, logits: Any, labels: Sequence[int] | None, classes: Sequence[str], info: Mapping[str, Any]
) -> list[Path] | None:
    """``finetune``'s pictures of the test split, beside ``curves.png`` in the run's work folder.

    Every plot name is removed first, so a run never shows an older run's picture (nor, without
    matplotlib or without test texts, any picture).

    Args:
        folder: The run's work folder.
        logits: (N, K) raw test logits of the kept weights; None without test texts.
        labels: Their true class indices.
        classes: Class names, index order.
        info: The run's run.json content (its temperature and decision are shown).

    Returns:
        The files written ([] without test texts), or None when matplotlib is not installed.
    """
    for name in PLOT_FILES.values():
        (Path(folder) / name).unlink(missing_ok=True)
    if not plots_available():
        return None
    if logits is None or labels is None or not len(labels):
        return []
    return write_plots(folder, plot_inputs(logits, labels, classes, info, "test split"))


def write_plots(folder: Path, inputs: PlotInputs) -> list[Path] | None:
    """Write every picture of ``inputs`` into ``folder`` (created if missing, parents too), as one set.

    The pictures are drawn into a private temporary folder (inside ``folder`` when it exists, else
    beside it, so that the last step is a rename on one disk) and moved in once all of them are
    written. A full disk, an error or a signal therefore leaves none of this set's pictures and no
    folder that was not there before; what a killed write left is removed by the next one.

    Returns:
        The files written, or None (nothing written) when matplotlib is not installed.

    Raises:
        OSError: The disk filled or the place cannot be written (nothing of this set is left).
    """
    if not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed; chosen before pyplot is imported
    from matplotlib import pyplot as plt

    folder = Path(folder)
    names = plot_names(len(inputs.classes))
    made = _missing_folders(folder)  # removed again (when empty) if the set is not written
    existed = not made
    home = folder if existed else folder.parent
    remove_stale_temp_files(home)  # a killed earlier write's private folder
    stage: Path | None = None
    try:
        stage = temp_dir_for(folder / "plots" if existed else folder)
        for kind, name in PLOT_FILES.items():
            if name in names:
                _draw(plt, kind, inputs, stage / name)
        _move_in(stage, folder, names, existed)
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for path in made:  # deepest first; a folder someone filled meanwhile stays
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return [folder / name for name in names]


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _draw(plt: Any, kind: str, inputs: PlotInputs, path: Path) -> None:
    """Draw the picture ``kind`` of ``inputs`` into the PNG ``path``, synced to disk."""
    drawers = {
        "confusion": _confusion,
        "roc": _roc,
        "precision_recall": _precision_recall,
        "reliability": _reliability,
        "f1": _f1_bars,
    }
    fig = drawers[kind](plt, inputs)
    try:
        fig.tight_layout()
        with open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
            fh.flush()
            os.fsync(fh.fileno())  # before the rename: a power cut leaves no empty picture
    finally:
        plt.close(fig)


def _move_in(stage: Path, folder: Path, names: list[str], existed: bool) -> None:
    """Move the finished pictures of ``stage`` into ``folder``: one rename of the whole folder when
    it is new, else each file over its older version (renames need no space on the disk)."""
    if not existed:
        os.rename(stage, folder)
        fsync_folder(folder.parent)
        return
    for name in names:
        os.replace(stage / name, folder / name)
    stage.rmdir()
    fsync_folder(folder)


def _titled(text: str, inputs: PlotInputs) -> str:
    return f"{text} ({inputs.title})" if inputs.title else text


def _confusion(plt: Any, inputs: PlotInputs) -> Any:
    """Heatmap of the confusion matrix: counts written in, shaded by the row's share."""
    k = len(inputs.classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (inputs.labels, inputs.logits.argmax(axis=1)), 1)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, f"{cm[i, j]}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black"
            )
    ax.set_xticks(range(k), inputs.classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), inputs.classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(_titled("Confusion matrix", inputs))
    return fig


def _positive_scores(inputs: PlotInputs) -> tuple[np.ndarray, np.ndarray]:
    """The positive class's logit margin and whether each text is positive.

    The margin ranks texts as the calibrated probability does (sigmoid(margin / T)) but does not
    round to 1.0 for confident texts, which would merge them into one point of the curve (the
    metrics rank by it too, so the AUC shown is the one ``evaluate`` reports).
    """
    margin = inputs.logits[:, inputs.positive] - inputs.logits[:, 1 - inputs.positive]
    return margin, inputs.labels == inputs.positive


def _curve_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when the threshold is at each distinct score, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(ranked) != 0), len(ranked) - 1]  # tied scores cross together
    tp = np.cumsum(hits)[last]
    return tp, (last + 1) - tp


def _operating_point(inputs: PlotInputs) -> dict[str, float]:
    """TPR, FPR, precision and recall of the decision threshold."""
    positive = inputs.labels == inputs.positive
    chosen = softmax(inputs.logits / inputs.temperature)[:, inputs.positive] >= inputs.threshold
    tp = float((chosen & positive).sum())
    fp = float((chosen & ~positive).sum())
    n_pos, n_neg = float(positive.sum()), float((~positive).sum())
    return {
        "tpr": tp / n_pos if n_pos else 0.0,
        "fpr": fp / n_neg if n_neg else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
    }


def _roc(plt: Any, inputs: PlotInputs) -> Any:
    """ROC curve of the positive class, the chance diagonal and the threshold's point."""
    scores, positive = _positive_scores(inputs)
    tp, fp = _curve_counts(scores, positive)
    tpr = np.r_[0, tp / max(positive.sum(), 1)]
    fpr = np.r_[0, fp / max((~positive).sum(), 1)]
    auc = roc_auc(scores, positive)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(fpr, tpr, label="ROC" + (f" (AUC {auc:.3f})" if auc is not None else ""))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    point = _operating_point(inputs)
    ax.plot(point["fpr"], point["tpr"], "o", color="red", label=f"threshold {inputs.threshold:.3g}")
    name = inputs.classes[inputs.positive]
    _unit_axes(ax, "False positive rate", f"True positive rate (recall of {name})", "lower right")
    ax.set_title(_titled(f"ROC, positive class {name}", inputs))
    return fig


def _precision_recall(plt: Any, inputs: PlotInputs) -> Any:
    """Precision-recall curve of the positive class, its base rate and the threshold's point."""
    scores, positive = _positive_scores(inputs)
    tp, fp = _curve_counts(scores, positive)
    recall = tp / max(positive.sum(), 1)
    precision = tp / (tp + fp)
    ap = average_precision(scores, positive)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre",
            label="PR" + (f" (AP {ap:.3f})" if ap is not None else ""))  # fmt: skip
    ax.axhline(positive.mean(), linestyle="--", color="grey", label="base rate")
    point = _operating_point(inputs)
    ax.plot(point["tpr"], point["precision"], "o", color="red", label=f"threshold {inputs.threshold:.3g}")
    name = inputs.classes[inputs.positive]
    _unit_axes(ax, f"Recall of {name}", f"Precision of {name}", "lower left")
    ax.set_title(_titled(f"Precision-recall, positive class {name}", inputs))
    return fig


def _unit_axes(ax: Any, xlabel: str, ylabel: str, legend: str) -> None:
    """Labels, a legend and the [0, 1] square (with a margin) of a curve of rates."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc=legend)


def _reliability(plt: Any, inputs: PlotInputs) -> Any:
    """Reliability diagrams side by side: raw probabilities, then calibrated ones."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    panels = (
        ("Before calibration", 1.0),
        (f"After calibration (T = {inputs.temperature:.4g})", inputs.temperature),
    )
    for ax, (name, t) in zip(axes, panels, strict=True):
        probs = softmax(inputs.logits / t)
        bins = reliability_bins(probs, inputs.labels)
        ece = expected_calibration_error(probs, inputs.labels)
        full = [b for b in bins if b["n"]]
        width = 1.0 / ECE_BINS
        ax.bar([b["lower"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
               edgecolor="black", alpha=0.8, label="accuracy in bin")  # fmt: skip
        ax.plot([b["confidence"] for b in full], [b["confidence"] for b in full], "x", color="red",
                label="mean confidence in bin")  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set_xlabel("Confidence (top-class probability)")
        ax.set_title(f"{name}: ECE {ece:.4f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("Accuracy")
    axes[0].legend(loc="upper left")
    fig.suptitle(_titled(f"Reliability ({ECE_BINS} bins)", inputs))
    return fig


def _f1_bars(plt: Any, inputs: PlotInputs) -> Any:
    """Horizontal bars of each class's F1, value and support written beside them."""
    per_class = classification_metrics(inputs.logits, inputs.labels, inputs.classes)["per_class"]
    names = list(per_class)
    f1 = [per_class[c]["f1"] for c in names]
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.5 * len(names) + 1.5)))
    ax.barh(range(len(names)), f1, color="tab:blue")
    for i, c in enumerate(names):
        ax.text(min(f1[i], 1.0) + 0.01, i, f"{f1[i]:.3f} (n={per_class[c]['support']})", va="center")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()  # the first class on top, as in the tables
    ax.set_xlim(0, 1.25)  # room for the numbers; F1 itself stops at 1
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1")
    ax.set_ylabel("Class")
    ax.set_title(_titled("F1 per class", inputs))
    return fig
