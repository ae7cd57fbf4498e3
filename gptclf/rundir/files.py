"""The run's weights and tokenizer files, with run.json: :func:`save_run` writes them,
:func:`load_run` reads them back as a :class:`LoadedRun` ready to predict.

``model.safetensors`` holds the classifier's weights (GPT-2 with its class head; LoRA merged in);
run.json records their sha256 (``weights_sha256``), checked on every load, and is validated
against :data:`gptclf.rundir.info.RUN_SCHEMA` before any tensor is read. Every file is written
atomically (temporary name, fsync, then rename).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptclf.errors import BadInputError, GptclfError
from gptclf.fileio import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temp_files,
    sha256_file,
)
from gptclf.model.classifier import Classifier, merge_lora, reads_a_pad, replace_head
from gptclf.model.config import GPTConfig
from gptclf.model.gpt import build_model
from gptclf.model.tokenizer import TOKENIZER_FILES, load_tokenizer
from gptclf.rundir.info import read_run_info, run_info_problems
from gptclf.rundir.layout import INFO_FILE, RUN_FORMAT, WEIGHTS_FILE
from gptclf.tasks.base import Task
from gptclf.tasks.kinds import task_of


def classifier_state(model: Classifier) -> dict[str, torch.Tensor]:
    """The weights to save: GPT-2 with its head, LoRA folded in, contiguous CPU fp32 tensors."""
    gpt = model.gpt
    has_lora = any("lora_" in name for name, _ in gpt.named_parameters())
    if has_lora:
        import copy

        gpt = copy.deepcopy(gpt)
        merge_lora(gpt)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in gpt.state_dict().items()}


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (synced to disk before the rename).

    Raises:
        OSError: The write failed (a full disk, a read-only place): safetensors' own error,
            which carries the errno only in its text, is turned back into the ``OSError`` it
            was, so callers report it as they report any other failed write.
    """
    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            found = _OS_ERROR.search(str(exc))
            if found is None:
                raise
            code = int(found[1])
            raise OSError(code, os.strerror(code), str(path)) from exc


#: How safetensors names the operating system's error in its messages ("... (os error 28) ...").
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_run(run_dir: Path, model: Classifier, info: dict[str, Any], tokenizer_dir: Path) -> dict[str, Any]:
    """Write the weights, run.json and the tokenizer files into ``run_dir``.

    Args:
        run_dir: The folder to write (created if needed).
        model: The classifier; LoRA adapters are merged into a copy.
        info: The content of run.json (:func:`build_run_info`); it is not modified.
        tokenizer_dir: The folder holding the tokenizer files to copy.

    Returns:
        The run.json written: ``info`` plus ``weights_sha256``, the sha256 of the weights file as
        it is on disk, which :func:`load_run` checks.
    """
    problems = run_info_problems(info)
    if problems:  # a writer bug: never leave a run that load_run would refuse
        raise ValueError(f"refusing to write an invalid {INFO_FILE}: " + "; ".join(problems))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = run_dir / WEIGHTS_FILE
    save_weights(weights, classifier_state(model), {"format": RUN_FORMAT})
    info = {**info, "weights_sha256": sha256_file(weights)}
    for name in TOKENIZER_FILES:
        src, dst = Path(tokenizer_dir) / name, run_dir / name
        if src.resolve() != dst.resolve():
            atomic_write_bytes(dst, src.read_bytes())
    atomic_write_json(run_dir / INFO_FILE, info)
    return info


class RunInfoFields:
    """What a run's run.json (``info``) says every reader of a run needs: its classes, the tokens
    kept per text and the pad width. Shared by :class:`LoadedRun` and an ONNX export folder
    (:class:`gptclf.engines.onnx_folder.OnnxExport`), which carries the same run.json."""

    info: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """The class names in head order."""
        return list(self.info["classes"])

    @property
    def max_length(self) -> int:
        """Tokens kept per text."""
        return int(self.info["max_length"])

    @property
    def pad_length(self) -> int | None:
        """The width to pad every batch to: run.json's ``train.pad_length`` (None: pad per batch).

        The width is read as ``finetune`` recorded it, never derived again here. It is used only
        for ``last-position`` pooling, the one pooling that reads a pad: any other run predicts
        the same numbers with per-batch padding, which is faster.
        """
        if not reads_a_pad(str(self.info.get("pooling"))):
            return None
        return (self.info.get("train") or {}).get("pad_length")

    @property
    def task(self) -> Task:
        """The run's task (:func:`gptclf.tasks.kinds.task_of`): what its outputs mean."""
        return task_of(self.info)


@dataclass
class LoadedRun(RunInfoFields):
    """A run directory read back: the classifier (eval mode, CPU), its run.json and tokenizer."""

    path: Path
    info: dict[str, Any]
    model: Classifier
    tokenizer: tiktoken.Encoding


