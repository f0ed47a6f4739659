"""Patient populations (adult, pediatric): which one an image belongs to, and how that was decided.

A model's operating points may differ per population (``operating_points`` of the model description,
``docs/model_description.md``). Each image's population is decided by the first of these that is known
(:func:`resolve_population`):

1. an explicit choice for the whole run (``--population adult|pediatric``);
2. the patient's age from the DICOM header (``PatientAge``, else birth and study dates:
   :func:`monai_mcx.dicom.checks.patient_age_years`): ``adult`` from :data:`ADULT_MIN_AGE_YEARS` years on;
3. the datalist item's ``population`` field;
4. the datalist item's ``source``, through :data:`SOURCE_POPULATIONS` (e.g. ``kermany`` -> ``pediatric``);
5. the model's ``default_population``.

The answer is ``(population, how)`` with ``how`` one of :data:`POPULATION_REASONS`, and every output says both.
This module needs neither MONAI nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "POPULATIONS",
    "POPULATION_REASONS",
    "ADULT_MIN_AGE_YEARS",
    "SOURCE_POPULATIONS",
    "population_from_age",
    "check_population",
    "resolve_population",
]

#: the populations a model can hold operating points for
POPULATIONS = ("adult", "pediatric")
#: how an image's population was decided (the order of precedence)
POPULATION_REASONS = ("option", "dicom_age", "datalist", "source", "default")
#: age (years) from which a patient counts as an adult
ADULT_MIN_AGE_YEARS = 18.0
#: the population of each public data set's patients (``monai_mcx.data.public``): Kermany's and the QU viral
#: pneumonia set's children aged 1-5; the adult sets (RSNA and NIH ChestX-ray14 hold mostly adults: about 95 % of
#: NIH's patients are 18 or older)
SOURCE_POPULATIONS: dict[str, str] = {
    "kermany": "pediatric",
    "qu_viral_lungs": "pediatric",
    "rsna": "adult",
    "nih": "adult",
    "siim": "adult",
    "siim_covid": "adult",
    "covid_lungs": "adult",
    "covid_lesions": "adult",
}


def population_from_age(years: float | None) -> str | None:
    """``adult`` from :data:`ADULT_MIN_AGE_YEARS` on, ``pediatric`` below, None when the age is unknown."""
    if years is None or not math.isfinite(float(years)) or float(years) < 0:
        return None
    return "adult" if float(years) >= ADULT_MIN_AGE_YEARS else "pediatric"


def check_population(value: Any, where: str = "population") -> str | None:
    """``value`` as a population name (None/"" -> None); anything else than :data:`POPULATIONS` is an error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip().lower()
    if text not in POPULATIONS:
        raise ValueError(f"{where}: population must be one of {list(POPULATIONS)}, got {value!r}")
    return text


def resolve_population(
    option: str | None = None,
    age_years: float | None = None,
    population: str | None = None,
    source: str | None = None,
    default: str | None = None,
    source_populations: Mapping[str, str] | None = None,
) -> tuple[str | None, str]:
    """The population of one image and how it was decided (module docstring: option, DICOM age, datalist
    ``population``, datalist ``source``, the model's default).

    Args:
        option: the run's explicit choice (``adult`` / ``pediatric``; None or ``"auto"``: decide per image).
        age_years: the patient's age in years from the image's DICOM header, or None (NaN) when unknown.
        population: the datalist item's ``population``.
        source: the datalist item's ``source``.
        default: the model's ``default_population`` (None: no population; the model's global operating point).
        source_populations: ``{source: population}`` (default :data:`SOURCE_POPULATIONS`).

    Returns:
        ``(population or None, reason)`` with ``reason`` in :data:`POPULATION_REASONS`.
    """
    if option is not None and str(option).strip().lower() not in ("", "auto"):
        return check_population(option, "--population"), "option"
    from_age = population_from_age(age_years)
    if from_age is not None:
        return from_age, "dicom_age"
    listed = check_population(population, "datalist population")
    if listed is not None:
        return listed, "datalist"
    table = SOURCE_POPULATIONS if source_populations is None else source_populations
    if source is not None and str(source) in table:
        return table[str(source)], "source"
    return check_population(default, "default_population"), "default"
