from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.checkpoint import load_run
from gptclf.predict import Predictor
from tests.conftest import REPO, needs_shared_bpe
from tests.test_predict import make_run

pytestmark = needs_shared_bpe

TEXTS = ["Win a FREE prize now!!!", "see you at lunch", "", "ok", "Call 0800 now, claim your £1000 cash"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", max_length=12)


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["predict", *args], input=stdin)
    # stderr with its white space collapsed: rich may wrap a long message at the console width
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def expected_labels(run_dir: Path, texts: list[str]) -> list[str]:
    """What the model, loaded in memory, predicts: the argmax of its logits."""
    predictor = Predictor(load_run(run_dir), device="cpu", precision="fp32")
    logits = predictor.logits(texts)
    return [predictor.classes[i] for i in torch.argmax(logits, dim=1).tolist()]


def test_arguments_give_one_jsonl_line_per_text_in_order(run_dir: Path) -> None:
    code, out, _ = invoke(str(run_dir), *TEXTS)
    assert code == 0
    records = jsonl(out)
    assert [r["id"] for r in records] == list(range(len(TEXTS)))
    assert [r["text"] for r in records] == TEXTS
    assert [r["label"] for r in records] == expected_labels(run_dir, TEXTS)
    for r in records:
        assert list(r["probs"]) == ["ham", "spam"]
        assert sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_stdin_keeps_empty_lines_in_place(run_dir: Path) -> None:
    lines = ["first", "", "third", "", ""]
    code, out, _ = invoke(str(run_dir), "-", stdin="\n".join(lines) + "\n")
    assert code == 0
    assert [r["text"] for r in jsonl(out)] == lines
    code, out, _ = invoke(str(run_dir), "--input", "-", stdin="a\r\nb\n")
    assert [r["text"] for r in jsonl(out)] == ["a", "b"]


def test_text_file_and_table_inputs(run_dir: Path, tmp_path: Path) -> None:
    txt = tmp_path / "in.txt"
    txt.write_text("one\n\nthree\n", encoding="utf-8")
    code, out, _ = invoke(str(run_dir), "--input", str(txt))
    assert code == 0 and [r["text"] for r in jsonl(out)] == ["one", "", "three"]
    table = tmp_path / "in.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["id", "msg"], ["7", "hello, world"], ["8", 'a "quoted"\nline']])
    code, out, _ = invoke(str(run_dir), "--input", str(table), "--text-column", "msg")
    assert code == 0
    assert [(r["id"], r["text"]) for r in jsonl(out)] == [(0, "hello, world"), (1, 'a "quoted"\nline')]


@pytest.mark.parametrize(("fmt", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_parse_back(run_dir: Path, fmt: str, delimiter: str) -> None:
    texts = ['comma, "quote"', "tab\there", "line\nbreak", "carriage\rreturn", ""]
    code, out, _ = invoke(str(run_dir), "--format", fmt, *texts)
    assert code == 0
    rows = list(csv.reader(io.StringIO(out, newline=""), delimiter=delimiter))
    assert rows[0] == ["id", "text", "label", "p_ham", "p_spam"]
    assert [r[1] for r in rows[1:]] == texts
    assert [r[2] for r in rows[1:]] == expected_labels(run_dir, texts)
    for r in rows[1:]:
        assert float(r[3]) + float(r[4]) == pytest.approx(1.0, abs=1e-5)


def test_table_format_runs(run_dir: Path) -> None:
    code, out, _ = invoke(str(run_dir), "--format", "table", "hello there")
    assert code == 0 and "hello there" in out


def test_truncation_is_counted_on_stderr(run_dir: Path) -> None:
    code, out, err = invoke(str(run_dir), "short", "word " * 40, "more words " * 20)
    assert code == 0 and len(jsonl(out)) == 3
    assert "2 of 3 texts were longer than 12 tokens" in err
    assert "truncated" not in invoke(str(run_dir), "short")[2]


def test_threshold_and_positive_class(run_dir: Path) -> None:
    records = jsonl(invoke(str(run_dir), *TEXTS)[1])
    p_spam = sorted(r["probs"]["spam"] for r in records)
    cut = (p_spam[1] + p_spam[2]) / 2  # between two texts' (rounded) probabilities
    code, out, _ = invoke(str(run_dir), "--threshold", str(cut), "--positive", "spam", *TEXTS)
    assert code == 0
    got = [r["label"] for r in jsonl(out)]
    assert got == ["spam" if r["probs"]["spam"] >= cut else "ham" for r in records]
    assert got.count("spam") == 3


def test_bad_options_exit_2(run_dir: Path, tmp_path: Path) -> None:
    three = make_run(tmp_path / "three", classes=["neg", "neu", "pos"])
    cases = [
        ([str(run_dir), "--threshold", "0.5", "--positive", "eggs", "x"], "eggs"),
        ([str(run_dir), "--threshold", "1.5", "--positive", "spam", "x"], "[0, 1]"),
        ([str(run_dir), "--threshold", "0.5", "x"], "--positive"),
        ([str(three), "--threshold", "0.5", "--positive", "pos", "x"], "two classes"),
        ([str(run_dir), "--format", "xml", "x"], "--format"),
        ([str(run_dir)], "nothing to classify"),
        ([str(run_dir), "--input", str(tmp_path / "missing.txt")], "missing.txt"),
        ([str(run_dir), "--input", "-", "x"], "not both"),
        ([str(tmp_path / "nowhere"), "x"], "does not exist"),
    ]
    for args, words in cases:
        code, out, err = invoke(*args)
        assert code == 2, args
        assert words in err, (args, err)
        assert "Traceback" not in err and out == ""


def test_run_with_a_missing_file_exits_2(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "model.safetensors").unlink()
    code, _, err = invoke(str(run), "x")
    assert code == 2 and "model.safetensors" in err


def test_broken_pipe_exits_quietly(run_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("".join(f"text number {i} with some words\n" for i in range(3000)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "predict", str(run_dir), "--input", str(big), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -1`: read one line, then leave
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert json.loads(first)["id"] == 0
    assert err == b""
