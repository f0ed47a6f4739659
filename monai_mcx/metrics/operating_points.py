"""Operating points a clinician can read: sensitivity and specificity at given thresholds, with bootstrap
confidence intervals over PATIENTS.

Images of one patient are not independent (follow-up films, both views), so the resampling unit of the bootstrap is the
patient: each replicate draws patients with replacement and takes all their images (a cluster bootstrap). Every image
statistic used here is a sum over images (true/false positives/negatives), so a replicate is the patients'
per-patient counts weighted by how often each patient was drawn; that is vectorised as one matrix product per block of
replicates. The interval is the percentile interval of the replicates (Efron & Tibshirani 1993, ch. 13).

Thresholds come from validation: the class threshold chosen there (:func:`monai_mcx.metrics.choose_threshold`, on
calibrated probabilities) and, for fixed sensitivity targets, :func:`threshold_for_sensitivity`. Evaluating the test
split at validation thresholds reports what a user of the model would see; the achieved sensitivity then differs
from the target by the validation-to-test shift. MONAI and scikit-learn have no patient-level bootstrap, hence this
module; the tests compare its sensitivity/specificity with ``sklearn.metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from monai_mcx.keys import Task
from monai_mcx.metrics.classification import _binary_inputs, _np

__all__ = [
    "threshold_for_sensitivity",
    "patient_bootstrap_ci",
    "operating_points",
    "sensitivity_target_thresholds",
    "class_operating_points",
    "target_name",
]


def target_name(target: float) -> str:
    """The key of a sensitivity target: ``0.9 -> "sens90"``, ``0.95 -> "sens95"``, ``0.975 -> "sens97.5"``."""
    pct = round(100 * float(target), 4)
    return f"sens{int(pct)}" if pct == int(pct) else f"sens{pct:g}"


def threshold_for_sensitivity(probs: Any, labels: Any, target: float) -> float:
    """The highest threshold ``t`` (predict positive when ``prob >= t``) whose sensitivity is at least ``target``.

    With ``n`` positives that is the ``ceil(target * n)``-th highest probability of a positive (the threshold of
    ``sklearn.metrics.roc_curve`` where ``tpr`` first reaches ``target``). ``NaN`` when there are no positives.

    Args:
        probs: ``(N,)`` probabilities (calibrated, as used at inference).
        labels: ``(N,)`` 0/1 labels.
        target: sensitivity in ``(0, 1]``.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}.")
    p, y = _binary_inputs(probs, labels)
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        return float("nan")
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


def _group_index(patients: Sequence | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    if patients is None:
        return np.arange(n), n
    pats = np.asarray([str(p) for p in patients])
    if pats.shape != (n,):
        raise ValueError(f"patients must have one entry per image ({n}), got {pats.shape[0]}.")
    _, inv = np.unique(pats, return_inverse=True)
    return inv, int(inv.max()) + 1 if n else 0


def patient_bootstrap_ci(
    stats: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    block: int = 250,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``statistic`` over patients.

    Args:
        stats: ``(P, m)`` per-patient sums of additive image statistics (e.g. TP, FN, TN, FP counts).
        statistic: maps summed statistics ``(R, m)`` (one row per replicate) to values ``(R, q)`` or ``(R,)``;
            ``NaN`` where undefined in a replicate (ignored by the percentiles).
        n_boot: number of replicates.
        ci: coverage of the interval.
        seed: seed of the numpy generator (the same seed gives the same interval).
        block: replicates drawn per matrix product (bounds memory at ``block * P`` integers).

    Returns:
        ``(low, high)`` arrays of shape ``(q,)`` (``NaN`` when no replicate defined the value).
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}.")
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2:
        raise ValueError(f"stats must be (P, m), got shape {stats.shape}.")
    n_pat = stats.shape[0]
    rng = np.random.default_rng(seed)
    values = []
    done = 0
    while done < n_boot:
        r = min(block, n_boot - done)
        weights = rng.multinomial(n_pat, np.full(n_pat, 1.0 / n_pat), size=r) if n_pat else np.zeros((r, 0))
        values.append(np.asarray(statistic(weights @ stats), dtype=np.float64).reshape(r, -1))
        done += r
    vals = np.concatenate(values, axis=0)
    alpha = (1 - ci) / 2
    low = np.full(vals.shape[1], np.nan)
    high = np.full(vals.shape[1], np.nan)
    for j in range(vals.shape[1]):
        v = vals[:, j][~np.isnan(vals[:, j])]
        if v.size:
            low[j], high[j] = np.quantile(v, [alpha, 1 - alpha])
    return low, high


def _rates(sums: np.ndarray) -> np.ndarray:
    """``(R, 4J)`` sums of (TP, FN, TN, FP) per threshold -> ``(R, 2J)`` (sensitivity, specificity) per threshold."""
    tp, fn, tn, fp = sums[:, 0::4], sums[:, 1::4], sums[:, 2::4], sums[:, 3::4]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), np.nan)
        spec = np.where(tn + fp > 0, tn / np.where(tn + fp > 0, tn + fp, 1), np.nan)
    out = np.empty((sums.shape[0], 2 * tp.shape[1]))
    out[:, 0::2], out[:, 1::2] = sens, spec
    return out


