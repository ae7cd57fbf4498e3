from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import torch

from gptclf.errors import BadInputError, GptclfError
from gptclf.inference.predict import Predictor
from gptclf.model.classifier import Classifier, replace_head
from gptclf.model.config import GPTConfig
from gptclf.model.gpt import build_model
from gptclf.model.tokenizer import EOT_ID
from gptclf.rundir import LoadedRun, build_run_info, save_run
from gptclf.tasks.decisions import Decision
from gptclf.tasks.single_label import make_decision
from tests.conftest import BPE_DIR

CLASSES = ["ham", "spam"]
#: Texts of very different lengths, so that sorting by length reorders them.
MIXED = ["a", "a much longer text than the others, by far", "", "mid length", "xy", "z" * 30, "hello"]


def tiny_classifier(classes: list[str] = CLASSES, seed: int = 0) -> Classifier:
    """A random 2-layer GPT-2 with a head for ``classes``, in eval mode."""
    gpt = build_model(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64), seed=seed)
    replace_head(gpt, len(classes), seed=seed)
    return Classifier(gpt, list(classes), "last-token").eval()


def byte_tokenizer() -> tiktoken.Encoding:
    """One token per byte (ids 0-255): tests control lengths exactly and need no tokenizer files."""
    ranks = {bytes([i]): i for i in range(256)}
    return tiktoken.Encoding(
        name="bytes", pat_str=r"[\s\S]", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT_ID}
    )


def memory_run(
    path: Path, classes: list[str] = CLASSES, max_length: int = 40, seed: int = 0, **info: Any
) -> LoadedRun:
    """A run held in memory only, with the byte tokenizer."""
    data = {"classes": list(classes), "max_length": max_length, **info}
    return LoadedRun(path, data, tiny_classifier(classes, seed), byte_tokenizer())


def make_run(
    run_dir: Path,
    classes: list[str] = CLASSES,
    max_length: int = 32,
    model: Classifier | None = None,
    **kwargs: Any,
) -> Path:
    """A complete run directory of a random tiny model, or of ``model`` (needs the shared GPT-2
    tokenizer files)."""
    model = model or tiny_classifier(classes)
    info = build_run_info(
        model_name="tiny",
        config=model.gpt.config,
        classes=classes,
        max_length=max_length,
        pooling="last-token",
        trainable={"kind": "all"},
        trainable_params=0,
        train={},
        seed=0,
        weights="random",
        **kwargs,
    )
    save_run(run_dir, model, info, BPE_DIR)
    return run_dir


def nan_run(run_dir: Path) -> Path:
    """A run whose weights hold NaN (recorded as they are, so only the logits show it)."""
    model = tiny_classifier()
    with torch.no_grad():
        model.gpt.transformer.ln_f.weight[0] = float("nan")
    return make_run(run_dir, model=model)


