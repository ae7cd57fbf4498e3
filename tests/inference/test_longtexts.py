"""Long texts: windows, head-tail, aggregation, bounded pieces, and their settings' checks."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from gptclf.data.long_texts import LongCounts, LongTexts, describe_counts, override, stored_long_texts
from gptclf.device import resolve_precision
from gptclf.distributed import Shard
from gptclf.errors import BadInputError
from gptclf.inference.batching import TokenSource
from gptclf.inference.longtexts import (
    Windowed,
    WindowedSource,
    WindowMap,
    aggregate,
    piecewise_logits,
    text_windows,
    windows_of,
)
from gptclf.inference.loop import batched_logits
from gptclf.inference.splits import encode_splits
from gptclf.model.tokenizer import EOT_ID, load_tokenizer
from gptclf.progress import Progress
from gptclf.training.checkpoints import data_signature
from gptclf.training.settings import TrainConfig
from gptclf.training.step import Stepper
from tests.conftest import BPE_DIR
from tests.finetune_helpers import tiny_classifier

L = 16
WINDOW = LongTexts("window").resolved(L)
HEAD_TAIL = LongTexts("head-tail").resolved(L)
TRUNCATE = LongTexts().resolved(L)
CPU = torch.device("cpu")


def test_windows_cover_the_whole_text_and_the_last_ends_at_its_end() -> None:
    ids = list(range(1000, 1050))  # 50 tokens, windows of 16 every 8
    windows = text_windows(ids, L, WINDOW)
    assert all(len(w) == L for w in windows)
    assert [w[0] for w in windows] == [1000, 1008, 1016, 1024, 1032, 1034]
    assert windows[-1][-1] == ids[-1]
    assert sorted({t for w in windows for t in w}) == ids
    assert len(text_windows(ids, L, LongTexts("window", stride=L).resolved(L))) == 4  # 0, 16, 32, 34


def test_head_tail_keeps_the_first_and_the_last_tokens() -> None:
    ids = list(range(100))
    (only,) = text_windows(ids, L, HEAD_TAIL)
    assert only == [0, 1, 2, 3, *range(88, 100)]  # head 16 // 4 = 4, tail 12
    (tail,) = text_windows(ids, L, LongTexts("head-tail", head_tokens=0).resolved(L))
    assert tail == list(range(84, 100))
    assert text_windows(ids, L, TRUNCATE) == [list(range(L))]


@pytest.mark.parametrize("long", [TRUNCATE, HEAD_TAIL, WINDOW], ids=lambda x: x.mode)
def test_a_text_that_fits_is_one_window_in_every_mode(long: LongTexts) -> None:
    assert text_windows([5, 6, 7], L, long) == [[5, 6, 7]]
    assert text_windows(list(range(L)), L, long) == [list(range(L))]
    assert text_windows([], L, long) == [[EOT_ID]]


def test_defaults_resolve_against_the_length() -> None:
    assert (WINDOW.stride, WINDOW.head_tokens, WINDOW.aggregate) == (8, 4, "mean")
    assert LongTexts("window").resolved(1).stride == 1


@pytest.mark.parametrize(
    ("long", "phrase"),
    [
        (LongTexts("window", stride=17), "--stride must be in 1..16"),
        (LongTexts("window", stride=0), "--stride must be in 1..16"),
        (LongTexts("window", stride=-3), "--stride must be in 1..16"),
        (LongTexts("head-tail", head_tokens=16), "--head-tokens must be in 0..15"),
        (LongTexts("head-tail", head_tokens=-1), "--head-tokens must be in 0..15"),
        (LongTexts("window", aggregate="median"), "--aggregate 'median'"),
        (LongTexts("slide"), "--long-texts 'slide'"),
    ],
)
def test_bad_settings_are_one_line_errors(long: LongTexts, phrase: str) -> None:
    with pytest.raises(BadInputError, match=phrase) as caught:
        long.resolved(L)
    assert "\n" not in str(caught.value)


def test_a_run_without_the_record_truncates_and_overrides_replace_the_stored() -> None:
    assert stored_long_texts({}) == LongTexts()
    stored = stored_long_texts({"long_texts": WINDOW.to_dict()})
    assert stored == WINDOW
    assert override(stored, L) == WINDOW
    assert override(stored, L, aggregate="max").aggregate == "max"
    assert override(stored, L, mode="head-tail") == HEAD_TAIL  # the numbers of that mode's defaults
    assert override(LongTexts().resolved(L), L, mode="window", stride=4).stride == 4
    with pytest.raises(BadInputError, match="--stride"):
        override(stored, L, stride=99)


def test_aggregate_mean_and_max_and_one_row_is_exact() -> None:
    logits = torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.1234567, 7.654321]])
    owner = torch.tensor([0, 0, 1])
    assert torch.equal(
        aggregate(logits, owner, 2, "mean"), torch.tensor([[2.0, -1.0], [0.1234567, 7.654321]])
    )
    assert torch.equal(aggregate(logits, owner, 2, "max"), torch.tensor([[3.0, 2.0], [0.1234567, 7.654321]]))
    x = logits.clone().requires_grad_()
    aggregate(x, owner, 2, "mean").sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 1.0]]))


def test_window_map_rows_and_combine() -> None:
    made = windows_of([[1] * 40, [2, 3], list(range(20))], L, WINDOW)
    assert made.map.counts == [4, 1, 2] and made.map.starts == [0, 4, 5]
    assert (made.counts.texts, made.counts.long, made.counts.windows) == (3, 2, 7)
    rows, local = made.map.rows([2, 1])
    assert rows == [5, 6, 4] and local.tolist() == [0, 0, 1]
    per_window = torch.arange(14, dtype=torch.float32).view(7, 2)
    assert made.map.combine(per_window).tolist() == [[3.0, 4.0], [8.0, 9.0], [11.0, 12.0]]
    assert made.map.text_lengths([len(w) for w in made.ids]) == [64, 2, 32]


def _model_logits(model: torch.nn.Module, windows: list[list[int]], batch_size: int = 4) -> torch.Tensor:
    return batched_logits(
        model,
        TokenSource(windows),
        batch_size=batch_size,
        device=CPU,
        precision=resolve_precision("fp32", CPU),
    )


def test_a_short_text_gets_exactly_the_same_logits_in_every_mode() -> None:
    model = tiny_classifier(["a", "b"]).eval()
    texts = [[1000 + i for i in range(n)] for n in (3, 9, 16, 1)]
    run = lambda w, owners, shown: _model_logits(model, w)  # noqa: E731
    results = [
        piecewise_logits(texts, L, long, run, 2, piece=64)[0] for long in (TRUNCATE, HEAD_TAIL, WINDOW)
    ]
    results.append(
        piecewise_logits(texts, L, LongTexts("window", aggregate="max").resolved(L), run, 2, 64)[0]
    )
    plain = _model_logits(model, texts)  # what truncation gave before long texts existed
    for out in results:
        assert torch.equal(out, plain)


def test_windowed_logits_do_not_depend_on_the_other_texts_of_the_batch() -> None:
    model = tiny_classifier(["a", "b"]).eval()
    long_text = [1000 + (i * 7) % 90 for i in range(70)]
    others = [[1100 + i for i in range(n)] for n in (2, 5, 16, 40, 11)]
    run = lambda w, owners, shown: _model_logits(model, w, batch_size=3)  # noqa: E731
    alone, _ = piecewise_logits([long_text], L, WINDOW, run, 2, piece=64)
    mixed, counts = piecewise_logits([others[0], long_text, *others[1:]], L, WINDOW, run, 2, piece=64)
    small_pieces, _ = piecewise_logits([others[0], long_text, *others[1:]], L, WINDOW, run, 2, piece=2)
    assert torch.allclose(mixed[1], alone[0], atol=1e-6)
    assert torch.allclose(small_pieces, mixed, atol=1e-6)
    assert counts.long == 2 and counts.windows == 8 + 4 + 4
    # The same text's windows, aggregated in one go, agree with the pieces.
    made = windows_of([long_text], L, WINDOW)
    assert torch.allclose(made.map.combine(_model_logits(model, made.ids)), alone, atol=1e-6)


def test_pieces_bound_the_windows_in_flight_of_a_very_long_text() -> None:
    sizes: list[int] = []

    def run(windows: list[list[int]], owners: WindowMap, shown: Progress) -> torch.Tensor:
        sizes.append(len(windows))
        return torch.stack([torch.tensor([float(w[0]), -float(w[-1])]) for w in windows])

    text = list(range(100_000))
    out, counts = piecewise_logits(
        [[1, 2], text, [3]], 32, LongTexts("window").resolved(32), run, 2, piece=256
    )
    assert max(sizes) == 256 and sum(sizes) == counts.windows == 1 + 6249 + 1
    assert out[0].tolist() == [1.0, -2.0] and out[2].tolist() == [3.0, -3.0]
    starts = [*range(0, 100_000 - 32, 16), 100_000 - 32]
    assert out[1, 0].item() == pytest.approx(sum(starts) / len(starts), rel=1e-4)


def test_training_counts_a_text_once_however_many_windows_it_has() -> None:
    """A text made of k identical windows gives the gradient of that one window (mean of logits)."""
    torch.manual_seed(0)
    ids = [[1000 + i for i in range(12)], [1050 + i for i in range(7)]]
    labels = [0, 1]
    grads = []
    for copies in (1, 3):
        model = tiny_classifier(["a", "b"], scope="all")
        windows = [ids[0]] * copies + [ids[1]]
        wmap = WindowMap([0, copies], [copies, 1])
        cfg = TrainConfig(batch_size=8, lr=1e-3)
        source = WindowedSource(TokenSource(windows), wmap)
        stepper = Stepper(model, source, labels, cfg, CPU, resolve_precision("fp32", CPU), Shard())
        stats = stepper._accumulate([0, 1])
        grads.append((float(stats[0]), torch.cat([p.grad.flatten() for _, p in stepper.named])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_the_resume_signature_names_the_mode() -> None:
    old = data_signature([0, 1], [5, 6])
    assert data_signature([0, 1], [5, 6], None) == old
    assert data_signature([0, 1], [5, 6], "window") != old
    assert data_signature([0, 1], [5, 6], "window") != data_signature([0, 1], [5, 6], "head-tail")


def test_describe_counts_says_what_became_of_the_long_texts() -> None:
    counts = LongCounts(texts=10, long=2, windows=15)
    assert "2 of 10 texts were longer than 16 tokens and were read in 7 windows" in describe_counts(
        counts, L, WINDOW
    )
    assert "truncated" in describe_counts(LongCounts(10, 2, 10), L, TRUNCATE)
    assert "first 4 and last 12 tokens" in describe_counts(LongCounts(10, 2, 10), L, HEAD_TAIL)


def test_the_books_padding_makes_the_windows_at_the_longest_training_text() -> None:
    enc = load_tokenizer(BPE_DIR)
    splits = {
        "train": pd.DataFrame({"text": [" ".join(["apple"] * 10), "river"], "label": ["a", "b"]}),
        "validation": pd.DataFrame({"text": [" ".join(["stone"] * 25)], "label": ["a"]}),
        "test": pd.DataFrame({"text": [" ".join(["cloud"] * 5)], "label": ["b"]}),
    }
    made: dict[str, Windowed] = {}
    long = LongTexts("window").resolved(64)
    ids, labels, max_length, pad = encode_splits(
        splits, ["a", "b"], enc, 64, "longest-train", long=long, windows=made
    )
    assert max_length == pad == 10 and labels["train"] == [0, 1]
    assert [len(w) for w in ids["validation"]] == [10] * 3  # 25 tokens, stride cut to 10: 0, 10, 15
    assert made["validation"].map.counts == [3] and long.fitted(10).stride == 10
    assert LongTexts("head-tail").resolved(64).fitted(10).head_tokens == 9


def test_window_count_counts_the_windows_text_windows_makes() -> None:
    from gptclf.inference.longtexts import text_windows, window_count

    modes = [("window", 1), ("window", 3), ("window", None), ("truncate", None), ("head-tail", None)]
    for mode, stride in modes:
        long = LongTexts(mode=mode, stride=stride, head_tokens=2).resolved(8)
        for n in (1, 7, 8, 9, 15, 16, 17, 40):
            assert window_count(n, 8, long) == len(text_windows(list(range(1, n + 1)), 8, long)), (mode, n)
