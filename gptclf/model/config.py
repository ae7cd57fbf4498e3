"""Model configurations: the GPT-2 presets (the four released sizes and distilgpt2), custom sizes for
quick experiments, and the rule that tells a local Hugging Face model folder from a name."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from gptclf.errors import BadInputError


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2 network.

    Attributes:
        vocab_size: Number of token ids (50,257 for GPT-2's BPE).
        n_positions: Context length (1,024 for GPT-2).
        n_embd: Width of the residual stream.
        n_layer: Number of transformer blocks.
        n_head: Number of attention heads; must divide ``n_embd``.
        dropout: Dropout on embeddings, attention output and MLP output. 0.0 for finetuning
            (as in the book), which is also what lets the frozen trunk be cached exactly.
        layer_norm_epsilon: LayerNorm epsilon (1e-5 in GPT-2).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_head >= 1 and self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if problems:
            raise BadInputError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, int | float]:
        """Plain dict for run.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> GPTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise BadInputError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


#: The four released GPT-2 sizes and distilgpt2.
PRESETS: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": GPTConfig(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPTConfig(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPTConfig(n_embd=1600, n_layer=48, n_head=25),
    # Hugging Face's distillation of gpt2-small: the same width and tokenizer, 6 blocks.
    "distilgpt2": GPTConfig(n_embd=768, n_layer=6, n_head=12),
}

#: The book's names for the same sizes.
ALIASES: dict[str, str] = {
    "124M": "gpt2-small",
    "355M": "gpt2-medium",
    "774M": "gpt2-large",
    "1558M": "gpt2-xl",
}

#: Hugging Face hub repository of each preset.
HF_REPOS: dict[str, str] = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

_CUSTOM_KEYS = {f.name for f in dataclasses.fields(GPTConfig)}


def valid_model_names() -> list[str]:
    """All names ``--model`` accepts besides a custom ``key=value`` size."""
    return [*PRESETS, *ALIASES]


def canonical_preset(name: str) -> str | None:
    """Return the preset name for ``name`` (a preset or an alias), or None."""
    if name in PRESETS:
        return name
    return ALIASES.get(name)


def resolve_model(spec: str) -> tuple[str, GPTConfig]:
    """Turn a ``--model`` value into a (name, config) pair.

    Args:
        spec: A preset (``gpt2-small`` ... ``gpt2-xl``), an alias (``124M`` ... ``1558M``) or a
            custom size such as ``n_layer=4,n_head=4,n_embd=256`` (other fields keep GPT-2's values).

    Returns:
        The canonical name (the preset, or ``custom``) and its config.

    Raises:
        BadInputError: The name is unknown or a custom size is malformed.
    """
    spec = spec.strip()
    preset = canonical_preset(spec)
    if preset is not None:
        return preset, PRESETS[preset]
    if "=" not in spec:
        raise BadInputError(
            f"unknown model {spec!r}: use one of {', '.join(valid_model_names())}, "
            "a custom size like n_layer=4,n_head=4,n_embd=256, or a Hugging Face GPT-2 folder"
        )
    values: dict[str, int | float] = {}
    problems = []
    for part in spec.split(","):
        key, _, raw = part.partition("=")
        key = key.strip()
        if key not in _CUSTOM_KEYS:
            problems.append(f"unknown key {key!r} (valid: {', '.join(sorted(_CUSTOM_KEYS))})")
            continue
        try:
            values[key] = float(raw) if key == "dropout" else int(raw)
        except ValueError:
            problems.append(f"{key}={raw!r} is not a number")
    if problems:
        raise BadInputError(f"bad custom model size {spec!r}: " + "; ".join(problems))
    return "custom", GPTConfig(**values)  # type: ignore[arg-type]


def local_model_dir(spec: str) -> Path | None:
    """The folder ``--model spec`` names, or None when ``spec`` is a preset, an alias or a size.

    A spec is a folder when it is not a preset or alias and either names an existing folder or
    looks like a path (it holds a ``/``, or starts with ``.`` or ``~``); the folder need not exist
    (:func:`gptclf.model.hfconfig.resolve_base_model` says so). A custom size (``key=value``) never is.
    """
    spec = spec.strip()
    if not spec or canonical_preset(spec) is not None:
        return None
    path = Path(spec).expanduser()
    if path.is_dir() or "/" in spec or os.sep in spec or spec.startswith((".", "~")):
        return path
    return None


def cache_home() -> Path:
    """Where downloads live: ``$GPTCLF_HOME``, else ``~/.cache/gptclf``."""
    env = os.environ.get("GPTCLF_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptclf"