def update_run_info(run_dir: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Set top-level keys of a run's run.json and rewrite it atomically; no other file changes.

    The weights are untouched, so their recorded ``weights_sha256`` stays valid. The new content is
    checked against the schema before anything is written: a run.json that :func:`load_run` would
    refuse is never left behind.

    Args:
        run_dir: A run directory (its run.json is read and checked first).
        changes: The keys to set, e.g. ``{"calibration": {...}}``.

    Returns:
        The run.json written.

    Raises:
        BadInputError: The folder is not a valid run.
    """
    run_dir = Path(run_dir)
    info = {**read_run_info(run_dir), **changes}
    problems = run_info_problems(info)
    if problems:  # a caller's bug: refuse before the old file is replaced
        raise ValueError(f"refusing to write an invalid {INFO_FILE}: " + "; ".join(problems))
    atomic_write_json(run_dir / INFO_FILE, info)
    return info


def verify_weights(path: Path, expected: str | None) -> None:
    """Check the weights file against the sha256 that run.json records (None: an older run).

    Raises:
        BadInputError: The file's sha256 differs: it was damaged or replaced after training.
    """
    if expected is None:
        return
    if sha256_file(path) != expected:
        raise BadInputError(
            f"{path} does not match the sha256 recorded in run.json (the file is damaged or was "
            "replaced): copy the run folder again from its source, or train the run again"
        )


def _shape_problem(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """One phrase saying how ``state`` differs from the model run.json describes, or None."""
    wrong = [k for k, t in expected.items() if k in state and state[k].shape != t.shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if wrong:
        k, others = wrong[0], len(wrong) - 1
        more = f" (and {others} other tensor{'s' * (others != 1)})" if others else ""
        return (
            f"{k} has shape {tuple(state[k].shape)} in the file but {tuple(expected[k].shape)} "
            f"by run.json{more}"
        )
    if missing or unexpected:
        return (
            f"{len(missing)} tensors missing (first: {missing[:1]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:1]})"
        )
    return None


#: How often :func:`load_run` starts again when the folder was swapped while it read.
SWAP_RETRIES = 3


def load_run(run_dir: Path, *, verify: bool = True) -> LoadedRun:
    """Load a run directory for prediction or evaluation (needs nothing outside the folder).

    run.json and the weights are read as one pair: ``finetune --force`` (or ``import --force``)
    swaps a whole new folder in at any moment, so a load during which the folder was replaced is
    started again on the new folder rather than mixing the old run.json with the new weights.
    A dead writer's temporary files (a ``calibrate`` killed while writing run.json) are removed.

    Args:
        run_dir: A folder written by :func:`save_run`.
        verify: Check the weights against run.json's ``weights_sha256`` (reads the file once
            more: 0.25 s for gpt2-small's 500 MB from the page cache).

    Raises:
        BadInputError: run.json is malformed, or the weights are damaged or not this run's.
    """
    run_dir = Path(run_dir)
    with contextlib.suppress(OSError):  # a read-only copy of a run loads all the same
        remove_stale_temp_files(run_dir)
    for attempt in range(SWAP_RETRIES):
        before = _identity(run_dir)
        try:
            loaded = _load_once(run_dir, verify)
        except (BadInputError, OSError):
            if attempt + 1 < SWAP_RETRIES and _identity(run_dir) != before:
                continue  # the folder was swapped while it was read: read the new one
            raise
        if _identity(run_dir) == before:
            return loaded
    raise BadInputError(f"{run_dir} was replaced {SWAP_RETRIES} times while it was read: try again")


def _identity(folder: Path) -> tuple[int, int, int] | None:
    """The folder's device, inode and change time (None while it is missing, midway through a swap).

    A rename sets the change time of the folder renamed, so a folder swapped out and back in
    between two looks is told apart from one that stayed.
    """
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _load_once(run_dir: Path, verify: bool) -> LoadedRun:
    info = read_run_info(run_dir)
    weights = run_dir / WEIGHTS_FILE
    cfg = GPTConfig.from_dict(info["model"]["config"])
    gpt = build_model(cfg, seed=None)
    replace_head(gpt, len(info["classes"]))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise BadInputError(f"{weights} is unreadable ({exc})") from exc
    problem = _shape_problem(gpt.state_dict(), state)
    if problem:  # torch's own message lists every tensor: 30 lines for a model of another size
        raise BadInputError(
            f"{weights} does not match run.json: {problem}: the weights belong to another run; "
            "use the run.json written with them"
        )
    if verify:  # after the shape check, which names the likelier cause of a mismatch more precisely
        verify_weights(weights, info.get("weights_sha256"))
    gpt.load_state_dict(state)
    model = Classifier(gpt, info["classes"], info["pooling"]).eval()
    return LoadedRun(run_dir, info, model, load_tokenizer(run_dir))


def check_finite_weights(run: LoadedRun) -> None:
    """Refuse a run whose weights hold NaN or infinite values (every export format calls this:
    such a model gives NaN probabilities wherever it is loaded).

    Raises:
        GptclfError: Naming how many tensors are not finite and the first of them (exit 1).
    """
    bad = [
        name
        for name, tensor in run.model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise GptclfError(
            f"the run {run.path} has NaN or infinite weights ({len(bad)} tensors, first {bad[0]}): "
            "an export would give NaN probabilities; train the run again (e.g. with a lower --lr)"
        )