def one_by_one(run: LoadedRun, texts: list[str]) -> torch.Tensor:
    """Reference logits: each text alone, no batching, no sorting."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = run.tokenizer.encode_ordinary(text)[: run.max_length] or [EOT_ID]
            rows.append(run.model(torch.tensor([ids]), torch.tensor([len(ids)]))[0])
    return torch.stack(rows)


def cpu_predictor(run: LoadedRun, **kwargs: Any) -> Predictor:
    return Predictor(run, device="cpu", precision="fp32", **kwargs)


def test_make_decision_checks_its_options() -> None:
    assert make_decision(CLASSES, None, None) is None
    assert make_decision(CLASSES, 0.3, "ham") == Decision(positive=0, negative=1, threshold=0.3)
    assert make_decision(CLASSES, 0.9, "spam") == Decision(positive=1, negative=0, threshold=0.9)
    for threshold, positive, words in [
        (0.5, None, "--positive"),
        (None, "spam", "--threshold"),
        (1.5, "spam", "[0, 1]"),
        (-0.1, "spam", "[0, 1]"),
        (0.5, "eggs", "'eggs'"),
    ]:
        with pytest.raises(BadInputError, match=words.replace("[", r"\[")):
            make_decision(CLASSES, threshold, positive)
    with pytest.raises(BadInputError, match="two classes only"):
        make_decision(["neg", "neu", "pos"], 0.5, "pos")


def test_predictions_come_in_input_order_and_match_texts_predicted_alone(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    texts = MIXED * 3  # 21 texts: three chunks of 8, 8 and 5, each sorted into batches of 3
    preds = list(cpu_predictor(run, batch_size=3, chunk_size=8).predict(texts))
    assert [p.index for p in preds] == list(range(len(texts)))
    assert [p.text for p in preds] == texts
    expected = torch.softmax(one_by_one(run, texts), dim=1)
    got = torch.tensor([list(p.probs.values()) for p in preds])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert [p.label for p in preds] == [CLASSES[i] for i in expected.argmax(1).tolist()]
    for p in preds:
        assert list(p.probs) == CLASSES
        assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-6)


def test_logits_restore_order_within_a_sorted_batch(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    got = cpu_predictor(run, batch_size=len(MIXED)).logits(MIXED)
    torch.testing.assert_close(got, one_by_one(run, MIXED), atol=1e-5, rtol=1e-5)


def test_empty_text_keeps_its_place_as_end_of_text(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    preds = list(cpu_predictor(run).predict(["first", "", "third"]))
    assert [p.text for p in preds] == ["first", "", "third"]
    with torch.no_grad():
        alone = torch.softmax(run.model(torch.tensor([[EOT_ID]]), torch.tensor([1]))[0], dim=0)
    assert list(preds[1].probs.values()) == pytest.approx(alone.tolist(), abs=1e-6)


def test_long_texts_are_truncated_and_counted(tmp_path: Path) -> None:
    run = memory_run(tmp_path, max_length=8)
    predictor = cpu_predictor(run, chunk_size=2)
    texts = ["short", "x" * 8, "y" * 9, "z" * 50, "ok"]
    preds = list(predictor.predict(texts))
    assert (predictor.n_texts, predictor.n_truncated) == (5, 2)
    assert preds[3].text == "z" * 50  # the output keeps the whole text
    # Only the first 8 tokens count: the truncated text predicts what its first 8 characters do.
    assert preds[3].probs == pytest.approx(next(predictor.predict(["z" * 8])).probs, abs=1e-6)


def test_predict_pulls_its_input_one_chunk_at_a_time() -> None:
    predictor = cpu_predictor(memory_run(Path("unused")), chunk_size=16)
    pulled = 0

    def stream() -> Iterator[str]:
        """A long input that counts how far it has been read."""
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield f"text number {i}"

    results = predictor.predict(stream())
    first = next(results)
    assert (first.index, pulled) == (0, 16)
    for _ in range(15):
        next(results)
    assert pulled == 16  # the whole first chunk is served without reading further
    assert next(results).index == 16 and pulled == 32

    pulled = 0
    chunks = predictor.predict_chunks(stream())
    assert [p.index for p in next(chunks)] == list(range(16)) and pulled == 16
    assert [p.index for p in next(chunks)] == list(range(16, 32)) and pulled == 32


def test_threshold_picks_the_positive_class_from_its_probability(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    texts = [f"message {i} " + "!" * i for i in range(12)]
    plain = list(cpu_predictor(run).predict(texts))
    p_spam = sorted(p.probs["spam"] for p in plain)
    cut = (p_spam[5] + p_spam[6]) / 2  # half the texts above, half below
    assert make_decision(CLASSES, cut, "spam") == Decision(positive=1, negative=0, threshold=cut)
    labelled = list(cpu_predictor(run, threshold=cut, positive="spam").predict(texts))
    assert [p.label for p in labelled] == ["spam" if p.probs["spam"] >= cut else "ham" for p in plain]
    assert sum(p.label == "spam" for p in labelled) == 6
    assert {p.label for p in cpu_predictor(run, threshold=0.0, positive="ham").predict(texts)} == {"ham"}


def test_three_classes_give_three_probabilities(tmp_path: Path) -> None:
    classes = ["neg", "neu", "pos"]
    preds = list(cpu_predictor(memory_run(tmp_path, classes)).predict(MIXED))
    for p in preds:
        assert list(p.probs) == classes
        assert p.label == max(p.probs, key=p.probs.__getitem__)
        assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-6)


def test_bad_sizes_and_devices_are_bad_input(tmp_path: Path) -> None:
    run = memory_run(tmp_path)
    with pytest.raises(BadInputError, match="--batch-size"):
        cpu_predictor(run, batch_size=0)
    with pytest.raises(BadInputError):
        Predictor(run, device="tpu")
    with pytest.raises(BadInputError):
        Predictor(run, device="cpu", precision="fp16")


def test_last_position_run_is_padded_as_in_training(tmp_path: Path) -> None:
    """A book-mode run (position -1, fixed padding) must see the padding it was trained with."""
    run = memory_run(tmp_path, pooling="last-position", train={"pad_length": 40})
    run.model.pooling = "last-position"
    assert run.pad_length == 40
    texts = ["short", "a bit longer text"]
    with torch.no_grad():
        expected = []
        for text in texts:
            ids = torch.full((1, 40), EOT_ID)
            ids[0, : len(text)] = torch.tensor(list(text.encode()))
            expected.append(run.model(ids, torch.tensor([len(text)]))[0])
    got = cpu_predictor(run).logits(texts)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)
    assert memory_run(tmp_path, pooling="last-token", train={"pad_length": 40}).pad_length is None


def test_batch_size_error_names_only_what_the_user_set(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        cpu_predictor(memory_run(tmp_path), batch_size=0)
    assert str(info.value) == "--batch-size must be >= 1 (got 0)"  # no chunk size the user never set


def test_non_finite_logits_are_an_error_naming_the_run(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "broken")
    with torch.no_grad():
        next(iter(run.model.parameters())).fill_(float("nan"))
    with pytest.raises(GptclfError, match=r"broken.*non-finite logits") as info:
        list(cpu_predictor(run).predict(["a", "b"]))
    assert info.value.exit_code == 1 and not isinstance(info.value, BadInputError)


def test_a_pause_in_the_input_ends_a_chunk_early() -> None:
    """A producer that stops after two texts gets their results at once, not after 16 texts."""
    predictor = cpu_predictor(memory_run(Path("unused")), chunk_size=16)
    more = threading.Event()

    def stream() -> Iterator[tuple[str, str]]:
        yield ("a", "first")
        yield ("b", "second")
        assert more.wait(timeout=30)  # blocks like an interactive stdin until the test reads
        yield ("c", "third")

    chunks = predictor.predict_chunks(stream(), pause=0.05)
    first = next(chunks)  # would hang (until the 30 s timeout fails the stream) without the pause
    assert [(p.index, p.id, p.text) for p in first] == [(0, "a", "first"), (1, "b", "second")]
    more.set()
    assert [(p.index, p.id) for p in next(chunks)] == [(2, "c")]
    assert next(chunks, None) is None


def test_a_read_error_comes_after_the_results_of_the_texts_before_it() -> None:
    predictor = cpu_predictor(memory_run(Path("unused")), chunk_size=4)

    def stream() -> Iterator[str]:
        yield from ["one", "two", "three", "four", "five"]
        raise BadInputError("line 6 is not valid JSON")

    for pause in (None, 0.05):
        chunks = predictor.predict_chunks(stream(), pause=pause)
        assert len(next(chunks)) == 4
        assert [p.text for p in next(chunks)] == ["five"]  # served before the error
        with pytest.raises(BadInputError, match="line 6"):
            next(chunks)


def test_waiting_on_an_endless_stream_holds_at_most_two_chunks() -> None:
    predictor = cpu_predictor(memory_run(Path("unused")), chunk_size=8)
    pulled = 0

    def endless() -> Iterator[str]:
        nonlocal pulled
        while True:
            pulled += 1
            yield "x"

    chunks = predictor.predict_chunks(endless(), pause=0.05)
    for _ in range(5):
        assert len(next(chunks)) == 8
    time.sleep(0.2)  # let the reader run ahead as far as it can
    assert pulled <= 5 * 8 + 8 + 1  # the chunks served, one queued chunk, one item in hand
    chunks.close()
