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

Where it is stored: run.json's ``calibration`` (:meth:`Calibration.to_dict`); a run without it
(written before calibration existed, or without validation data) is read as ``T = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptclf.errors import BadInputError
from gptclf.metrics import expected_calibration_error, softmax
from gptclf.rundir import update_run_info

#: The only method so far; run.json names it so that another can be added without ambiguity.
METHOD = "temperature"
#: The temperatures searched. The floor matters most: a validation split the model classifies
#: perfectly keeps rewarding sharper probabilities (T -> 0) because it holds no error to
#: punish them, and an unbounded fit would turn every later probability into 0 or 1.
T_BOUNDS = (0.05, 100.0)
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
            (:func:`gptclf.metrics.expected_calibration_error`).
        val_ece_after: The same at ``temperature``.
        method: Always :data:`METHOD`.
        data: Where the texts came from (``{"split", "data"}`` or ``{"input"}``) and ``n``.
    """

    temperature: float
    val_nll_before: float
    val_nll_after: float
    val_ece_before: float
    val_ece_after: float
    method: str = METHOD
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration`` object of run.json (JSON-ready)."""
        out = asdict(self)
        return {"method": out.pop("method"), **out}


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(z)), labels]).mean())


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Top-label expected calibration error (:data:`gptclf.metrics.ECE_BINS` equal-width bins) of
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
        The calibration; its temperature is 1.0 when no T lowers the NLL (the before and after
        numbers are then equal).

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
    found = _search_log_t(z, y)
    # Keep T = 1 unless the fit really lowers the NLL: a gain within float noise is no gain, and
    # it keeps a well-calibrated run's probabilities exactly as they were.
    temperature = found if nll(z, y, found) < before - 1e-9 else 1.0
    return Calibration(
        temperature=temperature,
        val_nll_before=before,
        val_nll_after=nll(z, y, temperature),
        val_ece_before=ece(z, y),
        val_ece_after=ece(z, y, temperature),
        data={**(data or {}), "n": len(y)},
    )


def run_temperature(info: Mapping[str, Any]) -> float:
    """The temperature a run.json stores; 1.0 for a run without ``calibration`` (older runs)."""
    calibration = info.get("calibration")
    return float(calibration["temperature"]) if isinstance(calibration, dict) else 1.0


def store_calibration(run_dir: Path, calibration: Calibration) -> dict[str, Any]:
    """Store ``calibration`` in a run's run.json, rewritten atomically (nothing else changes, so the
    recorded ``weights_sha256`` stays valid).

    Returns:
        The run.json written.
    """
    return update_run_info(Path(run_dir), {"calibration": calibration.to_dict()})
