"""`gptclf calibrate`, and the calibration predict and evaluate apply (--no-calibration)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.inference.predict import Predictor
from gptclf.rundir import load_run
from tests.conftest import REPO
from tests.finetune_helpers import prepared_folder
from tests.inference.test_predict import make_run, tiny_classifier

CLASSES = ["ham", "spam"]
TEXTS = ["win a prize now", "dinner at eight", "apple river prize", "stone cloud dinner"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def over_confident_run(root: Path, data: Path | None) -> Path:
    """A random tiny model whose head is scaled up 50 times: sure of itself, often wrong."""
    model = tiny_classifier(CLASSES)
    with torch.no_grad():
        model.gpt.lm_head.weight.mul_(50.0)
    recorded = {"dir": str(data), "fingerprint": None} if data is not None else None
    return make_run(root / "run", CLASSES, max_length=32, model=model, data=recorded)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return prepared_folder(tmp_path, CLASSES, n=120)


@pytest.fixture
def run(tmp_path: Path, data: Path) -> Path:
    return over_confident_run(tmp_path, data)


def raw_logits(run: Path, texts: list[str]) -> torch.Tensor:
    return Predictor(load_run(run), device="cpu", precision="fp32").logits(texts)


def predicted(run: Path, *flags: str) -> list[dict]:
    code, out, err = invoke("predict", str(run), *TEXTS, "--format", "jsonl", "--device", "cpu", *flags)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.slow
def test_calibrate_refits_on_validation_and_rewrites_only_run_json(run: Path) -> None:
    before = json.loads((run / "run.json").read_text())
    weights = (run / "model.safetensors").read_bytes()
    code, out, err = invoke("calibrate", str(run), "--json", "--device", "cpu")
    assert code == 0, err
    record = json.loads(out)["calibration"]
    assert record["method"] == "temperature" and record["temperature"] > 1.0
    assert record["val_nll_after"] < record["val_nll_before"]
    assert record["val_ece_after"] < record["val_ece_before"]
    assert record["data"]["split"] == "validation" and record["data"]["n"] > 0
    after = json.loads((run / "run.json").read_text())
    assert after == {**before, "calibration": record}  # nothing else changed
    assert (run / "model.safetensors").read_bytes() == weights
    load_run(run, verify=True)  # the recorded weights_sha256 still holds
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary file
    # Without --json: the numbers for people, on stdout.
    code, out, err = invoke("calibrate", str(run), "--device", "cpu")
    assert code == 0 and "temperature" in out and "NLL" in out and "ECE" in out, err


@pytest.mark.slow
def test_predict_applies_the_stored_temperature_and_no_calibration_shows_raw(run: Path) -> None:
    raw = predicted(run)  # not calibrated yet: raw probabilities
    assert invoke("calibrate", str(run), "--device", "cpu")[0] == 0
    t = json.loads((run / "run.json").read_text())["calibration"]["temperature"]
    calibrated, uncalibrated = predicted(run), predicted(run, "--no-calibration")
    logits = raw_logits(run, TEXTS)
    for rows, temperature in ((calibrated, t), (uncalibrated, 1.0)):
        expected = torch.softmax(logits / temperature, dim=1)
        for row, probs in zip(rows, expected.tolist(), strict=True):
            assert [row["probs"][c] for c in CLASSES] == pytest.approx(probs, abs=1e-6)
    assert uncalibrated == raw
    assert [r["label"] for r in calibrated] == [r["label"] for r in raw]  # the argmax is kept
    assert (
        max(abs(a["probs"]["spam"] - b["probs"]["spam"]) for a, b in zip(calibrated, raw, strict=True)) > 0.05
    )


@pytest.mark.slow
def test_evaluate_reports_the_calibrated_probabilities_and_says_so(run: Path) -> None:
    assert invoke("calibrate", str(run), "--device", "cpu")[0] == 0
    stored = json.loads((run / "run.json").read_text())["calibration"]
    args = ("evaluate", str(run), "--split", "validation", "--json", "--device", "cpu")
    code, out, err = invoke(*args)
    assert code == 0 and "calibrated probabilities" in err, err
    calibrated = json.loads(out)
    code, out, err = invoke(*args, "--no-calibration")
    assert code == 0 and "raw probabilities (--no-calibration)" in err, err
    raw = json.loads(out)
    assert calibrated["calibration"] == {"applied": True, "temperature": stored["temperature"]}
    assert raw["calibration"] == {"applied": False, "temperature": stored["temperature"]}
    assert calibrated["loss"] == pytest.approx(stored["val_nll_after"], rel=1e-5)
    assert raw["loss"] == pytest.approx(stored["val_nll_before"], rel=1e-5)
    assert calibrated["ece"] == pytest.approx(stored["val_ece_after"], abs=1e-6)
    assert calibrated["accuracy"] == raw["accuracy"] and calibrated["roc_auc"] == raw["roc_auc"]


def test_calibrate_on_a_labelled_file(run: Path, data: Path, tmp_path: Path) -> None:
    source = tmp_path / "held_out.csv"
    (data / "test.csv").rename(source)  # any labelled CSV
    code, out, err = invoke("calibrate", str(run), "--input", str(source), "--json", "--device", "cpu")
    assert code == 0, err
    record = json.loads(out)["calibration"]
    assert record["data"]["input"] == str(source) and record["temperature"] > 1.0
    assert json.loads((run / "run.json").read_text())["calibration"] == record


def test_a_failed_write_leaves_run_json_as_it_was(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (run / "run.json").read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    code, _, err = invoke("calibrate", str(run), "--device", "cpu")
    assert code == 1 and "Traceback" not in err, err
    assert (run / "run.json").read_bytes() == before
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def bad_label_file(tmp_path: Path) -> list[str]:
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nhello,ham\nwin,eggs\n", encoding="utf-8")
    return ["--input", str(path)]


def empty_file(tmp_path: Path) -> list[str]:
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n", encoding="utf-8")
    return ["--input", str(path)]


@pytest.mark.parametrize(
    ("make_args", "phrase"),
    [
        (bad_label_file, "'eggs'"),
        (empty_file, "no rows"),
        (lambda p: ["--split", "dev"], "unknown split 'dev'"),
        (lambda p: ["--text-column", "text"], "--text-column only apply to --input FILE"),
        (lambda p: ["--input", str(p / "absent.csv")], "absent.csv"),
        (lambda p: ["--input", str(p / "x.csv"), "--split", "test"], "--input FILE replaces --split"),
        (lambda p: ["--data", str(p / "nowhere")], "nowhere"),
    ],
    ids=["unknown label", "empty file", "unknown split", "stray column", "missing file", "both", "no data"],
)
def test_bad_input_is_one_line_exit_2_and_run_json_untouched(
    run: Path, tmp_path: Path, make_args: object, phrase: str
) -> None:
    before = (run / "run.json").read_bytes()
    code, out, err = invoke("calibrate", str(run), "--device", "cpu", *make_args(tmp_path))  # type: ignore[operator]
    assert code == 2 and phrase in err and "Traceback" not in err, err
    assert out == "" and (run / "run.json").read_bytes() == before


def test_a_run_without_validation_data_is_refused(tmp_path: Path) -> None:
    from gptclf.data.prepare import prepare
    from tests.finetune_helpers import synthetic_texts

    source = tmp_path / "source.csv"
    synthetic_texts(60, CLASSES, 0).to_csv(source, index=False)
    folder = tmp_path / "no_validation"
    prepare(folder, input_path=source, classes=CLASSES, split="0.8,0,0.2", seed=0)
    for root, data in ((tmp_path / "a", folder), (tmp_path / "b", None)):
        run = over_confident_run(root, data)
        before = (run / "run.json").read_bytes()
        code, _, err = invoke("calibrate", str(run), "--device", "cpu")
        assert code == 2, err
        wanted = "validation split" if data is not None else "records no prepared data folder"
        assert wanted in err and "Traceback" not in err, err
        assert (run / "run.json").read_bytes() == before


def test_an_old_run_without_calibration_predicts_raw_probabilities(tmp_path: Path) -> None:
    fixture = REPO / "tests" / "fixtures" / "run-v1"
    run = shutil.copytree(fixture, tmp_path / "run")
    assert "calibration" not in json.loads((run / "run.json").read_text())
    predictor = Predictor(load_run(run), device="cpu", precision="fp32")
    assert predictor.decider.temperature == 1.0
    logits = predictor.logits(TEXTS)
    assert torch.equal(predictor.probabilities(logits), torch.softmax(logits, dim=1))
    assert predicted(run) == predicted(run, "--no-calibration")
    code, out, err = invoke("evaluate", str(run), "--json", "--device", "cpu")
    assert code == 0 and "calibration" not in json.loads(out) and "stores no calibration" in err, err


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_a_read_only_or_full_disk_is_one_line_before_the_fit(run: Path, tmp_path: Path, disk: str) -> None:
    import subprocess

    from tests.fault_helpers import fill, tmpfs

    with tmpfs(tmp_path / "disk", "16m") as mount:
        copy = shutil.copytree(run, mount / "run")
        before = (copy / "run.json").read_bytes()
        if disk == "full":
            fill(mount)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        code, out, err = invoke("calibrate", str(copy), "--device", "cpu")
        assert (copy / "run.json").read_bytes() == before
        assert [p.name for p in copy.iterdir() if p.name.startswith(".")] == []
    assert code == (1 if disk == "full" else 2), err
    assert "Traceback" not in err and err.count("gptclf: error") == 1
    assert "fitting the temperature" not in err and out == ""  # refused before the model ran
