"""Thresholds and abstention chosen on validation (gptclf.tasks.decisions), stored by `calibrate`,
applied by `predict` and reported by `evaluate`; their bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.errors import BadInputError, GateError
from gptclf.inference.labelled import split_data
from gptclf.inference.predict import Predictor
from gptclf.rundir import load_run
from gptclf.tasks.decisions import (
    Target,
    check_target,
    choose_min_confidence,
    choose_threshold,
    parse_target,
    threshold_counts,
)
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder
from tests.inference.test_predict import make_run, tiny_classifier

CLASSES = ["ham", "spam"]
TEXTS = ["win a prize now", "dinner at eight", "apple river prize", "stone cloud dinner", "call now", "ok"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


# ---- the searches, on numbers ------------------------------------------------------------------


def random_scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0).round(2)  # rounded: many ties
    return p, y


@pytest.mark.parametrize("seed", range(5))
def test_f1_threshold_is_at_least_as_good_as_one_half(seed: int) -> None:
    p, y = random_scores(seed)
    t = choose_threshold(p, y, Target("f1"))
    best = threshold_counts(p, y, t)["f1"]
    assert best >= threshold_counts(p, y, 0.5)["f1"]
    assert all(best >= threshold_counts(p, y, c)["f1"] - 1e-12 for c in np.unique(p))


def by_definition(p: np.ndarray, y: np.ndarray, target: Target) -> float:
    """The threshold rule as the issue states it, by brute force over every distinct probability:
    of those that reach the target, the most of the other measure; then for precision the highest
    threshold, for recall the lowest."""
    main, other = ("precision", "recall") if target.kind == "precision" else ("recall", "precision")
    counts = {float(c): threshold_counts(p, y, c) for c in np.unique(p)}
    ok = {c: m for c, m in counts.items() if m[main] >= (target.value or 0.0)}
    best = max(m[other] for m in ok.values())
    ties = [c for c, m in ok.items() if m[other] == best]
    return max(ties) if target.kind == "precision" else min(ties)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spelled", ["precision=0.8", "precision=0.6", "recall=0.9", "recall=0.5"])
def test_a_precision_or_recall_target_follows_its_definition(seed: int, spelled: str) -> None:
    p, y = random_scores(seed)
    target = parse_target(spelled)
    t = choose_threshold(p, y, target)
    assert threshold_counts(p, y, t)[target.kind] >= (target.value or 0.0)
    # The stored threshold sits just below the probability it stands for: the same predictions.
    assert ((p >= t) == (p >= by_definition(p, y, target))).all()


def test_a_precision_target_on_separated_scores_admits_no_negative() -> None:
    """100 positives above every negative: precision 0.97 is reached with 3 false positives too,
    but the rule keeps the gap between the classes (recall is 1 either way)."""
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.6, 1.0, 100), rng.uniform(0.0, 0.4, 100)
    p, y = np.concatenate([pos, neg]), np.arange(200) < 100
    for spelled in ("precision=0.97", "recall=0.97", "recall=1", "f1"):
        t = choose_threshold(p, y, parse_target(spelled))
        assert neg.max() < t <= pos.min(), spelled
        counts = threshold_counts(p, y, t)
        assert counts["precision"] == counts["recall"] == counts["accuracy"] == 1.0


def test_a_target_met_by_labelling_everything_positive_says_so() -> None:
    from gptclf.tasks.decisions import decision_record

    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4], [0.95, 0.05]])
    labels = np.array([1, 0, 1, 1])  # the lowest-scored text is positive: recall 1 needs them all
    everything = decision_record(probs, labels, CLASSES, "spam", parse_target("recall=1"))
    assert everything["threshold"] <= 0.05 and everything["validation"]["precision"] == 0.75
    assert "note" in everything and "spam" in everything["note"]
    some = decision_record(probs, labels, CLASSES, "spam", parse_target("precision=1"))
    assert some["threshold"] > 0.2 and "note" not in some


def test_an_unreachable_precision_names_the_best_reached() -> None:
    p = np.array([0.9, 0.8, 0.3, 0.2])
    y = np.array([False, True, True, False])  # the most likely "positive" is wrong: best 2/3
    with pytest.raises(GateError, match=r"best precision is 0\.6667"):
        choose_threshold(p, y, parse_target("precision=0.99"))


def test_coverage_keeps_at_least_the_share_asked_and_no_higher_level_does() -> None:
    c = np.random.default_rng(0).uniform(0.5, 1.0, 101).round(2)
    level = choose_min_confidence(c, 0.9)
    assert (c >= level).mean() >= 0.9
    chosen = min(d for d in np.unique(c) if d >= level)
    assert all((c >= d).mean() < 0.9 for d in np.unique(c) if d > chosen)


@pytest.mark.parametrize(
    ("target", "positive", "classes", "message"),
    [
        ("precision=1.5", "spam", CLASSES, "precision must be in (0, 1]"),
        ("precision=0", "spam", CLASSES, "precision must be in (0, 1]"),
        ("accuracy=0.9", "spam", CLASSES, "is not a target"),
        ("f1", "eggs", CLASSES, "--positive 'eggs' is not a class of this run (ham, spam)"),
        ("f1", None, CLASSES, "needs --positive CLASS"),
        (None, "spam", CLASSES, "--positive needs --target"),
        ("f1", "pos", ["neg", "neu", "pos"], "this run has 3 classes"),
        ("coverage=1.2", None, CLASSES, "coverage must be in (0, 1]"),
    ],
)
def test_bad_targets_are_one_line(
    target: str | None, positive: str | None, classes: list, message: str
) -> None:
    with pytest.raises(BadInputError, match=None) as caught:
        check_target(target, positive, classes)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_coverage_works_for_any_number_of_classes() -> None:
    assert check_target("coverage=0.9", None, ["neg", "neu", "pos"]) == Target("coverage", 0.9)


# ---- the verbs ---------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return prepared_folder(tmp_path, CLASSES, n=160)


def tiny_run(root: Path, data: Path, classes: list[str] = CLASSES) -> Path:
    """A random tiny model whose head is scaled up (spread-out probabilities), recording ``data``."""
    model = tiny_classifier(classes)
    with torch.no_grad():
        model.gpt.lm_head.weight.mul_(20.0)
    return make_run(
        root / "run", classes, max_length=32, model=model, data={"dir": str(data), "fingerprint": None}
    )


@pytest.fixture
def run(tmp_path: Path, data: Path) -> Path:
    return tiny_run(tmp_path, data)


def validation_probs(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and labels of the validation split, as predict computes them."""
    loaded = load_run(run)
    labelled = split_data(loaded, "validation")
    predictor = Predictor(loaded, device="cpu", precision="fp32")
    probs = predictor.probabilities(predictor.logits(labelled.texts)).double().numpy()
    return probs, np.asarray(labelled.labels)


