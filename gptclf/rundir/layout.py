"""The run directory's layout: the name of every file a run holds and the columns of its history.

One place for these names, so that the writers (:mod:`gptclf.rundir.files`,
:mod:`gptclf.rundir.report`), the reader (:func:`gptclf.rundir.load_run`) and the work folder's
rules (:mod:`gptclf.rundir.build`, which must tell a run's files from the user's own) cannot drift
apart. Changing any of them changes the run-directory format.
"""

from __future__ import annotations

from gptclf.model.tokenizer import TOKENIZER_FILES

#: run.json's ``format``: marks a file as a gptclf run.json.
RUN_FORMAT = "gptclf-run"
#: run.json's ``format_version``: the newest layout this code reads and the one it writes.
RUN_FORMAT_VERSION = 1

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "run.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
#: A finetune's resumable state: in the work folder while the run is built, never in a finished run.
CHECKPOINT_NAME = "checkpoint.pt"
#: ``gptclf tune``'s files in a run: trials.csv, study.json, the pictures, the study's journal.
TUNE_DIR = "tune"
#: A tune's resumable state (Optuna's journal of the study): in the work folder while the search
#: runs; moved into :data:`TUNE_DIR` when the run is finished.
TUNE_JOURNAL = "tune.journal"
#: The pictures of the test split (:mod:`gptclf.inference.plots`), by kind; ROC and precision-recall only
#: for two classes.
PLOT_FILES = {
    "confusion": "confusion_matrix.png",
    "roc": "roc.png",
    "precision_recall": "precision_recall.png",
    "reliability": "reliability.png",
    "f1": "per_class_f1.png",
}

#: What ``predict`` and ``evaluate`` need: a folder without one of these is not a finished run.
REQUIRED_FILES = (WEIGHTS_FILE, INFO_FILE, *TOKENIZER_FILES)

#: Every name a run writes (the checkpoint too, while it is unfinished); an old run's copies are
#: never carried into a new run, and everything else in ``--out`` is the user's own.
RUN_FILES = frozenset(
    {*REQUIRED_FILES, HISTORY_FILE, METRICS_FILE, CURVES_FILE, *PLOT_FILES.values(), CHECKPOINT_NAME}
    | {TUNE_DIR, TUNE_JOURNAL}
)

#: Columns of history.csv, in order: one row per evaluation during training.
HISTORY_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_f1",
    "lr",
    "elapsed",
)
#: Columns added after :data:`HISTORY_COLUMNS` in the history of a multi-label run only.
MULTI_COLUMNS = ("val_micro_f1",)
