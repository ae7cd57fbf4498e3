"""Multi-label classification end to end through the CLI: prepare -> finetune -> evaluate -> predict
on a generated table whose labels follow from its words, and each bad input of the issue."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import REPO
from tests.finetune_helpers import TINY_SPEC, install_tokenizer
from tests.multilabel_helpers import LABELS, write_table

runner = CliRunner()
LEARN = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu", "--trainable", "all", "--lr", "2e-3"]
CLASSES = ",".join(LABELS)


def gptclf(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def prepare(source: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return gptclf("prepare", "--multi-label", "--input", str(source), "--out", str(out), *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A prepared multi-label folder and a tiny run trained on it (shared by the tests below)."""
    root = tmp_path_factory.mktemp("multilabel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTCLF_HOME", str(root / "home"))
        install_tokenizer(root / "home")
        source = write_table(root / "tickets.csv", 360, seed=0)
        code, out, err = prepare(
            source, root / "data", "--classes", CLASSES, "--split", "0.6,0.2,0.2", "--json"
        )
        assert code == 0, err
        run = root / "run"
        args = ["--data", str(root / "data"), *LEARN, "--epochs", "8", "--monitor", "val_micro_f1"]
        code, summary, err = gptclf("finetune", *args, "--out", str(run), "--json")
        assert code == 0, err
    yield {
        "root": root,
        "prepared": json.loads(out),
        "summary": json.loads(summary),
        "run": run,
        "stderr": err,
    }


@pytest.mark.slow
def test_prepare_records_the_labels_and_keeps_each_share(trained: dict[str, Any]) -> None:
    labels = json.loads((trained["root"] / "data" / "labels.json").read_text())
    assert labels["multi_label"] is True and labels["classes"] == LABELS and labels["label_sep"] == "|"
    for key in ("counts", "cooccurrence", "rare_labels"):  # --json prints what labels.json records
        assert labels[key] == trained["prepared"][key]
    sizes = {s: labels["files"][f"{s}.csv"]["rows"] for s in ("train", "validation", "test")}
    assert sum(sizes.values()) == 360 and abs(sizes["validation"] - 72) <= 8 and abs(sizes["test"] - 72) <= 8
    counts = labels["counts"]
    overall = {name: sum(counts[s][name] for s in sizes) / 360 for name in [*LABELS, "(none)"]}
    for split, n in sizes.items():
        for name, share in overall.items():
            assert abs(counts[split][name] / n - share) < 0.05, (split, name)  # a few points
    several = sum(1 for row in pd.read_csv(trained["root"] / "tickets.csv")["label"].fillna("") if "|" in row)
    assert 0.25 < several / 360 < 0.4 and overall["(none)"] > 0.1  # the table the issue asks for
    assert labels["cooccurrence"]["billing"]["bug"] > 0 and labels["cooccurrence"]["bug"]["bug"] == sum(
        counts[s]["bug"] for s in sizes
    )
    test = (trained["root"] / "data" / "test.csv").read_text()
    assert "|" in test  # a row's labels joined by the separator


@pytest.mark.slow
def test_a_tiny_model_reaches_micro_f1_09_and_evaluate_agrees(trained: dict[str, Any]) -> None:
    summary, run = trained["summary"], trained["run"]
    assert summary["multi_label"] is True and summary["test_micro_f1"] >= 0.9
    info = json.loads((run / "run.json").read_text())
    assert info["multi_label"] is True and set(info["thresholds"]) == set(LABELS)
    assert "calibration" not in info and "decision" not in info
    assert "threshold of billing:" in trained["stderr"] and "val micro-F1" in trained["stderr"]
    history = pd.read_csv(run / "history.csv")
    assert history.columns[-1] == "val_micro_f1" and history["val_micro_f1"].notna().all()
    code, out, err = gptclf("evaluate", str(run), "--json", "--device", "cpu")
    assert code == 0, err
    m = json.loads(out)
    assert m["micro_f1"] == pytest.approx(summary["test_micro_f1"]) and m["micro_f1"] >= 0.9
    for key in (
        "macro_f1",
        "weighted_f1",
        "samples_f1",
        "subset_accuracy",
        "hamming_loss",
        "confusion_matrix",
    ):
        assert key in m
    assert set(m["per_class"]["bug"]) >= {"precision", "recall", "f1", "support", "roc_auc"}
    code, out, _ = gptclf("evaluate", str(run), "--device", "cpu")
    assert code == 0 and "micro F1" in out and "Hamming loss" in out and "Per label" in out


@pytest.mark.slow
def test_gates_use_micro_f1(trained: dict[str, Any]) -> None:
    run = str(trained["run"])
    code, _, err = gptclf("evaluate", run, "--json", "--device", "cpu", "--min-f1", "0.9")
    assert code == 0, err
    code, out, err = gptclf(
        "evaluate", run, "--json", "--device", "cpu", "--min-f1", "1.0", "--threshold", "0.999"
    )
    assert code == 3 and "micro_f1" in err and "--min-f1" in err and json.loads(out)["micro_f1"] < 1.0


