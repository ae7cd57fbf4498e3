from __future__ import annotations

import pytest

from gptclf.inference.batching import collate, encode_texts, sorted_batches, train_batches
from tests.conftest import BPE_DIR


def test_collate_pads_to_batch_longest() -> None:
    ids, lengths = collate([[1, 2, 3], [4], [5, 6]])
    assert ids.tolist() == [[1, 2, 3], [4, 50256, 50256], [5, 6, 50256]]
    assert lengths.tolist() == [3, 1, 2]
    fixed, _ = collate([[1], [2, 3]], pad_to=5)
    assert fixed.shape == (2, 5)


def test_train_batches_cover_every_index_once_and_group_lengths() -> None:
    lengths = [(i * 37) % 100 + 1 for i in range(1000)]
    batches = train_batches(lengths, 8, seed=1, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    plain = train_batches(lengths, 8, seed=1, epoch=0, bucket=False)
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / len(plain)
    assert spread < plain_spread / 5


def test_train_batches_are_seeded_and_reshuffled_each_epoch() -> None:
    lengths = list(range(1, 101))
    assert train_batches(lengths, 4, 3, 0) == train_batches(lengths, 4, 3, 0)
    assert train_batches(lengths, 4, 3, 0) != train_batches(lengths, 4, 3, 1)
    assert train_batches(lengths, 4, 3, 0) != train_batches(lengths, 4, 4, 0)


def test_sorted_batches_longest_first() -> None:
    batches = sorted_batches([3, 9, 1, 5], 2)
    assert batches == [[1, 3], [0, 2]]


def test_encode_truncates_and_counts() -> None:
    from gptclf.model.tokenizer import load_tokenizer

    enc = load_tokenizer(BPE_DIR)
    out = encode_texts(enc, ["Hello, world", "", "a " * 50], max_length=10)
    assert out.ids[0] == [15496, 11, 995]
    assert out.ids[1] == [50256]
    assert len(out.ids[2]) == 10
    assert out.truncated == 1


def test_sorted_batches_cut_long_texts_to_the_token_budget() -> None:
    # Four windows of 1,024 tokens and six short texts, 4 texts per batch, 2,048 tokens a batch.
    lengths = [1024, 30, 1024, 40, 1024, 20, 1024, 10, 50, 60]
    batches = sorted_batches(lengths, 4, max_tokens=2048)
    shapes = [[lengths[i] for i in b] for b in batches]
    assert shapes == [[1024, 1024], [1024, 1024], [60, 50, 40, 30], [20, 10]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert sorted_batches([5000, 3], 4, max_tokens=100) == [[0], [1]]  # a text over the budget runs alone
    assert sorted_batches(lengths, 4, max_tokens=None) == sorted_batches(lengths, 4)


def test_sorted_batches_with_max_padding_end_a_batch_before_padding_passes_its_share() -> None:
    lengths = [100, 10, 96, 12, 11, 90, 50, 9]
    batches = sorted_batches(lengths, 8, max_padding=0.25)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert sum(lengths[i] for i in b) >= 0.75 * padded or len(b) == 1
    assert [[lengths[i] for i in b] for b in batches] == [[100, 96, 90, 50], [12, 11, 10, 9]]
    # Without it: batches of batch_size, whatever the padding; with both, the size still bounds.
    assert [len(b) for b in sorted_batches(lengths, 8)] == [8]
    assert max(len(b) for b in sorted_batches([5] * 20, 4, max_padding=0.25)) == 4


def _random_ids(n: int, seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(0, 50257) for _ in range(rng.randrange(1, 30))] for _ in range(n)]


def test_token_ids_give_the_batches_of_the_lists_they_replace() -> None:
    import torch

    from gptclf.inference.batching import TokenIds, TokenSource

    ids = _random_ids(300)
    compact = TokenIds.from_lists(ids)
    assert compact.flat.dtype.name == "uint16" and compact.nbytes < 3 * sum(map(len, ids)) + 8 * 301
    assert len(compact) == 300 and compact.lengths == [len(x) for x in ids]
    assert [x.tolist() for x in compact] == ids
    for pad_to in (None, 40):
        lists, packed = TokenSource(ids, pad_to), TokenSource(compact, pad_to)
        assert list(packed.lengths) == lists.lengths
        for indices in sorted_batches(lists.lengths, 7):
            want, got = lists.batch(indices, torch.device("cpu")), packed.batch(indices, torch.device("cpu"))
            assert got.input_ids is not None and got.input_ids.dtype == torch.long
            assert torch.equal(want.input_ids, got.input_ids) and torch.equal(want.lengths, got.lengths)
    assert [x.tolist() for x in compact.truncated(5)] == [x[:5] for x in ids]
    assert [x.tolist() for x in compact.padded(29)] == [[*x, *[50256] * (29 - len(x))] for x in ids]
    assert [x.tolist() for x in compact.part(10, 20)] == ids[10:20]


def test_compact_encoding_is_encode_texts_in_chunks_with_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptclf.inference import token_ids
    from gptclf.inference.token_ids import encode_compact
    from gptclf.model.tokenizer import load_tokenizer
    from gptclf.progress import Progress

    class Seen(Progress):
        def __init__(self) -> None:
            self.events: list[tuple[str, object]] = []

        def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
            self.events.append(("begin", (label, total, unit)))

        def advance(self, n: int = 1, **fields: object) -> None:
            self.events.append(("advance", n))

        def end(self) -> None:
            self.events.append(("end", None))

    monkeypatch.setattr(token_ids, "ENCODE_CHUNK", 4)
    monkeypatch.setattr(token_ids, "SHOW_AFTER", 0.0)
    enc = load_tokenizer(BPE_DIR)
    texts = ["Hello, world", "", "a " * 50, "x"] * 3
    seen = Seen()
    compact, cut = encode_compact(enc, iter(texts), 10, seen, total=len(texts))
    plain = encode_texts(enc, texts, max_length=10)
    assert [x.tolist() for x in compact] == plain.ids and int(cut.sum()) == plain.truncated
    assert seen.events == [("begin", ("tokenising", 12, "texts"))] + [("advance", 4)] * 3 + [("end", None)]
    monkeypatch.setattr(token_ids, "SHOW_AFTER", 60.0)  # a short step shows nothing
    quiet = Seen()
    encode_compact(enc, texts, 10, quiet, total=len(texts))
    assert quiet.events == []


def _per_text_batches(
    lengths: list[int], batch_size: int, max_tokens: int | None, max_padding: float | None
) -> list[list[int]]:
    """The batches as sorted_batches made them before BatchPlan, text by text (the reference)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = max_tokens if max_tokens is not None else float("inf")
    keep = 1 - max_padding if max_padding is not None else 0.0
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        padded = (len(current) + 1) * lengths[current[0]] if current else 0
        if current and (len(current) == batch_size or padded > budget or real + lengths[i] < keep * padded):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    return batches + ([current] if current else [])


@pytest.mark.parametrize("max_tokens", [None, 64, 300, 10_000])
@pytest.mark.parametrize("max_padding", [None, 0.25])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_a_batch_plan_holds_the_batches_of_the_text_by_text_rule(
    max_tokens: int | None, max_padding: float | None, batch_size: int
) -> None:
    import random

    import numpy as np

    from gptclf.inference.batching import BatchPlan

    rng = random.Random(batch_size)
    lengths = [rng.choice([0, 1, 2, 7, 40, 90, 200, 1024]) for _ in range(500)]
    want = _per_text_batches(lengths, batch_size, max_tokens, max_padding)
    plan = BatchPlan(lengths, batch_size, max_tokens, max_padding)
    assert list(plan) == want and sorted_batches(lengths, batch_size, max_tokens, max_padding) == want
    assert plan.order.dtype == np.int32 and all(type(i) is int for i in plan[0])  # ints only when read
    for rank in range(3):  # a rank's share, as Shard.take gives it
        share = plan[rank::3]
        assert list(share) == want[rank::3] and share.total == sum(map(len, want[rank::3]))
    assert plan.total == len(lengths)


def test_token_ids_built_a_chunk_at_a_time_are_the_lists_they_pack() -> None:
    from gptclf.inference.token_ids import TokenIds, TokenIdsBuilder

    ids = _random_ids(120)
    builder = TokenIdsBuilder()
    for start, stop in ((0, 1), (1, 1), (1, 50), (50, 120)):  # an empty chunk too
        builder.extend(ids[start:stop])
    built = builder.build()
    assert [x.tolist() for x in built] == ids and built.offsets.tolist() == TokenIds.from_lists(
        ids
    ).offsets.tolist()
    assert built.flat.dtype.name == "uint16" and len(builder) == 0 and len(builder.build()) == 0


def test_a_growing_array_holds_what_was_appended_across_many_growths() -> None:
    import numpy as np

    from gptclf.inference.token_ids import GrowingArray

    grown = GrowingArray(np.uint16)
    values = np.random.default_rng(0).integers(0, 65_536, size=300_000)
    for start in range(0, len(values), 7_001):  # odd sizes: growths in the middle of a page
        grown.extend(values[start : start + 7_001])
    grown.extend([])
    out = grown.array()
    assert out.dtype == np.uint16 and len(grown) == len(values) and np.array_equal(out, values)
    assert len(GrowingArray(np.int64).array()) == 0


def test_encoding_gives_the_ids_of_tiktokens_batch_call_on_this_thread_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from gptclf.model.tokenizer import encode_batch, load_tokenizer

    enc = load_tokenizer(BPE_DIR)
    texts = ["Hello, world", "", "ünïcödé 👍", "<|endoftext|> stays text", "a " * 300]
    want = enc.encode_ordinary_batch(texts)
    # No thread pool: a Ctrl-C while tiktoken's pool shut down could hang the process for good.
    monkeypatch.setattr(threading.Thread, "start", lambda self: pytest.fail("a thread was started"))
    assert encode_batch(enc, texts) == want
