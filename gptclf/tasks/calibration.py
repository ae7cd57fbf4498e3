"""Temperature scaling: one scalar T > 0 by which a run's logits are divided before the softmax.

Finetuned networks are usually over-confident: their top probability is higher than the rate at
which they are right. Dividing every logit by a temperature fitted on held-out labelled texts (the
validation split) fixes most of that without changing any prediction: the argmax of ``z / T`` is
the argmax of ``z`` for every T > 0, so accuracy, F1 and ROC-AUC stay as they are and only the
probabilities (and so NLL, ECE and thresholds on probabilities) change.

The fit minimises the mean negative log-likelihood of ``softmax(z / T)``. As a function of
``b = 1 / T`` that NLL is convex (a log-sum-exp of ``b * z`` less a linear term), so it has one
minimum on any interval; a golden-section search on ``log T`` over :data:`T_BOUNDS` finds it in
float64 without gradients, starting points or randomness: the same logits always give the same T.
A T that does not lower the NLL below that of ``T = 1`` is not kept (``T = 1`` is stored).

A split the model classifies entirely right (every true class scored strictly highest) has no
minimum to find: its NLL keeps falling as ``T -> 0``, towards probabilities of exactly 0 and 1, so
the search would stop at the floor of :data:`T_BOUNDS`, which is a bound and not a calibration.
Such a split keeps ``T = 1``. A fit that reaches a bound on other texts is kept, as the nearest
value to an optimum beyond it (at the ceiling the probabilities become nearly uniform: the scores
barely tell the classes apart on those texts). Whenever T = 1 is kept or a bound is reached,
:attr:`Calibration.note` says why in one line.

Where it is stored: run.json's ``calibration`` (:meth:`Calibration.to_dict`, with ``note`` only when
there is one); a run without it (written before calibration existed, or without validation data)
is read as ``T = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from gptclf.errors import BadInputError
from gptclf.tasks.metrics import expected_calibration_error, softmax

#: The only method so far; run.json names it so that another can be added without ambiguity.
METHOD = "temperature"
#: The temperatures searched. A split the model classifies perfectly would run to the floor: it is
#: not searched at all (:func:`fit_temperature` keeps T = 1 for it).
T_BOUNDS = (0.05, 100.0)
#: How close (relatively) to a bound the search's answer counts as having reached it.
_AT_BOUND = 1e-6
#: Golden-section steps: the bracket of log T shrinks by 0.618 per step, from 7.6 to below 1e-12.
_STEPS = 64


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the data it was fitted on.

    Attributes:
        temperature: T > 0; probabilities are ``softmax(logits / T)``.
        val_nll_before: Mean negative log-likelihood at T = 1.
        val_nll_after: The same at ``temperature``.
        val_ece_before: Expected calibration error (15 bins, top label) at T = 1
            (:func:`gptclf.tasks.metrics.expected_calibration_error`).
        val_ece_after: The same at ``temperature``.
        method: Always :data:`METHOD`.
        data: Where the texts came from (``{"split", "data"}`` or ``{"input"}``) and ``n``.
        note: Why T = 1 was kept, or that the fit reached a bound of :data:`T_BOUNDS` (one line
            for people); None for an ordinary fit.
    """

    temperature: float
    val_nll_before: float
    val_nll_after: float
    val_ece_before: float
    val_ece_after: float
    method: str = METHOD
    data: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration`` object of run.json (JSON-ready; ``note`` only when there is one)."""
        out = asdict(self)
        if out["note"] is None:
            del out["note"]
        return {"method": out.pop("method"), **out}


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(z)), labels]).mean())


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Top-label expected calibration error (:data:`gptclf.tasks.metrics.ECE_BINS` equal-width bins) of
    ``softmax(logits / temperature)``, as ``gptclf evaluate`` reports it."""
    return expected_calibration_error(softmax(np.asarray(logits, dtype=np.float64) / temperature), labels)


def _search_log_t(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T of lowest NLL in :data:`T_BOUNDS` (golden section on log T; the NLL is unimodal)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(_STEPS):
        if fa <= fb:  # the minimum is left of b
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2.0)


def fit_temperature(
    logits: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray,
    data: Mapping[str, Any] | None = None,
) -> Calibration:
    """Fit the temperature that minimises the NLL of ``logits`` against ``labels``.

    Args:
        logits: (N, K) raw class scores of held-out labelled texts.
        labels: (N,) their true class indices.
        data: Where the texts came from, recorded in :attr:`Calibration.data` (with ``n``).

    Returns:
        The calibration; its temperature is 1.0 (the before and after numbers then equal) when
        no T lowers the NLL or the model classifies every text right, and its ``note`` says why.

    Raises:
        BadInputError: No texts, labels that do not match the logits, or non-finite logits.
    """
    z = logits.detach().double().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    z = z.astype(np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise BadInputError(
            f"calibration needs labelled texts: got {len(y)} labels for logits of shape {z.shape}"
        )
    if not np.isfinite(z).all():
        raise BadInputError("calibration got non-finite logits (NaN or inf): the run's weights are broken")
    before = nll(z, y)
    temperature, note = _chosen_temperature(z, y, before)
    return Calibration(
        temperature=temperature,
        val_nll_before=before,
        val_nll_after=nll(z, y, temperature),
        val_ece_before=ece(z, y),
        val_ece_after=ece(z, y, temperature),
        data={**(data or {}), "n": len(y)},
        note=note,
    )


def all_right(logits: np.ndarray, labels: np.ndarray) -> bool:
    """Whether every text's true class has a strictly higher score than each other class (then the
    NLL falls towards 0 as T -> 0 and has no minimum)."""
    z = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(z))
    others = z.copy()
    others[rows, labels] = -np.inf
    return bool((z[rows, labels] > others.max(axis=1)).all())


def _chosen_temperature(z: np.ndarray, y: np.ndarray, before: float) -> tuple[float, str | None]:
    """The temperature to store for logits ``z`` of labels ``y`` (NLL ``before`` at T = 1), and
    the note that says why when it is 1 or a bound of :data:`T_BOUNDS`."""
    if all_right(z, y):
        return 1.0, (
            f"T = 1 kept: the model classifies all {len(y)} texts right, so the NLL only falls as T "
            "-> 0 (every probability 0 or 1) and there is nothing to calibrate against"
        )
    found = _search_log_t(z, y)
    # Keep T = 1 unless the fit really lowers the NLL: a gain within float noise is no gain, and
    # it keeps a well-calibrated run's probabilities exactly as they were.
    if nll(z, y, found) >= before - 1e-9:
        return 1.0, "T = 1 kept: no temperature lowers the NLL of these texts"
    low, high = T_BOUNDS
    if found <= low * (1 + _AT_BOUND):
        return low, (
            f"the fit reached T = {low:g}, the search's floor: the scores are far less sure "
            "than the model's accuracy warrants, and T stops there"
        )
    if found >= high * (1 - _AT_BOUND):
        return high, (
            f"the fit reached T = {high:g}, the search's ceiling: the scores barely tell the classes "
            "apart on these texts, so the probabilities are made nearly uniform"
        )
    return found, None


def run_temperature(info: Mapping[str, Any]) -> float:
    """The temperature a run.json stores; 1.0 for a run without ``calibration`` (older runs)."""
    calibration = info.get("calibration")
    return float(calibration["temperature"]) if isinstance(calibration, dict) else 1.0
