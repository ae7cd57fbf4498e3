"""Hugging Face GPT-2 ``config.json`` <-> :class:`gptclf.model.config.GPTConfig`, and local model folders.

A Hugging Face GPT-2 folder (``GPT2Model`` / ``GPT2LMHeadModel`` / ``GPT2ForSequenceClassification``
``save_pretrained``, or a hub download) holds ``config.json`` and ``model.safetensors``. Its sizes
(``n_embd``, ``n_layer``, ``n_head``, ``vocab_size``), context (``n_positions``) and
``layer_norm_epsilon`` are read from the config; a config that asks for something gptclf's
:mod:`gptclf.model.gpt` does not compute is refused with one line: another ``model_type``, an activation
other than the tanh-approximated GELU, an MLP width other than 4 x ``n_embd``, cross-attention,
unscaled attention or attention scaled by the inverse layer index.

``--model DIR`` (finetune, download) resolves through :func:`resolve_base_model`: the folder's
canonical name is its absolute path, which run.json records as ``model.name`` (``model.config``
holds the sizes, so predict, evaluate and resume rebuild the same shape).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptclf.errors import BadInputError
from gptclf.model.config import GPTConfig, local_model_dir, resolve_model
from gptclf.model.weights import verify_checkpoint

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Hugging Face's names of GELU with the tanh approximation, the one GPT-2 uses: each computes
#: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (a test compares them with transformers').
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate")
#: Flags of GPT2Config that change what the network computes, and the value gptclf computes.
_FIXED_FLAGS = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}
#: The smallest vocabulary GPT-2's tokenizer fits (its largest id is 50256).
MIN_VOCAB = 50257


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face model folder.

    Raises:
        BadInputError: The folder or its config.json is missing or not a JSON object.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"model folder {folder} does not exist: give a Hugging Face GPT-2 folder")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise BadInputError(
            f"{folder} has no {CONFIG_FILE}: give a folder written by transformers' save_pretrained"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadInputError(f"{path} must hold a JSON object")
    return data


def _int_field(hf: dict[str, Any], key: str, *fallbacks: str) -> int | None:
    for name in (key, *fallbacks):
        value = hf.get(name)
        if value is not None:
            return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def gpt_config_from_hf(hf: dict[str, Any], source: str) -> GPTConfig:
    """The :class:`GPTConfig` of a Hugging Face GPT-2 config (dropout stays 0.0, as gptclf trains).

    Raises:
        BadInputError: Naming every way the config is not a GPT-2 that gptclf computes.
    """
    if hf.get("model_type") != "gpt2":
        raise BadInputError(
            f"{source}: model_type {hf.get('model_type')!r} is not 'gpt2': gptclf runs GPT-2-architecture "
            "models only"
        )
    problems = []
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        problems.append(
            f"activation_function {act!r} is not GPT-2's tanh GELU (one of {', '.join(TANH_GELUS)})"
        )
    for flag, value in _FIXED_FLAGS.items():
        if hf.get(flag, value) != value:
            problems.append(f"{flag} must be {json.dumps(value)} (got {json.dumps(hf.get(flag))})")
    sizes = {
        "vocab_size": _int_field(hf, "vocab_size"),
        "n_positions": _int_field(hf, "n_positions", "n_ctx"),
        "n_embd": _int_field(hf, "n_embd", "hidden_size"),
        "n_layer": _int_field(hf, "n_layer", "num_hidden_layers"),
        "n_head": _int_field(hf, "n_head", "num_attention_heads"),
    }
    problems += [f"{k} must be an integer (missing or wrong)" for k, v in sizes.items() if v is None]
    inner = hf.get("n_inner")
    if inner is not None and sizes["n_embd"] is not None and inner != 4 * sizes["n_embd"]:
        problems.append(f"n_inner {inner} is not 4 x n_embd ({4 * sizes['n_embd']}), which gptclf's MLP has")
    if sizes["vocab_size"] is not None and sizes["vocab_size"] < MIN_VOCAB:
        problems.append(
            f"vocab_size {sizes['vocab_size']} is smaller than GPT-2's tokenizer needs ({MIN_VOCAB})"
        )
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not eps > 0:
        problems.append(f"layer_norm_epsilon must be a number > 0 (got {eps!r})")
    if problems:
        raise BadInputError(f"{source} is not a GPT-2 that gptclf can run: " + "; ".join(problems))
    return GPTConfig(**sizes, layer_norm_epsilon=float(eps))  # type: ignore[arg-type]


def hf_config_from_gpt(cfg: GPTConfig) -> dict[str, Any]:
    """The GPT-2 part of a Hugging Face ``config.json`` for ``cfg`` (the inverse of
    :func:`gpt_config_from_hf`)."""
    return {
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        **_FIXED_FLAGS,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
    }


def weights_file(folder: Path) -> Path:
    """Where a Hugging Face folder keeps its weights: ``model.safetensors``.

    Raises:
        BadInputError: It has none (a sharded or pickle-only checkpoint is named as such).
    """
    path = Path(folder) / WEIGHTS_FILE
    if path.is_file():
        return path
    if (Path(folder) / f"{WEIGHTS_FILE}.index.json").is_file():
        raise BadInputError(
            f"{folder} holds a sharded checkpoint: save it as one file "
            "(save_pretrained(..., max_shard_size='100GB'))"
        )
    extra = (
        " (pytorch_model.bin is a pickle, which gptclf never loads)"
        if (Path(folder) / "pytorch_model.bin").is_file()
        else ""
    )
    raise BadInputError(
        f"{folder} has no {WEIGHTS_FILE}{extra}: save it with save_pretrained(..., safe_serialization=True)"
    )


def local_model(folder: Path, check_weights: bool = True) -> tuple[str, GPTConfig]:
    """Name and config of a local Hugging Face GPT-2 folder.

    Args:
        folder: The folder.
        check_weights: Also check ``model.safetensors``'s tensors against the config (header only).

    Returns:
        The folder's absolute path (its name in run.json) and its config.

    Raises:
        BadInputError: Not a GPT-2 folder, or weights whose sizes do not fit the config.
    """
    folder = Path(folder).expanduser().resolve()
    cfg = gpt_config_from_hf(read_hf_config(folder), str(folder / CONFIG_FILE))
    if check_weights:
        verify_checkpoint(weights_file(folder), cfg)
    return str(folder), cfg


def resolve_base_model(spec: str, weights: str = "pretrained") -> tuple[str, GPTConfig]:
    """Turn a ``--model`` value into a (name, config) pair: a preset, an alias, a custom size
    (:func:`gptclf.model.config.resolve_model`) or a local Hugging Face GPT-2 folder.

    Args:
        spec: The ``--model`` value.
        weights: The ``--weights`` value: with ``pretrained`` a folder's own weights must fit it.

    Raises:
        BadInputError: An unknown name, a bad size or a folder that is not a GPT-2 gptclf runs.
    """
    folder = local_model_dir(spec)
    if folder is None:
        return resolve_model(spec)
    return local_model(folder, check_weights=weights == "pretrained")
