from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.errors import BadInputError
from gptclf.fileio import sha256_file
from gptclf.inference.predict import Predictor
from gptclf.rundir import LoadedRun, load_run
from gptclf.tasks.calibration import Calibration
from tests.inference.test_predict import MIXED, make_run, tiny_classifier

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install '.[onnx]')")

# After the skips: the modules need no extra to import, but their tests do.
from gptclf.engines.onnx_build import export_onnx  # noqa: E402
from gptclf.engines.onnx_folder import EXPORT_INFO_FILE, ONNX_FILE, is_export, read_export  # noqa: E402

#: A temperature far from 1, so that probabilities that ignored it would differ.
TEMPERATURE = 2.5


def calibrated_run(run_dir: Path, pooling: str = "last-token") -> LoadedRun:
    calibration = Calibration(TEMPERATURE, 0.7, 0.5, 0.2, 0.1, data={"n": 10}).to_dict()
    make_run(run_dir, max_length=40, model=tiny_classifier(seed=3), calibration=calibration)
    if pooling != "last-token":  # the pooling is run.json's: the same weights read another position
        info = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**info, "pooling": pooling}))
    return load_run(run_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> LoadedRun:
    return calibrated_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def exported(run: LoadedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_onnx(run, out, quantize=None)
    return out


@pytest.fixture(scope="module")
def exported_int8(run: LoadedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-int8")
    export_onnx(run, out, quantize="int8")
    return out


def test_export_writes_the_graph_the_record_and_the_tokenizer(run: LoadedRun, exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        [ONNX_FILE, EXPORT_INFO_FILE, "encoder.json", "vocab.bpe"]
    )
    assert is_export(exported) and not is_export(run.path)
    graph = onnx.load(str(exported / ONNX_FILE)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert list(dims) == ["input_ids", "lengths"]
    batch, seq = dims["input_ids"]
    assert isinstance(batch, str) and isinstance(seq, str) and dims["lengths"] == [batch]  # dynamic
    out = graph.output[0]
    assert out.name == "logits"
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == [batch, 2]
    record = json.loads((exported / EXPORT_INFO_FILE).read_text())
    assert record["quantize"] is None and record["run"]["classes"] == run.classes
    assert record["run"]["calibration"]["temperature"] == TEMPERATURE
    loaded = read_export(exported)
    assert (loaded.classes, loaded.max_length, loaded.pad_length) == (run.classes, 40, None)


def test_onnx_runtime_matches_torch_on_one_batch_of_mixed_lengths_with_the_temperature(
    run: LoadedRun, exported: Path
) -> None:
    torch_side = Predictor(run, device="cpu", precision="fp32", batch_size=len(MIXED))
    onnx_side = Predictor(read_export(exported), engine="onnx", batch_size=len(MIXED))
    want, got = torch_side.logits(MIXED), onnx_side.logits(MIXED)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert onnx_side.decider.temperature == TEMPERATURE
    p_want = [p.probs for p in torch_side.predict(MIXED)]
    p_got = [p.probs for p in onnx_side.predict(MIXED)]
    for a, b in zip(p_want, p_got, strict=True):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)
    raw = torch.softmax(want, dim=1)[:, 1].tolist()  # what would show if the temperature were lost
    assert any(abs(p["spam"] - r) > 1e-3 for p, r in zip(p_got, raw, strict=True))


@pytest.mark.slow
def test_a_run_is_exported_on_the_fly_for_the_onnx_engine(run: LoadedRun) -> None:
    want = Predictor(run, device="cpu", precision="fp32").logits(MIXED)
    got = Predictor(run, engine="onnx").logits(MIXED)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "last-position"])
@pytest.mark.slow
def test_other_poolings_export_exactly(tmp_path: Path, pooling: str) -> None:
    run = calibrated_run(tmp_path / "run", pooling)
    (tmp_path / "out").mkdir()
    export_onnx(run, tmp_path / "out", quantize=None)
    want = Predictor(run, device="cpu", precision="fp32", batch_size=4).logits(MIXED)
    got = Predictor(read_export(tmp_path / "out"), batch_size=4, engine="onnx").logits(MIXED)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_int8_export_is_smaller_and_agrees_with_fp32(
    run: LoadedRun, exported: Path, exported_int8: Path
) -> None:
    record = json.loads((exported_int8 / EXPORT_INFO_FILE).read_text())
    assert record["quantize"] == "int8"
    assert sorted(p.name for p in exported_int8.iterdir()) == sorted(p.name for p in exported.iterdir())
    graph = onnx.load(str(exported_int8 / ONNX_FILE)).graph
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    texts = [f"text number {i} " + "word " * (i % 9) for i in range(60)] + MIXED
    want = Predictor(run, device="cpu", precision="fp32").predict(texts)
    got = Predictor(read_export(exported_int8), engine="onnx").predict(texts)
    pairs = list(zip(want, got, strict=True))
    agree = np.mean([a.label == b.label for a, b in pairs])
    gap = max(abs(a.probs[c] - b.probs[c]) for a, b in pairs for c in a.probs)
    assert agree >= 0.9 and gap < 0.05, (agree, gap)
    assert gap > 0  # it is another model: int8 weights


def test_export_refuses_an_unknown_quantization(run: LoadedRun, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="--quantize"):
        export_onnx(run, tmp_path, quantize="int4")
    assert list(tmp_path.iterdir()) == []


def copy_export(src: Path, dst: Path, **record: object) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / EXPORT_INFO_FILE).read_text())
    (dst / EXPORT_INFO_FILE).write_text(json.dumps({**data, **record}))
    return dst


