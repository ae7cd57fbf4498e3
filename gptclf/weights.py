"""GPT-2 checkpoints: Hugging Face safetensors -> :class:`gptclf.model.GPT`, and their checks.

Hugging Face's GPT-2 uses ``Conv1D`` layers whose weight is stored (in, out), the transpose of
``nn.Linear``'s (out, in): ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` are
transposed on load. The hub's files name tensors without the ``transformer.`` prefix and carry
``h.N.attn.bias`` causal-mask buffers; files saved by recent ``transformers`` have the prefix and
no masks. Both are accepted; the masks are ignored (SDPA builds its own causal mask), and so is a
``GPT2ForSequenceClassification``'s ``score`` head (a new head replaces it).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from gptclf.config import HF_REPOS, GPTConfig, local_model_dir
from gptclf.errors import BadInputError
from gptclf.model import GPT, build_model

#: Suffixes of the Conv1D weights that are stored transposed in Hugging Face files.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

_SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not parameters
#: The class head of ``GPT2ForSequenceClassification`` (its ``score`` has no bias in transformers).
HEAD_NAMES = ("score.weight", "score.bias")


def expected_hf_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Tensor names (with the ``transformer.`` prefix) and shapes a GPT-2 checkpoint must hold.

    Shapes are as Hugging Face stores them (Conv1D weights as (in, out)); the causal-mask buffers
    and the tied ``lm_head.weight`` are not listed, since files may or may not carry them.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):  # shapes only: no memory, even for gpt2-xl
        meta_model = GPT(cfg)
    for name, tensor in meta_model.state_dict().items():
        if name == "lm_head.weight":
            continue
        shape = tuple(tensor.shape)
        if name.endswith(CONV1D_SUFFIXES):
            shape = shape[::-1]
        shapes[name] = shape
    return shapes


def _canonical_name(name: str) -> str | None:
    """Map a file's tensor name to this model's, or None for tensors to ignore."""
    if name.endswith(_SKIPPED_SUFFIXES):
        return None
    if name == "lm_head.weight":
        return None  # tied to wte; the model ties it again
    if name in HEAD_NAMES:
        return None  # a sequence classifier's head: finetune replaces it, gptclf.hfimport reads it
    return name if name.startswith("transformer.") else f"transformer.{name}"


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor names -> (dtype, shape) from a safetensors header, without reading the data.

    Raises:
        BadInputError: The file is not a safetensors file.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a header")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path} is not a readable safetensors file ({exc})") from exc
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def check_tensors(found: dict[str, tuple[int, ...]], cfg: GPTConfig, source: str) -> None:
    """Compare a file's tensors (canonical names, HF shapes) with what ``cfg`` needs.

    Raises:
        BadInputError: Listing every missing, unexpected or wrongly shaped tensor.
    """
    expected = expected_hf_shapes(cfg)
    problems = []
    for name in sorted(set(expected) - set(found)):
        problems.append(f"missing tensor {name} (expected shape {list(expected[name])})")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"unexpected tensor {name} (shape {list(found[name])})")
    for name in sorted(set(found) & set(expected)):
        if tuple(found[name]) != expected[name]:
            problems.append(f"tensor {name} has shape {list(found[name])}, expected {list(expected[name])}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BadInputError(f"{source} does not fit this model: {shown}")


def verify_checkpoint(path: Path, cfg: GPTConfig) -> None:
    """Check a checkpoint's header against ``cfg`` without loading its data."""
    found = {}
    for name, (_dtype, shape) in read_header(path).items():
        canon = _canonical_name(name)
        if canon is not None:
            found[canon] = shape
    check_tensors(found, cfg, str(path))


def load_hf_state_dict(path: Path, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Read a Hugging Face GPT-2 safetensors file into this model's names and layouts (fp32).

    Raises:
        BadInputError: The file is unreadable or its tensors do not fit ``cfg``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"weights file {path} does not exist: check the path or run `gptclf download`")
    verify_checkpoint(path, cfg)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            canon = _canonical_name(name)
            if canon is None:
                continue
            tensor = fh.get_tensor(name).to(torch.float32)
            if canon.endswith(CONV1D_SUFFIXES):
                tensor = tensor.t()
            state[canon] = tensor.contiguous()
    return state


def load_pretrained(cfg: GPTConfig, path: Path) -> GPT:
    """A :class:`GPT` holding the weights of a Hugging Face GPT-2 safetensors file."""
    state = load_hf_state_dict(path, cfg)
    model = build_model(cfg, seed=None)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True)
    model.lm_head.weight = model.transformer.wte.weight  # keep the tie after loading
    return model


def weights_problems(spec: str, preset: str | None) -> list[str]:
    """What keeps ``--weights spec`` from being loaded for the model ``preset``, checked before
    anything is downloaded (empty: it can be; a missing download is found by :func:`load_weights`).

    Args:
        spec: ``pretrained``, ``random`` or a path to a safetensors file.
        preset: The preset name (``custom`` for a custom size, the absolute path of a local
            Hugging Face folder; None: not known, so only the file is checked).
    """
    local = preset is not None and local_model_dir(preset) is not None  # a folder's own weights
    if spec == "pretrained" and preset is not None and preset not in HF_REPOS and not local:
        return [
            "there are no pretrained weights for a custom model size: use --weights random or --weights PATH"
        ]
    if spec not in ("pretrained", "random") and not Path(spec).expanduser().is_file():
        return [f"--weights {spec}: the file does not exist (use pretrained, random or a safetensors path)"]
    return []


def load_weights(
    spec: str, cfg: GPTConfig, preset: str, seed: int = 123, pretrained: Path | None = None
) -> GPT:
    """Build the model ``--weights`` asks for, from what is on disk (nothing is fetched).

    Args:
        spec: ``pretrained`` (the preset's file, at ``pretrained``), ``random`` (seeded init) or
            a path to a local safetensors file.
        cfg: The model shape.
        preset: The preset name (``custom`` for a custom size).
        seed: Seed for ``random``.
        pretrained: Where the preset's downloaded file is (the cache's place for it:
            :func:`gptclf.artefacts.weights_file`); None: not downloaded.

    Raises:
        BadInputError: Pretrained weights requested for a custom size, or a file that is missing
            or does not fit.
    """
    if problems := weights_problems(spec, preset):
        raise BadInputError("; ".join(problems))
    if spec == "random":
        return build_model(cfg, seed=seed)
    if spec == "pretrained":
        if pretrained is None or not pretrained.is_file():
            where = f" in {pretrained.parent}" if pretrained is not None else ""
            raise BadInputError(
                f"no pretrained weights for {preset}{where}: run `gptclf download --model "
                f"{preset}` (or use --weights random)"
            )
        return load_pretrained(cfg, pretrained)
    return load_pretrained(cfg, Path(spec).expanduser())


def check_safetensors_extent(path: Path) -> None:
    """Check that a safetensors file is exactly as long as its header says.

    A download truncated where the host stated no size still has a valid header; this catches it.

    Raises:
        BadInputError: The file is shorter or longer than its header says, or has no valid header.
    """
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        raise BadInputError(f"{path} has no valid safetensors header ({exc})") from None
    expected, actual = 8 + n + end, path.stat().st_size
    if actual != expected:
        raise BadInputError(f"{path} has {actual:,} bytes but its header describes {expected:,}")
