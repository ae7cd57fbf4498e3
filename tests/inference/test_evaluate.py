from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gptclf.errors import BadInputError, GateError
from gptclf.inference.evaluate import Gates, evaluate
from gptclf.inference.labelled import LabelledData, file_data, recorded_data_dir, split_data
from gptclf.inference.predict import Predictor
from gptclf.tasks.metrics import classification_metrics
from tests.inference.test_predict import CLASSES, memory_run, one_by_one

TEXTS = [f"{word} number {i}" for i, word in enumerate(["win", "hi", "free", "lunch", "prize", "ok"] * 4)]
LABELS = ["spam", "ham", "spam", "ham", "spam", "ham"] * 4


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def prepared_folder(tmp_path: Path) -> Path:
    """A folder written by `gptclf prepare` from TEXTS and LABELS."""
    from gptclf.data.prepare import prepare

    source = write_csv(tmp_path / "all.csv", list(zip(TEXTS, LABELS, strict=True)))
    out = tmp_path / "prepared"
    prepare(out, input_path=source, classes=CLASSES, split="0.5,0.25,0.25", seed=1)
    return out


def test_metrics_on_a_labelled_file_match_the_metrics_of_the_model(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "run")
    path = write_csv(tmp_path / "eval.csv", list(zip(TEXTS, LABELS, strict=True)))
    data = file_data(run, path)
    assert data.texts == TEXTS
    assert data.source == {"input": str(path), "dropped": {}}
    metrics = evaluate(Predictor(run, device="cpu", precision="fp32", batch_size=5), data)
    expected = classification_metrics(one_by_one(run, TEXTS), [CLASSES.index(x) for x in LABELS], CLASSES)
    for key in ("n", "classes", "per_class", "confusion_matrix"):
        assert metrics[key] == expected[key]
    for key in ("accuracy", "loss", "macro_f1", "roc_auc"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-5)
    assert metrics["run"] == str(run.path)
    assert metrics["truncated"] == 0


def test_file_columns_and_dropped_rows(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "run")
    rows = [("hello", "ham"), ("", "spam"), ("free money", "spam"), ("no label", "")]
    path = write_csv(tmp_path / "eval.csv", rows, header=("msg", "kind"))
    data = file_data(run, path, text_column="msg", label_column="kind")
    assert (data.texts, data.labels) == (["hello", "free money"], [0, 1])
    assert sum(data.source["dropped"].values()) == 2


def test_labels_outside_the_run_are_named(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "run")
    path = write_csv(tmp_path / "eval.csv", [("a", "ham"), ("b", "eggs"), ("c", "bacon")])
    with pytest.raises(BadInputError, match=r"eval\.csv.*'bacon', 'eggs'"):
        file_data(run, path)


def test_split_of_the_recorded_folder_and_an_override(tmp_path: Path) -> None:
    from gptclf.data.prepared import prepared_fingerprint, read_prepared

    folder = prepared_folder(tmp_path)
    record = {"dir": str(folder), "fingerprint": prepared_fingerprint(folder)}
    run = memory_run(tmp_path / "run", data=record)
    prepared = read_prepared(folder)
    for split in ("train", "validation", "test"):
        data = split_data(run, split)
        assert data.texts == prepared.splits[split]["text"].tolist()
        assert data.labels == [CLASSES.index(x) for x in prepared.splits[split]["label"]]
        assert data.source == {"split": split, "data": str(folder), "same_as_training": True}
    other = tmp_path / "other"
    other.mkdir()
    for name in ("train.csv", "validation.csv", "test.csv", "labels.json"):
        (other / name).write_bytes((folder / name).read_bytes())
    assert split_data(run, "test", other).source["data"] == str(other)
    with pytest.raises(BadInputError, match="unknown split"):
        split_data(run, "dev")


def test_recorded_folder_relative_to_the_run_missing_or_gone(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    assert recorded_data_dir(memory_run(run_dir, data={"dir": "data"})) == run_dir / "data"
    with pytest.raises(BadInputError, match="--data DIR"):
        recorded_data_dir(memory_run(run_dir, data={}))
    with pytest.raises(BadInputError, match="not there any more"):
        recorded_data_dir(memory_run(run_dir, data={"dir": str(tmp_path / "gone")}))


def test_a_folder_from_another_prepare_run_is_flagged(tmp_path: Path) -> None:
    folder = prepared_folder(tmp_path)
    run = memory_run(tmp_path / "run", data={"dir": str(folder), "fingerprint": "0" * 64})
    assert split_data(run, "test").source["same_as_training"] is False


def test_empty_data_is_bad_input(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "run")
    path = write_csv(tmp_path / "eval.csv", [("", "ham")])
    with pytest.raises(BadInputError, match="no rows to evaluate"):
        file_data(run, path)


def test_gates() -> None:
    metrics = {"accuracy": 0.8, "macro_f1": 0.75}
    Gates().check(metrics)
    Gates(min_accuracy=0.8, min_f1=0.75).check(metrics)
    assert Gates(min_accuracy=0.9).failures(metrics) == ["accuracy 0.8000 is below --min-accuracy 0.9000"]
    with pytest.raises(GateError, match=r"accuracy 0\.8000 .* 0\.9000; macro_f1 0\.7500 .*--min-f1 0\.8000"):
        Gates(min_accuracy=0.9, min_f1=0.8).check(metrics)
    with pytest.raises(BadInputError, match="--min-f1"):
        Gates(min_f1=1.5)


def test_truncation_is_reported(tmp_path: Path) -> None:
    run = memory_run(tmp_path / "run", max_length=6)
    data = LabelledData(["tiny", "much longer text"], [0, 1], {"input": "x"})
    assert evaluate(Predictor(run, device="cpu", precision="fp32"), data)["truncated"] == 1
