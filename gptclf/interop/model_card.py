"""The model card (``README.md``) of an exported run: data, classes, metrics, how it was trained.

Everything comes from the run's own files (run.json and metrics.json); a figure the run did not
measure is left out rather than guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptclf.data.long_texts import INFO_KEY as LONG_TEXTS_KEY
from gptclf.data.long_texts import stored_long_texts
from gptclf.tasks.calibration import run_temperature
from gptclf.tasks.kinds import task_of


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_lines(metrics: dict[str, Any] | None) -> list[str]:
    """A table of accuracy, macro F1, loss and ROC-AUC per split, then test's per-class figures."""
    if not metrics:
        return ["The run recorded no metrics (it has no metrics.json)."]
    lines = ["| split | n | accuracy | macro F1 | loss | ROC-AUC |", "|---|---|---|---|---|---|"]
    for split in ("test", "validation"):
        m = metrics.get(split)
        if isinstance(m, dict):
            cells = [m.get(k, "") for k in ("n", "accuracy", "macro_f1", "loss", "roc_auc")]
            lines.append(f"| {split} | " + " | ".join(_fmt(c) for c in cells) + " |")
    test = metrics.get("test")
    per_class = test.get("per_class") if isinstance(test, dict) else None
    if isinstance(per_class, dict) and per_class:
        lines += ["", "Test split, per class:", "", "| class | precision | recall | F1 | support |"]
        lines.append("|---|---|---|---|---|")
        for name, m in per_class.items():
            cells = [m.get(k, "") for k in ("precision", "recall", "f1", "support")]
            lines.append(f"| {name} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines


def _training_lines(info: dict[str, Any]) -> list[str]:
    model = info.get("model", {})
    train = info.get("train") or {}
    keys = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "precision", "device")
    settings = ", ".join(f"{k} {train[k]}" for k in keys if k in train)
    scope = info.get("trainable") or {}
    data = info.get("data") or {}
    lines = [
        f"- base model: {model.get('name', 'unknown')} ({info.get('weights', 'unknown')} weights), "
        f"config `{json.dumps(model.get('config', {}))}`",
        f"- trainable scope: {scope.get('kind', 'unknown')}; pooling: {info.get('pooling')}; "
        f"max length: {info.get('max_length')} tokens",
    ]
    if settings:
        lines.append(f"- training: {settings}; seed {info.get('seed')}")
    lines += _long_text_lines(info)
    if data:
        sizes = data.get("sizes")
        lines.append(f"- data: {data.get('dir', 'unknown')}" + (f", split sizes {sizes}" if sizes else ""))
    if "imported" in info:
        lines.append(f"- imported from: {info['imported'].get('path')}")
    return lines


def _long_text_lines(info: dict[str, Any]) -> list[str]:
    """How the run reads texts longer than its max length, where that is not truncation."""
    long = stored_long_texts(info)
    if long.mode == "truncate":
        return []
    n = info.get("max_length")
    return [
        f"- long texts: gptclf reads texts longer than {n} tokens as {long.describe()} (config.json's "
        f"`gptclf.{LONG_TEXTS_KEY}`); transformers truncates them to the first {n} tokens, so its "
        "predictions of such texts differ (`gptclf import` restores the setting)"
    ]


def _decision_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"- calibration temperature: {run_temperature(info):g}, folded into `score.weight` "
        "(the probabilities transformers computes are the calibrated ones)",
        "- gptclf's head bias is folded into `transformer.ln_f.bias` (transformers' score has no bias)",
    ]
    decision = info.get("decision")
    if isinstance(decision, dict):
        lines.append(
            f"- decision threshold: predict {decision.get('positive')!r} when its probability is >= "
            f"{decision.get('threshold')} (chosen for {decision.get('target')}); transformers' argmax "
            "does not apply it: compare the score yourself (also in config.json's `gptclf.decision`)"
        )
    lines += task_of(info).card_lines(info)  # a multi-label run's thresholds
    abstain = info.get("abstain")
    if isinstance(abstain, dict):
        lines.append(
            f"- abstention: gptclf abstains below a top probability of {abstain.get('min_confidence')} "
            "(config.json's `gptclf.abstain`)"
        )
    return lines


def model_card(info: dict[str, Any], metrics: dict[str, Any] | None, run_path: Path) -> str:
    """The README.md of an exported run.

    Args:
        info: The run's run.json.
        metrics: Its metrics.json, or None.
        run_path: The run directory (named in the card).
    """
    classes = info.get("classes", [])
    header = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [gptclf, gpt2, text-classification]",
        "---",
        "",
        f"# {Path(run_path).name}: a GPT-2 text classifier",
        "",
        f"Exported by gptclf from the run `{run_path}` as `GPT2ForSequenceClassification`.",
        "",
        "## Classes",
        "",
        ", ".join(f"{i}: `{name}`" for i, name in enumerate(classes)),
        "",
        "## Metrics",
        "",
    ]
    usage = [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        "clf = pipeline('text-classification', model='PATH/TO/THIS/FOLDER', top_k=None"
        + (f", function_to_apply='{f}')" if (f := task_of(info).pipeline_function) else ")"),
        f"clf(['some text'], truncation=True)  # keeps the first {info.get('max_length')} tokens",
        "```",
        "",
        "Texts are padded on the right with `<|endoftext|>` (id 50256); each text is read at its last real",
        "token, so padding does not change a prediction. A literal `<|endoftext|>` inside a text is read",
        "by transformers' tokenizer as that special token (gptclf reads it as ordinary characters).",
        "",
    ]
    body = [
        *header,
        *_metrics_lines(metrics),
        "",
        "## Training",
        "",
        *_training_lines(info),
        "",
        "## Calibration and decisions",
        "",
        *_decision_lines(info),
        *usage,
    ]
    return "\n".join(body)
