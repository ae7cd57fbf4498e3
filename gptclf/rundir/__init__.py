"""The run directory: everything ``finetune`` writes and ``predict`` and ``evaluate`` read.

A run directory is self-describing: ``predict`` and ``evaluate`` need nothing outside it.

- ``model.safetensors``: the classifier's weights (GPT-2 with its class head; LoRA merged in)
- ``run.json``: model config, classes in order, max length, pad id, pooling, trainable scope,
  training config, seed, data location and fingerprint, package versions, the weights' sha256
- ``encoder.json``, ``vocab.bpe``: the tokenizer files
- ``metrics.json``, ``history.csv``, ``curves.png``: what training measured

This package is its one owner, one job per module:

- :mod:`~gptclf.rundir.layout`: the file names and the history's columns (the format's names)
- :mod:`~gptclf.rundir.info`: run.json's content, its one schema, reading it back checked
- :mod:`~gptclf.rundir.files`: the weights, run.json and tokenizer files: save and load
- :mod:`~gptclf.rundir.report`: history.csv, metrics.json, curves.png
- :mod:`~gptclf.rundir.build`: the work folder beside ``--out``, swapped in whole at the end

Import from here; the submodules are the package's own business.
"""

from gptclf.rundir.build import (
    RunBuild,
    WorkLock,
    check_not_a_source,
    check_out,
    is_locked,
    lock_holder,
    nothing_to_resume,
    replace_folder,
    work_dir,
)
from gptclf.rundir.files import (
    LoadedRun,
    check_finite_weights,
    classifier_state,
    load_run,
    save_run,
    save_weights,
    update_run_info,
    verify_weights,
)
from gptclf.rundir.info import (
    build_run_info,
    info_is_ours,
    package_versions,
    read_run_info,
    run_info_problems,
)
from gptclf.rundir.layout import (
    CURVES_FILE,
    HISTORY_COLUMNS,
    HISTORY_FILE,
    INFO_FILE,
    METRICS_FILE,
    REQUIRED_FILES,
    RUN_FILES,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    WEIGHTS_FILE,
)
from gptclf.rundir.report import history_csv, write_curves, write_history, write_metrics

__all__ = [
    "CURVES_FILE",
    "HISTORY_COLUMNS",
    "HISTORY_FILE",
    "INFO_FILE",
    "METRICS_FILE",
    "REQUIRED_FILES",
    "RUN_FILES",
    "RUN_FORMAT",
    "RUN_FORMAT_VERSION",
    "WEIGHTS_FILE",
    "LoadedRun",
    "RunBuild",
    "WorkLock",
    "build_run_info",
    "check_finite_weights",
    "check_not_a_source",
    "check_out",
    "classifier_state",
    "history_csv",
    "info_is_ours",
    "is_locked",
    "load_run",
    "lock_holder",
    "nothing_to_resume",
    "package_versions",
    "read_run_info",
    "replace_folder",
    "run_info_problems",
    "save_run",
    "save_weights",
    "update_run_info",
    "verify_weights",
    "work_dir",
    "write_curves",
    "write_history",
    "write_metrics",
]
