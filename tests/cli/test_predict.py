from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.inference.predict import Predictor
from gptclf.rundir import load_run
from tests.conftest import REPO
from tests.inference.test_predict import make_run, nan_run

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
    # The input's own id column is kept (auto-detected by its name).
    assert [(r["id"], r["text"]) for r in jsonl(out)] == [("7", "hello, world"), ("8", 'a "quoted"\nline')]


@pytest.mark.parametrize(("fmt", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_parse_back(run_dir: Path, fmt: str, delimiter: str) -> None:
    texts = ['comma, "quote"', "tab\there", "line\nbreak", "carriage\rreturn", ""]
    code, out, _ = invoke(str(run_dir), "--format", fmt, *texts)
    assert code == 0
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(out, newline=""), delimiter=delimiter))
    else:  # never quoted; a tab, newline, CR or backslash in a text is escaped (see split_tsv)
        from gptclf.data.tables import split_tsv

        assert len(out.split("\n")) == len(texts) + 2
        rows = [split_tsv(line) for line in out.split("\n")[:-1]]
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


@pytest.mark.slow
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
    assert err.decode().splitlines() == ["classifying (3,000 texts)"]  # the progress's first line only


# --- issue 9 ---------------------------------------------------------------------------------------


def invoke_bytes(*args: str, stdin: bytes) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["predict", *args], input=stdin)
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def child(*args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    """``gptclf predict`` in a real process, with pipes for stdin, stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **kwargs.pop("env", {})}  # type: ignore[dict-item]
    command = [sys.executable, "-m", "cli.main", "predict", *args, "--device", "cpu"]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(command, env=env, **pipes, **kwargs)  # type: ignore[call-overload]


def test_stdin_goes_through_the_file_reader(run_dir: Path, tmp_path: Path) -> None:
    # CRLF, a BOM and Latin-1 bytes: the same texts and probabilities as the same bytes in a file.
    data = b"\xef\xbb\xbfWin a prize\r\nsee you at lunch\r\n"
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    code, from_stdin, _ = invoke_bytes(str(run_dir), "-", stdin=data)
    assert code == 0
    assert jsonl(from_stdin) == jsonl(invoke(str(run_dir), "--input", str(path))[1])
    assert [r["text"] for r in jsonl(from_stdin)] == ["Win a prize", "see you at lunch"]
    code, out, _ = invoke_bytes(str(run_dir), "--input", "-", "--encoding", "latin-1", stdin=b"caf\xe9\n")
    assert code == 0 and [r["text"] for r in jsonl(out)] == ["café"]
    table = b'id,msg\r\nk1,"hello, world"\r\n'
    code, out, _ = invoke_bytes(
        str(run_dir), "-", "--input-format", "csv", "--text-column", "msg", stdin=table
    )
    assert code == 0 and [(r["id"], r["text"]) for r in jsonl(out)] == [("k1", "hello, world")]


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"fine\ncaf\xe9\n", "stdin: line 2 is not valid utf-8; pass --encoding"),
        (bytes(range(256)) * 8, "stdin: line 1 holds a NUL byte: this is binary data"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(200, 256)) * 4, "stdin: line 1 is not valid utf-8"),
    ],
)
def test_undecodable_or_binary_stdin_exits_2(run_dir: Path, data: bytes, phrase: str) -> None:
    code, out, err = invoke_bytes(str(run_dir), "-", stdin=data)
    assert code == 2 and phrase in err
    assert "Traceback" not in err
    assert len(out.splitlines()) <= 1  # never garbage predictions of the bytes after the bad line


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "table"])
def test_output_is_utf8_whatever_the_locale(run_dir: Path, fmt: str) -> None:
    text = "Call 0800 now, claim your £1000 cash — café ✓"
    proc = child(str(run_dir), "--format", fmt, text, env={"LC_ALL": "C", "PYTHONIOENCODING": "ascii"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    if fmt == "table":  # for people: the locale's encoding, with "?" for what it cannot show
        assert out.decode("ascii")
        return
    decoded = out.decode("utf-8")  # strict: raises on invalid UTF-8
    if fmt == "jsonl":
        assert jsonl(decoded)[0]["text"] == text
    else:
        assert text in decoded


@pytest.mark.slow
def test_table_into_a_closed_pipe_exits_quietly(run_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("".join(f"text number {i} with some words\n" for i in range(3000)), encoding="utf-8")
    proc = child(str(run_dir), "--input", str(big), "--format", "table")
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdin.close()  # type: ignore[union-attr]
    head = [proc.stdout.readline(), proc.stdout.readline()]  # `| head -n 2`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert b"id" in head[0]
    assert err.decode().splitlines() == ["classifying (3,000 texts)"]  # the progress's first line only


def test_tsv_output_reads_back_in_predict_and_prepare(run_dir: Path, tmp_path: Path) -> None:
    tricky = ["tab\there", "line\nbreak", "carriage\rreturn", 'a "quote" at "start', "back\\slash \\t \\n"]
    texts = [f"{t} number {i}" for i in range(3) for t in tricky]
    # A threshold between the median probabilities gives both classes, so prepare takes the file.
    p_spam = sorted(r["probs"]["spam"] for r in jsonl(invoke(str(run_dir), *texts)[1]))
    cut = str((p_spam[6] + p_spam[7]) / 2)
    out = tmp_path / "pred.tsv"
    args = ["--format", "tsv", "--threshold", cut, "--positive", "spam", "--output", str(out)]
    code, _, err = invoke(str(run_dir), *args, *texts)
    assert code == 0, err
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(texts) + 1  # one line a record
    code, again, err = invoke(str(run_dir), "--input", str(out))
    assert code == 0, err
    assert [(r["id"], r["text"]) for r in jsonl(again)] == [(str(i), t) for i, t in enumerate(texts)]
    prepared = tmp_path / "prepared"
    result = CliRunner().invoke(
        app, ["prepare", "--input", str(out), "--split", "0.5,0.5,0", "--out", str(prepared)]
    )
    assert result.exit_code == 0, result.output
    got = []
    for split in ("train", "validation", "test"):
        with open(prepared / f"{split}.csv", encoding="utf-8", newline="") as fh:
            got += [row[0] for row in list(csv.reader(fh))[1:]]
    assert sorted(got) == sorted(texts)


def test_ids_of_the_input_are_kept(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"key": 17, "text": "a"}\n{"key": "x-2", "text": "b"}\n', encoding="utf-8")
    code, out, _ = invoke(str(run_dir), "--input", str(path), "--id-column", "key")
    assert code == 0 and [r["id"] for r in jsonl(out)] == [17, "x-2"]
    code, out, _ = invoke(str(run_dir), "--input", str(path), "--id-column", "key", "--format", "csv")
    assert [row[0] for row in csv.reader(io.StringIO(out))] == ["id", "17", "x-2"]
    code, out, _ = invoke(str(run_dir), "--input", str(path))  # no id column: positions
    assert [r["id"] for r in jsonl(out)] == [0, 1]
    code, _, err = invoke(str(run_dir), "--input", str(path), "--id-column", "nope")
    assert code == 2 and "no key 'nope'" in err
    code, _, err = invoke(str(run_dir), "--id-column", "key", "some text")
    assert code == 2 and "--id-column only applies to --input" in err


@pytest.mark.slow
def test_results_reach_a_pipe_while_input_is_still_open(run_dir: Path) -> None:
    proc = child(str(run_dir), "-")
    assert proc.stdin is not None and proc.stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        for i, text in enumerate(["hello there", "win a prize"]):
            proc.stdin.write(text.encode() + b"\n")
            proc.stdin.flush()
            record = json.loads(lines.get(timeout=90))  # stdin is still open: no end of input yet
            assert (record["id"], record["text"]) == (i, text)
    finally:
        proc.stdin.close()
    assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_output_file_is_whole_or_absent(run_dir: Path, tmp_path: Path) -> None:
    good = "".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(1500))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "not json\n" + good, encoding="utf-8")
    target = tmp_path / "out" / "pred.jsonl"
    target.parent.mkdir()
    target.write_text("old results\n", encoding="utf-8")
    code, out, err = invoke(str(run_dir), "--input", str(bad), "--output", str(target))
    assert code == 2 and "line 1501 is not valid JSON" in err and out == ""
    assert target.read_text(encoding="utf-8") == "old results\n"  # no partial file, the old one kept
    assert sorted(p.name for p in target.parent.iterdir()) == ["pred.jsonl"]  # no temporary file
    # On stdout the stream is cut where the input broke: the results of every text before it.
    code, out, err = invoke(str(run_dir), "--input", str(bad))
    assert code == 2 and [r["id"] for r in jsonl(out)] == list(range(1500))
    bad.with_name("ok.jsonl").write_text(good, encoding="utf-8")
    code, out, err = invoke(str(run_dir), "--input", str(bad.with_name("ok.jsonl")), "--output", str(target))
    assert code == 0 and out == ""
    assert [r["id"] for r in jsonl(target.read_text(encoding="utf-8"))] == list(range(1500))


def test_output_that_cannot_be_written_is_refused_before_the_run_loads(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    for place in (tmp_path / "file" / "pred.jsonl", Path("/proc/gptclf-nowhere/pred.jsonl")):
        code, out, err = invoke(str(tmp_path / "no-run"), "--output", str(place), "x")
        assert code == 2 and "cannot write into" in err, err  # not the missing run: checked first
        assert out == ""


def test_non_finite_logits_exit_1_naming_the_run(tmp_path: Path) -> None:
    run = nan_run(tmp_path / "nan-run")
    code, out, err = invoke(str(run), "hello", "there")
    assert code == 1 and out == ""
    assert f"gptclf: error: the model of {run} gives non-finite logits" in err
    assert "NaN" not in out


def test_batch_size_zero_names_only_the_batch_size(run_dir: Path) -> None:
    code, _, err = invoke(str(run_dir), "--batch-size", "0", "x")
    assert code == 2 and "--batch-size must be >= 1 (got 0)" in err and "chunk" not in err


needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="the onnx extra is not installed (pip install '.[onnx]')",
)


@pytest.fixture(scope="module")
def onnx_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptclf.engines.onnx_build import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    export_onnx(load_run(run_dir), out, quantize=None)
    return out


def probs_of(stdout: str) -> list[list[float]]:
    return [list(r["probs"].values()) for r in jsonl(stdout)]


@needs_onnx
@pytest.mark.parametrize(
    "args", [["--engine", "onnx"], ["--quantize", "int8"], ["--engine", "onnx", "--quantize", "int8"]]
)
@pytest.mark.slow
def test_other_engines_give_the_same_records(run_dir: Path, args: list[str]) -> None:
    code, want, _ = invoke(str(run_dir), "--batch-size", "8", *TEXTS)
    code_other, got, _ = invoke(str(run_dir), "--batch-size", "8", *args, *TEXTS)
    assert code == code_other == 0
    assert [(r["id"], r["text"]) for r in jsonl(got)] == [(r["id"], r["text"]) for r in jsonl(want)]
    tolerance = 1e-4 if "int8" not in args else 0.05
    for a, b in zip(probs_of(want), probs_of(got), strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


@pytest.mark.slow
@needs_onnx
def test_an_export_folder_predicts_like_its_run_in_every_format(run_dir: Path, onnx_dir: Path) -> None:
    for fmt in ("jsonl", "csv", "tsv"):
        code, want, _ = invoke(str(run_dir), "--format", fmt, *TEXTS)
        code_onnx, got, _ = invoke(str(onnx_dir), "--format", fmt, *TEXTS)
        assert code == code_onnx == 0
        if fmt == "jsonl":
            for a, b in zip(probs_of(want), probs_of(got), strict=True):
                assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 2e-6  # 6 decimals, rounded
            assert [r["label"] for r in jsonl(got)] == [r["label"] for r in jsonl(want)]
        else:
            assert got.splitlines()[0] == want.splitlines()[0]
            assert len(got.splitlines()) == len(want.splitlines())
    code, out, _ = invoke(str(onnx_dir), "-", stdin="one\ntwo\n")
    assert code == 0 and [r["text"] for r in jsonl(out)] == ["one", "two"]


@pytest.mark.slow
@needs_onnx
def test_engine_and_export_problems_exit_2_in_one_line(run_dir: Path, onnx_dir: Path, tmp_path: Path) -> None:
    import shutil

    from gptclf.fileio import sha256_file

    three = tmp_path / "three"
    shutil.copytree(onnx_dir, three)
    record = json.loads((three / "gptclf-onnx.json").read_text())
    record["run"]["classes"] = ["a", "b", "c"]
    (three / "gptclf-onnx.json").write_text(json.dumps(record))
    other = tmp_path / "other"
    shutil.copytree(onnx_dir, other)
    from tests.engines.test_onnx_session import graph_file

    graph_file(other / "model.onnx", [("x", 7, ["batch", "seq"])], 2)  # 7: int64
    record = json.loads((other / "gptclf-onnx.json").read_text())  # a record made for that graph
    record["onnx"]["sha256"] = sha256_file(other / "model.onnx")
    (other / "gptclf-onnx.json").write_text(json.dumps(record))
    cases = [
        ([str(run_dir), "--quantize", "int8", "--device", "cuda"], "--quantize int8 runs on the CPU only"),
        ([str(run_dir), "--quantize", "int8", "--precision", "bf16"], "--quantize int8 runs in fp32 only"),
        ([str(run_dir), "--quantize", "int8", "--precision", "fp16"], "--quantize int8 runs in fp32 only"),
        ([str(run_dir), "--engine", "onnx", "--precision", "bf16"], "--engine onnx runs in fp32 only"),
        ([str(onnx_dir), "--engine", "torch"], "--engine onnx only"),
        ([str(three)], "gives 2 logits per text but the export record names 3 classes"),
        ([str(other)], "its inputs are x tensor(int64) rank 2"),
    ]
    for args, words in cases:
        code, out, err = invoke(*args, "x")
        assert code == 2, (args, err)
        assert words in err and err.count("gptclf: error") == 1 and "Traceback" not in err, (args, err)
        assert out == ""


def test_onnx_engine_without_onnxruntime_exits_2_naming_the_extra(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    code, out, err = invoke(str(run_dir), "--engine", "onnx", "x")
    assert code == 2 and out == ""
    assert "pip install 'gptclf[onnx]'" in err and "Traceback" not in err


@pytest.mark.slow
@needs_onnx
def test_a_multi_label_run_predicts_the_same_label_sets_through_onnx(tmp_path: Path) -> None:
    from gptclf.engines.onnx_build import export_onnx
    from tests.inference.test_predict import tiny_classifier

    classes = ["billing", "bug", "praise"]
    run = make_run(tmp_path / "run", classes=classes, max_length=12, model=tiny_classifier(classes, seed=5))
    info = json.loads((run / "run.json").read_text())
    thresholds = {c: {"threshold": t} for c, t in zip(classes, (0.3, 0.5, 0.7), strict=True)}
    (run / "run.json").write_text(json.dumps({**info, "multi_label": True, "thresholds": thresholds}))
    (tmp_path / "onnx").mkdir()
    export_onnx(load_run(run), tmp_path / "onnx", quantize=None)
    code, want, err = invoke(str(run), *TEXTS)
    assert code == 0, err
    assert all(isinstance(r["labels"], list) for r in jsonl(want))  # the multi-label records
    for source in ([str(run), "--engine", "onnx"], [str(tmp_path / "onnx")]):
        code, got, err = invoke(*source, *TEXTS)
        assert code == 0, err
        assert [r["labels"] for r in jsonl(got)] == [r["labels"] for r in jsonl(want)]
        for a, b in zip(probs_of(want), probs_of(got), strict=True):
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 2e-6


def test_parquet_in_and_out_with_ids_and_kept_columns_joins_back(run_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "tickets.parquet"
    bodies = [f"ticket {i}: " + ("win cash now" if i % 3 else "see you at lunch") for i in range(50)]
    pq.write_table(
        pa.table({"body": bodies, "ticket_id": [f"T{i}" for i in range(50)], "team": ["a", "b"] * 25}),
        source,
        row_group_size=8,
    )
    out = tmp_path / "out.parquet"
    code, _, err = invoke(
        str(run_dir), "--input", str(source), "--text-column", "body", "--id-column", "ticket_id",
        "--keep-columns", "team", "--output", str(out),
    )  # fmt: skip
    assert code == 0, err
    table = pq.read_table(out)
    assert table.schema.names == ["id", "text", "label", "p_ham", "p_spam", "team"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [f"T{i}" for i in range(50)]
    assert [r["team"] for r in rows] == ["a", "b"] * 25
    # The same records as JSONL, probabilities and labels alike.
    code, out_jsonl, _ = invoke(
        str(run_dir), "--input", str(source), "--text-column", "body", "--keep-columns", "team"
    )
    for r, j in zip(rows, jsonl(out_jsonl), strict=True):
        assert (r["text"], r["label"], r["team"]) == (j["text"], j["label"], j["team"])
        assert r["p_spam"] == j["probs"]["spam"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "parquet"], "--format parquet writes a file"),
        (["--keep-columns", "label"], "predict writes its own 'label'"),
        (["--keep-columns", "nope"], "has no column 'nope'"),
        (["--keep-columns", ","], "--keep-columns names no column"),
        # A Parquet file gets the same refusals (a kept p_spam or text once replaced the record's own)
        (["--keep-columns", "p_spam", "--output", "{tmp}/out.parquet"], "predict writes its own 'p_spam'"),
        (["--keep-columns", "text", "--output", "{tmp}/out.parquet"], "predict writes its own 'text'"),
        (["--keep-columns", "label", "--output", "{tmp}/out.parquet"], "predict writes its own 'label'"),
        (["--keep-columns", "team,team", "--output", "{tmp}/out.parquet"], "names 'team' twice"),
        (["--keep-columns", "p_spam", "--format", "parquet", "--output", "{tmp}/o"], "its own 'p_spam'"),
        (["--keep-columns", "p_spam", "--output", "{tmp}/o.parquet", "--shard", "1/2"], "its own 'p_spam'"),
        # A file named for another format than --format's (CSV text in a .parquet file)
        (["--format", "csv", "--output", "{tmp}/o.parquet"], "--format csv but --output"),
        (["--format", "parquet", "--output", "{tmp}/o.csv"], "is named as csv: name the file for what it"),
        (["--format", "table", "--output", "{tmp}/o.jsonl"], "(e.g. o.txt) or drop --format"),
        # A compressed name: the file would be plain text (and JSONL under a .csv.gz name)
        (["--output", "{tmp}/o.csv.gz"], "predict writes uncompressed files; write o.csv and compress it"),
        (["--format", "jsonl", "--output", "{tmp}/o.jsonl.xz"], "| xz > o.jsonl.xz"),
    ],
)
def test_bad_parquet_and_kept_column_options(
    run_dir: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    table = tmp_path / "in.csv"
    table.write_text("text,label,p_spam,team\nhello,ham,1.0,a\n", encoding="utf-8")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = invoke(str(run_dir), "--input", str(table), *args)
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # nothing written, no work kept


def test_a_job_from_a_file_shows_texts_done_rate_and_eta(run_dir: Path, tmp_path: Path) -> None:
    """Off a terminal: a first line with the total (Parquet metadata, or the file's lines counted),
    then lines with texts done, texts/s and the ETA (at most every 30 s; here the final state)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gptclf.data.tables import estimate_rows
    from gptclf.progress import ConsoleProgress

    texts = tmp_path / "in.txt"
    texts.write_text("".join(f"text {i}\n" for i in range(2500)), encoding="utf-8")
    table = tmp_path / "in.csv"
    table.write_text("text,label\n" + "".join(f"t{i},a\n" for i in range(40)) + "last,a", encoding="utf-8")
    packed = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(77)]}), packed)
    assert estimate_rows(texts, None) == 2500
    assert estimate_rows(table, None) == 41
    assert estimate_rows(packed, None) == 77
    assert estimate_rows("-", None) is None
    code, _, err = invoke(str(run_dir), "--input", str(texts), "--output", str(tmp_path / "out.jsonl"))
    assert code == 0 and "classifying (2,500 texts)" in err
    # Every chunk is counted: with no wait between lines, each shows texts done, rate and ETA.
    import io

    from rich.console import Console

    from gptclf.inference.predict import with_progress

    buffer = io.StringIO()
    shown = ConsoleProgress(Console(file=buffer, width=200), interval=0)
    chunks = [[None] * 1024, [None] * 1024, [None] * 452]
    assert [len(c) for c in with_progress(iter(chunks), shown, 2500)] == [1024, 1024, 452]  # type: ignore[arg-type]
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "classifying (2,500 texts)"
    assert (
        lines[1].startswith("classifying: 1,024/2,500 texts, rate ")
        and "texts/s" in lines[1]
        and "ETA" in lines[1]
    )
    assert lines[-1].startswith("classifying: 2,500/2,500 texts")


