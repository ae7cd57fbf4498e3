"""A run as a Hugging Face ``GPT2ForSequenceClassification`` folder.

``export_transformers(run, folder)`` writes what ``GPT2ForSequenceClassification.from_pretrained``
and ``pipeline("text-classification", model=folder)`` load with no extra code:

- ``config.json``: GPT-2's sizes, ``num_labels`` through ``id2label``/``label2id`` (the run's classes
  in head order), ``pad_token_id`` 50256 (so that a padded batch pools each text's last real token),
  and a ``gptclf`` object with what transformers has no field for (the folded temperature, a stored
  threshold or abstention rule, the run's pooling and max length, how it reads long texts
  (``long_texts``: transformers itself truncates them; ``gptclf import`` restores the setting) and
  a multi-label run's ``label_sep``);
- ``model.safetensors``: the weights in Hugging Face's layout (the four Conv1D weights transposed
  back to (in, out), the head as ``score.weight``), fp32;
- the tokenizer (:mod:`gptclf.interop.hf_tokenizer`) and a model card ``README.md``
  (:mod:`gptclf.interop.model_card`).

Two exact rewrites make transformers compute gptclf's probabilities:

- a calibration temperature T is folded into the head: ``softmax((W h + b) / T)`` is computed by
  the head ``(W / T, b / T)``;
- gptclf's head has a bias, transformers' ``score`` has none. The bias is folded into the final
  LayerNorm's bias: the head reads ``h = g * n + beta``, so ``W (beta + d) = W beta + b - c`` for a
  ``d`` with ``W d = b - c`` (c = mean(b); a constant added to every logit leaves the softmax as it
  is). Such a ``d`` exists when W's rows are linearly independent (always for a trained head with
  no more classes than ``n_embd``); it is solved in float64 and checked, and a head for which it
  does not exist is refused. Only the head reads ``ln_f``'s output, so the logits are unchanged
  (up to float32 rounding) while the final hidden states of the folder shift by ``d``.

A multi-label run is written with ``problem_type: multi_label_classification`` (the bias fold
then keeps every logit, not only their differences, as each label's sigmoid reads its own), so
``pipeline(..., top_k=None, function_to_apply="sigmoid")`` gives its probabilities; its per-label
thresholds go into the ``gptclf`` object.

Pooling other than ``last-token`` has no transformers equivalent and is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptclf.data.long_texts import INFO_KEY as LONG_TEXTS_KEY
from gptclf.errors import BadInputError
from gptclf.fileio import atomic_write_json, atomic_write_text
from gptclf.interop.hf_tokenizer import write_hf_tokenizer
from gptclf.interop.model_card import model_card
from gptclf.model.hfconfig import hf_config_from_gpt
from gptclf.model.tokenizer import EOT_ID
from gptclf.model.weights import hf_layout
from gptclf.rundir import LoadedRun, check_finite_weights, save_weights
from gptclf.tasks.calibration import run_temperature

#: The architecture the folder loads as.
ARCHITECTURE = "GPT2ForSequenceClassification"
#: The largest error the bias fold may leave in any logit, relative to the bias' size.
FOLD_TOLERANCE = 1e-6


def export_problems(run: LoadedRun) -> list[str]:
    """What keeps ``run`` from being a transformers folder (empty: it can be)."""
    pooling = run.info.get("pooling")
    if pooling != "last-token":
        return [
            f"the run pools with {pooling!r}, which GPT2ForSequenceClassification does not compute "
            "(it reads each text's last real token): export a run trained with --pooling last-token"
        ]
    return []


def fold_head_bias(weight: torch.Tensor, bias: torch.Tensor, centred: bool = True) -> torch.Tensor:
    """The shift ``d`` of ``ln_f``'s bias with ``weight @ d = bias - mean(bias)`` (float64).

    With ``centred=False`` (a multi-label run: each sigmoid reads its own logit, so no constant
    may be dropped) ``weight @ d = bias`` exactly.

    Raises:
        BadInputError: No such shift exists (the head's rows are linearly dependent).
    """
    w = weight.detach().to(torch.float64)
    target = bias.detach().to(torch.float64)
    target = target - target.mean() if centred else target
    if not torch.any(target != 0):
        return torch.zeros(w.shape[1], dtype=torch.float64)
    shift = torch.linalg.pinv(w) @ target
    error = float((w @ shift - target).abs().max())
    if error > FOLD_TOLERANCE * (1.0 + float(target.abs().max())):
        raise BadInputError(
            f"the run's head bias cannot be folded into the model (its {w.shape[0]} weight rows are "
            f"linearly dependent; error {error:.2g}), and transformers' score layer has no bias: "
            "this run cannot be exported to transformers"
        )
    return shift


def hf_state_dict(run: LoadedRun) -> dict[str, torch.Tensor]:
    """The run's weights in ``GPT2ForSequenceClassification``'s names and layouts (fp32, CPU),
    with the temperature and the head bias folded in (see the module's notes)."""
    state = dict(run.model.gpt.state_dict())
    temperature = run_temperature(run.info)
    weight = state.pop("lm_head.weight").detach().to("cpu", torch.float64)
    bias = state.pop("lm_head.bias", None)
    bias = None if bias is None else bias.detach().to("cpu", torch.float32)
    out = hf_layout(state)
    if bias is not None:
        shift = fold_head_bias(weight, bias, centred=run.task.shift_invariant)
        ln_bias = out["transformer.ln_f.bias"].to(torch.float64) + shift
        out["transformer.ln_f.bias"] = ln_bias.to(torch.float32)
    out["score.weight"] = (weight / temperature).to(torch.float32).contiguous()
    return out


def hf_config(run: LoadedRun) -> dict[str, Any]:
    """The content of ``config.json``."""
    classes = run.classes
    custom: dict[str, Any] = {
        "source": "gptclf",
        "run_format_version": run.info.get("format_version"),
        "base_model": run.info.get("model", {}).get("name"),
        "pooling": run.info.get("pooling"),
        "max_length": run.max_length,
        "temperature_folded": run_temperature(run.info),
        "head_bias_folded_into": "transformer.ln_f.bias",
    }
    for key in (*run.task.stored_fields, LONG_TEXTS_KEY):
        if key in run.info:
            custom[key] = run.info[key]
    custom.update(run.task.export_fields(run.info))  # what joins its labels in files, for label sets
    # transformers' pipeline applies the task's function (a sigmoid per label: function_to_apply).
    return {
        "architectures": [ARCHITECTURE],
        **hf_config_from_gpt(run.model.gpt.config),
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "pad_token_id": EOT_ID,
        "id2label": {str(i): name for i, name in enumerate(classes)},
        "label2id": {name: i for i, name in enumerate(classes)},
        "problem_type": run.task.problem_type,
        "torch_dtype": "float32",
        "gptclf": custom,
    }


def export_transformers(run: LoadedRun, folder: Path, metrics: dict[str, Any] | None = None) -> None:
    """Write ``run`` as a transformers folder into ``folder`` (an empty work folder).

    Args:
        run: The loaded run.
        folder: Where to write (the caller swaps it in; see :mod:`gptclf.interop.export`).
        metrics: The run's metrics.json, for the model card (None: the card has no figures).

    Raises:
        BadInputError: The run cannot be expressed as ``GPT2ForSequenceClassification``.
        GptclfError: The run's weights hold NaN or infinite values.
    """
    if problems := export_problems(run):
        raise BadInputError("; ".join(problems))
    check_finite_weights(run)
    folder = Path(folder)
    state = hf_state_dict(run)  # may refuse the head: before anything is written
    save_weights(folder / "model.safetensors", state, {"format": "pt"})  # transformers wants "pt"
    atomic_write_json(folder / "config.json", hf_config(run))
    write_hf_tokenizer(run.path, folder, run.max_length)
    atomic_write_text(folder / "README.md", model_card(run.info, metrics, run.path))
