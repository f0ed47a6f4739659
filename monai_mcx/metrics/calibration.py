"""Calibration of the classifier's probabilities: per-class temperature scaling, Brier score, NLL, reliability curve.

The classification head's outputs are logits ``z`` ``(N, K)``; the raw probabilities are ``sigmoid(z)``. Temperature
scaling (Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017) divides each class's logit by one
positive number ``T_k`` fitted on held-out data (the validation split) by minimising the binary negative
log-likelihood: ``p_k = sigmoid(z_k / T_k)``. ``T > 1`` softens an over-confident classifier, ``T < 1`` sharpens an
under-confident one. A positive ``T`` is a strictly increasing map, so rankings (ROC, AUC) do not change; thresholds
must be chosen on the calibrated probabilities.

The expected calibration error is :func:`monai_mcx.metrics.classification.expected_calibration_error`; the reliability
curve here uses exactly its bins (its plot: :func:`monai_mcx.visualize.save_reliability_diagram`). Written here rather than taken from MONAI: MONAI has no temperature scaling and its
``CalibrationErrorMetric`` expects one-hot segmentation-like tensors; scikit-learn (``calibration_curve``,
``brier_score_loss``) is only a test dependency and is what the tests compare with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_mcx.metrics.classification import _binary_inputs, _nanmean, _np, calibration_bins, expected_calibration_error

__all__ = [
    "TemperatureScaling",
    "fit_temperature",
    "logits_from_probs",
    "binary_nll",
    "brier_score",
    "reliability_curve",
    "calibration_metrics",
]

#: the range searched for a temperature; an optimum on the border means the data say "no information" (huge T)
#: or "perfectly separable" (tiny T) and the border value is kept.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)


def logits_from_probs(probs: Any, eps: float = 1e-7) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[eps, 1 - eps]`` (for files that store probabilities)."""
    p = np.clip(_np(probs), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _nll_of_logits(z: np.ndarray, y: np.ndarray) -> float:
    # mean of softplus(z) - y * z, the numerically stable binary cross-entropy with logits
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def binary_nll(probs: Any, labels: Any, eps: float = 1e-7) -> float:
    """Mean binary negative log-likelihood ``-mean(y log p + (1 - y) log(1 - p))`` of ``probs`` ``(N,)`` clipped to
    ``[eps, 1 - eps]`` (as ``sklearn.metrics.log_loss``). ``NaN`` for empty input."""
    p, y = _binary_inputs(probs, labels)
    if p.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier_score(probs: Any, labels: Any) -> float:
    """Brier score ``mean((p - y)^2)`` of binary probabilities ``(N,)`` (0 is perfect). ``NaN`` for empty input."""
    p, y = _binary_inputs(probs, labels)
    if p.size == 0:
        return float("nan")
    return float(np.mean((p - y) ** 2))


def reliability_curve(probs: Any, labels: Any, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram data in the bins of :func:`expected_calibration_error`.

    Args:
        probs: ``(N,)`` probabilities of the positive class in [0, 1].
        labels: ``(N,)`` 0/1 labels.
        n_bins: equal-width bins over [0, 1].

    Returns:
        ``(mean_predicted, fraction_positive, count)`` for the non-empty bins, in increasing order (the first two are
        ``sklearn.calibration.calibration_curve(labels, probs, n_bins=n_bins)``'s ``(prob_pred, prob_true)`` up to
        probabilities exactly on a bin edge, which sklearn puts in the lower bin and this function in the upper).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    p, y = _binary_inputs(probs, labels)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probs must lie in [0, 1].")
    count, sum_p, sum_y = calibration_bins(p, y, n_bins)
    nz = count > 0
    return sum_p[nz] / count[nz], sum_y[nz] / count[nz], count[nz]


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature ``T`` minimising the NLL of ``sigmoid(logits / T)`` for one binary task.

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``, and a bounded Brent search over ``log T``
    (``scipy.optimize.minimize_scalar``) finds its minimum in ``bounds``.

    Args:
        logits: ``(N,)`` raw logits of the class.
        labels: ``(N,)`` 0/1 labels (rows with unknown labels left out by the caller).
        bounds: ``(T_min, T_max)``.

    Returns:
        ``T`` in ``bounds``; ``1.0`` (no change) when the labels hold only one value (nothing to fit).
    """
    from scipy.optimize import minimize_scalar

    z, y = _binary_inputs(logits, labels)
    if z.size == 0 or y.min() == y.max():
        return 1.0
    lo, hi = (math.log(float(b)) for b in bounds)
    res = minimize_scalar(
        lambda log_t: _nll_of_logits(z / math.exp(log_t), y), bounds=(lo, hi), method="bounded", options={"xatol": 1e-6}
    )
    t = float(math.exp(res.x))
    # Brent never evaluates the end points exactly; keep T = 1 when it is at least as good (flat NLL)
    if _nll_of_logits(z, y) <= _nll_of_logits(z / t, y):
        return 1.0
    return t


class TemperatureScaling:
    """Per-class temperatures ``T_k``: calibrated probabilities ``sigmoid(z_k / T_k)``.

    Args:
        class_names: the ``K`` class names (the order of the logits' columns).
        temperatures: ``K`` positive temperatures (default all 1: identity).

    The description of a model stores :meth:`to_dict` (``{"method": "temperature", "temperatures": {name: T}}``)
    and :meth:`from_dict` rebuilds it. :meth:`scale` / :meth:`probabilities` accept numpy arrays or torch tensors
    ``(N, K)`` (any leading shape with ``K`` last) and keep the type and device.
    """

    def __init__(self, class_names: Sequence[str], temperatures: Sequence[float] | None = None) -> None:
        if isinstance(class_names, str):
            class_names = [class_names]
        self.class_names = list(class_names)
        t = [1.0] * len(self.class_names) if temperatures is None else [float(v) for v in temperatures]
        if len(t) != len(self.class_names):
            raise ValueError(f"TemperatureScaling: {len(t)} temperatures for {len(self.class_names)} classes.")
        if not all(math.isfinite(v) and v > 0 for v in t):
            raise ValueError(f"TemperatureScaling: temperatures must be finite and > 0, got {t}.")
        self.temperatures = t

    @classmethod
    def fit(
        cls, logits: Any, labels: Any, class_names: Sequence[str], bounds: tuple[float, float] = TEMPERATURE_BOUNDS
    ) -> TemperatureScaling:
        """Fit one temperature per class with :func:`fit_temperature`.

        Args:
            logits: ``(N, K)`` raw logits on the validation split.
            labels: ``(N, K)`` labels, 0/1, ``NaN`` where unknown (those rows are left out for that class).
            class_names: the ``K`` names.
        """
        z = _np(logits)
        y = _np(labels)
        if z.ndim == 1:
            z, y = z[:, None], y.reshape(-1, 1)
        if z.shape != y.shape or z.shape[1] != len(class_names):
            raise ValueError(f"TemperatureScaling.fit: logits {z.shape}, labels {y.shape}, {len(class_names)} classes.")
        temps = []
        for k in range(z.shape[1]):
            known = ~np.isnan(y[:, k])
            temps.append(fit_temperature(z[known, k], y[known, k], bounds=bounds))
        return cls(class_names, temps)

    def scale(self, logits: Any) -> Any:
        """``logits / T`` per class (last dim ``K``); same type (numpy or torch, dtype and device) as the input."""
        if isinstance(logits, torch.Tensor):
            t = torch.as_tensor(self.temperatures, dtype=logits.dtype, device=logits.device)
            return logits / t
        z = np.asarray(logits, dtype=np.float64)
        return z / np.asarray(self.temperatures, dtype=np.float64)

    def probabilities(self, logits: Any) -> Any:
        """Calibrated probabilities ``sigmoid(logits / T)`` (same type as the input)."""
        z = self.scale(logits)
        return torch.sigmoid(z) if isinstance(z, torch.Tensor) else _sigmoid(z)

    __call__ = probabilities

    def to_dict(self) -> dict:
        """``{"method": "temperature", "temperatures": {name: T}}`` (JSON-ready)."""
        return {"method": "temperature", "temperatures": dict(zip(self.class_names, self.temperatures))}

    @classmethod
    def from_dict(
        cls, obj: Mapping | None, class_names: Sequence[str], source: str = "model description"
    ) -> TemperatureScaling:
        """Inverse of :meth:`to_dict`; ``None`` / ``{}`` gives the identity. A class missing from ``obj`` or an unknown
        ``method`` is an error naming ``source``."""
        if not obj:
            return cls(class_names)
        if obj.get("method", "temperature") != "temperature":
            method = obj.get("method")
            raise ValueError(f"{source}: calibration method {method!r} is not supported (only 'temperature').")
        table = obj.get("temperatures", {})
        missing = [c for c in class_names if c not in table]
        if missing:
            raise ValueError(f"{source}: calibration has no temperature for class(es) {missing} (has {sorted(table)}).")
        return cls(class_names, [float(table[c]) for c in class_names])

    def __repr__(self) -> str:
        return f"TemperatureScaling({dict(zip(self.class_names, self.temperatures))})"


def calibration_metrics(
    logits: Any, labels: Any, class_names: Sequence[str], scaling: TemperatureScaling, n_bins: int = 10
) -> dict[str, float]:
    """Calibration before and after temperature scaling, as flat ``metrics.json`` keys.

    Args:
        logits: ``(N, K)`` raw logits.
        labels: ``(N, K)`` 0/1 labels, ``NaN`` where unknown (left out per class).
        class_names: the ``K`` class names.
        scaling: the temperatures (fitted on validation; scored on validation and test).
        n_bins: bins of the ECE.

    Returns:
        per class ``calibration/temperature/<class>``, ``calibration/{ece,brier,nll}/<class>`` (the calibrated
        probabilities ``sigmoid(z / T)``) and ``calibration/{ece,brier,nll}/<class>/raw`` (``sigmoid(z)``); and
        ``calibration/{ece,brier,nll}`` / ``calibration/{ece,brier,nll}/raw`` = the mean over the classes where
        defined (``NaN`` values for a class without known labels).
    """
    z = _np(logits)
    y = _np(labels)
    if z.ndim == 1:
        z, y = z[:, None], y.reshape(-1, 1)
    if z.shape != y.shape or z.shape[1] != len(class_names):
        raise ValueError(f"calibration_metrics: logits {z.shape}, labels {y.shape}, {len(class_names)} classes.")
    p_raw = _sigmoid(z)
    p_cal = scaling.probabilities(z)
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(y[:, k])
        yk = y[known, k]
        out[f"calibration/temperature/{name}"] = float(scaling.temperatures[k])
        for suffix, p in (("", p_cal[known, k]), ("/raw", p_raw[known, k])):
            vals = {
                "ece": expected_calibration_error(p, yk, n_bins=n_bins),
                "brier": brier_score(p, yk),
                "nll": binary_nll(p, yk),
            }
            for m, v in vals.items():
                out[f"calibration/{m}/{name}{suffix}"] = float(v)
                per.setdefault(f"calibration/{m}{suffix}", []).append(v)
    for key, vs in per.items():
        out[key] = _nanmean(vs)
    return out
