from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.inference.predict import Predictor
from gptclf.interop.export import export_run
from gptclf.rundir import load_run, update_run_info
from tests.conftest import BPE_DIR
from tests.hf_helpers import copy_hf_tokenizer, hf_folder, transformers_module
from tests.inference.test_predict import make_run, tiny_classifier
from tests.interop.test_transformers_export import CLASSES3, TEXTS, calibration, cli_probs


def import_(folder: Path, out: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["import", str(folder), "--out", str(out), *args])
    return result.exit_code, " ".join(result.stderr.split())


@pytest.mark.slow
def test_export_then_import_predicts_the_same(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        classes=CLASSES3,
        max_length=12,
        model=tiny_classifier(CLASSES3),
        calibration=calibration(2.5),
    )
    export_run(run, tmp_path / "hf")
    code, err = import_(tmp_path / "hf", tmp_path / "back")
    assert code == 0, err
    back = load_run(tmp_path / "back")
    assert back.classes == CLASSES3 and back.max_length == 12 and back.info["pooling"] == "last-token"
    assert "calibration" not in back.info  # the temperature is in the weights now
    assert torch.allclose(cli_probs(tmp_path / "back", TEXTS), cli_probs(run, TEXTS), atol=1e-5)
    for name in ("encoder.json", "vocab.bpe"):  # byte-identical to GPT-2's files again
        assert (tmp_path / "back" / name).read_bytes() == (run / name).read_bytes()


@pytest.mark.slow
def test_a_stored_decision_comes_back(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", max_length=12)
    decision = {"positive": "spam", "threshold": 0.3, "target": "f1", "validation": {"f1": 0.9}}
    update_run_info(run, {"decision": decision})
    export_run(run, tmp_path / "hf")
    assert import_(tmp_path / "hf", tmp_path / "back")[0] == 0
    assert load_run(tmp_path / "back").info["decision"] == decision


def test_a_transformers_classifier_imports_and_predicts_its_logits(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    hf = hf_folder(folder, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    copy_hf_tokenizer(folder)
    assert import_(folder, tmp_path / "run")[0] == 0
    run = load_run(tmp_path / "run")
    assert run.classes == ["a", "b", "c"] and run.max_length == 48  # the context: no model_max_length
    assert run.info["model"]["config"]["layer_norm_epsilon"] == 1e-6
    tokenizer = transformers_module().AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = "<|endoftext|>"
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.softmax(hf(**batch).logits, dim=1)
    got = Predictor(run, device="cpu", precision="fp32").probabilities(
        Predictor(run, device="cpu", precision="fp32").logits(TEXTS)
    )
    assert torch.allclose(got, want, atol=1e-5)


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("lm", "is a GPT2LMHeadModel, not a GPT2ForSequenceClassification"),
        ("lm-no-arch", "has no score.weight: this is not a GPT-2 sequence classifier"),
        ("num_labels", "num_labels is 3 but id2label names 2 labels"),
        ("bert", "model_type 'bert' is not 'gpt2'"),
        ("labels-vs-weights", "score.weight has shape [2, 32] but config.json has 3 labels"),
        ("tokenizer", "is not GPT-2's byte-level BPE"),
        ("no-tokenizer", "has no vocab.json or merges.txt"),
        ("exists", "is not empty: choose another folder, or pass --force"),
    ],
)
def test_bad_folders_are_one_line_and_write_nothing(tmp_path: Path, setup: str, message: str) -> None:
    folder, out = tmp_path / "hf", tmp_path / "out"
    hf_folder(folder, "GPT2LMHeadModel" if setup.startswith("lm") else "GPT2ForSequenceClassification")
    copy_hf_tokenizer(folder)
    if setup == "lm-no-arch":
        _edit_config(folder, architectures=None)
    elif setup == "num_labels":
        _edit_config(folder, num_labels=3, id2label={"0": "a", "1": "b"})
    elif setup == "bert":
        _edit_config(folder, model_type="bert", architectures=["BertForSequenceClassification"])
    elif setup == "labels-vs-weights":
        _edit_config(folder, id2label={"0": "a", "1": "b", "2": "c"})
    elif setup == "tokenizer":
        vocab = json.loads((folder / "vocab.json").read_text())
        vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
        (folder / "vocab.json").write_text(json.dumps(vocab))
    elif setup == "no-tokenizer":
        (folder / "merges.txt").unlink()
        (folder / "vocab.json").unlink()
    elif setup == "exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    code, err = import_(folder, out)
    assert code == 2 and message in err, err
    assert err.count("error:") == 1
    if setup == "exists":
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["hf", *(["out"] if setup == "exists" else [])]
    )


