"""evaluate in bounded memory: texts tokenised as they are read (compact ids, labels as arrays,
texts kept packed only for the error report), with the metrics, logits and error rows of the plain
pass over a list of texts, bit for bit; and its peak memory on 200,000 rows against 20,000."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptclf.errors import BadInputError
from gptclf.inference.evaluate import evaluate_with_logits
from gptclf.inference.labelled import Compact, LabelledData, PackedTexts, file_data, split_data
from gptclf.inference.predict import Predictor
from gptclf.inference.reports import misclassified
from gptclf.rundir import LoadedRun
from tests.conftest import REPO
from tests.inference.test_evaluate import prepared_folder
from tests.inference.test_predict import CLASSES, make_run, memory_run

ROWS = [
    ("id", "text", "label"),
    ("a1", "win a free prize now", "spam"),
    ("a2", "", "ham"),  # dropped: empty text
    ("a3", "see you at lunch", ""),  # dropped: missing label
    ("a4", "lunch at noon? " * 6, "ham"),  # longer than the run's length: cut
    ("a5", "FREE entry, reply WIN", "spam"),
    ("a6", "ok 👍 thanks", "ham"),
    ("a7", "call now", "spam"),
    ("a8", "\r\nline breaks\r", "ham"),
] + [(f"b{i}", f"text number {i} " + "x" * (i % 9), ("spam", "ham")[i % 2]) for i in range(40)]


def _write(path: Path, rows: list[tuple[str, ...]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _both(run: LoadedRun, path: Path) -> tuple[LabelledData, LabelledData]:
    plain = file_data(run, path, read_ids=True)
    compact = Compact(run.tokenizer, run.max_length, keep_texts=True)
    return plain, file_data(run, path, read_ids=True, compact=compact)


def _predictor(run: LoadedRun) -> Predictor:
    return Predictor(run, device="cpu", precision="fp32", batch_size=4)


def _same_evaluation(run: LoadedRun, plain: LabelledData, compact: LabelledData) -> dict:
    assert compact.tokens is not None and compact.tokens.flat.dtype.name == "uint16"
    assert compact.source == plain.source and compact.labels.tolist() == plain.labels  # type: ignore[attr-defined]
    assert list(compact.texts) == plain.texts
    want, want_logits = evaluate_with_logits(
        Predictor(run, device="cpu", precision="fp32", batch_size=4), plain
    )
    got, got_logits = evaluate_with_logits(
        Predictor(run, device="cpu", precision="fp32", batch_size=4), compact
    )
    assert torch.equal(got_logits, want_logits)
    assert json.dumps(got) == json.dumps(want)  # the same numbers, to the last bit
    decider = Predictor(run, device="cpu", precision="fp32").decider
    assert misclassified(decider, compact, got_logits) == misclassified(decider, plain, want_logits)
    return got


def test_a_streamed_file_gives_the_metrics_logits_and_errors_of_its_texts(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "run", max_length=12)
    plain, compact = _both(run, _write(tmp_path / "eval.csv", ROWS))
    assert plain.source["dropped"] == {"empty text": 1, "missing label": 1}
    metrics = _same_evaluation(run, plain, compact)
    assert metrics["truncated"] > 0 and metrics["long_texts"]["long"] == metrics["truncated"]
    ids = compact.ids_of([0, 2, 5])
    assert ids == ["a1", "a5", "a8"] and ids == [plain.ids[i] for i in (0, 2, 5)]  # type: ignore[index]


def test_a_split_and_a_jsonl_file_alike(tmp_path: Path) -> None:
    folder = prepared_folder(tmp_path)
    run = memory_run(tmp_path / "run", data={"dir": str(folder)})
    compact = Compact(run.tokenizer, run.max_length, keep_texts=True)
    _same_evaluation(run, split_data(run, "test"), split_data(run, "test", compact=compact))
    lines = [json.dumps({"text": t, "label": label, "id": i}) for i, t, label in ROWS[1:]]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _same_evaluation(run, *_both(run, path))


def test_without_the_error_report_no_text_is_kept(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "run")
    data = file_data(run, _write(tmp_path / "eval.csv", ROWS), compact=Compact(run.tokenizer, run.max_length))
    assert len(data.texts) == 0 and data.size == len(ROWS) - 3 and data.ids_of([1]) == [3]


@pytest.mark.parametrize(
    "rows",
    [
        [("text", "label")],  # no rows
        [("text", "label"), ("", "spam"), ("hi", "")],  # nothing left to evaluate
        [("text", "label"), ("hi", "spam"), ("yo", "eggs"), ("x", "bacon")],  # labels not classes
        [("words", "label"), ("hi", "spam")],  # no text column
        [("text", "label"), ("hi", "spam", "extra")],  # a bad record
    ],
)
def test_bad_files_fail_with_the_same_one_line_message(tmp_path: Path, rows: list[tuple[str, ...]]) -> None:
    run = memory_run(tmp_path / "run")
    path = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(BadInputError) as plain:
        file_data(run, path)
    with pytest.raises(BadInputError) as compact:
        file_data(run, path, compact=Compact(run.tokenizer, run.max_length))
    assert str(compact.value) == str(plain.value) and "\n" not in str(plain.value)


def test_packed_texts_give_the_texts_back() -> None:
    texts = ["", "plain", "ünïcödé 👍", "\ud800 lone surrogate", "a\r\nb"]
    packed = PackedTexts()
    for text in texts:
        packed.append(text)
    assert len(packed) == 5 and list(packed) == texts and packed[-1] == texts[-1]


def _peak_mb(args: list[str]) -> float:
    """Peak RSS of ``gptclf`` run with ``args``, in MB (its own child's, measured by a parent of its own)."""
    code = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "assert done.returncode == 0, done.stderr\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "cli.main", *args],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout)


@pytest.mark.slow
def test_memory_of_evaluate_on_a_file_hardly_grows_with_its_rows(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", max_length=32)
    words = ["win", "free", "prize", "lunch", "later", "ok", "call", "now", "home", "see"]
    peaks = {}
    for n in (20_000, 200_000):
        rows = [("text", "label")] + [
            (" ".join(words[(i * 7 + j) % 10] for j in range(3 + i % 9)), CLASSES[i % 2]) for i in range(n)
        ]
        path = _write(tmp_path / f"eval{n}.csv", rows)
        peaks[n] = _peak_mb(["evaluate", str(run), "--input", str(path), "--json", "--device", "cpu"])
    assert peaks[200_000] <= 1.2 * peaks[20_000], peaks


def test_a_streamed_file_keeps_no_position_a_row_but_finds_every_rows_record(tmp_path: Path) -> None:
    from gptclf.inference.labelled import KeptPositions

    rows = [ROWS[0], ("x", "", "spam"), *ROWS[1:], ("y", "last", ""), ("z", "", "")]  # drops first and last
    run = memory_run(tmp_path / "run")
    path = _write(tmp_path / "eval.csv", rows)
    plain = file_data(run, path)
    compact = file_data(run, path, compact=Compact(run.tokenizer, run.max_length))
    assert isinstance(compact.ids, KeptPositions) and len(compact.ids) == len(plain.ids)  # type: ignore[arg-type]
    assert [compact.ids[i] for i in range(len(compact.ids))] == plain.ids
    assert compact.ids_of(list(range(compact.size))[::-1]) == plain.ids[::-1]  # type: ignore[index]
    with pytest.raises(IndexError):
        compact.ids[compact.size]


# --- every input path streamed: prepared splits, multi-label and SMS files, long texts ------------


def test_a_split_is_read_a_chunk_of_rows_at_a_time_with_the_same_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.data.prepared as prepared
    import gptclf.inference.labelled as labelled

    folder = prepared_folder(tmp_path)
    run = memory_run(tmp_path / "run", data={"dir": str(folder)})
    plain = split_data(run, "test")
    monkeypatch.setattr(prepared, "SPLIT_CHUNK", 2)

    def whole(directory: Path) -> None:
        raise AssertionError("the prepared folder was read whole")

    monkeypatch.setattr(labelled, "read_prepared", whole)
    chunks = []
    real = labelled.iter_split
    monkeypatch.setattr(
        labelled, "iter_split", lambda *a, **k: (chunks.append(len(f)) or f for f in real(*a, **k))
    )
    compact = split_data(run, "test", compact=Compact(run.tokenizer, run.max_length, keep_texts=True))
    assert len(chunks) > 1 and max(chunks) == 2 and sum(chunks) == plain.size
    _same_evaluation(run, plain, compact)


def test_a_multi_label_file_is_read_a_chunk_at_a_time_with_the_same_texts_labels_and_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.inference.labelled as labelled

    run = memory_run(tmp_path / "run", classes=["billing", "bug", "sales"], multi_label=True)
    rows = [("id", "text", "label"), ("a", "refund my card", "billing"), ("b", "", "bug"),
            ("c", "crash on login and a refund", "bug|billing"), ("d", "nothing here", "")]  # fmt: skip
    rows += [(f"e{i}", f"text {i}", ("billing", "bug", "sales|bug", "")[i % 4]) for i in range(11)]
    path = _write(tmp_path / "ml.csv", rows)
    plain = file_data(run, path, read_ids=True)
    monkeypatch.setattr(labelled, "LABEL_CHUNK", 3)
    compact = file_data(
        run, path, read_ids=True, compact=Compact(run.tokenizer, run.max_length, keep_texts=True)
    )
    assert compact.source == plain.source == {"input": str(path), "dropped": {"empty text": 1}}
    assert compact.labels.tolist() == plain.labels and compact.labels.dtype.name == "uint8"  # type: ignore[attr-defined]
    assert list(compact.texts) == plain.texts and compact.tokens is not None
    assert compact.ids_of(list(range(compact.size))) == list(plain.ids)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match=r"ml2\.csv: .*eggs") as bad:
        file_data(run, _write(tmp_path / "ml2.csv", [*rows, ("z", "x", "eggs")]),
                  compact=Compact(run.tokenizer, run.max_length))  # fmt: skip
    assert "\n" not in str(bad.value)


def test_an_sms_file_is_streamed_with_the_same_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.data.tables as tables

    run = memory_run(tmp_path / "run", max_length=12)
    path = tmp_path / "SMSSpamCollection"
    one_line = [
        (text, label) for _, text, label in ROWS[1:] if label and "\n" not in text and "\r" not in text
    ]
    path.write_text("".join(f"{label}\t{text}\n" for text, label in one_line), encoding="utf-8")
    plain = file_data(run, path, fmt="sms", read_ids=True)
    monkeypatch.setattr(tables, "load_sms_spam", lambda *a, **k: pytest.fail("read whole"))
    compact = file_data(
        run, path, fmt="sms", read_ids=True, compact=Compact(run.tokenizer, run.max_length, keep_texts=True)
    )
    _same_evaluation(run, plain, compact)


def test_long_texts_go_to_the_predictor_a_chunk_at_a_time_as_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.inference.evaluate as evaluate
    from gptclf.data.long_texts import LongTexts

    run = memory_run(tmp_path / "run", max_length=8)
    path = _write(tmp_path / "eval.csv", ROWS)
    kept = Compact(run.tokenizer, run.max_length, keep_texts=True, tokenise=False)
    data = file_data(run, path, read_ids=True, compact=kept)
    assert data.tokens is None and isinstance(data.texts, PackedTexts) and data.size == len(ROWS) - 3

    def predictor() -> Predictor:
        return Predictor(run, device="cpu", precision="fp32", batch_size=4, long_texts=LongTexts("window"))

    want, want_logits = evaluate_with_logits(predictor(), data)
    monkeypatch.setattr(evaluate, "TEXT_CHUNK", 5)
    sizes: list[int] = []
    real = Predictor.logits
    monkeypatch.setattr(
        Predictor, "logits", lambda self, texts, **k: sizes.append(len(texts)) or real(self, texts, **k)
    )
    got, got_logits = evaluate_with_logits(predictor(), data)
    assert max(sizes) == 5 and sum(sizes) == data.size
    assert torch.allclose(got_logits, want_logits, atol=1e-6)
    assert got["long_texts"] == want["long_texts"] and got["accuracy"] == want["accuracy"]
    # Long documents end a chunk sooner: a chunk stops once its texts reach the characters allowed.
    monkeypatch.setattr(evaluate, "TEXT_CHUNK", 1000)
    monkeypatch.setattr(evaluate, "TEXT_CHUNK_CHARS", 40)
    chunks: list[list[str]] = []
    monkeypatch.setattr(
        Predictor, "logits", lambda self, texts, **k: chunks.append(texts) or real(self, texts, **k)
    )
    by_chars = evaluate_with_logits(predictor(), data)[1]
    assert torch.allclose(by_chars, want_logits, atol=1e-6)
    assert [t for chunk in chunks for t in chunk] == list(data.texts) and len(chunks) > 2
    assert all(sum(map(len, chunk[:-1])) < 40 <= sum(map(len, chunk)) for chunk in chunks[:-1])
