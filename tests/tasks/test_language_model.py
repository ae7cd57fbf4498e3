"""The language-model task and its model: next-token sums per block, the loss, metrics and scopes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptclf.errors import BadInputError
from gptclf.model.classifier import parse_scope
from gptclf.model.gpt import build_model
from gptclf.model.lm import NextToken, apply_lm_scope
from gptclf.tasks.language_model import LanguageModel
from tests.finetune_helpers import TINY


def _reference(model: NextToken, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy and tokens right of one unpadded block, the long way."""
    with torch.no_grad():
        logits = model.gpt(ids[None])[0, :-1]
    ce = F.cross_entropy(logits, ids[1:], reduction="sum")
    return float(ce), int((logits.argmax(-1) == ids[1:]).sum())


def test_next_token_sums_are_the_blocks_cross_entropy_and_padding_changes_nothing() -> None:
    model = NextToken(build_model(TINY, seed=1)).eval()
    gen = torch.Generator().manual_seed(0)
    long, short = torch.randint(0, 50257, (12,), generator=gen), torch.randint(0, 50257, (7,), generator=gen)
    batch = torch.full((2, 12), 50256)
    batch[0], batch[1, :7] = long, short
    with torch.no_grad():
        out = model(batch, torch.tensor([12, 7]))
        alone = model(short[None], torch.tensor([7]))
    for row, ids in ((out[0], long), (out[1], short)):
        ce, right = _reference(model, ids)
        assert float(row[0]) == pytest.approx(ce, rel=1e-5) and int(row[1]) == right
    assert torch.allclose(out[1], alone[0], atol=1e-4)  # the pads of a short block are not scored


def test_the_loss_is_the_mean_token_cross_entropy_and_metrics_give_perplexity() -> None:
    task = LanguageModel()
    rows = torch.tensor([[20.0, 3.0], [10.0, 1.0]])
    y = task.label_tensor([10, 10])
    assert float(task.loss(rows, y, None)) / task.loss_denominator(None, y) == pytest.approx(1.5)
    m = task.metrics(rows, [10, 10], [])
    assert m["loss"] == pytest.approx(1.5) and m["perplexity"] == pytest.approx(math.exp(1.5))
    assert m["accuracy"] == pytest.approx(0.2) and m["tokens"] == 20 and m["macro_f1"] is None
    assert task.history_extra(m) == {"val_ppl": m["perplexity"]}
    assert task.settings_problems(target=None, positive=None, monitor="val_acc")  # only val_loss
    with pytest.raises(BadInputError):
        task.decider({})


def test_scopes_keep_the_output_layer_tied_and_head_is_refused() -> None:
    gpt = build_model(TINY, seed=0)
    with pytest.raises(BadInputError, match="no head"):
        apply_lm_scope(gpt, parse_scope("head"))
    n = apply_lm_scope(gpt, parse_scope("last-blocks 1"))
    trains = {name for name, p in gpt.named_parameters() if p.requires_grad}
    assert trains and all(name.startswith(("transformer.h.1.", "transformer.ln_f.")) for name in trains)
    assert n == sum(p.numel() for p in gpt.parameters() if p.requires_grad)
    assert gpt.lm_head.weight is gpt.transformer.wte.weight  # still tied
    apply_lm_scope(gpt, parse_scope("all"))
    assert all(p.requires_grad for p in gpt.parameters())
    lora = build_model(TINY, seed=0)
    apply_lm_scope(lora, parse_scope("lora", lora_rank=2))
    assert {n.rsplit(".", 1)[-1] for n, p in lora.named_parameters() if p.requires_grad} == {
        "lora_A",
        "lora_B",
    }
