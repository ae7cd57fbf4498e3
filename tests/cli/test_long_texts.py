"""--long-texts end to end: a word placed past the first --max-length tokens, which truncation never
sees and windows do; the settings stored in run.json and used by evaluate and predict; the counts
on stderr and in labels.json; bad settings on every verb."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from gptclf.rundir.info import run_info_problems
from tests.conftest import REPO
from tests.finetune_helpers import FILLER, KEYWORDS, TINY_SPEC, install_tokenizer

runner = CliRunner()
TINY = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu", "--max-length", "64"]
# Clipping and the cosine schedule keep the tiny model from losing what it found (some seeds do).
LEARN = [*TINY, "--trainable", "all", "--lr", "3e-3", "--epochs", "15",
         "--clip-grad", "1.0", "--schedule", "cosine"]  # fmt: skip
RUN_V1 = REPO / "tests" / "fixtures" / "run-v1"


def long_table(n: int, seed: int, skip: int = 100) -> pd.DataFrame:
    """Texts of 150-400 tokens whose class keyword comes only after the first ``skip``: one filler
    word repeated (a tiny model finds the keyword among varied words too, but slowly)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("spam", "ham")[i % 2]
        size = rng.randrange(150, 400)
        words = [FILLER[0]] * size
        words.insert(rng.randrange(skip, size), KEYWORDS[label])
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def long_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(home with the tokenizer, prepared folder of 300 long texts, 60/20/20)."""
    root = tmp_path_factory.mktemp("long")
    home = root / "home"
    install_tokenizer(home)
    source = root / "source.csv"
    long_table(300, 0).to_csv(source, index=False)
    out = root / "prepared"
    result = runner.invoke(
        app,
        ["prepare", "--input", str(source), "--out", str(out), "--split", "0.6,0.2,0.2", "--home", str(home)],
    )
    assert result.exit_code == 0, result.stderr
    return home, out


def finetune(home: Path, data: Path, out: Path, *args: str) -> tuple[dict, str]:
    result = runner.invoke(
        app, ["finetune", "--data", str(data), "--home", str(home), "--out", str(out), "--json", *args]
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def window_run(
    long_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict, str]:
    home, data = long_data
    out = tmp_path_factory.mktemp("window") / "run"
    summary, stderr = finetune(home, data, out, *LEARN, "--long-texts", "window")
    return out, summary, stderr


@pytest.mark.slow
def test_window_finds_the_word_past_the_context_and_truncate_cannot(
    long_data: tuple[Path, Path], window_run: tuple[Path, dict, str], tmp_path: Path
) -> None:
    home, data = long_data
    truncated, stderr = finetune(home, data, tmp_path / "truncate", *LEARN)
    assert truncated["test_accuracy"] <= 0.7  # chance: the deciding word is never in the first 64 tokens
    assert "train split: 180 of 180 texts were longer than 64 tokens and were truncated" in stderr
    _, summary, stderr = window_run
    assert summary["test_accuracy"] >= 0.95
    assert "train split: 180 of 180 texts were longer than 64 tokens and were read in" in stderr


@pytest.mark.slow
def test_the_mode_is_stored_and_evaluate_uses_it_unless_overridden(
    window_run: tuple[Path, dict, str],
) -> None:
    out, summary, _ = window_run
    info = json.loads((out / "run.json").read_text())
    assert info["long_texts"] == {"mode": "window", "head_tokens": 16, "stride": 32, "aggregate": "mean"}
    result = runner.invoke(app, ["evaluate", str(out), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert metrics["long_texts"]["mode"] == "window" and metrics["long_texts"]["long"] == 60
    assert (
        metrics["truncated"] == 0
        and "60 of 60 texts were longer than 64 tokens and were read in" in result.stderr
    )
    cut = runner.invoke(app, ["evaluate", str(out), "--json", "--device", "cpu", "--long-texts", "truncate"])
    assert cut.exit_code == 0, cut.stderr
    assert json.loads(cut.stdout)["truncated"] == 60 and "were truncated" in cut.stderr
    assert json.loads(cut.stdout)["long_texts"]["windows"] == 60


@pytest.mark.slow
def test_predict_reads_a_very_long_line_in_windows(
    window_run: tuple[Path, dict, str], tmp_path: Path
) -> None:
    out, _, _ = window_run
    rng = random.Random(1)
    words = [rng.choice(FILLER) for _ in range(5000)]
    words.insert(4000, KEYWORDS["spam"])
    lines = ["apple river", " ".join(words), "stone " * 30]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app, ["predict", str(out), "--input", str(source), "--format", "jsonl", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in records] == [0, 1, 2]
    assert all(r["label"] in ("spam", "ham") for r in records)
    windows = len(range(0, 5001 - 64, 32)) + 1  # 5,001 one-token words, stride 32, the last at the end
    assert f"1 of 3 texts were longer than 64 tokens and were read in {windows} windows" in result.stderr
    # The same stream with the word cut off: head-tail keeps only the ends.
    again = runner.invoke(
        app, ["predict", str(out), "--input", str(source), "-f", "jsonl", "--long-texts", "head-tail"]
    )
    assert again.exit_code == 0 and "first 16 and last 48 tokens" in again.stderr


@pytest.mark.slow
def test_the_frozen_trunk_cache_holds_windows_like_texts(
    long_data: tuple[Path, Path], tmp_path: Path
) -> None:
    home, data = long_data
    args = [*TINY, "--epochs", "1", "--long-texts", "window", "--stride", "48"]
    cached, stderr = finetune(home, data, tmp_path / "cached", *args)
    plain, _ = finetune(home, data, tmp_path / "plain", *args, "--no-cache")
    assert "cached the hidden states after block 1" in stderr
    assert cached["test"]["loss"] == pytest.approx(plain["test"]["loss"], rel=1e-4)
    assert cached["test_accuracy"] == plain["test_accuracy"]


def test_prepare_counts_long_texts(long_data: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = long_data
    source = tmp_path / "mixed.csv"
    frame = pd.concat([long_table(20, 1), pd.DataFrame({"text": ["short one"] * 10, "label": ["ham"] * 10})])
    frame.to_csv(source, index=False)
    out = tmp_path / "prepared"
    args = ["prepare", "--input", str(source), "--out", str(out), "--home", str(home), "--max-length", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    lengths = json.loads((out / "labels.json").read_text())["lengths"]
    assert lengths["texts"] == 30 and lengths["over_max_length"] == 20 and lengths["over_context"] == 0
    assert lengths["percentiles"]["p50"] > 64 and 151 <= lengths["max"] <= 400
    assert (
        "20 exceed --max-length 64" in result.stderr and "0 of 30 texts exceed the context" in result.stderr
    )
    bad = runner.invoke(app, [*args[:-1], "0", "--force"])
    assert bad.exit_code == 2 and "--max-length must be >= 1" in bad.stderr
    shutil.rmtree(home / "tokenizer")
    quiet = runner.invoke(app, [*args, "--force"])
    assert quiet.exit_code == 0 and "token lengths not counted" in quiet.stderr
    assert "lengths" not in json.loads((out / "labels.json").read_text())
    install_tokenizer(home)


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--long-texts", "window", "--stride", "65"], "--stride must be in 1..64"),
        (["--long-texts", "window", "--stride", "0"], "--stride must be in 1..64"),
        (["--long-texts", "head-tail", "--head-tokens", "64"], "--head-tokens must be in 0..63"),
        (["--long-texts", "head-tail", "--head-tokens", "-2"], "--head-tokens must be in 0..63"),
        (["--aggregate", "median"], "--aggregate 'median'"),
        (["--long-texts", "slide"], "--long-texts 'slide'"),
    ],
)
def test_bad_long_text_settings_on_finetune(
    long_data: tuple[Path, Path], tmp_path: Path, args: list[str], phrase: str
) -> None:
    home, data = long_data
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["finetune", "--data", str(data), "--home", str(home), "--out", str(out), *TINY, *args]
    )
    assert result.exit_code == 2 and phrase in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--long-texts", "window", "--stride", "999"], "--stride must be in 1.."),
        (["--long-texts", "head-tail", "--head-tokens", "999"], "--head-tokens must be in 0.."),
        (["--aggregate", "median"], "--aggregate 'median'"),
        (["--long-texts", "slide"], "--long-texts 'slide'"),
    ],
)
def test_bad_long_text_overrides_on_evaluate_and_predict(
    verb: str, args: list[str], phrase: str, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    tail = ["hello", "--output", str(output)] if verb == "predict" else []
    result = runner.invoke(app, [verb, str(RUN_V1), *tail, *args])
    assert result.exit_code == 2 and phrase in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not output.exists()


def test_run_json_rules_for_long_texts() -> None:
    info = json.loads((RUN_V1 / "run.json").read_text())
    assert "long_texts" not in info and run_info_problems(info) == []  # an old run: truncate
    m = info["max_length"]
    good = {"mode": "window", "head_tokens": m // 4, "stride": m // 2, "aggregate": "max"}
    assert run_info_problems({**info, "long_texts": good}) == []
    for bad, key in [
        ({**good, "mode": "slide"}, "long_texts.mode"),
        ({**good, "stride": m + 1}, "long_texts.stride"),
        ({**good, "stride": 0}, "long_texts.stride"),
        ({**good, "head_tokens": m}, "long_texts.head_tokens"),
        ({**good, "aggregate": "sum"}, "long_texts.aggregate"),
        ({"stride": 3}, "long_texts must be"),
    ]:
        problems = run_info_problems({**info, "long_texts": bad})
        assert len(problems) == 1 and problems[0].startswith(key), problems


@pytest.mark.slow
def test_a_multi_label_run_reads_long_texts_in_windows(long_data: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.multilabel_helpers import write_table

    home, _ = long_data
    source = write_table(tmp_path / "multi.csv", 120)
    data = tmp_path / "prepared"
    prepared = runner.invoke(app, ["prepare", "--multi-label", "--input", str(source), "--out", str(data)])
    assert prepared.exit_code == 0, prepared.stderr
    args = [
        "--model",
        TINY_SPEC,
        "--weights",
        "random",
        "--device",
        "cpu",
        "--max-length",
        "6",
        "--epochs",
        "1",
    ]
    out = tmp_path / "run"
    _, stderr = finetune(home, data, out, *args, "--long-texts", "window", "--stride", "3")
    assert "texts were longer than 6 tokens and were read in" in stderr
    assert json.loads((out / "run.json").read_text())["long_texts"]["stride"] == 3
    evaluated = runner.invoke(app, ["evaluate", str(out), "--json"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "were read in" in evaluated.stderr
    text = "invoice crash apple river stone cloud paper green music"
    predicted = runner.invoke(app, ["predict", str(out), text, "-f", "jsonl", "--long-texts", "head-tail"])
    assert predicted.exit_code == 0, predicted.stderr
    assert (
        "1 of 1 texts were longer than 6 tokens and were cut to their first 1 and last 5" in predicted.stderr
    )


@pytest.mark.slow
def test_onnx_runtime_reads_long_texts_in_the_same_windows(
    window_run: tuple[Path, dict, str], tmp_path: Path
) -> None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason="the onnx extra is not installed (pip install '.[onnx]')")
    out, _, _ = window_run
    source = tmp_path / "in.txt"
    source.write_text("\n".join(long_table(6, 5)["text"]) + "\nshort one\n")
    probs = {}
    for engine in ("torch", "onnx"):
        result = runner.invoke(
            app, ["predict", str(out), "--input", str(source), "-f", "jsonl", "--engine", engine]
        )
        assert result.exit_code == 0, result.stderr
        assert "6 of 7 texts were longer than 64 tokens and were read in" in result.stderr
        probs[engine] = [json.loads(line)["probs"]["spam"] for line in result.stdout.splitlines()]
    assert probs["onnx"] == pytest.approx(probs["torch"], abs=1e-4)


def test_prepare_multi_label_counts_long_texts(long_data: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = long_data
    source = tmp_path / "tickets.csv"
    labels = ["bill", "bug", "bill|bug", ""] * 10
    texts = [("long " * 100 if i % 2 else "short one ") + f"row {i}" for i in range(len(labels))]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(source, index=False)
    out = tmp_path / "prepared"
    args = ["prepare", "--input", str(source), "--out", str(out), "--home", str(home), "--multi-label"]
    result = runner.invoke(app, [*args, "--classes", "bill,bug", "--max-length", "64"])
    assert result.exit_code == 0, result.stderr
    lengths = json.loads((out / "labels.json").read_text())["lengths"]
    assert lengths["texts"] == 40 and lengths["over_max_length"] == 20 and lengths["over_context"] == 0
    assert "20 exceed --max-length 64" in result.stderr


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
def test_numbers_of_a_mode_not_in_force_are_named_in_a_warning(verb: str, tmp_path: Path) -> None:
    run = shutil.copytree(RUN_V1, tmp_path / "run")  # it truncates
    tail = ["hello"] if verb == "predict" else []
    result = runner.invoke(app, [verb, str(run), *tail, "--stride", "4", "--head-tokens", "2"])
    assert result.exit_code == 0, result.stderr
    err = " ".join(result.stderr.split())
    assert "warning: --stride applies only with --long-texts window; ignored for --long-texts truncate" in err
    assert "warning: --head-tokens applies only with --long-texts head-tail; ignored" in err
    result = runner.invoke(app, [verb, str(run), *tail, "--long-texts", "window", "--stride", "4"])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


@pytest.mark.slow
def test_finetune_warns_of_a_number_its_mode_does_not_use(
    long_data: tuple[Path, Path], tmp_path: Path
) -> None:
    home, data = long_data
    result = runner.invoke(app, ["finetune", "--data", str(data), "--home", str(home), "--out",
                                 str(tmp_path / "run"), *TINY, "--epochs", "1", "--long-texts", "head-tail",
                                 "--stride", "8", "--max-length", "32"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "--stride applies only with --long-texts window; ignored for --long-texts head-tail" in " ".join(
        result.stderr.split()
    )
