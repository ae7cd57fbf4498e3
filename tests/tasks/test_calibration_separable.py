"""Texts the model classifies perfectly: `calibrate` and `finetune` keep T = 1 (and say why) instead of
the search's floor, and a precision target keeps every text on its side instead of admitting false
positives down to the precision asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.inference.predict import Predictor
from gptclf.rundir import load_run
from gptclf.tasks.calibration import T_BOUNDS
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, synthetic_texts
from tests.inference.test_predict import make_run

CLASSES = ["ham", "spam"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def spam_margins(run: Path, texts: list[str]) -> torch.Tensor:
    """logit(spam) - logit(ham) of each text under the run's model."""
    z = Predictor(load_run(run), device="cpu", precision="fp32").logits(texts)
    return z[:, 1] - z[:, 0]


def separated_table(run: Path, n: int = 300, margin: float = 0.05) -> pd.DataFrame:
    """Texts labelled by what the run's model says, leaving out those it is nearly unsure of:
    the model classifies every one of them right."""
    texts = synthetic_texts(n, CLASSES, seed=1)["text"].tolist()
    d = spam_margins(run, texts)
    keep = d.abs() > margin
    table = pd.DataFrame(
        {"text": [t for t, k in zip(texts, keep.tolist(), strict=True) if k],
         "label": ["spam" if v > 0 else "ham" for v in d[keep].tolist()]}
    )  # fmt: skip
    return table


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", CLASSES, max_length=32)


@pytest.fixture
def separated(run: Path, tmp_path: Path) -> Path:
    table = separated_table(run)
    # Enough positives that precision 0.97 survives false positives: 33 spam and one ham is 0.97.
    assert (table["label"] == "spam").sum() >= 40 and (table["label"] == "ham").sum() >= 40
    path = tmp_path / "separated.csv"
    table.to_csv(path, index=False)
    return path


def test_calibrate_keeps_t_1_on_texts_the_model_gets_all_right(run: Path, separated: Path) -> None:
    code, out, err = invoke("calibrate", str(run), "--input", str(separated), "--json", "--device", "cpu")
    assert code == 0, err
    record = json.loads(out)["calibration"]
    assert record["temperature"] == 1.0 != T_BOUNDS[0]
    assert record["val_nll_after"] == record["val_nll_before"]
    assert record["note"] and json.loads((run / "run.json").read_text())["calibration"] == record
    # The reason is told to people too, on stdout beside the temperature.
    code, out, err = invoke("calibrate", str(run), "--input", str(separated), "--device", "cpu")
    assert code == 0 and record["note"] in " ".join(out.split()), (out, err)


@pytest.mark.slow
def test_a_precision_target_on_separated_texts_admits_no_false_positive(run: Path, separated: Path) -> None:
    code, out, err = invoke(
        "calibrate", str(run), "--input", str(separated), "--positive", "spam",
        "--target", "precision=0.97", "--json", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    decision = json.loads(out)["decision"]
    assert decision["validation"]["precision"] == decision["validation"]["recall"] == 1.0
    assert "note" not in decision
    table = pd.read_csv(separated)
    p_spam = torch.softmax(Predictor(load_run(run), device="cpu", precision="fp32").logits(
        table["text"].tolist()), dim=1)[:, 1]  # fmt: skip
    is_spam = torch.tensor((table["label"] == "spam").tolist())
    assert p_spam[~is_spam].max() < decision["threshold"] <= p_spam[is_spam].min()
    # evaluate and predict apply it: every text keeps its label.
    code, out, err = invoke("evaluate", str(run), "--input", str(separated), "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["at_threshold"]["accuracy"] == 1.0
    code, out, err = invoke(
        "predict", str(run), *table["text"].tolist(), "--format", "jsonl", "--device", "cpu"
    )
    assert code == 0, err
    assert [json.loads(line)["label"] for line in out.splitlines()] == table["label"].tolist()


def test_a_target_met_by_labelling_everything_positive_says_so(run: Path, tmp_path: Path) -> None:
    table = separated_table(run)
    d = spam_margins(run, table["text"].tolist())
    table.loc[int(d.argmin()), "label"] = "spam"  # the least spam-like text is spam: recall 1 needs all
    path = tmp_path / "flipped.csv"
    table.to_csv(path, index=False)
    args = ("calibrate", str(run), "--input", str(path), "--positive", "spam", "--target", "recall=1")
    code, out, err = invoke(*args, "--json", "--device", "cpu")
    assert code == 0, err
    decision = json.loads(out)["decision"]
    assert decision["validation"]["recall"] == 1.0
    assert decision["validation"]["precision"] == pytest.approx((table["label"] == "spam").mean())
    assert decision["note"] and json.loads((run / "run.json").read_text())["decision"] == decision
    code, out, err = invoke(*args, "--device", "cpu")
    assert code == 0 and decision["note"] in " ".join(out.split()), (out, err)


@pytest.mark.slow
def test_finetune_keeps_t_1_when_validation_is_classified_perfectly(tmp_path: Path) -> None:
    """A learning rate so small that the kept weights are the initial ones, and data labelled by
    what those weights say: the validation split is classified perfectly."""
    from gptclf.data.prepare import prepare

    install_tokenizer()
    tiny = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu", "--epochs", "1",
            "--lr", "1e-9", "--max-length", "32"]  # fmt: skip

    def folder(name: str, table: pd.DataFrame) -> Path:
        source, out = tmp_path / f"{name}.csv", tmp_path / name
        table.to_csv(source, index=False)
        prepare(out, input_path=source, classes=CLASSES, split="0.6,0.2,0.2", seed=0)
        return out

    first = tmp_path / "first"
    placeholder = folder("placeholder", synthetic_texts(60, CLASSES, seed=0))
    code, _, err = invoke("finetune", "--data", str(placeholder), "--out", str(first), *tiny)
    assert code == 0, err
    data = folder("separated", separated_table(first, n=200, margin=0.01))
    out = tmp_path / "run"
    code, stdout, err = invoke(
        "finetune", "--data", str(data), "--out", str(out), *tiny,
        "--positive", "spam", "--target", "precision=0.97", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary, info = json.loads(stdout), json.loads((out / "run.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["validation"]["accuracy"] == 1.0
    calibration = info["calibration"]
    assert calibration["temperature"] == 1.0 and calibration["note"]
    assert summary["calibration"] == calibration and calibration["note"] in err
    assert info["decision"]["validation"]["precision"] == info["decision"]["validation"]["recall"] == 1.0