def predicted(run: Path, *flags: str, texts: list[str] = TEXTS) -> list[dict]:
    code, out, err = invoke("predict", str(run), *texts, "--format", "jsonl", "--device", "cpu", *flags)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_calibrate_stores_the_f1_threshold_and_it_beats_one_half_on_validation(run: Path) -> None:
    code, out, err = invoke(
        "calibrate", str(run), "--positive", "spam", "--target", "f1", "--json", "--device", "cpu"
    )
    assert code == 0, err
    decision = json.loads((run / "run.json").read_text())["decision"]
    assert decision == json.loads(out)["decision"]
    assert decision["positive"] == "spam" and decision["target"] == "f1"
    probs, labels = validation_probs(run)
    p, y = probs[:, 1], labels == 1
    at_stored = threshold_counts(p, y, decision["threshold"])
    assert at_stored["f1"] >= threshold_counts(p, y, 0.5)["f1"]
    assert decision["validation"] == pytest.approx(
        {**{k: at_stored[k] for k in ("precision", "recall", "f1")}, "n": len(y)}
    )
    load_run(run)  # the schema takes it


@pytest.mark.slow
def test_a_precision_target_is_met_on_validation_and_predict_applies_it(run: Path, data: Path) -> None:
    code, _, err = invoke(
        "calibrate", str(run), "--positive", "ham", "--target", "precision=0.6", "--device", "cpu"
    )
    assert code == 0, err
    decision = json.loads((run / "run.json").read_text())["decision"]
    probs, labels = validation_probs(run)
    assert threshold_counts(probs[:, 0], labels == 0, decision["threshold"])["precision"] >= 0.6
    # predict, with no flag, labels by the stored threshold (on the calibrated probabilities it prints)
    texts = pd.read_csv(data / "test.csv")["text"].tolist()[:40]
    rows = predicted(run, texts=texts)
    assert [r["label"] for r in rows] == [
        "ham" if r["probs"]["ham"] >= decision["threshold"] else "spam" for r in rows
    ]
    argmax = [max(r["probs"], key=r["probs"].get) for r in rows]
    assert [r["label"] for r in rows] != argmax  # the stored threshold (about 0.55) moves labels
    # The rule reads the calibrated probabilities: showing the raw ones changes no label.
    raw = predicted(run, "--no-calibration", texts=texts)
    assert [r["label"] for r in raw] == [r["label"] for r in rows]
    # --threshold replaces the stored rule.
    everything = predicted(run, "--threshold", "0.0", "--positive", "spam", texts=texts)
    assert {r["label"] for r in everything} == {"spam"}


