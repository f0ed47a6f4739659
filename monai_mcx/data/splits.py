"""Patient-level train/validation/test splits with a fixed seed, and the check that no patient leaks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from monai_mcx.data.errors import DataError
from monai_mcx.keys import DatalistKeys

__all__ = ["split_by_patient", "check_patient_splits", "SPLIT_NAMES"]

SPLIT_NAMES = ("training", "validation", "test")


def _positive(item: dict) -> bool:
    label = item.get(DatalistKeys.LABEL)
    if label is not None:
        return any(float(v) > 0 for v in label)
    return bool(item.get(DatalistKeys.BOXES)) or bool(item.get(DatalistKeys.FINDINGS))


def split_by_patient(
    items: Sequence[dict],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Split ``items`` into ``training`` / ``validation`` / ``test`` so that every patient's images land
    in one split.

    Patients are grouped into strata by (the set of sources they appear in, whether any of their
    images is positive) so that each source and both classes are represented in every split; within a
    stratum the patients (sorted, then shuffled by ``numpy.random.default_rng(seed)``) are cut by the
    fractions (rounded, counted in patients). The same items and seed always give the same split.

    Raises:
        ValueError: fractions outside [0, 1) or summing to >= 1.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and val + test < 1, got {val_fraction}, {test_fraction}"
        )
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_patient[str(it.get(DatalistKeys.PATIENT))].append(i)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for pid, idx in by_patient.items():
        key = (
            tuple(sorted({str(items[i].get(DatalistKeys.SOURCE)) for i in idx})),
            any(_positive(items[i]) for i in idx),
        )
        strata[key].append(pid)
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for key in sorted(strata):
        pids = sorted(strata[key])
        order = rng.permutation(len(pids))
        n = len(pids)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        for rank, j in enumerate(order):
            assign[pids[j]] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "training"
    out: dict[str, list[dict]] = {s: [] for s in SPLIT_NAMES}
    for it in items:
        out[assign[str(it.get(DatalistKeys.PATIENT))]].append(it)
    return out


def check_patient_splits(datalist: Mapping[str, Sequence[dict]], file=None) -> None:
    """Raise if a patient has images in two splits of ``datalist`` (``{"training": [...], ...}``).

    Raises:
        DataError: naming the (first) patient, its splits and one image from each.
    """
    seen: dict[str, tuple[str, str]] = {}
    for split in SPLIT_NAMES:
        for it in datalist.get(split, []) or []:
            pid = str(it.get(DatalistKeys.PATIENT))
            if pid in seen and seen[pid][0] != split:
                first_split, first_image = seen[pid]
                raise DataError(
                    f"patient {pid!r} is in both {first_split!r} ({first_image}) and {split!r} ({it.get(DatalistKeys.IMAGE)}); "
                    "splits must be made by patient",
                    file,
                )
            seen.setdefault(pid, (split, str(it.get(DatalistKeys.IMAGE))))