def operating_points(
    probs: Any,
    labels: Any,
    thresholds: Mapping[str, float],
    patients: Sequence | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Sensitivity and specificity of one class at named thresholds, with patient-bootstrap intervals.

    Args:
        probs: ``(N,)`` probabilities (calibrated).
        labels: ``(N,)`` 0/1 labels (rows with unknown labels left out by the caller).
        thresholds: ``{name: t}``, e.g. ``{"chosen": 0.41, "sens90": 0.22}``; positive when ``prob >= t``.
            A ``NaN`` threshold gives ``NaN`` values.
        patients: ``(N,)`` patient ids (images of one patient are resampled together); None: every image is its own
            patient.
        n_boot, ci, seed: see :func:`patient_bootstrap_ci`.

    Returns:
        ``{name: {"threshold", "sensitivity", "sensitivity_low", "sensitivity_high", "specificity",
        "specificity_low", "specificity_high"}}`` plus ``{"n_positive", "n_negative", "n_patients"}`` under each name.
    """
    p, y = _binary_inputs(probs, labels)
    group, n_pat = _group_index(patients, p.size)
    names = list(thresholds)
    thr = np.asarray([float(thresholds[k]) for k in names], dtype=np.float64)
    pred = p[:, None] >= thr[None, :]  # (N, J); NaN threshold -> all False, handled below
    pos = (y == 1)[:, None]
    per_image = np.stack([pred & pos, ~pred & pos, ~pred & ~pos, pred & ~pos], axis=-1).reshape(p.size, -1)
    stats = np.zeros((n_pat, per_image.shape[1]))
    np.add.at(stats, group, per_image.astype(np.float64))
    point = _rates(stats.sum(axis=0, keepdims=True))[0]
    low, high = patient_bootstrap_ci(stats, _rates, n_boot=n_boot, ci=ci, seed=seed)
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        row = {"threshold": float(thr[j])}
        for i, m in enumerate(("sensitivity", "specificity")):
            c = 2 * j + i
            if math.isnan(thr[j]):
                row.update({m: float("nan"), f"{m}_low": float("nan"), f"{m}_high": float("nan")})
            else:
                row.update({m: float(point[c]), f"{m}_low": float(low[c]), f"{m}_high": float(high[c])})
        row.update(n_positive=float(np.sum(y == 1)), n_negative=float(np.sum(y == 0)), n_patients=float(n_pat))
        out[name] = row
    return out


def sensitivity_target_thresholds(
    probs: Any, labels: Any, class_names: Sequence[str], targets: Sequence[float] = (0.9, 0.95)
) -> dict[str, dict[str, float]]:
    """``{class: {target_name(t): threshold_for_sensitivity(...)}}`` on ``(N, K)`` probabilities and labels
    (``NaN`` labels = unknown, left out per class). Choose these on validation, then pass them to
    :func:`class_operating_points` for the test split."""
    p, y = _np(probs), _np(labels)
    if p.ndim == 1:
        p, y = p[:, None], y.reshape(-1, 1)
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(y[:, k])
        out[name] = {target_name(t): threshold_for_sensitivity(p[known, k], y[known, k], t) for t in targets}
    return out


def class_operating_points(
    probs: Any,
    labels: Any,
    class_names: Sequence[str],
    thresholds: float | Sequence[float],
    patients: Sequence | None = None,
    sensitivity_targets: Sequence[float] = (0.9, 0.95),
    target_thresholds: Mapping[str, Mapping[str, float]] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Operating points of every class as flat ``metrics.json`` keys.

    Args:
        probs: ``(N, K)`` calibrated probabilities.
        labels: ``(N, K)`` 0/1 labels, ``NaN`` where unknown (left out per class).
        class_names: the ``K`` names.
        thresholds: the chosen class thresholds (one, or one per class), chosen on validation.
        patients: ``(N,)`` patient ids for the bootstrap (None: images are independent).
        sensitivity_targets: fixed sensitivities (``0.9`` -> operating point ``sens90``).
        target_thresholds: ``{class: {"sens90": t, ...}}`` from :func:`sensitivity_target_thresholds` on validation;
            None picks them on these data (then the achieved sensitivity is the target by construction).
        n_boot, ci, seed: see :func:`patient_bootstrap_ci`.

    Returns:
        at the chosen threshold ``classification/{sensitivity,specificity}/<class>`` (the values of
        :func:`monai_mcx.metrics.classification_metrics`) with ``.../ci_low`` and ``.../ci_high``; at each
        sensitivity target ``op`` (``sens90``, ``sens95``, ...) ``classification/<op>/threshold/<class>`` and
        ``classification/<op>/{sensitivity,specificity}/<class>`` with ``.../ci_low``, ``.../ci_high``; and
        ``classification/n_patients/<class>`` (the bootstrap's resampling units).
    """
    p, y = _np(probs), _np(labels)
    if p.ndim == 1:
        p, y = p[:, None], y.reshape(-1, 1)
    if p.shape != y.shape or p.shape[1] != len(class_names):
        raise ValueError(f"class_operating_points: probs {p.shape}, labels {y.shape}, {len(class_names)} classes.")
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 1:
        thr = np.full(len(class_names), thr[0])
    elif thr.size != len(class_names):
        raise ValueError(f"{thr.size} thresholds for {len(class_names)} classes.")
    pats = None if patients is None else np.asarray([str(v) for v in patients])
    if target_thresholds is None:
        target_thresholds = sensitivity_target_thresholds(p, y, class_names, sensitivity_targets)
    out: dict[str, float] = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(y[:, k])
        table = {"chosen": float(thr[k])}
        for t in sensitivity_targets:
            key = target_name(t)
            table[key] = float((target_thresholds.get(name) or {}).get(key, float("nan")))
        res = operating_points(
            p[known, k], y[known, k], table, None if pats is None else pats[known], n_boot=n_boot, ci=ci, seed=seed
        )
        for op, row in res.items():
            prefix = Task.CLASSIFICATION.value if op == "chosen" else f"{Task.CLASSIFICATION.value}/{op}"
            if op != "chosen":
                out[f"{prefix}/threshold/{name}"] = row["threshold"]
            for m in ("sensitivity", "specificity"):
                out[f"{prefix}/{m}/{name}"] = row[m]
                out[f"{prefix}/{m}/{name}/ci_low"] = row[f"{m}_low"]
                out[f"{prefix}/{m}/{name}/ci_high"] = row[f"{m}_high"]
        out[f"classification/n_patients/{name}"] = res["chosen"]["n_patients"]
    return out
