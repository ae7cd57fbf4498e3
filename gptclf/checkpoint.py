"""Self-describing run directory: save, load, validate.

A run directory holds everything ``predict`` and ``evaluate`` need, and nothing else is read:

- ``model.safetensors``: the classifier's weights (GPT-2 with its class head; LoRA merged in)
- ``run.json``: model config, classes in order, max length, pad id, pooling, trainable scope,
  training config, seed, data location and fingerprint, package versions
- ``encoder.json``, ``vocab.bpe``: the tokenizer files
- ``metrics.json``, ``history.csv``, ``curves.png``: written by training

Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import tiktoken
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptclf.classifier import Classifier, merge_lora, replace_head
from gptclf.config import GPTConfig
from gptclf.errors import BadInputError
from gptclf.fileio import atomic_write_bytes, atomic_write_json, temp_path_for
from gptclf.model import build_model
from gptclf.tokenizer import EOT_ID, TOKENIZER_FILES, load_tokenizer

RUN_FORMAT = "gptclf-run"
RUN_FORMAT_VERSION = 1
REQUIRED_FILES = ("model.safetensors", "run.json", *TOKENIZER_FILES)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on, for run.json."""
    out = {"python": platform.python_version()}
    for name in ("gptclf", "torch", "tiktoken", "safetensors", "pandas", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_run_info(
    *,
    model_name: str,
    config: GPTConfig,
    classes: list[str],
    max_length: int,
    pooling: str,
    trainable: dict[str, Any],
    trainable_params: int,
    train: dict[str, Any],
    seed: int,
    weights: str,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of run.json."""
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": {"name": model_name, "config": config.to_dict()},
        "weights": weights,
        "classes": list(classes),
        "max_length": int(max_length),
        "pad_id": EOT_ID,
        "pooling": pooling,
        "trainable": trainable,
        "trainable_params": int(trainable_params),
        "train": train,
        "seed": int(seed),
        "data": data or {},
        "versions": package_versions(),
    }


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
    """Save tensors as safetensors atomically."""
    tmp = temp_path_for(path)
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_run(run_dir: Path, model: Classifier, info: dict[str, Any], tokenizer_dir: Path) -> None:
    """Write the weights, run.json and the tokenizer files into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / "model.safetensors", classifier_state(model), {"format": RUN_FORMAT})
    for name in TOKENIZER_FILES:
        src, dst = Path(tokenizer_dir) / name, run_dir / name
        if src.resolve() != dst.resolve():
            atomic_write_bytes(dst, src.read_bytes())
    atomic_write_json(run_dir / "run.json", info)


@dataclass
class LoadedRun:
    """A run directory read back: the classifier (eval mode, CPU), its run.json and tokenizer."""

    path: Path
    info: dict[str, Any]
    model: Classifier
    tokenizer: tiktoken.Encoding

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def max_length(self) -> int:
        return int(self.info["max_length"])

    @property
    def pad_length(self) -> int | None:
        """The fixed padding a ``last-position`` run was trained with (None: pad per batch)."""
        if self.info.get("pooling") != "last-position":
            return None
        return self.info.get("train", {}).get("pad_length")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """Read and check run.json.

    Raises:
        BadInputError: Not a run directory, a file missing, or run.json malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInputError(
            f"run directory {run_dir} does not exist: pass the --out folder of `gptclf finetune`"
        )
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise BadInputError(
            f"{run_dir} is not a complete gptclf run (missing {', '.join(missing)}): "
            "pass the --out folder of a finished `gptclf finetune`"
        )
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{run_dir / 'run.json'} is not valid JSON ({exc})") from exc
    problems = []
    if info.get("format") != RUN_FORMAT:
        problems.append(f"format is {info.get('format')!r}, expected {RUN_FORMAT!r}")
    elif int(info.get("format_version", 0)) > RUN_FORMAT_VERSION:
        problems.append(
            f"format_version {info['format_version']} is newer than this gptclf reads: upgrade gptclf"
        )
    for key in ("model", "classes", "max_length", "pooling"):
        if key not in info:
            problems.append(f"key {key!r} is missing")
    if problems:
        raise BadInputError(f"{run_dir / 'run.json'}: " + "; ".join(problems))
    return info


def load_run(run_dir: Path) -> LoadedRun:
    """Load a run directory for prediction or evaluation (needs nothing outside the folder)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    cfg = GPTConfig.from_dict(info["model"]["config"])
    gpt = build_model(cfg, seed=None)
    replace_head(gpt, len(info["classes"]))
    try:
        state = load_file(str(run_dir / "model.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise BadInputError(f"{run_dir / 'model.safetensors'} is unreadable ({exc})") from exc
    try:
        result = gpt.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape: the weights belong to another run.json
        raise BadInputError(f"{run_dir / 'model.safetensors'} does not match run.json ({exc})") from None
    if result.missing_keys or result.unexpected_keys:
        raise BadInputError(
            f"{run_dir / 'model.safetensors'} does not match run.json: missing "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    model = Classifier(gpt, info["classes"], info["pooling"]).eval()
    return LoadedRun(run_dir, info, model, load_tokenizer(run_dir))