def test_evaluate_reports_the_stored_threshold_beside_argmax(run: Path) -> None:
    assert (
        invoke("calibrate", str(run), "--positive", "spam", "--target", "recall=0.9", "--device", "cpu")[0]
        == 0
    )
    decision = json.loads((run / "run.json").read_text())["decision"]
    code, out, err = invoke("evaluate", str(run), "--split", "validation", "--json", "--device", "cpu")
    assert code == 0, err
    m = json.loads(out)
    at = m["at_threshold"]
    assert at["threshold"] == decision["threshold"] and at["positive"] == "spam"
    assert at["recall"] >= 0.9 and at["recall"] == pytest.approx(decision["validation"]["recall"])
    assert "accuracy" in m and {"precision", "f1", "accuracy"} <= set(at)
    assert m["risk_coverage"][0]["min_confidence"] == 0.5
    code, out, _ = invoke("evaluate", str(run), "--split", "validation", "--device", "cpu")
    assert code == 0 and "stored threshold" in out and "Risk-coverage" in out


def test_abstention_writes_null_labels_exactly_below_the_level(run: Path, data: Path) -> None:
    texts = pd.read_csv(data / "test.csv")["text"].tolist()[:40]
    plain = predicted(run, texts=texts)
    level = float(np.median([max(r["probs"].values()) for r in plain]))
    rows = predicted(run, "--min-confidence", str(level), texts=texts)
    for r, ref in zip(rows, plain, strict=True):
        unsure = max(ref["probs"].values()) < level
        assert r["abstained"] is unsure and (r["label"] is None) is unsure
        if not unsure:
            assert r["label"] == ref["label"]
    assert any(r["abstained"] for r in rows) and not all(r["abstained"] for r in rows)
    # CSV: an empty label and an abstained column.
    code, out, _ = invoke(
        "predict", str(run), *texts, "--format", "csv", "--device", "cpu", "--min-confidence", str(level)
    )
    table = pd.read_csv(__import__("io").StringIO(out), keep_default_na=False)
    assert code == 0 and list(table["abstained"]) == [r["abstained"] for r in rows]
    assert all((lab == "") == ab for lab, ab in zip(table["label"], table["abstained"], strict=True))


def test_a_stored_coverage_is_applied_by_predict_and_reported_by_evaluate(run: Path) -> None:
    code, _, err = invoke("calibrate", str(run), "--target", "coverage=0.7", "--device", "cpu")
    assert code == 0, err
    abstain = json.loads((run / "run.json").read_text())["abstain"]
    assert abstain["target"] == "coverage=0.7" and abstain["validation"]["coverage"] >= 0.7
    rows = predicted(run)
    assert all(r["abstained"] == (max(r["probs"].values()) < abstain["min_confidence"]) for r in rows)
    code, out, err = invoke("evaluate", str(run), "--split", "validation", "--json", "--device", "cpu")
    assert code == 0, err
    got = json.loads(out)["abstention"]
    assert got["coverage"] == pytest.approx(abstain["validation"]["coverage"])
    assert got["accuracy"] == pytest.approx(abstain["validation"]["accuracy"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--positive", "spam", "--target", "precision=1.5"], "precision must be in (0, 1]"),
        (["--positive", "eggs", "--target", "f1"], "--positive 'eggs' is not a class"),
        (["--positive", "spam"], "--positive needs --target"),
    ],
)
def test_calibrate_bad_targets_exit_2_and_leave_run_json(run: Path, flags: list[str], message: str) -> None:
    before = (run / "run.json").read_bytes()
    code, out, err = invoke("calibrate", str(run), *flags, "--device", "cpu")
    assert (code, out) == (2, "") and message in err and "Traceback" not in err
    assert (run / "run.json").read_bytes() == before


