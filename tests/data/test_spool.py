"""The texts prepare keeps on disk while it decides (gptclf.data.spool)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptclf.data.spool import TextSpool, first_occurrences, length_summary


def test_texts_come_back_by_row_in_any_order_and_leave_no_file(tmp_path: Path) -> None:
    texts = ["plain", "two\nlines", "café ünï", "", "a\ud800lone surrogate", "plain"]
    with TextSpool(tmp_path, tmp_path / "out") as spool:
        for text in texts:
            spool.add(text)
        assert len(spool) == len(texts)
        assert list(spool.texts([5, 0, 4, 2, 2, 1, 3])) == [texts[i] for i in (5, 0, 4, 2, 2, 1, 3)]
        hashes = spool.hashes()
        assert hashes[0] == hashes[5] and len(set(hashes.tolist())) == 5
        assert list(tmp_path.iterdir()) == []  # unnamed: nothing for a kill to leave behind


def test_first_occurrences_marks_repeats_and_gives_equal_texts_equal_ids(tmp_path: Path) -> None:
    with TextSpool(tmp_path, tmp_path / "out") as spool:
        for text in ["b", "a", "b", "c", "a", "b"]:
            spool.add(text)
        first, ids = first_occurrences(spool.hashes())
    assert first.tolist() == [True, True, False, True, False, False]
    assert ids[0] == ids[2] == ids[5] and ids[1] == ids[4] and len(set(ids.tolist())) == 3


def test_length_summary_is_the_length_report_of_the_counts() -> None:
    from gptclf.data.lengths import length_report
    from gptclf.model.tokenizer import load_tokenizer
    from tests.conftest import BPE_DIR

    enc = load_tokenizer(BPE_DIR)
    texts = ["hello world", "a much longer text than the first one, with more tokens", "x", "hello world"]
    lengths = np.array([len(enc.encode_ordinary(t)) for t in texts])
    assert length_summary(lengths, 3, 1024) == length_report(enc, texts, 3)
    assert length_summary(lengths[:0], None, 1024) == length_report(enc, [], None)
