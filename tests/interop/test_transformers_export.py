from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.errors import BadInputError
from gptclf.interop.export import export_run
from gptclf.interop.transformers_export import fold_head_bias, hf_state_dict
from gptclf.model.classifier import apply_scope, parse_scope
from gptclf.rundir import load_run, update_run_info
from gptclf.tasks.calibration import Calibration
from tests.hf_helpers import transformers_module
from tests.inference.test_predict import make_run, tiny_classifier

CLASSES3 = ["ham", "spam", "other"]
#: Texts of different lengths (no empty one: transformers' tokenizer gives no token for it).
TEXTS = [
    "Win a FREE prize now!!!",
    "see you",
    "ok",
    "Call 0800 now, claim your £1000 cash, limited offer",
    "hi there",
]


def calibration(t: float) -> dict:
    return Calibration(
        temperature=t, val_nll_before=1.0, val_nll_after=0.9, val_ece_before=0.2, val_ece_after=0.1
    ).to_dict()


def cli_probs(run: Path, texts: list[str], *args: str) -> torch.Tensor:
    """Probabilities as `gptclf predict` prints them (JSONL, 6 decimals), in the run's class order
    (``args``: more options of predict)."""
    options = ["--device", "cpu", "--precision", "fp32", *args]
    result = CliRunner().invoke(app, ["predict", str(run), *options, *texts])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    return torch.tensor([list(r["probs"].values()) for r in records], dtype=torch.float64)


def export(run: Path, out: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(out), *args])
    return result.exit_code, " ".join(result.stderr.split())


def hf_probs(folder: Path, texts: list[str]) -> torch.Tensor:
    """Probabilities from GPT2ForSequenceClassification on one right-padded batch of all the texts."""
    transformers = transformers_module()
    model, loading = transformers.GPT2ForSequenceClassification.from_pretrained(
        folder, output_loading_info=True
    )
    assert not any(loading.values()), loading  # no missing, unexpected or mismatched tensor
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    assert (batch["input_ids"] == 50256).any()  # the batch is padded
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    return torch.softmax(logits.double(), dim=1)


def pipeline_probs(folder: Path, texts: list[str], classes: list[str]) -> torch.Tensor:
    clf = transformers_module().pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    rows = clf(texts, batch_size=len(texts), truncation=True)  # gptclf keeps max_length tokens
    return torch.tensor([[{d["label"]: d["score"] for d in row}[c] for c in classes] for row in rows])


@pytest.mark.parametrize("temperature", [None, 2.5])
@pytest.mark.slow
def test_transformers_computes_the_probabilities_of_gptclf_predict(
    tmp_path: Path, temperature: float | None
) -> None:
    extra = {"calibration": calibration(temperature)} if temperature else {}
    run = make_run(
        tmp_path / "run", classes=CLASSES3, max_length=12, model=tiny_classifier(CLASSES3), **extra
    )
    assert load_run(run).model.gpt.lm_head.bias.abs().max() > 0.01  # the head bias is really folded
    code, err = export(run, tmp_path / "hf")
    assert code == 0, err
    want = cli_probs(run, TEXTS)
    assert torch.allclose(hf_probs(tmp_path / "hf", TEXTS), want, atol=1e-5)
    assert torch.allclose(pipeline_probs(tmp_path / "hf", TEXTS, CLASSES3).double(), want, atol=1e-5)
    if temperature:  # the temperature matters: without it the numbers differ
        raw = torch.softmax(torch.log(want) * temperature, dim=1)
        assert (raw - want).abs().max() > 1e-3


def test_config_tokenizer_and_card(tmp_path: Path) -> None:
    decision = {"positive": "spam", "threshold": 0.3, "target": "f1", "validation": {"f1": 0.9}}
    run = make_run(tmp_path / "run", max_length=12, calibration=calibration(1.7))
    update_run_info(run, {"decision": decision})
    metrics = {"test": {"n": 18, "accuracy": 0.8765, "macro_f1": 0.75, "per_class": {"spam": {"f1": 0.5}}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    out = export_run(run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["label2id"] == {"ham": 0, "spam": 1}
    assert config["pad_token_id"] == 50256 and (config["n_layer"], config["n_embd"]) == (2, 32)
    assert config["gptclf"]["decision"] == decision and config["gptclf"]["temperature_folded"] == 1.7
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 12 and tokenizer["pad_token"] == "<|endoftext|>"
    assert transformers_module().AutoTokenizer.from_pretrained(out).model_max_length == 12
    card = (out / "README.md").read_text()
    for fact in ("`ham`", "`spam`", "0.8765", "1.7", "threshold", "0.3", "pipeline"):
        assert fact in card, fact
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "README.md",
        ]
    )


def test_a_lora_run_exports_its_merged_weights(tmp_path: Path) -> None:
    model = tiny_classifier()
    apply_scope(model.gpt, parse_scope("lora", lora_rank=2), seed=0)
    with torch.no_grad():
        for name, p in model.gpt.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: not zero
    run = make_run(tmp_path / "run", max_length=12, model=model)
    export_run(run, tmp_path / "hf")
    ids = load_run(run).tokenizer.encode_ordinary_batch(TEXTS[:1])
    with torch.no_grad():
        want = torch.softmax(model.eval()(torch.tensor(ids), torch.tensor([len(ids[0])])).double(), 1)
    assert torch.allclose(hf_probs(tmp_path / "hf", [TEXTS[0], "ok"])[:1], want, atol=1e-5)


def test_other_pooling_is_refused_with_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "pooling": "mean"}))
    code, err = export(run, tmp_path / "hf")
    assert code == 2 and "pools with 'mean'" in err and "last-token" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no folder, no work folder


def test_a_head_whose_bias_cannot_be_folded_is_refused() -> None:
    weight = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # rank 1: not every bias is reachable
    with pytest.raises(BadInputError, match="cannot be folded"):
        fold_head_bias(weight, torch.tensor([0.0, 1.0, 0.0]))
    shift = fold_head_bias(torch.eye(3, 5), torch.tensor([1.0, 2.0, 6.0]))
    assert torch.allclose(
        torch.eye(3, 5, dtype=torch.float64) @ shift, torch.tensor([-2.0, -1.0, 3.0], dtype=torch.float64)
    )


def test_the_state_is_hugging_face_layout(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path / "run"))
    state = hf_state_dict(run)
    gpt = run.model.gpt.state_dict()
    assert "lm_head.weight" not in state and "score.bias" not in state
    assert state["score.weight"].shape == (2, 32)
    assert torch.equal(
        state["transformer.h.0.attn.c_attn.weight"], gpt["transformer.h.0.attn.c_attn.weight"].t()
    )
    assert torch.equal(
        state["transformer.h.1.mlp.c_proj.weight"], gpt["transformer.h.1.mlp.c_proj.weight"].t()
    )
    assert torch.equal(state["transformer.wte.weight"], gpt["transformer.wte.weight"])
