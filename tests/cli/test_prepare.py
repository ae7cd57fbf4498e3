"""`gptclf prepare` end to end: outputs, reproducibility, and every bad input -> exit 2, --out untouched."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from tests.conftest import SMS_FILE, needs_shared_sms

FILES = ("train.csv", "validation.csv", "test.csv", "labels.json")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["prepare", *map(str, args)])


def one_line(result: Result) -> str:
    """The error message with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def write_table(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rows_of(counts: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"message {i} for {label}", label) for label, n in counts.items() for i in range(n)]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder`` (temporary ones included) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_table(tmp_path / "data.csv", rows_of({"pos": 30, "neg": 20}))


@pytest.fixture
def work(tmp_path: Path, table: Path) -> Path:
    """A folder holding a prepared set in work/out, which failed runs must leave as it was."""
    work = tmp_path / "work"
    result = run("--input", table, "--out", work / "out")
    assert result.exit_code == 0, result.output
    return work


def test_writes_the_four_files_and_json_summary(tmp_path: Path) -> None:
    rows = [
        *rows_of({"pos": 30, "neg": 20}),
        ("   ", "pos"),
        ("", "neg"),
        ("text", "  "),
        ("spaced", " neg "),
    ]
    path = write_table(tmp_path / "in.csv", rows, header=("body", "sentiment"))
    out = tmp_path / "out"
    result = run(
        "--input", path, "--text-column", "body", "--label-column", "sentiment", "--out", out, "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["neg", "pos"]
    assert summary["dropped"] == {"empty text": 2, "missing label": 1}
    assert sum(summary["counts"][s]["neg"] for s in summary["counts"]) == 21
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    assert labels["classes"] == ["neg", "pos"]
    assert labels["balance"] == "none" and labels["seed"] == 123 and labels["stratify"] is True
    with open(out / "train.csv", encoding="utf-8", newline="") as fh:
        train = list(csv.reader(fh))
    assert train[0] == ["text", "label"] and {r[1] for r in train[1:]} == {"neg", "pos"}


def test_human_table_goes_to_stderr(table: Path, tmp_path: Path) -> None:
    result = run("--input", table, "--out", tmp_path / "out")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "validation" in result.stderr


def test_same_seed_twice_gives_identical_bytes(table: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        args = ("--input", table, "--out", tmp_path / name, "--seed", "5", "--balance", "oversample")
        assert run(*args).exit_code == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_classes_order_drop_unknown_and_force(work: Path, tmp_path: Path) -> None:
    path = write_table(tmp_path / "more.csv", rows_of({"pos": 30, "neg": 20, "meh": 2}))
    out = work / "out"
    result = run("--input", path, "--classes", "pos,neg", "--drop-unknown", "--out", out, "--force", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dropped"] == {"unknown label": 2}
    assert json.loads((out / "labels.json").read_text(encoding="utf-8"))["classes"] == ["pos", "neg"]
    assert not [p for p in work.iterdir() if p.name != "out"]  # no temporary folder left behind


def test_other_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(("text,label\n" + "".join(f"café {i},{i % 2}\n" for i in range(20))).encode("latin-1"))
    result = run("--input", path, "--encoding", "latin-1", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    assert "café" in (tmp_path / "out" / "train.csv").read_text(encoding="utf-8")


@needs_shared_sms
def test_sms_spam_book_recipe(isolated_home: Path, tmp_path: Path) -> None:
    # The file in the cache where the downloader would put it, so nothing is fetched.
    cached = isolated_home / "datasets" / "sms-spam" / "SMSSpamCollection"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(SMS_FILE, cached)
    outputs = []
    for name in ("one", "two"):
        result = run("--dataset", "sms-spam", "--no-stratify", "--out", tmp_path / name, "--json")
        assert result.exit_code == 0, result.output
        outputs.append(tuple((tmp_path / name / f).read_bytes() for f in FILES))
    summary = json.loads(result.stdout)
    assert summary["balance"] == "undersample"
    sizes = [sum(summary["counts"][s].values()) for s in ("train", "validation", "test")]
    assert sizes == [1045, 149, 300]
    assert {c: sum(summary["counts"][s][c] for s in summary["counts"]) for c in summary["classes"]} == {
        "ham": 747,
        "spam": 747,
    }
    assert summary["duplicate_texts"] == 403
    assert outputs[0] == outputs[1]


# --- bad input: exit 2, one message, --out as it was -------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str | Path], str]]:
    """Name -> (arguments besides --out/--force, a phrase the message must hold)."""
    small = write_table(tmp / "small.csv", rows_of({"pos": 30, "neg": 3}))
    single = write_table(tmp / "single.csv", rows_of({"pos": 30}))
    unknown = write_table(tmp / "unknown.csv", rows_of({"pos": 30, "neg": 20, "meh": 4}))
    empty = tmp / "empty.csv"
    empty.write_bytes(b"")
    latin = tmp / "latin.csv"
    latin.write_bytes(b"text,label\nfine,pos\ncaf\xe9,neg\n")
    blank_texts = write_table(tmp / "blank.csv", [(" ", "pos"), ("", "neg")])
    bad_json = tmp / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": "pos"}\nnot json\n', encoding="utf-8")
    good = write_table(tmp / "good.csv", rows_of({"pos": 30, "neg": 20}))
    return {
        "missing file": (["--input", tmp / "absent.csv"], "no such file"),
        "missing column": (
            ["--input", good, "--text-column", "body"],
            "no column 'body' (columns: text, label)",
        ),
        "empty file": (["--input", empty], "is empty"),
        "only empty texts": (["--input", blank_texts], "no row with both a text and a label"),
        "class too small": (["--input", small], "'neg' has 3; each class needs at least 6 rows"),
        "single class": (["--input", single], "single class ('pos'"),
        "class twice": (["--input", good, "--classes", "pos,neg,pos"], "'pos' more than once"),
        "class absent": (["--input", good, "--classes", "pos,neg,zzz"], "names 'zzz', which no row"),
        "unknown labels": (["--input", unknown, "--classes", "pos,neg"], "'meh' (4 rows)"),
        "negative fraction": (["--input", good, "--split", "0.8,-0.1,0.3"], "cannot be negative"),
        "sum not 1": (["--input", good, "--split", "0.7,0.2,0.2"], "must sum to 1"),
        "not numbers": (["--input", good, "--split", "most,some"], "two or three numbers"),
        "not utf-8": (["--input", latin], "line 3 is not valid utf-8; pass --encoding"),
        "bad json": (["--input", bad_json], "line 2 is not valid JSON"),
        "unknown format": (["--input", good, "--format", "xlsx"], "unknown format 'xlsx'"),
        "unknown balance": (["--input", good, "--balance", "smote"], "unknown --balance 'smote'"),
        "no source": ([], "give either --dataset sms-spam or --input FILE"),
        "two sources": (["--input", good, "--dataset", "sms-spam"], "give either"),
        "unknown dataset": (["--dataset", "imdb"], "unknown dataset 'imdb'"),
        "negative seed": (["--input", good, "--seed", "-1"], "--seed must be"),
    }


BAD_INPUTS = [
    "missing file", "missing column", "empty file", "only empty texts", "class too small",
    "single class", "class twice", "class absent", "unknown labels", "negative fraction", "sum not 1",
    "not numbers", "not utf-8", "bad json", "unknown format", "unknown balance", "no source",
    "two sources", "unknown dataset", "negative seed",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_and_leaves_out_unchanged(case: str, work: Path, tmp_path: Path) -> None:
    args, phrase = _bad_inputs(tmp_path)[case]
    before = snapshot(work)
    # --force, so that it is the input, not the prepared set already there, that is refused.
    result = run(*args, "--out", work / "out", "--force")
    assert result.exit_code == 2, result.output
    assert phrase in one_line(result)
    assert one_line(result).startswith("gptclf: error:")
    assert snapshot(work) == before


def test_bad_input_cases_are_all_run(tmp_path: Path) -> None:
    assert sorted(_bad_inputs(tmp_path)) == sorted(BAD_INPUTS)


def test_prepared_out_is_refused_without_force(work: Path, table: Path) -> None:
    before = snapshot(work)
    result = run("--input", table, "--out", work / "out", "--seed", "9")
    assert result.exit_code == 2
    assert "already holds a prepared set" in one_line(result) and "--force" in one_line(result)
    assert snapshot(work) == before
    assert run("--input", table, "--out", work / "out", "--seed", "9", "--force").exit_code == 0
    assert snapshot(work) != before


def test_out_that_is_a_file_is_refused(table: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("keep me", encoding="utf-8")
    result = run("--input", table, "--out", target)
    assert result.exit_code == 2 and "is a file" in one_line(result)
    assert target.read_text(encoding="utf-8") == "keep me"


def test_a_table_on_stdin_and_a_compressed_file_give_the_files_of_the_plain_file(
    table: Path, tmp_path: Path
) -> None:
    """``--input -`` reads stdin like a file (issue: it ended in a FileNotFoundError traceback);
    a .csv.gz is read as a stream (it was 'cannot tell the format')."""
    import gzip

    plain = run("--input", table, "--out", tmp_path / "plain")
    assert plain.exit_code == 0, plain.stderr
    data = table.read_bytes()
    piped = CliRunner().invoke(
        app,
        ["prepare", "--input", "-", "--input-format", "csv", "--out", str(tmp_path / "piped")],
        input=data,
    )
    assert piped.exit_code == 0, piped.stderr
    packed = tmp_path / "table.csv.gz"
    packed.write_bytes(gzip.compress(data))
    assert run("--input", packed, "--out", tmp_path / "packed").exit_code == 0
    for name in ("train.csv", "validation.csv", "test.csv"):
        want = (tmp_path / "plain" / name).read_bytes()
        assert (tmp_path / "piped" / name).read_bytes() == want == (tmp_path / "packed" / name).read_bytes()
    source = json.loads((tmp_path / "piped" / "labels.json").read_text())["source"]
    assert source["file"] == "stdin" and "sha256" not in source
    untold = CliRunner().invoke(app, ["prepare", "--input", "-", "--out", str(tmp_path / "x")], input=data)
    assert untold.exit_code == 2 and "pass --input-format" in one_line(untold)
    assert "Traceback" not in untold.stderr and not (tmp_path / "x").exists()


def test_long_steps_show_progress_lines_on_stderr_and_short_ones_none(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step shown (as if each ran long): rows read with the file's size, then rows written;
    the summary table after them. A run of ordinary length shows the table alone."""
    quiet = run("--input", table, "--out", tmp_path / "quiet")
    assert quiet.exit_code == 0 and "reading" not in quiet.stderr and "writing" not in quiet.stderr
    monkeypatch.setattr("gptclf.data.long_steps.SHOW_AFTER", 0.0)
    result = run("--input", table, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[:2] == ["reading data.csv (50 rows)", "writing (50 rows)"]
    assert "validation" in result.stderr  # the table follows
    for name in FILES:  # and the files are those of the quiet run
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "quiet" / name).read_bytes()
