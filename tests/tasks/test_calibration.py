"""Temperature scaling (gptclf.tasks.calibration): the fit, ECE, the run.json key, and finetune storing it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gptclf.errors import BadInputError
from gptclf.rundir import run_info_problems
from gptclf.tasks.calibration import T_BOUNDS, fit_temperature, nll, run_temperature
from gptclf.tasks.metrics import classification_metrics


def sampled(n: int, k: int, seed: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from the logits' own softmax: calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


def test_over_confident_logits_get_a_temperature_above_1_that_lowers_nll_and_ece() -> None:
    z, y = sampled(4000, 3, seed=0)
    over = 10.0 * z  # the same ranking, ten times too sure
    c = fit_temperature(over, y, {"split": "validation"})
    assert 8.5 < c.temperature < 11.5
    assert c.val_nll_after < c.val_nll_before / 3 and c.val_ece_after < c.val_ece_before / 3
    assert c.val_nll_before == pytest.approx(nll(over, y)) and c.val_nll_after == pytest.approx(
        nll(over, y, c.temperature)
    )
    # It is the minimum: a step either way costs NLL.
    for factor in (0.97, 1.03):
        assert nll(over, y, c.temperature * factor) > c.val_nll_after
    assert c.data == {"split": "validation", "n": 4000}
    assert fit_temperature(over, y) == fit_temperature(over, y)  # deterministic


def test_under_confident_logits_get_a_temperature_below_1() -> None:
    z, y = sampled(4000, 2, seed=1)
    c = fit_temperature(z / 4.0, y)
    assert 0.2 < c.temperature < 0.3 and c.val_nll_after < c.val_nll_before


def test_well_calibrated_logits_keep_a_temperature_near_1() -> None:
    z, y = sampled(20000, 4, seed=2)
    c = fit_temperature(z, y)
    assert abs(c.temperature - 1.0) < 0.05
    assert c.val_nll_after <= c.val_nll_before


def test_when_scaling_cannot_help_t_is_exactly_1() -> None:
    # A margin of log 3 with 3 of 4 texts right: p = 0.75 is already the best, so the search's
    # answer (1 within float noise) lowers nothing and T = 1 is stored exactly.
    m = math.log(3.0)
    z = np.array([[0.0, m]] * 4)
    y = np.array([1, 1, 1, 0])
    c = fit_temperature(z, y)
    assert c.temperature == 1.0 and c.val_nll_after == c.val_nll_before and c.note
    # A model that says nothing (every class the same score): no temperature changes anything.
    flat = fit_temperature(np.zeros((10, 3)), np.arange(10) % 3)
    assert flat.temperature == 1.0 and flat.val_ece_after == flat.val_ece_before


def test_a_perfectly_classified_split_keeps_t_1_and_says_why() -> None:
    """Its NLL only falls as T -> 0: a fit would stop at the search's floor and make every later
    probability 0 or 1, so T = 1 is kept, with a note."""
    z = np.array([[2.0, -2.0], [-1.0, 1.0], [3.0, 0.0]])
    c = fit_temperature(z, np.array([0, 1, 0]))
    assert nll(z, np.array([0, 1, 0]), T_BOUNDS[0]) < c.val_nll_before  # the floor would "win"
    assert c.temperature == 1.0 and c.val_nll_after == c.val_nll_before
    assert c.note and "\n" not in c.note and c.to_dict()["note"] == c.note
    # One text wrong: the NLL has a minimum again, and it is fitted (no note).
    wrong = fit_temperature(z, np.array([0, 1, 1]))
    assert T_BOUNDS[0] < wrong.temperature < T_BOUNDS[1] and wrong.note is None
    assert "note" not in wrong.to_dict()


def test_a_fit_at_a_bound_is_kept_with_a_note() -> None:
    z, y = sampled(2000, 2, seed=5)
    under = fit_temperature(z / 200.0, y)  # 200 times too unsure: the optimum is below the floor
    assert under.temperature == T_BOUNDS[0] and under.note and str(T_BOUNDS[0]) in under.note
    assert under.val_nll_after < under.val_nll_before
    backwards = fit_temperature(-3.0 * z, y)  # scores against the truth: nearly uniform is best
    assert backwards.temperature == T_BOUNDS[1] and backwards.note and "100" in backwards.note
    assert backwards.val_nll_after < backwards.val_nll_before


def test_the_stored_ece_is_the_one_evaluate_reports() -> None:
    z, y = sampled(500, 3, seed=4)
    c = fit_temperature(3.0 * z, y)
    assert c.val_ece_before == classification_metrics(3.0 * z, y, ["a", "b", "c"])["ece"]
    assert c.val_ece_after == pytest.approx(
        classification_metrics(3.0 * z / c.temperature, y, ["a", "b", "c"])["ece"]
    )


@pytest.mark.parametrize(
    ("logits", "labels"),
    [(np.zeros((0, 2)), []), (np.array([[0.0, np.nan]]), [0]), (np.zeros((3, 2)), [0, 1])],
    ids=["no texts", "NaN", "lengths differ"],
)
def test_bad_logits_are_refused(logits: np.ndarray, labels: list[int]) -> None:
    with pytest.raises(BadInputError):
        fit_temperature(logits, labels)


def valid_info() -> dict:
    from gptclf.model.config import GPTConfig
    from gptclf.rundir import build_run_info

    return build_run_info(
        model_name="tiny", config=GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64),
        classes=["a", "b"], max_length=16, pooling="last-token", trainable={}, trainable_params=0,
        train={}, seed=0, weights="random",
    )  # fmt: skip


def test_run_json_schema_checks_the_calibration_key() -> None:
    info = valid_info()
    assert "calibration" not in info and run_temperature(info) == 1.0  # older runs: T = 1
    good = fit_temperature(*sampled(50, 2, seed=3)).to_dict()
    assert set(good) >= {"method", "temperature", "val_nll_before", "val_nll_after"}
    assert run_info_problems({**info, "calibration": good}) == []
    noted = fit_temperature(np.array([[2.0, -2.0], [-1.0, 1.0]]), [0, 1]).to_dict()
    assert noted["note"] and run_info_problems({**info, "calibration": noted}) == []
    assert run_temperature({**info, "calibration": good}) == good["temperature"]
    for bad, phrase in [
        ({**good, "temperature": 0}, "calibration.temperature must be a number > 0"),
        ({**good, "temperature": "2"}, "calibration.temperature must be a number > 0"),
        ({**good, "method": "platt"}, "calibration.method must be 'temperature'"),
        ({**good, "val_ece_after": -1.0}, "calibration.val_ece_after must be a number >= 0"),
        ({"temperature": 2.0}, "calibration must be an object with the keys method, temperature"),
        ([2.0], "calibration must be an object"),
    ]:
        problems = run_info_problems({**info, "calibration": bad})
        assert any(phrase in p for p in problems), (bad, problems)


@pytest.mark.slow
def test_finetune_stores_the_temperature_fitted_on_the_validation_logits(tmp_path: Path) -> None:
    """run.json's calibration is the fit on the kept weights' validation logits, and finetune's
    validation metrics are those of the calibrated probabilities (what evaluate reports)."""
    from gptclf.inference.evaluate import evaluate
    from gptclf.inference.labelled import split_data
    from gptclf.inference.predict import Predictor
    from gptclf.rundir import load_run
    from gptclf.training.finetune import finetune
    from tests.finetune_helpers import install_tokenizer, prepared_folder
    from tests.training.test_run import settings

    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    out = tmp_path / "run"
    # A tiny model trained long with a high learning rate on tiny data: sure of itself.
    result = finetune(settings(data, out, epochs=6, lr=1e-2))
    info = json.loads((out / "run.json").read_text())
    stored = info["calibration"]
    run = load_run(out)
    labelled = split_data(run, "validation")
    raw = Predictor(run, device="cpu", precision="fp32").logits(labelled.texts)
    refit = fit_temperature(raw, labelled.labels, {"split": "validation"})
    assert stored == refit.to_dict() and result.calibration == refit
    assert json.loads((out / "metrics.json").read_text())["calibration"] == stored
    calibrated = evaluate(Predictor(run, device="cpu", precision="fp32"), labelled)
    assert calibrated["calibration"] == {"applied": True, "temperature": stored["temperature"]}
    assert calibrated["loss"] == pytest.approx(stored["val_nll_after"], rel=1e-5)
    assert result.validation is not None and result.validation["loss"] == calibrated["loss"]
    assert stored["val_nll_after"] <= stored["val_nll_before"]
