"""Issue 11, items 5 and 6: ``evaluate --errors/--show-errors`` and the pictures (``--plots``, finetune)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from gptclf.data.tables import split_tsv
from gptclf.inference.error_report import error_rows, write_errors
from gptclf.inference.plots import plot_inputs, plot_names, write_plots
from gptclf.inference.predict import Predictor
from gptclf.rundir import load_run
from gptclf.rundir.build import user_entries
from gptclf.rundir.layout import PLOT_FILES
from tests.fault_helpers import fill, tmpfs
from tests.inference.test_evaluate import LABELS, TEXTS, prepared_folder, write_csv
from tests.inference.test_predict import CLASSES, make_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The unit a tmpfs hands out space in.
PAGE = 4096


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptclf.data.prepared import prepared_fingerprint

    tmp = tmp_path_factory.mktemp("errors")
    folder = prepared_folder(tmp)
    return make_run(tmp / "run", data={"dir": str(folder), "fingerprint": prepared_fingerprint(folder)})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("file") / "eval.csv", list(zip(TEXTS, LABELS, strict=True)))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["evaluate", *args])
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def read_report(path: Path) -> list[dict]:
    """The report's rows as dicts: id, text, label, predicted, confidence, probs."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            header, *rows = list(csv.reader(fh))
    else:
        header, *rows = [split_tsv(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert header[:5] == ["id", "text", "label", "predicted", "confidence"]
    out = []
    for row in rows:
        probs = {h.removeprefix("p_"): float(v) for h, v in zip(header[5:], row[5:], strict=True)}
        out.append({"id": json.loads(row[0]), "text": row[1], "label": row[2], "predicted": row[3],
                    "confidence": float(row[4]), "probs": probs})  # fmt: skip
    return out


# --- the error report -------------------------------------------------------------------------------


def test_error_rows_are_the_misclassified_texts_most_confident_first() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    labels = [0, 0, 0, 1, 1, 1]  # wrong: 1 (0.7), 2 (0.8), 3 (0.6); 5 ties at 0.5 -> argmax 0, wrong
    rows = error_rows(probs, labels, ["a", "b"], [f"t{i}" for i in range(6)], ids=list("uvwxyz"))
    assert [r.id for r in rows] == ["w", "v", "x", "z"]
    assert [r.confidence for r in rows] == [0.8, 0.7, 0.6, 0.5]
    assert (rows[0].label, rows[0].predicted, rows[0].probs) == ("a", "b", {"a": 0.2, "b": 0.8})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_errors_file_holds_exactly_the_misclassified_rows_in_order(
    run_dir: Path, labelled: Path, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"errors{suffix}"
    code, out, err = invoke(str(run_dir), "--input", str(labelled), "--errors", str(path), "--json")
    assert code == 0, err
    metrics = json.loads(out)  # stdout is still one JSON object
    cm = np.array(metrics["confusion_matrix"])
    rows = read_report(path)
    assert len(rows) == cm.sum() - np.trace(cm) > 0
    assert f"wrote {len(rows)} misclassified texts to {path}" in err
    # The same texts, ids and probabilities as the predictor's calibrated probabilities give.
    predictor = Predictor(load_run(run_dir), device="cpu", precision="fp32")
    probs = predictor.probabilities(predictor.logits(TEXTS)).numpy()
    wrong = [i for i in range(len(TEXTS)) if CLASSES[probs[i].argmax()] != LABELS[i]]
    assert sorted(r["id"] for r in rows) == wrong  # ids: the 0-based record positions
    confidences = [r["confidence"] for r in rows]
    assert confidences == sorted(confidences, reverse=True)
    for r in rows:
        i = r["id"]
        assert (r["text"], r["label"]) == (TEXTS[i], LABELS[i])
        assert r["predicted"] == CLASSES[probs[i].argmax()] != r["label"]
        assert r["probs"] == {c: pytest.approx(float(probs[i, k]), abs=2e-6) for k, c in enumerate(CLASSES)}
        assert r["confidence"] == pytest.approx(float(probs[i].max()), abs=2e-6)


def test_errors_use_the_inputs_id_column_and_show_errors_prints_the_top_rows(
    run_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "with_ids.csv"
    with open(source, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerows((f"msg-{i}", t, y) for i, (t, y) in enumerate(zip(TEXTS, LABELS, strict=True)))
    path = tmp_path / "errors.jsonl"
    code, out, err = invoke(str(run_dir), "--input", str(source), "--errors", str(path), "--show-errors", "2")
    assert code == 0, err
    rows = read_report(path)
    assert rows and all(r["id"] == f"msg-{TEXTS.index(r['text'])}" for r in rows)
    # Human output: the table of the two most confident errors is on stdout beside the others.
    assert f"Most confident errors (2 of {len(rows)})" in out
    assert rows[0]["id"] in out and rows[1]["id"] in out
    shown = [r["id"] for r in rows[2:] if r["id"] in out]
    assert not shown
    # Under --json stdout is the JSON object alone; the table goes to stderr.
    code, out, err = invoke(str(run_dir), "--input", str(source), "--show-errors", "1", "--json")
    assert code == 0 and json.loads(out)["n"] == len(TEXTS)
    assert "Most confident errors (1 of" in err and rows[0]["id"] in err


def test_an_empty_report_keeps_its_header(tmp_path: Path) -> None:
    write_errors(tmp_path / "e.csv", [], CLASSES)
    write_errors(tmp_path / "e.jsonl", [], CLASSES)
    assert (tmp_path / "e.csv").read_text().splitlines() == [
        "id,text,label,predicted,confidence,p_ham,p_spam"
    ]
    assert (tmp_path / "e.jsonl").read_text() == ""


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            ["--errors", "{tmp}/errors.txt"],
            "--errors {tmp}/errors.txt: the name must end in .jsonl, .csv, .tsv",
        ),
        (["--errors", "{tmp}/nowhere/errors.csv"], "the folder {tmp}/nowhere does not exist"),
        (["--show-errors", "-1"], "--show-errors must be >= 0 (got -1)"),
        (["--plots", "{tmp}/a_file"], "--plots {tmp}/a_file is a file"),
    ],
)
def test_bad_report_destinations_exit_2_before_anything_runs(
    run_dir: Path, labelled: Path, tmp_path: Path, extra: list[str], says: str
) -> None:
    (tmp_path / "a_file").write_text("mine")
    args = [a.format(tmp=tmp_path) for a in extra]
    code, out, err = invoke(str(run_dir), "--input", str(labelled), *args)
    assert code == 2 and out == ""
    assert says.format(tmp=tmp_path) in err and err.count("gptclf:") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert (tmp_path / "a_file").read_text() == "mine"


# --- pictures --------------------------------------------------------------------------------------


def assert_pictures(folder: Path, names: list[str]) -> None:
    """Exactly ``names`` in ``folder``, each a PNG with real content (not a blank canvas)."""
    from PIL import Image

    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
        with Image.open(folder / name) as image:
            image.load()
            assert image.width >= 400 and image.height >= 250, name
            pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 50, name  # text, lines and shading, not one colour


def random_inputs(k: int, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 3
    logits[np.arange(n), labels] += 2.0
    return logits, labels, [f"class_{i}" for i in range(k)]


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.slow
def test_one_png_with_content_per_kind(tmp_path: Path, k: int) -> None:
    pytest.importorskip("matplotlib")
    logits, labels, classes = random_inputs(k)
    info = {"calibration": {"temperature": 1.7}}
    if k == 2:
        info["decision"] = {"positive": "class_0", "threshold": 0.9}
    written = write_plots(tmp_path / "plots", plot_inputs(logits, labels, classes, info, "test split"))
    expected = (
        list(PLOT_FILES.values())
        if k == 2
        else ["confusion_matrix.png", "reliability.png", "per_class_f1.png"]
    )
    assert sorted(p.name for p in written) == sorted(expected) == sorted(plot_names(k))
    assert_pictures(tmp_path / "plots", expected)


def test_the_decision_of_the_run_is_the_threshold_marked() -> None:
    logits, labels, classes = random_inputs(2)
    assert plot_inputs(logits, labels, classes, {}).threshold == 0.5
    chosen = plot_inputs(logits, labels, classes, {"decision": {"positive": "class_0", "threshold": 0.93}})
    assert (chosen.threshold, chosen.positive) == (0.93, 0)
    assert plot_inputs(logits, labels, classes, {"calibration": {"temperature": 2.5}}).temperature == 2.5


@pytest.mark.slow
def test_evaluate_plots_writes_every_picture(run_dir: Path, labelled: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    folder = tmp_path / "new" / "plots"  # created, parents too
    code, _, err = invoke(str(run_dir), "--input", str(labelled), "--plots", str(folder))
    assert code == 0, err
    assert f"wrote 5 plots to {folder}" in err
    assert_pictures(folder, list(PLOT_FILES.values()))


def test_without_matplotlib_plots_are_skipped_in_one_line(
    run_dir: Path, labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    logits, labels, classes = random_inputs(2)
    assert write_plots(tmp_path / "lib", plot_inputs(logits, labels, classes, {})) is None
    assert not (tmp_path / "lib").exists()
    code, out, err = invoke(str(run_dir), "--input", str(labelled), "--plots", str(tmp_path / "cli"))
    assert code == 0 and "Evaluation" in out
    assert "gptclf: plots skipped: matplotlib is not installed (pip install gptclf[plot])" in err
    assert not (tmp_path / "cli").exists()


@pytest.mark.slow
def test_finetune_writes_the_test_plots_into_the_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from gptclf.training.finetune import finetune
    from gptclf.training.settings import build_settings
    from tests.finetune_helpers import TINY_SPEC, install_tokenizer
    from tests.finetune_helpers import prepared_folder as training_folder

    install_tokenizer()
    data = training_folder(tmp_path, ["spam", "ham"], n=80)
    out = tmp_path / "run"
    base = {"data": str(data), "out": str(out), "model": TINY_SPEC, "weights": "random", "device": "cpu"}
    finetune(build_settings({**base, "trainable": "all", "lr": 2e-3, "epochs": 1}))
    assert_pictures_in_run(out, list(PLOT_FILES.values()))
    assert user_entries(out) == []  # the run's own files, which a new run into --out replaces


def assert_pictures_in_run(run: Path, names: list[str]) -> None:
    """The run holds each picture (beside its other files), each a PNG with content."""
    picture_folder = run.parent / "pictures"
    picture_folder.mkdir()
    for name in names:
        (picture_folder / name).write_bytes((run / name).read_bytes())
    assert_pictures(picture_folder, names)


# --- read-only and full disks (--errors FILE, --plots DIR) -----------------------------------------


def assert_one_error_line(err: str, says: str) -> None:
    """One ``gptclf: error:`` line saying ``says``, no traceback (``err``: white space collapsed)."""
    assert err.count("gptclf: error:") == 1 and says in err, err
    assert "Traceback" not in err and "Errno" not in err, err


@pytest.mark.parametrize(
    ("flag", "where"),
    [("--errors", "errors.csv"), ("--plots", "plots/deeper"), ("--plots", ".")],
)
def test_a_read_only_disk_is_refused_before_the_model_runs(
    run_dir: Path, labelled: Path, tmp_path: Path, flag: str, where: str
) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        code, out, err = invoke(str(run_dir), "--input", str(labelled), flag, str(disk / where))
        assert code == 2 and out == "", err
        assert_one_error_line(err, f"cannot write into {disk} (Read-only file system)")
        assert "evaluating" not in err  # refused before the model ran
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "where"),
    [("--errors", "errors.jsonl"), ("--plots", "plots/deeper"), ("--plots", ".")],
)
def test_a_full_disk_is_refused_before_the_model_runs(
    run_dir: Path, labelled: Path, tmp_path: Path, flag: str, where: str
) -> None:
    with tmpfs(tmp_path / "full", "1m") as disk:
        fill(disk)
        code, out, err = invoke(str(run_dir), "--input", str(labelled), flag, str(disk / where))
        assert code == 1 and out == "", err
        assert_one_error_line(err, f"no space left on the disk of {disk}")
        assert "evaluating" not in err
        assert [p.name for p in disk.iterdir()] == ["filler.bin"]


@pytest.fixture(scope="module")
def many_errors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 labelled texts of ~400 characters: the random run gets about half wrong, an error report
    of tens of kilobytes, more than the few pages a disk is left with below."""
    words = ["win", "a", "free", "prize", "now", "or", "have", "lunch", "with", "me", "later", "ok"]
    text = " ".join(words * 7)
    rows = [(f"{text} {i}", LABELS[i % 2]) for i in range(200)]
    return write_csv(tmp_path_factory.mktemp("many") / "eval.csv", rows)


def test_a_disk_that_fills_while_the_errors_are_written_leaves_no_file(
    run_dir: Path, many_errors: Path, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "1m") as disk:
        fill(disk, keep=2 * PAGE)  # room for the check before the model runs, not for the report
        code, out, err = invoke(str(run_dir), "--input", str(many_errors), "--errors", str(disk / "e.csv"))
        assert code == 1 and "Evaluation" in out  # the metrics came first
        assert_one_error_line(err, f"--errors {disk / 'e.csv'}: no space left on the disk of {disk}")
        assert [p.name for p in disk.iterdir()] == ["filler.bin"]  # no partial report, no temporary file
    code, _, err = invoke(str(run_dir), "--input", str(many_errors), "--errors", str(tmp_path / "e.csv"))
    assert code == 0 and (tmp_path / "e.csv").stat().st_size > 4 * PAGE, err  # the report needs more


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.slow
def test_a_disk_that_fills_while_the_plots_are_written_leaves_no_picture(
    run_dir: Path, labelled: Path, tmp_path: Path, existing: bool
) -> None:
    pytest.importorskip("matplotlib")
    code, _, err = invoke(str(run_dir), "--input", str(labelled), "--plots", str(tmp_path / "sizes"))
    assert code == 0, err
    sizes = sorted(-(-p.stat().st_size // PAGE) * PAGE for p in (tmp_path / "sizes").iterdir())
    with tmpfs(tmp_path / "small", "4m") as disk:
        folder = disk if existing else disk / "new" / "plots"
        (disk / "mine.txt").write_text("mine")
        fill(disk, keep=sum(sizes[:2]) + PAGE)  # two pictures fit, the set does not
        code, out, err = invoke(str(run_dir), "--input", str(labelled), "--plots", str(folder))
        assert code == 1 and "Evaluation" in out
        assert_one_error_line(err, f"--plots {folder}: no space left on the disk of")
        assert sorted(p.name for p in disk.iterdir()) == ["filler.bin", "mine.txt"]  # no folder, no PNG
        assert (disk / "mine.txt").read_text() == "mine"
