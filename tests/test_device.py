from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gptclf.device import LocalJob, Precision, resolve_device, resolve_precision
from gptclf.distributed import process_group
from gptclf.errors import BadInputError
from gptclf.training.plan import check_launch, make_plan
from gptclf.training.settings import build_settings
from tests.finetune_helpers import TINY_SPEC

CPU = torch.device("cpu")


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


@pytest.fixture
def keep_tf32() -> Iterator[None]:
    """Put the process-wide TF32 flags back as they were after the test."""
    saved = [getattr(space, name) for space, name in _tf32_flags()]
    yield
    for (space, name), value in zip(_tf32_flags(), saved, strict=True):
        setattr(space, name, value)


@pytest.mark.usefixtures("keep_tf32")
def test_fp32_means_fp32_and_tf32_is_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF32 flags are set only inside a precision's context on CUDA, and restored after."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, "hip", None)
    before = _tf32_state()
    assert _tf32_state() == before  # resolving a precision changes nothing process-wide
    fp32, auto, tf32 = (resolve_precision(spec, cuda) for spec in ("fp32", "auto", "tf32"))
    assert (fp32.name, fp32.tf32, auto.name, auto.tf32, tf32.name, tf32.tf32) == (
        "fp32", False, "bf16", True, "tf32", True
    )  # fmt: skip
    for precision, inside in ((fp32, False), (tf32, True)):
        for outside in (True, False):
            _set_tf32(outside)
            with precision.autocast(cuda):
                assert _tf32_state() == (inside, inside)
            assert _tf32_state() == (outside, outside)  # the caller's own setting is back
    _set_tf32(True)
    with resolve_precision("fp32", CPU).autocast(CPU):
        assert _tf32_state() == (True, True)  # off CUDA nothing is touched
    with pytest.raises(BadInputError, match="tf32 needs a CUDA GPU"):
        resolve_precision("tf32", CPU)


def _attention_state() -> tuple[bool, bool, bool, bool]:
    b = torch.backends.cuda
    return b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled()


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_cudnn_attention_is_left_out_only_inside_a_cuda_forward_pass() -> None:
    """cuDNN attention plans every new sequence length anew (5x slower bf16 training on an H200):
    gptclf's CUDA forward passes run without it, and the caller's setting is back after."""
    cuda = torch.device("cuda", 0)
    bf16 = Precision("bf16", torch.bfloat16, use_scaler=False)
    before = _attention_state()
    assert before == (True, True, True, True)  # torch's defaults: every kernel allowed
    for precision in (bf16, Precision("fp32", None, use_scaler=False)):
        with precision.autocast(cuda):
            assert _attention_state() == (False, True, True, True)
        assert _attention_state() == before
    with bf16.autocast(CPU):
        assert _attention_state() == before  # off CUDA nothing is touched


def test_bf16_support_is_that_of_the_chosen_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:0 is a Turing GPU (7.5), cuda:1 an Ampere one (8.0); the current device is cuda:0."""
    caps = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: caps[_index(device)])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU{_index(device)}")
    # torch's own check, as it is: the current device's (and it counts emulated bf16 as support).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: caps[0] >= (8, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    first, second = resolve_device("cuda:0"), resolve_device("cuda:1")
    assert second == torch.device("cuda", 1)
    assert resolve_precision("auto", second).name == "bf16"
    assert resolve_precision("bf16", second).autocast_dtype == torch.bfloat16
    auto = resolve_precision("auto", first)
    assert (auto.name, auto.use_scaler) == ("fp16", True)
    with pytest.raises(BadInputError, match=r"GPU0 \(cuda:0\) has no native bf16; use fp16"):
        resolve_precision("bf16", first)
    with pytest.raises(BadInputError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def _index(device: object) -> int:
    index = torch.device(device).index if device is not None else 0  # type: ignore[arg-type]
    return 0 if index is None else index


def _tf32_flags() -> list[tuple[object, str]]:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        return [(matmul, "fp32_precision"), (cudnn.conv, "fp32_precision")]
    return [(matmul, "allow_tf32"), (cudnn, "allow_tf32")]


def _tf32_state() -> tuple[bool, bool]:
    """Whether CUDA matmuls and cuDNN convolutions may use TF32, read through either torch API."""
    return tuple(getattr(space, name) in ("tf32", True) for space, name in _tf32_flags())  # type: ignore[return-value]


def _set_tf32(on: bool) -> None:
    for space, name in _tf32_flags():
        setattr(space, name, ("tf32" if on else "ieee") if name == "fp32_precision" else on)


@pytest.fixture
def two_gpus_and_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with two CUDA GPUs (cuda:0 current) and, as on a Mac, MPS too."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.usefixtures("two_gpus_and_mps")
def test_data_parallel_device_rules() -> None:
    """One GPU per process, its local rank's; a chosen GPU and MPS are refused; one GPU per process."""
    assert resolve_device("cuda", LocalJob(1, 2)) == torch.device("cuda", 1)
    assert resolve_device("auto", LocalJob(1, 2)) == torch.device("cuda", 1)
    assert resolve_device("cpu", LocalJob(1, 2)) == CPU
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # a single process may choose
    for spec, message in (
        ("cuda:1", "one GPU per process, that of its local rank"),
        ("mps", "data-parallel runs use cuda or cpu"),
        ("tpu", "unknown device"),
    ):
        with pytest.raises(BadInputError, match=message):
            resolve_device(spec, LocalJob(0, 2))
    with pytest.raises(
        BadInputError, match="3 processes on this node need a GPU each, but only 2 CUDA device"
    ):
        resolve_device("cuda", LocalJob(0, 3))


def test_data_parallel_auto_without_gpu_is_the_cpu_not_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo and NCCL serve CPU and CUDA tensors only, so a data-parallel ``auto`` never picks MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("auto", LocalJob(0, 2)) == CPU
    with pytest.raises(BadInputError, match="no CUDA GPU"):
        resolve_device("cuda", LocalJob(0, 2))


@pytest.mark.usefixtures("two_gpus_and_mps")
def test_launcher_ranks_and_plan_apply_the_same_device_rules(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--devices (before it starts processes), process_group and make_plan in a rank agree."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    base = {"model": TINY_SPEC, "weights": "random", "out": str(tmp_path / "run")}
    assert make_plan(build_settings({**base, "device": "auto"})).device == torch.device("cuda", 1)
    for device, message in (("cuda:1", "that of its local rank"), ("mps", "use cuda or cpu")):
        settings = build_settings({**base, "device": device})
        for check in (
            lambda s=settings: make_plan(s),
            lambda s=settings: check_launch(s, 2),
            lambda s=settings: process_group(s.device).__enter__(),
        ):
            with pytest.raises(BadInputError, match=message):
                check()
    with pytest.raises(BadInputError, match="only 2 CUDA device"):
        check_launch(build_settings({**base, "device": "cuda"}), 3)
