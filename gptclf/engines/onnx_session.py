"""ONNX Runtime sessions as gptclf opens them, and the interface gptclf's graphs have.

The one place that imports onnxruntime for inference (lazily: it is the optional ``onnx`` extra)
and knows the graph's signature: inputs ``input_ids`` (batch, seq) int64 and ``lengths`` (batch,)
int64, output ``logits`` (batch, classes) float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptclf.errors import BadInputError

INPUTS = ("input_ids", "lengths")
OUTPUT = "logits"
PIP_HINT = "pip install 'gptclf[onnx]'"


def require_onnx(*modules: str) -> None:
    """Import ``modules`` (the ``onnx`` extra's), or say in one line how to install them.

    Raises:
        BadInputError: One of them is not installed.
    """
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise BadInputError(f"ONNX support needs the {name} package: {PIP_HINT}") from None


def ort_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path``: all graph optimizations, ``threads`` intra-op threads
    (default: torch's thread count, i.e. the cores, or what ``OMP_NUM_THREADS`` says), one inter-op.

    Without ONNX Runtime's CPU memory arena: every batch has its own (batch, length) shape, and the
    arena keeps blocks of each, so on a stream its peak RSS grew with the number of texts (gpt2-small
    int8: 1.35 GB after 3,000 SMS texts, 3.55 GB after 10,000; without it 1.04 and 1.16 GB, and
    faster: 213 texts/s against 170).

    Raises:
        BadInputError: onnxruntime is not installed, or ``path`` is not a model it can load.
    """
    require_onnx("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False  # see above: memory stays flat on a stream
    options.log_severity_level = 3  # errors only: its warnings are advice to developers
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes (Fail, InvalidGraph, ...) for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"{path} is not a model ONNX Runtime can load ({first}): export the run again"
        raise BadInputError(message) from None


def io_problems(session: Any, n_classes: int) -> list[str]:
    """How the session's inputs and outputs differ from what gptclf feeds and reads."""
    inputs = [(i.name, i.type, len(i.shape)) for i in session.get_inputs()]
    want = [(INPUTS[0], "tensor(int64)", 2), (INPUTS[1], "tensor(int64)", 1)]
    problems = []
    if inputs != want:
        shown = ", ".join(f"{n} {t} rank {r}" for n, t, r in inputs) or "none"
        problems.append(
            f"its inputs are {shown}; gptclf feeds input_ids int64 (batch, seq) and lengths int64 (batch,)"
        )
    outputs = session.get_outputs()
    if len(outputs) != 1 or outputs[0].type != "tensor(float)" or len(outputs[0].shape) != 2:
        problems.append("it must have one output, float logits (batch, classes)")
    elif isinstance(k := outputs[0].shape[1], int) and k != n_classes:
        problems.append(f"it gives {k} logits per text but the export record names {n_classes} classes")
    return problems
