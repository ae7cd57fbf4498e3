"""The one inference loop: length-sorted batches, eval mode, order restored, progress, stops."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from gptclf.device import resolve_precision
from gptclf.inference.batching import TokenSource
from gptclf.inference.loop import batched_logits, run_batches
from gptclf.progress import Progress
from tests.finetune_helpers import synthetic_ids, tiny_classifier

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


class Recorded(Progress):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        self.events.append(("begin", (label, total, unit)))

    def advance(self, n: int = 1, **fields: object) -> None:
        self.events.append(("advance", n))

    def end(self) -> None:
        self.events.append(("end", None))


def test_logits_come_back_in_input_order_and_equal_one_text_at_a_time() -> None:
    model = tiny_classifier(["a", "b"], seed=2)
    model.train()
    ids, _ = synthetic_ids(11, 2, seed=4)
    progress = Recorded()
    logits = batched_logits(model, TokenSource(ids), batch_size=4, device=CPU, precision=FP32,
                            progress=progress, label="scoring")  # fmt: skip
    with torch.no_grad():
        model.eval()
        one_by_one = torch.cat([model(torch.tensor([x]), torch.tensor([len(x)])) for x in ids])
    assert torch.allclose(logits, one_by_one, atol=1e-5)
    assert progress.events[0] == ("begin", ("scoring", 11, "texts")) and progress.events[-1] == ("end", None)
    assert [n for kind, n in progress.events if kind == "advance"] == [4, 4, 3]


def test_batches_are_sorted_longest_first_and_the_model_is_put_back_in_training_mode() -> None:
    model = tiny_classifier(["a", "b"], seed=2).train()
    ids = [[1] * n for n in (3, 9, 1, 7, 5)]
    seen: list[list[int]] = []

    def sink(indices: Sequence[int], out: torch.Tensor) -> None:
        assert not model.training and out.shape == (len(indices), max(len(ids[i]) for i in indices), 32)
        seen.append(list(indices))

    run_batches(model, TokenSource(ids), sink, batch_size=2, device=CPU, precision=FP32, stop_block=1)
    assert seen == [[1, 3], [4, 0], [2]] and model.training


def test_a_callback_between_batches_can_stop_the_pass() -> None:
    model = tiny_classifier(["a", "b"], seed=2)
    ids, _ = synthetic_ids(9, 2, seed=4)
    calls = []

    def stop_at_the_third() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    progress = Recorded()
    with pytest.raises(KeyboardInterrupt):
        batched_logits(model, TokenSource(ids), batch_size=2, device=CPU, precision=FP32,
                       between_batches=stop_at_the_third, progress=progress)  # fmt: skip
    assert len(calls) == 3 and progress.events[-1] == ("end", None)  # the progress is closed
