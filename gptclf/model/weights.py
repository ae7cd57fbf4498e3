"""GPT-2 checkpoints: Hugging Face safetensors -> :class:`gptclf.model.gpt.GPT`, and their checks.

Hugging Face's GPT-2 uses ``Conv1D`` layers whose weight is stored (in, out), the transpose of
``nn.Linear``'s (out, in): ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` are
transposed on load. The hub's files name tensors without the ``transformer.`` prefix and carry
``h.N.attn.bias`` causal-mask buffers; files saved by recent ``transformers`` have the prefix and
no masks. Both are accepted; the masks are ignored (SDPA builds its own causal mask), and so is a
``GPT2ForSequenceClassification``'s ``score`` head (a new head replaces it).
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from gptclf.errors import BadInputError
from gptclf.model.config import HF_REPOS, GPTConfig, local_model_dir
from gptclf.model.gpt import GPT, build_model

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
        return None  # a sequence classifier's head: finetune replaces it, interop's import reads it
    return name if name.startswith("transformer.") else f"transformer.{name}"


#: What to do about a damaged safetensors file (named in every message about one).
DAMAGED_HINT = "download or save it again (save_pretrained(..., safe_serialization=True))"


def _raw_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size.

    The header gives each tensor's byte range in the data that follows it; safetensors refuses a
    file that is not exactly ``8 + header length + end of the last range`` bytes long, so a cut
    (or padded) file is found here, from the header and the size alone.

    Raises:
        BadInputError: The file is unreadable, has no valid header, or is not the size its header says.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a header")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError("header length is implausible")
            if n > size - 8:
                raise ValueError(f"truncated inside its {n:,}-byte header")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in ends):
            raise ValueError("a tensor's data_offsets are not byte offsets")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BadInputError(f"{path} is not a readable safetensors file ({exc}): {DAMAGED_HINT}") from None
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        state = "truncated" if size < expected else "damaged"
        raise BadInputError(
            f"{path} is {state} (it has {size:,} bytes but its header describes {expected:,}): {DAMAGED_HINT}"
        )
    return header


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor names -> (dtype, shape) from a safetensors header, without reading the data.

    The file's size is checked against the header (:func:`_raw_header`), so every caller that
    verifies a checkpoint by its header also refuses a truncated one.

    Raises:
        BadInputError: The file is not a safetensors file, or is truncated or damaged.
    """
    header = _raw_header(Path(path))
    try:
        return {k: (str(v["dtype"]), tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}
    except (KeyError, TypeError) as exc:
        raise BadInputError(f"{path} is not a readable safetensors file ({exc}): {DAMAGED_HINT}") from None


@contextlib.contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open`` of a checked file (:func:`read_header`), with safetensors' own errors (a file
    changed or damaged under the header) turned into one line.

    Raises:
        BadInputError: The file is unreadable, truncated or damaged.
    """
    read_header(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            yield fh
    except (SafetensorError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"{path} could not be read ({first}): {DAMAGED_HINT}") from None


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
    with open_safetensors(path) as fh:
        for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            canon = _canonical_name(name)
            if canon is None:
                continue
            tensor = fh.get_tensor(name).to(torch.float32)
            if canon.endswith(CONV1D_SUFFIXES):
                tensor = tensor.t()
            state[canon] = tensor.contiguous()
    return state


def hf_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors of this model in Hugging Face's layout (the inverse of :func:`load_hf_state_dict`):
    the four Conv1D weights transposed back to (in, out), every tensor fp32, contiguous, on the CPU."""
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu", torch.float32)
        out[name] = (tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor).contiguous()
    return out


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
            :func:`gptclf.fetch.artefacts.weights_file`); None: not downloaded.

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
