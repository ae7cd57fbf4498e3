"""A multi-label run exported to transformers (problem_type multi_label_classification) and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.interop.export import export_run
from gptclf.rundir import load_run, update_run_info
from tests.hf_helpers import transformers_module
from tests.inference.test_predict import make_run, tiny_classifier
from tests.interop.test_transformers_export import CLASSES3, TEXTS, cli_probs

THRESHOLDS = {"ham": {"threshold": 0.4, "chosen": True}, "spam": {"threshold": 0.5, "chosen": False},
              "other": {"threshold": 0.6, "chosen": True}}  # fmt: skip


def multi_run(root: Path) -> Path:
    model = tiny_classifier(CLASSES3)
    run = make_run(root / "run", classes=CLASSES3, max_length=12, model=model)
    update_run_info(run, {"multi_label": True, "thresholds": THRESHOLDS})
    return run


@pytest.mark.slow
def test_the_pipeline_with_a_sigmoid_gives_gptclf_predicts_probabilities(tmp_path: Path) -> None:
    run = multi_run(tmp_path)
    assert load_run(run).model.gpt.lm_head.bias.abs().max() > 0.01  # the bias fold must keep it whole
    export_run(run, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["gptclf"]["thresholds"] == THRESHOLDS and config["gptclf"]["multi_label"] is True
    assert config["gptclf"]["label_sep"] == "|"  # what joins its labels in files; import restores it
    want = cli_probs(run, TEXTS)  # independent sigmoids: rows need not sum to 1
    assert (want.sum(dim=1) - 1).abs().max() > 1e-3
    clf = transformers_module().pipeline(
        "text-classification",
        model=str(tmp_path / "hf"),
        top_k=None,
        function_to_apply="sigmoid",
        device="cpu",
    )
    rows = clf(TEXTS, batch_size=len(TEXTS), truncation=True)
    got = torch.tensor([[{d["label"]: d["score"] for d in row}[c] for c in CLASSES3] for row in rows])
    assert torch.allclose(got.double(), want, atol=1e-5)


@pytest.mark.slow
def test_import_brings_back_a_multi_label_run(tmp_path: Path) -> None:
    run = multi_run(tmp_path)
    export_run(run, tmp_path / "hf")
    result = CliRunner().invoke(app, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")])
    assert result.exit_code == 0, result.stderr
    back = load_run(tmp_path / "back")
    assert back.task.name == "multi-label" and back.info["thresholds"] == THRESHOLDS
    assert back.info["data"]["label_sep"] == "|"
    assert torch.allclose(cli_probs(tmp_path / "back", TEXTS), cli_probs(run, TEXTS), atol=1e-5)


def test_the_model_card_says_sigmoid_and_lists_the_thresholds(tmp_path: Path) -> None:
    run = multi_run(tmp_path)
    export_run(run, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "function_to_apply='sigmoid'" in card and "`ham` 0.4" in card and "`other` 0.6" in card
