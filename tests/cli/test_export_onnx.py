"""``gptclf export RUN --format onnx`` with the real ONNX export, then ``gptclf predict DIR`` on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.inference.test_predict import make_run

pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install '.[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install '.[onnx]')")

TEXTS = ["Win a FREE prize now!!!", "see you at lunch", "", "ok", "Call 0800 now, claim your £1000 cash"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", max_length=12)


def probs(stdout: str) -> list[list[float]]:
    return [list(json.loads(line)["probs"].values()) for line in stdout.splitlines()]


@pytest.mark.parametrize(("quantize", "tolerance"), [("none", 2e-6), ("int8", 0.05)])
@pytest.mark.slow
def test_export_then_predict_on_the_folder(
    run: Path, tmp_path: Path, quantize: str, tolerance: float
) -> None:
    out = tmp_path / "onnx"
    code, stdout, err = invoke(
        "export", str(run), "--format", "onnx", "--quantize", quantize, "--out", str(out)
    )
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "encoder.json",
        "gptclf-onnx.json",
        "model.onnx",
        "vocab.bpe",
    ]
    record = json.loads((out / "gptclf-onnx.json").read_text())
    assert record["quantize"] == (None if quantize == "none" else quantize)
    code, want, _ = invoke("predict", str(run), *TEXTS)
    code_onnx, got, err = invoke("predict", str(out), *TEXTS)
    assert code == code_onnx == 0, err
    for a, b in zip(probs(want), probs(got), strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


def test_onnx_export_without_onnxruntime_is_one_line_and_leaves_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    code, out, err = invoke("export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx"))
    assert code == 2 and out == ""
    assert "pip install 'gptclf[onnx]'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
