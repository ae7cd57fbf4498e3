"""The inference engines behind ``predict``: torch (fp32, bf16, fp16), torch int8, ONNX Runtime.

Every engine is a model that :func:`gptclf.inference.loop.run_batches` runs, so every engine sees the
same length-sorted batches, padding and order restoring, and the predictor the same logits to
calibrate and decide on:

- ``torch``: the run's :class:`~gptclf.model.classifier.Classifier`, under the precision's autocast.
- ``torch`` with ``quantize="int8"``: a copy whose ``nn.Linear`` layers are dynamically quantized
  (int8 weights, activations quantized per batch; torch's ``quantize_dynamic``), on the CPU in fp32.
- ``onnx``: an :class:`OrtClassifier` around an ONNX Runtime session of an export folder's
  ``model.onnx`` (:mod:`gptclf.engines.onnx_build`); a run directory is exported on the fly into a
  temporary folder (with ``quantize="int8"`` through ONNX Runtime's quantizer).

The quantized and ONNX engines run on the CPU in fp32 only: any other device or precision is
refused with one line.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptclf.device import Precision, resolve_device, resolve_precision
from gptclf.engines.onnx_build import export_onnx
from gptclf.engines.onnx_folder import OnnxExport
from gptclf.engines.onnx_session import INPUTS, io_problems, ort_session, require_onnx
from gptclf.errors import BadInputError
from gptclf.fileio import process_alive
from gptclf.model.classifier import Classifier
from gptclf.model.tokenizer import EOT_ID
from gptclf.rundir import LoadedRun

ENGINES = ("torch", "onnx")
QUANTIZE_CHOICES = ("none", "int8")


class OrtClassifier:
    """An ONNX Runtime session standing in for the :class:`Classifier` in the inference loop.

    Attributes:
        classes: The class names, in the order of the logits.
        session: The session.
    """

    training = False

    def __init__(self, session: Any, classes: list[str], where: Path) -> None:
        """Check the session's inputs and outputs, and run it once on one token.

        Raises:
            BadInputError: It does not take gptclf's inputs or give one logit per class.
        """
        self.session, self.classes = session, list(classes)
        problems = io_problems(session, len(classes))
        if not problems:
            try:
                probe = self(torch.full((1, 1), EOT_ID), torch.ones(1, dtype=torch.long))
            except Exception as exc:
                problems.append(f"it fails on one token ({str(exc).strip().splitlines()[0]})")
            else:
                if tuple(probe.shape) != (1, len(classes)):
                    problems.append(
                        f"it gives logits of shape {tuple(probe.shape)} for one text but the export "
                        f"record names {len(classes)} classes"
                    )
        if problems:
            detail = "; ".join(problems)
            raise BadInputError(f"{where} does not match gptclf's export: {detail}; export the run again")

    def eval(self) -> OrtClassifier:
        """Nothing to switch: a session only infers (for the inference loop's protocol)."""
        return self

    def train(self, mode: bool = True) -> OrtClassifier:
        return self

    def __call__(
        self,
        input_ids: torch.Tensor | None,
        lengths: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start_block: int = 0,
        stop_block: int | None = None,
    ) -> torch.Tensor:
        """(B, K) float32 logits of a right-padded (B, T) batch (token ids only: no cache, no cut)."""
        assert input_ids is not None and hidden is None and start_block == 0 and stop_block is None
        feed = {INPUTS[0]: input_ids.cpu().numpy(), INPUTS[1]: lengths.cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def quantize_torch_int8(model: Classifier) -> Classifier:
    """``model`` with every ``nn.Linear`` dynamically quantized to int8 (CPU only); ``model`` is untouched.

    The same modules as ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear})`` (its
    ``convert`` step, Linear by Linear), but in a shallow copy of the module tree instead of a deep
    copy: the embeddings and norms are shared with ``model`` rather than copied, so the peak memory
    is the fp32 model plus the int8 weights, not two fp32 models. The last-token forward runs the
    final block's qkv through the quantized module whole (its path for any module that is not a
    plain ``nn.Linear``).
    """
    with warnings.catch_warnings():  # torch.ao.quantization says it is deprecated, and still works
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import default_dynamic_qconfig

        def convert(module: nn.Module) -> nn.Module:
            if type(module) is nn.Linear:
                linear = copy.copy(module)  # from_float reads the qconfig off the module it is given
                linear.qconfig = default_dynamic_qconfig
                return DynamicLinear.from_float(linear)
            clone = copy.copy(module)  # its dicts of children, parameters, buffers are new below
            clone._modules = {
                name: None if child is None else convert(child) for name, child in module._modules.items()
            }
            clone._parameters = dict(module._parameters)
            clone._buffers = dict(module._buffers)
            return clone

        quantized = convert(model.cpu().eval())
    assert isinstance(quantized, Classifier)
    return quantized


def _cpu_fp32(what: str, device: str | torch.device, precision: str) -> tuple[torch.device, Precision]:
    """The CPU and fp32, for an engine that has nothing else; one line for anything else."""
    if isinstance(device, str) and device.strip().lower() != "auto":
        try:  # the type only: a GPU this machine lacks is refused as a GPU, not as absent
            device = torch.device(device.strip().lower())
        except RuntimeError:
            resolve_device(device)  # raises its one line for a name that is no device
    if isinstance(device, torch.device) and device.type != "cpu":
        raise BadInputError(f"{what} runs on the CPU only (got --device {device}); use --device cpu")
    if precision.strip().lower() not in ("auto", "fp32"):
        raise BadInputError(f"{what} runs in fp32 only (got --precision {precision}); use --precision fp32")
    cpu = torch.device("cpu")
    return cpu, resolve_precision("fp32", cpu)


def load_engine(
    run: LoadedRun | OnnxExport,
    *,
    engine: str = "torch",
    quantize: str = "none",
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> tuple[Classifier | OrtClassifier, torch.device, Precision]:
    """The model that classifies for ``run``, with the device and precision it runs at.

    Args:
        run: A run directory, or an ONNX export folder (only the ``onnx`` engine runs that).
        engine: ``torch`` or ``onnx``.
        quantize: ``none`` or ``int8`` (an export folder is already what it was exported as).
        device: ``--device``; the int8 and onnx engines take ``auto`` or ``cpu`` only.
        precision: ``--precision``; the int8 and onnx engines take ``auto`` or ``fp32`` only.

    Raises:
        BadInputError: An unknown engine or quantization, a combination that cannot run, a model
            that does not match its record, or onnxruntime missing for ``onnx``.
    """
    if engine not in ENGINES:
        raise BadInputError(f"unknown --engine {engine!r}: use one of {', '.join(ENGINES)}")
    if quantize not in QUANTIZE_CHOICES:
        raise BadInputError(f"unknown --quantize {quantize!r}: use one of {', '.join(QUANTIZE_CHOICES)}")
    if isinstance(run, OnnxExport):
        if engine != "onnx":
            raise BadInputError(f"{run.path} is an ONNX export: it runs with --engine onnx only")
        if quantize != "none":
            raise BadInputError(
                f"{run.path} is an ONNX export ({run.quantize or 'fp32'}): --quantize applies to a run "
                "directory; export with `gptclf export RUN --format onnx --quantize int8` instead"
            )
    if engine == "torch" and quantize == "none":
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        assert isinstance(run, LoadedRun)
        return run.model.to(dev).eval(), dev, resolve_precision(precision, dev)
    what = "--engine onnx" if engine == "onnx" else "--quantize int8"
    dev, fp32 = _cpu_fp32(what, device, precision)
    if engine == "torch":
        assert isinstance(run, LoadedRun)
        return quantize_torch_int8(run.model), dev, fp32
    require_onnx("onnxruntime")
    if isinstance(run, OnnxExport):
        return OrtClassifier(ort_session(run.model_path), run.classes, run.model_path), dev, fp32
    # A run directory: exported here, once, into a folder that goes when the session has the model.
    _remove_dead_exports()
    with tempfile.TemporaryDirectory(prefix=f"{_TEMP_PREFIX}{os.getpid()}-") as tmp:
        export_onnx(run, Path(tmp), quantize=None if quantize == "none" else quantize)
        session = ort_session(Path(tmp) / "model.onnx")
    return OrtClassifier(session, run.classes, run.path), dev, fp32


#: The temporary export folders of ``--engine onnx`` on a run: ``gptclf-onnx-<pid>-<random>``.
_TEMP_PREFIX = "gptclf-onnx-"


def _remove_dead_exports() -> None:
    """Remove the temporary export folders that killed processes left in the temporary folder
    (a gpt2-small graph is 500 MB); those of live processes, this one included, are kept."""
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            pid = entry.name.removeprefix(_TEMP_PREFIX).split("-")[0]
            if entry.name.startswith(_TEMP_PREFIX) and pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