@pytest.mark.slow
def test_force_replaces_an_old_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", max_length=12)
    export_run(run, tmp_path / "hf")
    shutil.copytree(run, tmp_path / "out")
    assert import_(tmp_path / "hf", tmp_path / "out", "--force")[0] == 0
    assert load_run(tmp_path / "out").info["weights"] == "imported"


def test_a_tokenizer_in_other_formatting_is_read_by_content(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    hf_folder(folder)
    copy_hf_tokenizer(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), "utf-8")
    merges = (folder / "merges.txt").read_text(encoding="utf-8")
    (folder / "merges.txt").write_text(merges.rstrip("\n"), encoding="utf-8")  # no final newline
    assert import_(folder, tmp_path / "run")[0] == 0
    for name in ("encoder.json", "vocab.bpe"):
        assert (tmp_path / "run" / name).read_bytes() == (BPE_DIR / name).read_bytes()


# --- a truncated model.safetensors, long-text settings, labels holding the separator -------------


@pytest.mark.parametrize("verb", ["import", "finetune", "download"])
def test_a_truncated_safetensors_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, verb: str) -> None:
    folder, out = tmp_path / "hf", tmp_path / "out"
    hf_folder(folder)
    copy_hf_tokenizer(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # the header is whole: only the data is cut
    args = {
        "import": ["import", str(folder), "--out", str(out)],
        "finetune": ["finetune", "--model", str(folder), "--out", str(out)],
        "download": ["download", "--no-tokenizer", "--model", str(folder)],
    }[verb]
    result = CliRunner().invoke(app, args)
    err = " ".join(result.stderr.split())
    assert result.exit_code == 2, err
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{weights} is truncated" in err and "download or save it again" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"] and result.stdout == ""


@pytest.mark.slow
def test_long_text_settings_survive_export_and_import(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", classes=CLASSES3, max_length=12, model=tiny_classifier(CLASSES3))
    window = {"mode": "window", "head_tokens": 3, "stride": 4, "aggregate": "max"}
    update_run_info(run, {"long_texts": window})
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("gptclf: warning:")]
    assert len(warnings) == 1  # plain transformers truncates: said once
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["gptclf"]["long_texts"] == window
    assert "config.json's `gptclf.long_texts`" in (tmp_path / "hf" / "README.md").read_text()
    code, err = import_(tmp_path / "hf", tmp_path / "back")
    assert code == 0, err
    assert load_run(tmp_path / "back").info["long_texts"] == window
    long_text = "the river and the stone " * 12 + "win a free prize now"  # far past 12 tokens
    texts = [long_text, *TEXTS]
    want = cli_probs(run, texts)
    assert torch.allclose(cli_probs(tmp_path / "back", texts), want, atol=1e-5)
    assert not torch.allclose(cli_probs(run, texts, "--long-texts", "truncate")[0], want[0], atol=1e-3)


def test_a_truncating_run_exports_without_a_warning(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", max_length=12)
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert "long_texts" not in json.loads((tmp_path / "hf" / "config.json").read_text())["gptclf"]


@pytest.mark.slow
def test_a_multi_label_folder_whose_label_holds_the_separator_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    hf_folder(folder, num_labels=2, id2label={0: "x|y", 1: "z"}, problem_type="multi_label_classification")
    copy_hf_tokenizer(folder)
    code, err = import_(folder, tmp_path / "out")
    assert code == 2 and "labels 'x|y' hold the separator '|'" in err and err.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    config = json.loads((folder / "config.json").read_text())  # a separator the labels do not hold
    (folder / "config.json").write_text(json.dumps({**config, "gptclf": {"label_sep": ";"}}))
    code, err = import_(folder, tmp_path / "out")
    assert code == 0, err
    assert load_run(tmp_path / "out").info["data"]["label_sep"] == ";"


@pytest.mark.parametrize("where", ["itself", "inside", "holding"])
def test_an_out_that_would_replace_or_write_into_the_source_is_refused(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "parent" / "hf"
    folder.mkdir(parents=True)
    hf_folder(folder, num_labels=2, id2label={0: "a", 1: "b"})
    copy_hf_tokenizer(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = {"itself": folder, "inside": folder / "run", "holding": tmp_path / "parent"}[where]
    code, err = import_(folder, out, "--force")
    assert code == 2 and "which this command reads" in err, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the model is untouched