@pytest.mark.slow
def test_predict_gives_label_lists_at_the_stored_thresholds(trained: dict[str, Any], tmp_path: Path) -> None:
    run = trained["run"]
    thresholds = {
        k: v["threshold"] for k, v in json.loads((run / "run.json").read_text())["thresholds"].items()
    }
    texts = ["invoice crash apple", "river stone", "wish password green", "crash crash"]
    code, out, err = gptclf("predict", str(run), *texts, "--format", "jsonl", "--device", "cpu")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == texts
    for r in records:
        assert set(r["probs"]) == set(LABELS)
        assert r["labels"] == [c for c in LABELS if r["probs"][c] >= thresholds[c]]
    assert records[0]["labels"] == ["billing", "bug"] and records[1]["labels"] == []
    code, out, _ = gptclf(
        "predict", str(run), *texts, "--format", "csv", "--threshold", "0", "--device", "cpu"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows[0]["labels"] == "|".join(LABELS) and float(rows[1]["p_bug"]) < 0.5
    code, out, _ = gptclf("predict", str(run), *texts, "--format", "tsv", "--device", "cpu")
    assert code == 0 and out.splitlines()[0].split("\t")[:3] == ["id", "text", "labels"]
    code, out, _ = gptclf(
        "predict", str(run), "river stone", "invoice", "--format", "table", "--device", "cpu"
    )
    assert code == 0 and "(none)" in out and "billing" in out


@pytest.mark.slow
def test_evaluate_reads_a_file_of_label_lists(trained: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "more.jsonl"
    rows = [{"text": "invoice wish", "label": ["billing", "feature"]}, {"text": "river", "label": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = gptclf(
        "evaluate", str(trained["run"]), "--input", str(path), "--json", "--device", "cpu"
    )
    assert code == 0, err
    assert json.loads(out)["n"] == 2 and json.loads(out)["per_class"]["billing"]["support"] == 1
    code, _, err = gptclf(
        "evaluate", str(trained["run"]), "--device", "cpu", "--json", "--plots", str(tmp_path / "p")
    )
    assert code == 0 and "--plots skipped" in err and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_softmax_options_are_refused_on_a_multi_label_run(trained: dict[str, Any], tmp_path: Path) -> None:
    run = str(trained["run"])
    target = tmp_path / "out.jsonl"
    refused = {"--positive": ["--positive", "bug"], "--min-confidence": ["--min-confidence", "0.5"]}
    for flag, extra in {**refused, "--no-calibration": ["--no-calibration"]}.items():
        code, _, err = gptclf("predict", run, "x", "--device", "cpu", "--output", str(target), *extra)
        assert code == 2 and flag in err and "multi-label" in err and len(err.strip().splitlines()) == 1
        assert not target.exists() and not list(tmp_path.iterdir())
    code, _, err = gptclf("evaluate", run, "--device", "cpu", "--threshold", "1.5")
    assert code == 2 and "--threshold must be a probability" in err
    code, _, err = gptclf("calibrate", run, "--device", "cpu")
    assert code == 2 and "multi-label" in err


@pytest.mark.slow
def test_finetune_refuses_two_class_rules_on_multi_label_data(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    data = str(trained["root"] / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTCLF_HOME", str(trained["root"] / "home"))
        code, _, err = gptclf(
            "finetune", "--data", data, *LEARN, "--target", "f1", "--out", str(tmp_path / "r")
        )
    assert code == 2 and "--target" in err and not (tmp_path / "r").exists()


def test_single_label_runs_refuse_the_multi_label_options(tmp_path: Path) -> None:
    fixture = str(REPO / "tests" / "fixtures" / "run-v1")
    code, _, err = gptclf("evaluate", fixture, "--threshold", "0.5", "--device", "cpu")
    assert code == 2 and "--threshold on evaluate is for multi-label runs" in err


@pytest.mark.slow
def test_a_run_and_data_of_the_other_kind_are_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    from tests.finetune_helpers import prepared_folder

    single = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    code, _, err = gptclf("evaluate", str(trained["run"]), "--data", str(single), "--device", "cpu")
    assert code == 2 and "this run is multi-label and" in err and "holds single-label data" in err
    fixture = str(REPO / "tests" / "fixtures" / "run-v1")
    code, _, err = gptclf("evaluate", fixture, "--data", str(trained["root"] / "data"), "--device", "cpu")
    assert code == 2 and "this run is single-label and" in err


@pytest.mark.slow
def test_the_human_summary_names_micro_f1(trained: dict[str, Any], tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTCLF_HOME", str(trained["root"] / "home"))
        args = [
            "--data",
            str(trained["root"] / "data"),
            *LEARN,
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
        ]
        code, out, err = gptclf("finetune", *args)
    assert code == 0, err
    assert "test: micro-F1 " in out and "per-label thresholds chosen on validation" in out


# --- prepare: each bad input of the issue is one line, exit 2, nothing written ---------------------


def _bad(tmp_path: Path, rows: list[dict[str, Any]], *extra: str) -> str:
    source = tmp_path / "in.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    out = tmp_path / "out"
    code, stdout, err = prepare(source, out, *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not stdout
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    return err


def _rows(n: int = 40) -> list[dict[str, Any]]:
    return [{"text": f"text {i}", "label": ("a|b", "a", "b", "")[i % 4]} for i in range(n)]


def test_an_empty_label_column(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": ""} for i in range(10)]
    assert "the label column is empty in every row" in _bad(tmp_path, rows)


def test_an_unknown_label_in_a_list(tmp_path: Path) -> None:
    rows = [*_rows(), {"text": "odd", "label": "a|zebra"}]
    assert "labels not among --classes: 'zebra' (1 rows)" in _bad(tmp_path, rows, "--classes", "a,b")


def test_label_columns_with_a_value_other_than_0_or_1(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "a": i % 2, "b": 1 - i % 2} for i in range(20)] + [
        {"text": "x", "a": "yes", "b": 0}
    ]
    err = _bad(tmp_path, rows, "--label-columns", "a,b")
    assert "column 'a' holds 'yes'; --label-columns must hold 0 or 1" in err


def test_a_label_without_a_positive_example_in_training(tmp_path: Path) -> None:
    assert "which no row of" in _bad(tmp_path, _rows(), "--classes", "a,b,c")
    rows = [*_rows(), {"text": "lonely", "label": "c"}]  # its one row goes to the larger split
    err = _bad(tmp_path, rows, "--split", "0.2,0.8")
    assert "labels 'c' have no positive example in the training split" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--balance", "undersample"], "--balance undersample is for single-label data"),
        (["--drop-unknown"], "--drop-unknown is for single-label data"),
        (["--label-sep", ""], "--label-sep must not be empty"),
        (["--label-columns", "a,a"], "'a' more than once"),
    ],
)
def test_options_that_do_not_fit_multi_label_data(tmp_path: Path, extra: list[str], message: str) -> None:
    assert message in _bad(tmp_path, _rows(), *extra)


def test_multi_label_options_need_the_flag(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame(_rows()).to_csv(source, index=False)
    code, _, err = gptclf("prepare", "--input", str(source), "--out", str(tmp_path / "o"), "--label-sep", ";")
    assert code == 2 and "go with --multi-label" in err and not (tmp_path / "o").exists()


def test_a_label_named_twice_is_kept_once_and_counted(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame([*_rows(), {"text": "twice", "label": "a|a|b"}]).to_csv(source, index=False)
    code, out, err = prepare(source, tmp_path / "out", "--json")
    assert code == 0, err
    assert "1 labels were named twice in one row" in err
    summary = json.loads(out)
    assert summary["repeated_labels"] == 1 and summary["counts"]["train"]["(none)"] > 0


def test_label_columns_prepare_and_their_names_are_the_labels(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    rows = [{"text": f"t{i}", "toxic": i % 2, "insult": int(i % 3 == 0)} for i in range(30)]
    pd.DataFrame(rows).to_csv(source, index=False)
    code, out, err = prepare(source, tmp_path / "out", "--label-columns", "toxic,insult", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["classes"] == ["toxic", "insult"] and summary["source"]["label_columns"] == [
        "toxic",
        "insult",
    ]
    assert sum(summary["counts"][s]["toxic"] for s in ("train", "validation", "test")) == 15


@pytest.mark.slow
def test_the_runs_label_separator_reads_and_writes_label_lists(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    from gptclf.rundir import update_run_info

    original = json.loads((trained["run"] / "run.json").read_text())
    assert original["data"]["label_sep"] == "|"  # recorded from the prepared data
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    update_run_info(run, {"data": {**original["data"], "label_sep": ";"}})  # as if prepared with ;
    path = tmp_path / "more.csv"
    pd.DataFrame({"text": ["invoice wish", "river"], "label": ["billing;feature", ""]}).to_csv(
        path, index=False
    )
    code, out, err = gptclf("evaluate", str(run), "--input", str(path), "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["per_class"]["feature"]["support"] == 1
    code, out, _ = gptclf("predict", str(run), "x", "--format", "csv", "--threshold", "0", "--device", "cpu")
    assert code == 0 and next(csv.DictReader(io.StringIO(out)))["labels"] == ";".join(LABELS)


def test_a_jsonl_label_list_of_non_strings(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [{"text": f"t{i}", "label": ["a", "b"][: 1 + i % 2]} for i in range(20)]
    lines.append({"text": "odd", "label": [1, {"a": 2}]})
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, stdout, err = prepare(source, tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not stdout
    assert "record 21: the label list holds 1, which is not a string" in " ".join(err.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_quoted_separator_inside_a_label_list(tmp_path: Path) -> None:
    rows = [*_rows(), {"text": "odd", "label": 'a|"b|c"'}]  # a CSV cell: a|"b|c"
    assert "quotes a label" in " ".join(_bad(tmp_path, rows).split())
