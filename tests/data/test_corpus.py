"""Unlabelled texts for adapt from every format the tables read, empty texts skipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from gptclf.data.corpus import file_texts
from gptclf.errors import BadInputError

TEXTS = ["first text, with a comma", 'a "quoted" one', "", "  ", "last one"]
KEPT = ["first text, with a comma", 'a "quoted" one', "last one"]


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl", "parquet", "txt.gz"])
def test_every_format_gives_its_non_empty_texts_in_order(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"texts.{fmt}"
    frame = pd.DataFrame({"id": range(len(TEXTS)), "body": TEXTS})
    if fmt == "txt":
        path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    elif fmt == "txt.gz":
        path.write_bytes(gzip.compress(("\n".join(TEXTS) + "\n").encode()))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t", quoting=3)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        pytest.importorskip("pyarrow")
        frame.to_parquet(path)
    column = None if fmt.startswith("txt") else "body"
    source = file_texts(str(path), column, None, "utf-8")
    assert source.texts == KEPT and source.name == str(path)


def test_a_missing_column_or_file_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a"]}).to_csv(path, index=False)
    with pytest.raises(BadInputError, match="body"):
        file_texts(str(path), "body", None, "utf-8")
    with pytest.raises(BadInputError):
        file_texts(str(tmp_path / "nowhere.txt"), None, None, "utf-8")
