"""The ONNX export folder: :func:`export_onnx` writes it (:mod:`gptclf.engines.onnx_folder` reads it).

An export folder holds everything ONNX Runtime needs to classify texts as the run does:

- ``model.onnx``: the classifier's one forward (:meth:`gptclf.model.classifier.Classifier.forward`, with
  its last-token gather inside the graph), inputs ``input_ids`` (batch, seq) int64 and ``lengths``
  (batch,) int64 (real tokens per right-padded text), output ``logits`` (batch, classes) float32;
  both axes are dynamic. With ``quantize="int8"`` its weights are int8 (ONNX Runtime's dynamic
  quantization of the MatMuls by constant weights and of the embedding Gathers).
- ``gptclf-onnx.json``: the format, the graph's inputs and output and sha256 (``onnx.sha256``, and
  ``onnx.data_sha256`` for external weights; checked on every read, as run.json's weights are; a
  record from before they were kept is read without), the quantization, and the run's
  whole run.json (``run``): classes, max length, pooling and padding, calibration temperature,
  stored decision and abstention, checked against the run schema when read.
- ``encoder.json``, ``vocab.bpe``: the tokenizer files.

The graph is exported with torch's dynamo exporter (``torch.onnx.export(dynamo=True)``) and checked
against the torch forward on texts of different lengths before it is kept: an fp32 graph that does
not give the same logits within 1e-4 is an error, never a file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gptclf.engines.onnx_folder import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    EXPORT_INFO_FILE,
    ONNX_FILE,
    QUANTIZATIONS,
    digests,
)
from gptclf.engines.onnx_session import INPUTS, OUTPUT, ort_session, require_onnx
from gptclf.errors import BadInputError, GptclfError
from gptclf.fileio import atomic_write_bytes, atomic_write_json
from gptclf.model.classifier import Classifier
from gptclf.model.tokenizer import EOT_ID, TOKENIZER_FILES, collate
from gptclf.rundir import LoadedRun, check_finite_weights

#: How close the exported fp32 graph's logits must be to torch's.
PARITY_ATOL = 1e-4
#: protobuf's limit: a larger model keeps its weights in ``model.onnx.data`` beside the graph.
_PROTOBUF_LIMIT = 2**31 - 1


class _Forward(nn.Module):
    """The classifier's forward with the exported signature: (input_ids, lengths) -> logits."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, lengths)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines and warnings off stdout (results go there) and out of sight."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_graph(model: Classifier, path: Path) -> None:
    """Write the fp32 graph of ``model`` with dynamic batch and sequence axes."""
    n_positions = model.gpt.config.n_positions
    example = collate([[EOT_ID] * 3, [EOT_ID] * 2])  # two texts of two lengths: no axis specialised
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=n_positions)
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            _Forward(model).eval(),
            example,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "lengths": {0: batch}},
            dynamo=True,
            verbose=False,
        )
        assert program is not None
        program.save(str(path), external_data=_n_bytes(model) > _PROTOBUF_LIMIT)


def _n_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


def _check_parity(model: Classifier, path: Path) -> None:
    """The graph at ``path`` gives the torch forward's logits on a padded batch of three lengths.

    Raises:
        GptclfError: It does not (an exporter fault): the export is not kept.
    """
    n = min(model.gpt.config.n_positions, 7)
    ids, lengths = collate([list(range(10, 10 + n)), [EOT_ID], list(range(20, 20 + max(1, n // 2)))])
    with torch.no_grad():
        want = model(ids, lengths).numpy()
    got = ort_session(path, threads=1).run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})[0]
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= PARITY_ATOL:
        raise GptclfError(
            f"the exported ONNX graph does not reproduce the model (max logit difference {diff:.3g} > "
            f"{PARITY_ATOL}); nothing was kept: report this with your torch and onnxscript versions"
        )


def _quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization: the MatMuls by constant weights (activations
    quantized per batch, at run time) and the embedding Gathers (its default operator set).

    ``MatMulConstBOnly`` leaves any activation-by-activation MatMul (attention scores, where the
    exporter does not fuse them) in fp32: they hold no weights, so quantizing them would cost
    accuracy for no smaller file. Weights per tensor, the quantizer's default: per channel agreed no
    better with fp32 in a smoke comparison on gpt2-small.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs its advice to the root logger
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            # 7-bit weights: x86 CPUs without VNNI (AVX2, AVX-512F) multiply uint8 activations by
            # int8 weights with VPMADDUBSW, whose int16 sums saturate at full-range weights; the
            # same export then scores differently (0.09 in probability on a tiny model) by CPU.
            reduce_range=True,
            extra_options={"MatMulConstBOnly": True},
            use_external_data_format=src.with_name(src.name + ".data").exists(),
        )


def export_onnx(run: LoadedRun, work_dir: Path, *, quantize: str | None) -> None:
    """Write ``run`` as an ONNX export folder into ``work_dir`` (an existing, empty folder).

    Args:
        run: A loaded run directory (its tokenizer files are copied from ``run.path``).
        work_dir: Where model.onnx, gptclf-onnx.json and the tokenizer files are written.
        quantize: None or ``"none"`` (fp32), or ``"int8"`` (dynamic quantization by ONNX Runtime).

    Raises:
        BadInputError: An unknown ``quantize``, or the onnx extra is not installed.
        GptclfError: The run's weights are not finite, or the exported graph does not reproduce
            the model.
    """
    quantize = None if quantize == "none" else quantize  # the CLI's spelling of no quantization
    if quantize not in (None, *QUANTIZATIONS):
        raise BadInputError(f"unknown --quantize {quantize!r}: use none or {', '.join(QUANTIZATIONS)}")
    require_onnx("onnx", "onnxscript", "onnxruntime")
    check_finite_weights(run)
    work_dir = Path(work_dir)
    model = run.model.cpu().eval()
    final = work_dir / ONNX_FILE
    fp32 = work_dir / ".model-fp32.onnx" if quantize else final
    _export_graph(model, fp32)
    _check_parity(model, fp32)
    if quantize:
        _quantize_int8(fp32, final)
        for leftover in (fp32, fp32.with_name(fp32.name + ".data")):
            leftover.unlink(missing_ok=True)
    for name in TOKENIZER_FILES:
        atomic_write_bytes(work_dir / name, (Path(run.path) / name).read_bytes())
    import onnx

    graph = onnx.load(str(final), load_external_data=False)
    opset = next(o.version for o in graph.opset_import if not o.domain)
    record = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "onnx": {
            "file": ONNX_FILE,
            "inputs": list(INPUTS),
            "output": OUTPUT,
            "opset": opset,
            **digests(work_dir),
        },
        "quantize": quantize,
        "run": run.info,
    }
    atomic_write_json(work_dir / EXPORT_INFO_FILE, record)