@pytest.mark.parametrize("fmt", ["txt-jsonl", "csv-csv", "parquet-csv", "jsonl-tsv"])
def test_shards_concatenate_to_the_whole_output_byte_for_byte(
    run_dir: Path, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--shard K/N: contiguous parts of whole chunks (here of 16 texts: 103 texts are 7 chunks, so
    4 parts of 1 or 2 chunks), with the input's own row numbers (or ids); every chunk is sorted and
    batched as in the unsharded run, and parts after the first write no header, so `cat` of the
    parts in order is the unsharded output byte for byte."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gptclf.data.tables import part_rows

    monkeypatch.setattr("gptclf.inference.predict.CHUNK_SIZE", 16)
    source_fmt, out_fmt = fmt.split("-")
    texts = [f"message {i} " + "win cash " * (i % 4) for i in range(103)]
    source = tmp_path / f"in.{source_fmt}"
    if source_fmt == "txt":
        source.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    elif source_fmt == "csv":
        source.write_text("text\n" + "".join(t + "\n" for t in texts), encoding="utf-8")
    elif source_fmt == "jsonl":
        source.write_text("".join(json.dumps({"id": f"m{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    else:
        pq.write_table(pa.table({"text": texts}), source, row_group_size=10)
    whole = tmp_path / f"whole.{out_fmt}"
    assert invoke(str(run_dir), "--input", str(source), "--format", out_fmt, "--output", str(whole))[0] == 0
    parts = []
    for k in range(1, 5):
        part = tmp_path / f"part{k}.{out_fmt}"
        code, _, err = invoke(
            str(run_dir),
            "--input",
            str(source),
            "--shard",
            f"{k}/4",
            "--format",
            out_fmt,
            "--output",
            str(part),
        )
        assert code == 0, err
        parts.append(part.read_bytes())
        start, end = part_rows(103, (k, 4), 16)  # the progress counts this part's rows, not a 4th
        assert f"classifying ({end - start} texts)" in err, err
    assert b"".join(parts) == whole.read_bytes()
    assert all(parts)  # no part is empty


def test_a_parquet_shard_skips_the_row_groups_before_it(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gptclf.data.tables import read_inputs, shard_rows

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(100)]}), path, row_group_size=7)
    assert shard_rows(path, "parquet", None, "utf-8", (2, 3)) == (33, 66)
    got = list(read_inputs(path, shard=(2, 3)))
    assert got == [(i, f"t{i}") for i in range(33, 66)]
    parts = [[i for i, _ in read_inputs(path, shard=(k, 7))] for k in range(1, 8)]
    assert [i for part in parts for i in part] == list(range(100))  # contiguous, each row once
    assert {len(part) for part in parts} == {14, 15}
    # In blocks of 16 (predict's chunks): 7 blocks, 3 parts of 2 or 3 whole blocks.
    assert [shard_rows(path, "parquet", None, "utf-8", (k, 3), 16) for k in (1, 2, 3)] == [
        (0, 32),
        (32, 64),
        (64, 100),
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--shard", "0/3"], "K must be between 1 and N"),
        (["--shard", "4/3"], "K must be between 1 and N"),
        (["--shard", "1-3"], "is not K/N"),
        (["--shard", "1/0"], "K must be between 1 and N"),
    ],
)
def test_bad_shards_are_one_line(run_dir: Path, tmp_path: Path, args: list[str], words: str) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a\nb\n", encoding="utf-8")
    code, _, err = invoke(str(run_dir), "--input", str(source), *args)
    assert code == 2 and words in err, err
    code, _, err = invoke(str(run_dir), "--input", "-", "--shard", "1/2", stdin="a\n")
    assert code == 2 and "stdin cannot be read in parts" in err


def test_a_long_stream_on_stdin_shows_its_progress_and_a_short_one_stays_quiet(run_dir: Path) -> None:
    """Issue 21: stdin's size is unknown, so the progress counts texts; it shows once the stream has
    run 2 s (the first chunk after that), so a quick pipeline's stderr is as it was."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cli.main", "predict", str(run_dir), "-", "--device", "cpu"]
    quick = subprocess.run(cmd, input="one\ntwo\n", capture_output=True, text=True, env=env, timeout=120)
    assert quick.returncode == 0 and quick.stderr == ""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("the first text\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 0  # its chunk is out: the stream runs
    import time

    time.sleep(2.1)  # the only way to make a stream that has lasted 2 s
    proc.stdin.write("a later text\n")
    proc.stdin.close()
    assert proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert json.loads(out.splitlines()[0])["id"] == 1
    assert err.splitlines()[0] == "classifying"


@pytest.mark.parametrize("to_file", [False, True])
@pytest.mark.parametrize("case", ["missing-column", "empty", "fake-parquet", "truncated-gz"])
def test_a_bad_input_file_is_one_line_before_any_progress(
    run_dir: Path, tmp_path: Path, case: str, to_file: bool
) -> None:
    """The file's first record is read before the run loads: its error is the only line on stderr
    (no "classifying (N texts)" line before it), and no output or job folder is left."""
    import gzip

    folder = tmp_path / "in"
    folder.mkdir()
    args = ["--text-column", "body"] if case == "missing-column" else []
    if case == "missing-column":
        source = folder / "t.csv"
        source.write_text("text,label\n" + "hello,ham\n" * 3000, encoding="utf-8")
    elif case == "empty":
        source = folder / "t.csv"
        source.write_bytes(b"")
    elif case == "fake-parquet":
        source = folder / "t.parquet"
        source.write_bytes(b"PAR1 but not really " * 100)
    elif case == "truncated-gz":
        source = folder / "t.txt.gz"
        packed = gzip.compress("".join(f"text {i * 7919 % 10007}\n" for i in range(5000)).encode())
        source.write_bytes(packed[:30])  # cut within the first line (one cut later is said mid-job)
    out = ["--output", str(tmp_path / "out.jsonl")] if to_file else []
    code, stdout, err = invoke(str(run_dir), "--input", str(source), *args, *out)
    assert code == 2 and err.startswith("gptclf: error:") and len(err.strip().splitlines()) == 1, err
    assert stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize(("name", "first"), [("o.csv", "id,text,label,"), ("o.TSV", "id\ttext\tlabel\t"),
                                              ("o.jsonl", '{"id": 0,'), ("o.txt", '{"id": 0,')])  # fmt: skip
def test_without_format_the_outputs_name_says_it(
    run_dir: Path, tmp_path: Path, name: str, first: str
) -> None:
    """`--output o.csv` writes CSV (it wrote JSONL into a .csv file, which read back as CSV fails);
    a name that says no format keeps the JSONL default off a terminal."""
    out = tmp_path / name
    code, _, err = invoke(str(run_dir), "win cash now", "see you at lunch", "--output", str(out))
    assert code == 0, err
    assert out.read_text(encoding="utf-8").startswith(first)
