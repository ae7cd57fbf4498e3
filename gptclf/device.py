"""Device and precision, resolved once per run.

``--device auto`` picks cuda, then mps, then cpu. ``--precision auto`` picks bf16 autocast where
the chosen GPU has native bf16, fp16 autocast with a gradient scaler on other CUDA devices (TF32
allowed for what autocast leaves in fp32), and fp32 elsewhere (fp32 stays the CPU default because
it is the exact one; ``bf16`` on a CPU with bf16 matrix instructions is much faster and is offered
explicitly). ``fp32`` is IEEE fp32 on CUDA too; ``tf32`` asks for fp32 with TF32 matmuls. The TF32
flags are process-wide in torch, so they are set only around gptclf's own work and restored after.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptclf.errors import BadInputError

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")

#: The fused attention kernels gptclf's forward passes may use on CUDA, in torch's order of
#: preference. cuDNN's attention is left out: on an H200 (torch 2.11, bf16) it plans each new
#: sequence length anew, and length-bucketed batches bring a new length nearly every step, so the
#: cached training ran 5x slower in bf16 than in fp32 (see the README's GPU section). Flash and
#: memory-efficient attention need no per-shape plan. None: torch's own choice.
CUDA_ATTENTION: tuple[str, ...] | None = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


@dataclass(frozen=True)
class LocalJob:
    """This process's place among the data-parallel processes on its node.

    Attributes:
        rank: Its local rank (torchrun's ``LOCAL_RANK``): the index of its GPU.
        processes: Processes on the node (``LOCAL_WORLD_SIZE``, or ``--devices``), one GPU each.
    """

    rank: int
    processes: int


def resolve_device(spec: str = "auto", job: LocalJob | None = None) -> torch.device:
    """Turn ``--device`` into a torch device, checking that it exists; every device rule is here.

    A single process takes what ``spec`` names; ``auto`` picks cuda (the current GPU), then mps,
    then cpu. A process of a data-parallel ``job`` runs on the GPU of its local rank or on the CPU:
    ``cuda`` and ``auto`` with a GPU give ``cuda:<rank>`` (which also needs a GPU for every
    process on the node), ``auto`` without one the CPU; a chosen ``cuda:N`` and ``mps`` are
    refused, as gloo and NCCL serve CPU and CUDA tensors only.

    Args:
        spec: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        job: This process's data-parallel job (None: a single process). A launcher checks the
            job it is about to start with ``LocalJob(0, processes)``.

    Raises:
        BadInputError: The device is unknown, not present on this machine, or not usable by ``job``.
    """
    spec = spec.strip().lower()
    try:
        device = None if spec == "auto" else torch.device(spec)
    except RuntimeError as exc:
        raise BadInputError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device is not None and device.type not in ("cpu", "cuda", "mps"):
        raise BadInputError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    if job is not None:
        return _job_device(spec, device, job)
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else _current_gpu(spec)
        _check_gpus(spec, index + 1, f"only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadInputError("--device mps: MPS is not available here; use --device cpu or auto")
    return device


def _job_device(spec: str, device: torch.device | None, job: LocalJob) -> torch.device:
    """:func:`resolve_device` for a process of a data-parallel job."""
    if device is None:  # auto: never MPS, which no collective backend serves
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise BadInputError(f"--device {spec}: data-parallel runs use cuda or cpu")
    if device.index is not None:
        raise BadInputError(
            f"--device {spec}: a data-parallel job uses one GPU per process, that of its local rank: "
            "pass --device cuda or auto (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    _check_gpus(
        spec,
        max(job.rank + 1, job.processes),
        f"{job.processes} processes on this node need a GPU each, but only {count} CUDA device(s) are "
        f"here: start at most {count} (--devices, or torchrun's --nproc_per_node)",
    )
    return torch.device("cuda", job.rank)


def _current_gpu(spec: str) -> int:
    """The current CUDA device's index (after checking that there is one)."""
    _check_gpus(spec, 1, "")
    return torch.cuda.current_device()


def _check_gpus(spec: str, needed: int, too_few: str) -> None:
    """Raise unless CUDA is available with at least ``needed`` devices (``too_few``: the message)."""
    if not torch.cuda.is_available():
        raise BadInputError(f"--device {spec}: no CUDA GPU is available here; use --device cpu or auto")
    if torch.cuda.device_count() < needed:
        raise BadInputError(f"--device {spec}: {too_few}")


@dataclass(frozen=True)
class Precision:
    """How to run.

    Attributes:
        name: ``fp32``, ``tf32``, ``bf16`` or ``fp16`` (what the run records).
        autocast_dtype: The autocast type, None for fp32 and tf32.
        use_scaler: Whether the loss needs a gradient scaler (fp16).
        tf32: Whether float32 matmuls and convolutions on CUDA may use TF32 (about 1e-3 relative
            error): only inside :meth:`autocast` / :meth:`tf32_scope`, never process-wide.
    """

    name: str
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    tf32: bool = False

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """The forward passes' context: this precision's TF32 setting and autocast type."""
        with self.tf32_scope(device), attention_scope(device):
            if self.autocast_dtype is None:
                yield
            else:
                with torch.autocast(device_type=device.type, dtype=self.autocast_dtype):
                    yield

    @contextlib.contextmanager
    def tf32_scope(self, device: torch.device) -> Iterator[None]:
        """Set CUDA's TF32 flags to :attr:`tf32` for the block and restore them after.

        The flags are process-wide: set around our own work only, they neither leak into the
        caller's program (a library user's other models) nor depend on what it set before, so
        ``fp32`` is IEEE fp32 whatever else ran in the process. A no-op off CUDA.
        """
        if device.type != "cuda":
            yield
            return
        flags = _tf32_flags()
        saved = [getattr(space, name) for space, name in flags]
        for space, name in flags:
            setattr(space, name, _tf32_value(name, self.tf32))
        try:
            yield
        finally:
            for (space, name), value in zip(flags, saved, strict=True):
                setattr(space, name, value)


@contextlib.contextmanager
def attention_scope(device: torch.device) -> Iterator[None]:
    """Restrict scaled-dot-product attention to :data:`CUDA_ATTENTION` for the block (CUDA only).

    Like the TF32 flags, the kernel choice is process-wide in torch: it is set around gptclf's own
    forward passes and restored after. The backward of an attention runs the kernel its forward
    chose, so scoping the forward is enough.
    """
    if device.type != "cuda" or CUDA_ATTENTION is None:
        yield
        return
    with sdpa_kernel([getattr(SDPBackend, name) for name in CUDA_ATTENTION]):
        yield


def _tf32_flags() -> list[tuple[Any, str]]:
    """The (namespace, attribute) pairs that switch TF32 for CUDA matmuls and cuDNN.

    torch >= 2.9 has ``fp32_precision`` settings and refuses to read the legacy ``allow_tf32``
    flags once the new ones were set (by a library, say): use the new API where it exists.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        return [(matmul, "fp32_precision"), (cudnn.conv, "fp32_precision"), (cudnn.rnn, "fp32_precision")]
    return [(matmul, "allow_tf32"), (cudnn, "allow_tf32")]


def _tf32_value(name: str, on: bool) -> str | bool:
    """The value of flag ``name`` that allows TF32 (``on``) or forbids it."""
    if name == "fp32_precision":
        return "tf32" if on else "ieee"
    return on


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` (not the current one) computes in bf16 natively.

    ``torch.cuda.is_bf16_supported()`` looks at the current device only, and by default also says
    yes for a pre-Ampere GPU that merely emulates bf16 (slowly): ask the chosen device's compute
    capability (8.0, Ampere, or later) instead. ROCm GPUs run bf16.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


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

    ``fp32`` is IEEE fp32 everywhere; ``tf32`` (CUDA only) is fp32 with TF32 matmuls; ``auto``
    on CUDA is bf16 where the chosen GPU has it natively, else fp16 with a scaler, and allows
    TF32 for what autocast leaves in fp32.

    Raises:
        BadInputError: A combination the device cannot run (fp16 on a CPU, bf16 on an old GPU).
    """
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise BadInputError(f"unknown precision {spec!r}: use one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if spec == "auto":
        if not cuda:
            return Precision("fp32", None, False)
        spec = "bf16" if cuda_has_bf16(device) else "fp16"
        return dataclasses.replace(_explicit(spec, device), tf32=True)
    return _explicit(spec, device)


def _explicit(spec: str, device: torch.device) -> Precision:
    """The :class:`Precision` of a named ``spec`` (not ``auto``) on ``device``, TF32 off."""
    cuda = device.type == "cuda"
    if spec == "fp32":
        return Precision("fp32", None, False)
    if spec == "tf32":
        if not cuda:
            raise BadInputError(f"--precision tf32 needs a CUDA GPU (device is {device.type}); use fp32")
        return Precision("tf32", None, False, tf32=True)
    if spec == "bf16":
        if cuda and not cuda_has_bf16(device):
            raise BadInputError(
                f"--precision bf16: {torch.cuda.get_device_name(device)} ({device}) has no native bf16; "
                "use fp16"
            )
        if device.type == "mps":
            raise BadInputError("--precision bf16 is not supported on MPS here; use fp32")
        return Precision("bf16", torch.bfloat16, False)
    if not cuda:
        raise BadInputError(f"--precision fp16 needs a CUDA GPU (device is {device.type}); use fp32 or bf16")
    return Precision("fp16", torch.float16, True)
