from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from gptclf.data.prepared import prepared_fingerprint
from gptclf.inference.predict import Predictor
from gptclf.rundir import load_run
from gptclf.tasks.metrics import classification_metrics
from gptclf.tasks.single_label import SingleLabel
from tests.fault_helpers import spawn
from tests.inference.test_evaluate import LABELS, TEXTS, prepared_folder, write_csv
from tests.inference.test_predict import CLASSES, make_run, nan_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run that records a prepared folder, as `gptclf finetune --data` does."""
    tmp = tmp_path_factory.mktemp("evaluate")
    folder = prepared_folder(tmp)
    record = {"dir": str(folder), "fingerprint": prepared_fingerprint(folder)}
    return make_run(tmp / "run", data=record)


@pytest.fixture(scope="module")
def labelled(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("file") / "eval.csv", list(zip(TEXTS, LABELS, strict=True)))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["evaluate", *args])
    # stderr with its white space collapsed: rich may wrap a long message at the console width
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def direct_metrics(run_dir: Path, texts: list[str], labels: list[str]) -> dict:
    predictor = Predictor(load_run(run_dir), device="cpu", precision="fp32")
    return classification_metrics(predictor.logits(texts), [CLASSES.index(x) for x in labels], CLASSES)


def test_json_on_a_labelled_file_is_one_object_with_the_model_metrics(run_dir: Path, labelled: Path) -> None:
    code, out, _ = invoke(str(run_dir), "--input", str(labelled), "--json", "--batch-size", "4")
    assert code == 0
    metrics = json.loads(out)  # the whole of stdout is one JSON object
    expected = direct_metrics(run_dir, TEXTS, LABELS)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    for key in ("accuracy", "loss", "macro_f1", "roc_auc"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-5)
    assert set(metrics["per_class"]) == set(CLASSES)
    assert metrics["source"] == {"input": str(labelled), "dropped": {}}


@pytest.mark.slow
def test_split_of_the_recorded_data_and_data_override(run_dir: Path, tmp_path: Path) -> None:
    from gptclf.data.prepared import read_prepared

    folder = Path(load_run(run_dir).info["data"]["dir"])
    for split in ("validation", None):
        args = [str(run_dir), "--json"] + (["--split", split] if split else [])
        code, out, err = invoke(*args)
        assert code == 0, err
        metrics = json.loads(out)
        frame = read_prepared(folder).splits[split or "test"]
        assert metrics["n"] == len(frame)
        assert metrics["source"]["split"] == (split or "test")
        expected = direct_metrics(run_dir, frame["text"].tolist(), frame["label"].tolist())
        assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    other = prepared_folder(tmp_path)
    code, out, _ = invoke(str(run_dir), "--data", str(other), "--json")
    assert code == 0 and json.loads(out)["source"]["data"] == str(other)


def test_human_tables(run_dir: Path, labelled: Path) -> None:
    code, out, _ = invoke(str(run_dir), "--input", str(labelled))
    assert code == 0
    for words in ("accuracy", "macro F1", "ROC-AUC", "Confusion matrix", "spam", "ham"):
        assert words in out


def test_gates_exit_3_after_printing_the_metrics(run_dir: Path, labelled: Path) -> None:
    accuracy = direct_metrics(run_dir, TEXTS, LABELS)["accuracy"]
    code, out, err = invoke(str(run_dir), "--input", str(labelled), "--json", "--min-accuracy", "1.0")
    assert code == 3
    assert json.loads(out)["accuracy"] == pytest.approx(accuracy)
    assert f"accuracy {accuracy:.4f} is below --min-accuracy 1.0000" in err
    assert err.count("error:") == 1
    code, _, err = invoke(str(run_dir), "--input", str(labelled), "--min-f1", "0.99", "--json")
    assert code == 3 and "macro_f1" in err and "--min-f1 0.9900" in err
    code, _, _ = invoke(str(run_dir), "--input", str(labelled), "--min-accuracy", "0", "--min-f1", "0")
    assert code == 0


def test_bad_input_exits_2(run_dir: Path, labelled: Path, tmp_path: Path) -> None:
    unknown = write_csv(tmp_path / "unknown.csv", [("a", "ham"), ("b", "eggs")])
    no_data = make_run(tmp_path / "no_data")
    cases = [
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(tmp_path)], "not a complete gptclf run"),
        ([str(run_dir), "--input", str(unknown)], "eggs"),
        ([str(run_dir), "--split", "dev"], "unknown split"),
        ([str(run_dir), "--min-accuracy", "2"], "--min-accuracy"),
        ([str(run_dir), "--input", str(labelled), "--split", "test"], "--input"),
        ([str(run_dir), "--text-column", "msg"], "--text-column"),
        ([str(no_data)], "--data DIR"),
    ]
    for args, words in cases:
        code, out, err = invoke(*args)
        assert code == 2, (args, err)
        assert words in err, (args, err)
        assert "Traceback" not in err and out == ""


def test_reading_tokenising_and_the_reports_show_progress_on_stderr(
    run_dir: Path, labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptclf.inference import token_ids

    unknown = write_csv(tmp_path / "unknown.csv", [("a", "ham"), ("b", "eggs")])
    code, _, err = invoke(str(run_dir), "--input", str(unknown))
    assert code == 2 and err.startswith("gptclf: error:") and "eggs" in err  # a short step shows nothing
    monkeypatch.setattr(token_ids, "SHOW_AFTER", 0.0)  # shown at once, not only after two seconds
    errors = tmp_path / "errors.jsonl"
    args = ["evaluate", str(run_dir), "--input", str(labelled), "--errors", str(errors)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    # The file's size is known (its lines counted): off a terminal the step's first line says it.
    assert lines.index(f"tokenising ({len(TEXTS)} texts)") < lines.index("computing the metrics")
    assert "finding the misclassified texts" in lines


def test_non_finite_logits_exit_1_and_never_print_nan(labelled: Path, tmp_path: Path) -> None:
    run = nan_run(tmp_path / "nan-run")
    for extra in (["--json"], []):
        code, out, err = invoke(str(run), "--input", str(labelled), *extra)
        assert code == 1 and out == "", (extra, out)
        assert f"gptclf: error: the model of {run} gives non-finite logits" in err
        assert "Traceback" not in err


def test_tables_are_never_cropped_when_stdout_is_not_a_terminal(run_dir: Path, tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-folder-name-" * 6) / "with-a-deeper-level" / "evaluation-data.csv"
    deep.parent.mkdir(parents=True)
    write_csv(deep, list(zip(TEXTS, LABELS, strict=True)))
    assert len(str(deep)) > 160
    code, out, err = invoke(str(run_dir), "--input", str(deep))
    assert code == 0, err
    assert str(deep) in out  # whole, on one line: a pipe has no width to wrap at
    assert "…" not in out


def test_input_format_and_its_old_name(run_dir: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "eval.data", list(zip(TEXTS, LABELS, strict=True)))  # no extension
    code, _, err = invoke(str(run_dir), "--input", str(data))
    assert code == 2 and "pass --input-format (csv, tsv, jsonl, sms, parquet)" in err
    for flag in ("--input-format", "--format"):
        code, out, err = invoke(str(run_dir), "--input", str(data), flag, "csv", "--json")
        assert code == 0, err
        assert json.loads(out)["n"] == len(TEXTS)
    code, _, err = invoke(str(run_dir), "--input-format", "csv")
    assert code == 2 and "--input-format only apply to --input FILE" in err


def test_on_a_narrow_terminal_long_cells_wrap_instead_of_being_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    import cli.evaluate

    screen = io.StringIO()
    terminal = Console(file=screen, width=50, force_terminal=True, color_system=None)
    monkeypatch.setattr(cli.evaluate, "out_console", terminal)
    path = "/data/" + "very-long-folder-name/" * 5 + "test.csv"
    metrics = {
        "source": {"input": path},
        "n": 2,
        "accuracy": 1.0,
        "loss": 0.1,
        "macro_f1": 1.0,
        "roc_auc": 1.0,
        "truncated": 0,
        "classes": ["ham", "spam"],
        "per_class": {c: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for c in ("ham", "spam")},
        "confusion_matrix": [[1, 0], [0, 1]],
    }
    for table in SingleLabel().report_tables(metrics):
        cli.evaluate._render(table)
    out = screen.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 50
    assert path in "".join(ch for ch in out if ch not in " │┃\n")  # every character, in order


def test_probability_quality_and_agreement_metrics_in_json_and_table(run_dir: Path, labelled: Path) -> None:
    code, out, err = invoke(str(run_dir), "--input", str(labelled), "--json")
    assert code == 0, err
    metrics, expected = json.loads(out), direct_metrics(run_dir, TEXTS, LABELS)
    for key in ("weighted_f1", "balanced_accuracy", "mcc", "brier", "ece", "pr_auc"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-5), key
    assert metrics["pr_auc_positive"] == CLASSES[1]
    code, out, err = invoke(str(run_dir), "--input", str(labelled))
    assert code == 0, err
    rows = ("balanced accuracy", "weighted F1", "MCC", "loss (NLL)", "Brier score", "ECE (15 bins)")
    for words in (*rows, f"PR-AUC ({CLASSES[1]})"):
        assert words in out


# --- a reader that leaves (`gptclf evaluate RUN | head -n 1`) -----------------------------------------


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run of 100 classes and a labelled file of two texts a class: its confusion matrix alone
    is over 100 kB of tables, more than a pipe holds, so a reader that leaves breaks the pipe."""
    tmp = tmp_path_factory.mktemp("many")
    classes = [f"class_{i:03d}" for i in range(100)]
    run = make_run(tmp / "run", classes=classes)
    rows = [(f"text {i} about {name}", name) for i, name in enumerate(classes * 2)]
    return run, write_csv(tmp / "eval.csv", rows)


def assert_quiet_exit(proc: subprocess.Popen[str]) -> None:
    """The child exited 0 and said nothing after the reader left: no error, no traceback."""
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err.startswith("gptclf: evaluating")  # the run itself went on as usual
    for word in ("error", "Traceback", "Exception", "BrokenPipe"):
        assert word not in err, err


@pytest.mark.slow
def test_tables_into_a_pipe_the_reader_leaves_exit_0_quietly(many_classes: tuple[Path, Path]) -> None:
    run, labelled = many_classes
    proc = spawn("evaluate", str(run), "--input", str(labelled), "--device", "cpu", cwd=run.parent)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # `| head -n 1`
    proc.stdout.close()
    assert "Evaluation" in first
    assert_quiet_exit(proc)


@pytest.mark.slow
def test_json_into_a_pipe_already_closed_exits_0_quietly(many_classes: tuple[Path, Path]) -> None:
    run, labelled = many_classes
    proc = spawn("evaluate", str(run), "--input", str(labelled), "--device", "cpu", "--json", cwd=run.parent)
    assert proc.stdout is not None
    proc.stdout.close()  # `| true`: the reader is gone before the one JSON line is written
    assert_quiet_exit(proc)
