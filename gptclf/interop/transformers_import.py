"""A Hugging Face ``GPT2ForSequenceClassification`` folder as a gptclf run: ``gptclf import DIR --out RUN``.

The folder (a local ``save_pretrained``, a hub download, or one written by ``gptclf export``) must
be a GPT-2 gptclf computes (:func:`gptclf.model.hfconfig.gpt_config_from_hf`), a sequence classifier
(``score.weight`` of shape (num_labels, n_embd), ``id2label`` naming each of the labels once) with
GPT-2's byte-level BPE tokenizer (:func:`gptclf.interop.hf_tokenizer.convert_hf_tokenizer`). Everything is
checked before anything is written; the run is then built like every run
(:class:`gptclf.rundir.RunBuild`: a work folder beside ``--out``, swapped in whole; ``--force``
rules as finetune's ``--out``).

The run pools each text's last real token (what transformers does with a pad token id) and keeps
``max_length`` tokens (the folder's ``gptclf.max_length``, else its tokenizer's ``model_max_length``
where that fits the context, else the context). Its head's bias is zero (transformers' ``score``
has none); a folder written by ``gptclf export`` carries its temperature and bias folded into the
weights, so the run computes the exported probabilities with ``T = 1``; its stored decision and
abstention rules, how it reads long texts (``long_texts``: window, head-tail) and a multi-label
run's ``label_sep`` come back from config.json's ``gptclf`` object. A multi-label folder whose
labels hold that separator (``|`` when none is recorded) is refused, as ``prepare --multi-label``
refuses such labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptclf.data.long_texts import INFO_KEY as LONG_TEXTS_KEY
from gptclf.errors import BadInputError, write_error
from gptclf.interop.hf_tokenizer import gpt2_tokenizer_files, hf_max_length, write_tokenizer_files
from gptclf.model.classifier import Classifier, replace_head
from gptclf.model.config import GPTConfig
from gptclf.model.gpt import build_model
from gptclf.model.hfconfig import gpt_config_from_hf, read_hf_config, weights_file
from gptclf.model.weights import load_hf_state_dict, open_safetensors, read_header, verify_checkpoint
from gptclf.rundir import RunBuild, build_run_info, check_not_a_source, run_info_problems, save_run
from gptclf.tasks.kinds import task_of_problem_type

ARCHITECTURE = "GPT2ForSequenceClassification"

Note = Callable[[str], None]


def _classes(hf: dict[str, Any], source: str, head_rows: int) -> list[str]:
    """The class names in head order from ``id2label`` (checked against ``num_labels``); a config
    without id2label (transformers leaves the default out) names them ``LABEL_i`` as transformers
    does, ``num_labels`` (else the head's rows) of them."""
    id2label = hf.get("id2label")
    if id2label is None:
        n = hf.get("num_labels", head_rows)
        id2label = {str(i): f"LABEL_{i}" for i in range(n if isinstance(n, int) else head_rows)}
    if not isinstance(id2label, dict) or not id2label:
        raise BadInputError(f"{source}: id2label must be an object naming each label")
    try:
        by_id = {int(k): v for k, v in id2label.items()}
    except ValueError:
        raise BadInputError(f"{source}: id2label's keys must be label ids 0, 1, ...") from None
    n = len(by_id)
    num_labels = hf.get("num_labels", n)
    if num_labels != n:
        raise BadInputError(
            f"{source}: num_labels is {num_labels} but id2label names {n} labels: make them agree"
        )
    classes = [by_id.get(i) for i in range(n)]
    if sorted(by_id) != list(range(n)) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise BadInputError(f"{source}: id2label must name labels 0..{n - 1}, each with a non-empty string")
    if len(set(classes)) != n or n < 2:
        raise BadInputError(f"{source}: id2label must name at least 2 distinct labels (got {classes})")
    return [str(c) for c in classes]


def _check_architecture(hf: dict[str, Any], source: str) -> None:
    names = hf.get("architectures")
    if isinstance(names, list) and names and ARCHITECTURE not in names:
        raise BadInputError(
            f"{source} is a {', '.join(map(str, names))}, not a {ARCHITECTURE}: import takes a sequence "
            "classifier (finetune a plain GPT-2 folder with `gptclf finetune --model DIR` instead)"
        )


def _head_rows(path: Path) -> int:
    """The number of rows of ``score.weight`` (refused when there is none)."""
    head = read_header(path).get("score.weight")
    if head is None or len(head[1]) != 2:
        raise BadInputError(
            f"{path} has no score.weight: this is not a GPT-2 sequence classifier (finetune it with "
            "`gptclf finetune --model DIR` instead)"
        )
    return int(head[1][0])


def _check_head(path: Path, cfg: GPTConfig, num_labels: int) -> None:
    """``score.weight`` (and an optional ``score.bias``) fit (num_labels, n_embd); the rest fits ``cfg``."""
    header = read_header(path)
    head = header["score.weight"]
    if head[1] != (num_labels, cfg.n_embd):
        raise BadInputError(
            f"{path}: score.weight has shape {list(head[1])} but config.json has {num_labels} labels and "
            f"n_embd {cfg.n_embd} (expected {[num_labels, cfg.n_embd]}): the config and weights disagree"
        )
    bias = header.get("score.bias")
    if bias is not None and bias[1] != (num_labels,):
        raise BadInputError(f"{path}: score.bias has shape {list(bias[1])}, expected {[num_labels]}")
    verify_checkpoint(path, cfg)


def _max_length(hf: dict[str, Any], folder: Path, cfg: GPTConfig) -> int:
    ours = _custom(hf).get("max_length")
    for value in (ours, hf_max_length(folder)):
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= cfg.n_positions:
            return value
    return cfg.n_positions


def _classifier(path: Path, cfg: GPTConfig, classes: list[str]) -> Classifier:
    """The classifier holding the folder's weights (fp32), its head from ``score``."""
    state = load_hf_state_dict(path, cfg)
    with open_safetensors(path) as fh:
        weight = fh.get_tensor("score.weight").to(torch.float32)
        bias = fh.get_tensor("score.bias").to(torch.float32) if "score.bias" in fh.keys() else None  # noqa: SIM118
    gpt = build_model(cfg, seed=None)  # every tensor is loaded next
    head = replace_head(gpt, len(classes))
    state["lm_head.weight"] = weight
    state["lm_head.bias"] = bias if bias is not None else torch.zeros(len(classes))
    gpt.load_state_dict(state, strict=True)
    assert gpt.lm_head is head
    return Classifier(gpt, classes, "last-token").eval()


def _run_info(
    hf: dict[str, Any], folder: Path, cfg: GPTConfig, classes: list[str], note: Note
) -> dict[str, Any]:
    info = build_run_info(
        model_name=str(folder),
        config=cfg,
        classes=classes,
        max_length=_max_length(hf, folder, cfg),
        pooling="last-token",
        trainable={"kind": "imported"},
        trainable_params=0,
        train={},
        seed=0,
        weights="imported",
    )
    info["imported"] = {"path": str(folder), "architecture": ARCHITECTURE}
    custom = _custom(hf)
    task = task_of_problem_type(hf.get("problem_type"))  # multi-label: a sigmoid per label
    info = {**info, **task.run_fields({}), **task.import_defaults(classes)}
    for key in (*task.stored_fields, LONG_TEXTS_KEY):
        if key in custom:
            candidate = {**info, key: custom[key]}
            if run_info_problems(candidate):
                note(f"ignored config.json's gptclf.{key}: it is not a setting this run can store")
            else:
                info = candidate
    data = task.import_data_fields(custom, classes, source=str(folder / "config.json"))
    return {**info, "data": {**info["data"], **data}} if data else info


def _custom(hf: dict[str, Any]) -> dict[str, Any]:
    """config.json's ``gptclf`` object (written by ``gptclf export``), or an empty one."""
    custom = hf.get("gptclf")
    return custom if isinstance(custom, dict) else {}


def import_run(folder: Path, out: Path, *, force: bool = False, note: Note | None = None) -> Path:
    """Turn a ``GPT2ForSequenceClassification`` folder into the run directory ``out``.

    Args:
        folder: The Hugging Face folder.
        out: The run directory to write.
        force: Overwrite a non-empty ``out`` (as finetune's ``--force``).
        note: Told about leftovers removed and rules ignored.

    Returns:
        ``out``, resolved.

    Raises:
        BadInputError: Not a GPT-2 sequence classifier gptclf runs, a tokenizer that is not GPT-2's,
            or an ``out`` that may not be written (one line; nothing written).
    """
    note = note or (lambda _: None)
    folder = Path(folder).expanduser().resolve()
    hf = read_hf_config(folder)
    source = str(folder / "config.json")
    cfg = gpt_config_from_hf(hf, source)  # another model_type is named first
    _check_architecture(hf, source)
    path = weights_file(folder)
    classes = _classes(hf, source, _head_rows(path))
    _check_head(path, cfg, len(classes))
    tokenizer = gpt2_tokenizer_files(folder)  # refuses a tokenizer that is not GPT-2's
    info = _run_info(hf, folder, cfg, classes, note)  # refuses labels that hold the separator
    out = Path(out).expanduser().resolve()
    check_not_a_source(out, {"the folder": folder})  # --force would replace the model being read
    build = RunBuild.open(out, force=force, resume=False, note=note)
    failed: BaseException | None = None
    try:
        write_tokenizer_files(tokenizer, build.path)
        save_run(build.path, _classifier(path, cfg, classes), info, build.path)
        build.commit()
    except OSError as exc:  # a full disk: one line, and the work folder goes below
        failed = write_error(exc, out)
        raise failed from None
    except BaseException as exc:
        failed = exc
        raise
    finally:
        build.close(failed)
    return out
