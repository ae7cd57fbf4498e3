"""Device and precision, resolved once per run.

``--device auto`` picks cuda, then mps, then cpu. ``--precision auto`` picks bf16 autocast where
CUDA supports it, fp16 autocast with a gradient scaler on other CUDA devices, and fp32 elsewhere
(fp32 stays the CPU default because it is the exact one; ``bf16`` on a CPU with bf16 matrix
instructions is much faster and is offered explicitly).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from gptclf.errors import BadInputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``--device`` into a torch device, checking that it exists.

    Raises:
        BadInputError: The device is unknown or not present on this machine.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise BadInputError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError(f"--device {spec}: no CUDA GPU is available here; use --device cpu or auto")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise BadInputError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadInputError("--device mps: MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise BadInputError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass(frozen=True)
class Precision:
    """How to run: ``name`` (fp32, bf16, fp16), the autocast dtype (None for fp32), and whether a
    gradient scaler is needed (fp16 only)."""

    name: str
    autocast_dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        """Autocast context for forward passes (a no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def resolve_precision(spec: str, device: torch.device) -> Precision:
    """Turn ``--precision`` into a :class:`Precision` for ``device``.

    Raises:
        BadInputError: A combination the device cannot run (fp16 on a CPU, bf16 on an old GPU).
    """
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise BadInputError(f"unknown precision {spec!r}: use one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        if device.type == "cuda":
            spec = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            spec = "fp32"
    if spec == "fp32":
        return Precision("fp32", None, False)
    if spec == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise BadInputError(
                f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16"
            )
        if device.type == "mps":
            raise BadInputError("--precision bf16 is not supported on MPS here; use fp32")
        return Precision("bf16", torch.bfloat16, False)
    if device.type != "cuda":
        raise BadInputError(f"--precision fp16 needs a CUDA GPU (device is {device.type}); use fp32 or bf16")
    return Precision("fp16", torch.float16, True)


def setup_backend(device: torch.device) -> None:
    """Process-wide speed settings: TF32 matmuls and cuDNN on CUDA (fp32 results to ~1e-3)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
