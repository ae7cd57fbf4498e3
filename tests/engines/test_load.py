from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gptclf.engines.load import load_engine, quantize_torch_int8
from gptclf.engines.onnx_folder import OnnxExport
from gptclf.errors import BadInputError
from gptclf.inference.predict import Predictor
from tests.inference.test_predict import MIXED, memory_run

TEXTS = [f"text {i} " + "abc " * (i % 7) for i in range(80)] + MIXED


def test_torch_int8_quantizes_a_copy_and_agrees_with_fp32(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    quantized = quantize_torch_int8(run.model)
    linear = [m for m in quantized.modules() if type(m) is nn.Linear]
    assert linear == []  # every Linear was replaced by its dynamic int8 version
    assert type(run.model.gpt.lm_head) is nn.Linear  # the run's own model is untouched
    assert quantized.gpt.transformer.wte.weight is run.model.gpt.transformer.wte.weight  # shared, not copied
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.ao.quantization.quantize_dynamic(run.model, {nn.Linear}, dtype=torch.qint8)
    ids, lengths = torch.randint(0, 256, (3, 9)), torch.tensor([9, 4, 1])
    with torch.inference_mode():
        assert torch.equal(quantized(ids, lengths), reference(ids, lengths))  # torch's own conversion
    want = list(Predictor(run, device="cpu", precision="fp32").predict(TEXTS))
    got = list(Predictor(run, quantize="int8").predict(TEXTS))
    agree = np.mean([a.label == b.label for a, b in zip(want, got, strict=True)])
    gap = max(abs(a.probs[c] - b.probs[c]) for a, b in zip(want, got, strict=True) for c in a.probs)
    assert agree >= 0.9 and 0 < gap < 0.05, (agree, gap)


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ({"quantize": "int8", "device": "cuda"}, "--quantize int8 runs on the CPU only"),
        ({"quantize": "int8", "device": "mps"}, "--quantize int8 runs on the CPU only"),
        ({"quantize": "int8", "precision": "bf16"}, "--quantize int8 runs in fp32 only"),
        ({"quantize": "int8", "precision": "fp16"}, "--quantize int8 runs in fp32 only"),
        ({"engine": "onnx", "device": "cuda:0"}, "--engine onnx runs on the CPU only"),
        ({"engine": "onnx", "precision": "bf16"}, "--engine onnx runs in fp32 only"),
        ({"engine": "tensorrt"}, "unknown --engine 'tensorrt'"),
        ({"quantize": "int4"}, "unknown --quantize 'int4'"),
    ],
)
def test_combinations_that_cannot_run_are_refused_in_one_line(
    tmp_path: Path, options: dict[str, str], phrase: str
) -> None:
    with pytest.raises(BadInputError, match=phrase) as err:
        load_engine(memory_run(tmp_path), **options)
    assert "\n" not in str(err.value)


def test_onnx_engine_without_onnxruntime_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(BadInputError, match=r"pip install 'gptclf\[onnx\]'"):
        load_engine(memory_run(tmp_path), engine="onnx")


def test_an_export_folder_runs_with_the_onnx_engine_only(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    export = OnnxExport(tmp_path, {"quantize": None}, run.info, run.tokenizer)
    with pytest.raises(BadInputError, match="--engine onnx only"):
        load_engine(export, engine="torch")
    with pytest.raises(BadInputError, match="--quantize applies to a run directory"):
        load_engine(export, engine="onnx", quantize="int8")


def test_the_torch_engine_is_the_run_model_itself(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    model, device, precision = load_engine(run, device="cpu", precision="fp32")
    assert model is run.model and device == torch.device("cpu") and precision.name == "fp32"
