from __future__ import annotations

import pytest
import torch

from gptclf.device import resolve_device, resolve_precision
from gptclf.errors import BadInputError


def test_cpu_defaults() -> None:
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    p = resolve_precision("auto", cpu)
    assert (p.name, p.autocast_dtype, p.use_scaler) == ("fp32", None, False)
    assert resolve_precision("bf16", cpu).autocast_dtype == torch.bfloat16


def test_auto_device_is_cpu_without_gpu() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize(("spec", "message"), [("tpu", "unknown device"), ("gpu0", "unknown device")])
def test_unknown_devices(spec: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        resolve_device(spec)


def test_cuda_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BadInputError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_fp16_on_cpu_is_an_error() -> None:
    with pytest.raises(BadInputError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(BadInputError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))