def test_a_threshold_target_with_three_classes_is_exit_2(tmp_path: Path) -> None:
    classes = ["neg", "neu", "pos"]
    run = tiny_run(tmp_path, tmp_path, classes)  # refused before any data is read
    before = (run / "run.json").read_bytes()
    code, _, err = invoke("calibrate", str(run), "--positive", "pos", "--target", "f1", "--device", "cpu")
    assert code == 2 and "this run has 3 classes" in err
    assert (run / "run.json").read_bytes() == before


def test_an_unreachable_target_is_exit_3_and_stores_nothing(run: Path, tmp_path: Path) -> None:
    # Label the texts the model finds most "spam" as ham: no threshold reaches precision 0.99.
    loaded = load_run(run)
    p = Predictor(loaded, device="cpu", precision="fp32")
    p_spam = p.probabilities(p.logits(TEXTS))[:, 1].tolist()
    order = sorted(range(len(TEXTS)), key=lambda i: -p_spam[i])
    labels = {i: ("ham" if rank < 3 else "spam") for rank, i in enumerate(order)}
    path = tmp_path / "labelled.csv"
    pd.DataFrame({"text": TEXTS, "label": [labels[i] for i in range(len(TEXTS))]}).to_csv(path, index=False)
    before = (run / "run.json").read_bytes()
    code, out, err = invoke(
        "calibrate",
        str(run),
        "--input",
        str(path),
        "--positive",
        "spam",
        "--target",
        "precision=0.99",
        "--device",
        "cpu",
    )
    assert code == 3 and out == "" and "best precision is" in err and "Traceback" not in err
    assert (run / "run.json").read_bytes() == before


@pytest.mark.parametrize("level", ["0", "1.5", "-0.1", "nan"])
def test_min_confidence_outside_0_1_is_exit_2(run: Path, level: str) -> None:
    code, out, err = invoke("predict", str(run), "hello", "--device", "cpu", "--min-confidence", level)
    assert (code, out) == (2, "") and "--min-confidence must be a probability in (0, 1]" in err


# ---- finetune --positive/--target ----------------------------------------------------------------

TINY = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu", "--epochs", "1"]


@pytest.mark.slow
def test_finetune_chooses_the_target_on_validation_and_stores_it(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, CLASSES, n=80)
    out = tmp_path / "run"
    code, stdout, err = invoke(
        "finetune",
        "--data",
        str(data),
        *TINY,
        "--out",
        str(out),
        "--positive",
        "spam",
        "--target",
        "f1",
        "--json",
    )
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    decision = info["decision"]
    assert decision["positive"] == "spam" and decision["target"] == "f1"
    assert json.loads(stdout)["decision"] == decision
    probs, labels = validation_probs(out)
    p, y = probs[:, 1], labels == 1
    assert decision["validation"]["f1"] == pytest.approx(threshold_counts(p, y, decision["threshold"])["f1"])
    assert decision["validation"]["f1"] >= threshold_counts(p, y, 0.5)["f1"]
    # and a coverage target, for abstention
    code, _, err = invoke(
        "finetune", "--data", str(data), *TINY, "--out", str(out), "--force", "--target", "coverage=0.8"
    )
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert "decision" not in info and info["abstain"]["validation"]["coverage"] >= 0.8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--positive", "spam", "--target", "precision=1.5"], "precision must be in (0, 1]"),
        (["--positive", "eggs", "--target", "f1"], "--positive 'eggs' is not a class"),
    ],
)
def test_finetune_refuses_a_bad_target_before_training(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, CLASSES, n=40)
    out = tmp_path / "run"
    code, _, err = invoke("finetune", "--data", str(data), *TINY, "--out", str(out), *flags)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (out / "run.json").exists()