def test_a_bad_record_is_refused_in_one_line(exported: Path, tmp_path: Path) -> None:
    info = json.loads((exported / EXPORT_INFO_FILE).read_text())["run"]
    cases = {
        "newer": ({"format_version": 99}, "format_version 99"),
        "other": ({"format": "something"}, "not a gptclf ONNX export"),
        "quant": ({"quantize": "int4"}, "quantize must be"),
        "inputs": ({"onnx": {"inputs": ["x"], "output": "logits"}}, "onnx.inputs"),
        "run": ({"run": {**info, "max_length": 0}}, "run.max_length"),
    }
    for name, (change, phrase) in cases.items():
        with pytest.raises(BadInputError, match=phrase) as err:
            read_export(copy_export(exported, tmp_path / name, **change))
        assert "\n" not in str(err.value)
    broken = copy_export(exported, tmp_path / "broken")
    (broken / EXPORT_INFO_FILE).write_text("{not json")
    with pytest.raises(BadInputError, match="unreadable"):
        read_export(broken)
    (copy_export(exported, tmp_path / "nomodel") / ONNX_FILE).unlink()
    with pytest.raises(BadInputError, match=r"model\.onnx is missing"):
        read_export(tmp_path / "nomodel")


def test_a_record_naming_other_classes_than_the_graph_has_is_refused(exported: Path, tmp_path: Path) -> None:
    info = json.loads((exported / EXPORT_INFO_FILE).read_text())["run"]
    other = copy_export(exported, tmp_path / "three", run={**info, "classes": ["a", "b", "c"]})
    with pytest.raises(BadInputError, match="2 logits per text but the export record names 3 classes"):
        Predictor(read_export(other), engine="onnx")


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.slow
def test_a_model_over_the_protobuf_limit_keeps_its_weights_beside_the_graph(
    run: LoadedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantize: str | None
) -> None:
    import gptclf.engines.onnx_build as module

    monkeypatch.setattr(module, "_PROTOBUF_LIMIT", 0)  # as if the model were over 2 GB
    export_onnx(run, tmp_path, quantize=quantize)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["encoder.json", EXPORT_INFO_FILE, ONNX_FILE, "model.onnx.data", "vocab.bpe"])
    want = Predictor(run, device="cpu", precision="fp32").logits(MIXED)
    got = Predictor(read_export(tmp_path), engine="onnx").logits(MIXED)
    assert torch.allclose(got, want, atol=1e-4 if quantize is None else 0.1, rtol=0)


@pytest.mark.slow
def test_the_record_keeps_the_graphs_sha256_and_a_swapped_graph_is_refused(
    exported: Path, exported_int8: Path, tmp_path: Path
) -> None:
    record = json.loads((exported / EXPORT_INFO_FILE).read_text())
    assert record["onnx"]["sha256"] == sha256_file(exported / ONNX_FILE)
    swapped = copy_export(exported, tmp_path / "swapped")  # another graph with the same two classes
    shutil.copyfile(exported_int8 / ONNX_FILE, swapped / ONNX_FILE)
    with pytest.raises(BadInputError, match="damaged or was replaced") as err:
        read_export(swapped)
    assert "\n" not in str(err.value) and str(swapped / ONNX_FILE) in str(err.value)
    result = CliRunner().invoke(app, ["predict", str(swapped), "hello"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "damaged or was replaced" in " ".join(result.stderr.split())


def test_a_record_from_before_the_sha256_is_read_as_before(exported: Path, tmp_path: Path) -> None:
    record = json.loads((exported / EXPORT_INFO_FILE).read_text())
    old = {k: v for k, v in record["onnx"].items() if k not in ("sha256", "data_sha256")}
    assert read_export(copy_export(exported, tmp_path / "old", onnx=old)).classes == record["run"]["classes"]
    with pytest.raises(BadInputError, match=r"onnx\.sha256 must be a sha256"):
        read_export(copy_export(exported, tmp_path / "bad", onnx={**old, "sha256": "abc"}))