def test_the_table_shows_abstained_texts(run: Path) -> None:
    code, out, err = invoke(
        "predict", str(run), *TEXTS, "--format", "table", "--device", "cpu", "--min-confidence", "1"
    )
    assert code == 0, err
    abstained = sum(r["abstained"] for r in predicted(run, "--min-confidence", "1"))
    assert out.count("(abstained)") == abstained > 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "decision",
            {"positive": "eggs", "threshold": 0.5, "target": "f1", "validation": {}},
            "decision.positive",
        ),
        (
            "decision",
            {"positive": "spam", "threshold": 1.5, "target": "f1", "validation": {}},
            "decision.threshold",
        ),
        ("abstain", {"min_confidence": 0, "target": None, "validation": {}}, "abstain.min_confidence"),
    ],
)
def test_a_damaged_stored_rule_is_one_line_exit_2(run: Path, key: str, value: dict, message: str) -> None:
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, key: value}))
    code, out, err = invoke("predict", str(run), "hello", "--device", "cpu")
    assert (code, out) == (2, "") and message in err and "Traceback" not in err


@pytest.mark.slow
def test_finetune_with_an_unreachable_target_keeps_the_run_and_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptclf.tasks.single_label import SingleLabel

    install_tokenizer()
    data = prepared_folder(tmp_path, CLASSES, n=80)
    out = tmp_path / "run"
    unmet = "--target precision=0.99 cannot be reached on these texts: the best precision is 0.6667"
    finish = SingleLabel.finish

    def unreachable(self: SingleLabel, *args: Any, **kwargs: Any) -> Any:
        finished = finish(self, *args, **kwargs)
        finished.choices, finished.unmet = {}, unmet
        return finished

    monkeypatch.setattr(SingleLabel, "finish", unreachable)
    args = ["--data", str(data), *TINY, "--out", str(out), "--positive", "spam", "--target", "precision=0.99"]
    code, _, err = invoke("finetune", *args)
    assert code == 3 and "cannot be reached" in err and "without a decision" in err, err
    info = json.loads((out / "run.json").read_text())  # the trained run is kept
    assert "decision" not in info and (out / "model.safetensors").is_file()


def test_pr_auc_is_reported_for_the_stored_decisions_positive_class(run: Path) -> None:
    code, out, _ = invoke("evaluate", str(run), "--split", "validation", "--json", "--device", "cpu")
    assert code == 0 and json.loads(out)["pr_auc_positive"] == "spam"  # the second class by default
    assert invoke("calibrate", str(run), "--positive", "ham", "--target", "f1", "--device", "cpu")[0] == 0
    code, out, err = invoke("evaluate", str(run), "--split", "validation", "--json", "--device", "cpu")
    assert code == 0, err
    m = json.loads(out)
    assert m["pr_auc_positive"] == "ham" and m["at_threshold"]["positive"] == "ham"


@pytest.mark.parametrize("k", [2, 4])
def test_decision_metrics_of_logits_a_chunk_at_a_time_are_those_of_the_whole_array(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptclf.tasks import decisions
    from gptclf.tasks.decisions import (
        RISK_LEVELS,
        Decision,
        coverage_counts,
        decision_metrics,
        logits_decision_metrics,
        threshold_counts,
    )
    from gptclf.tasks.metrics import softmax

    rng = np.random.default_rng(k)
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(500, k)).astype(np.float32))
    y = rng.integers(0, k, size=500)
    classes = [f"c{i}" for i in range(k)]
    decision = Decision(positive=1, negative=0, threshold=0.4) if k == 2 else None
    probs = logits.double().numpy() / 1.3
    probs = softmax(probs)
    want = {"risk_coverage": [{"min_confidence": x, **coverage_counts(probs, y, x)} for x in RISK_LEVELS]}
    if decision is not None:
        counts = threshold_counts(probs[:, 1], y == 1, 0.4)
        want["at_threshold"] = {"positive": "c1", "threshold": 0.4, **counts}
    want["abstention"] = {"min_confidence": 0.55, **coverage_counts(probs, y, 0.55)}
    assert json.dumps(decision_metrics(probs, y, classes, decision, 0.55)) == json.dumps(want)
    for chunk in (1, 7, 10**9):
        monkeypatch.setattr(decisions, "METRIC_CHUNK", chunk)
        got = logits_decision_metrics(logits, y, classes, decision, 0.55, 1.3)
        assert json.dumps(got) == json.dumps(want)
