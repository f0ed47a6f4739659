"""The ``training`` entry of a model description: what the model was trained on (``train.json`` builds it)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai_mcx.data import load_datalist
from monai_mcx.keys import DatalistKeys
from monai_mcx.model.values import jsonable, utc_now

__all__ = ["training_summary"]


def training_summary(
    datalist: Any = None,
    class_names: Sequence[str] | None = None,
    epochs: int | None = None,
    max_items: int | None = None,
    run_name: str | None = None,
    **extra,
) -> dict:
    """The description's ``training`` entry: ``{"date", "run_name", "epochs", "datalist", "items" {split: n},
    "data_sources" {source: n training items}, **extra}``. ``datalist`` is a datalist file (or dict); items are
    counted as ``monai_mcx.data.load_datalist`` reads them (``max_items`` applied), without opening images."""
    out: dict[str, Any] = {"date": utc_now()}
    if run_name is not None:
        out["run_name"] = str(run_name)
    if epochs is not None:
        out["epochs"] = int(epochs)
    if datalist is not None:
        out["datalist"] = str(datalist) if isinstance(datalist, (str, os.PathLike)) else "<in-memory datalist>"
        try:
            items, sources = {}, {}
            for split in ("training", "validation", "test"):
                try:
                    rows = load_datalist(datalist, split, class_names, check_files=False, max_items=max_items)
                except Exception:  # noqa: BLE001 -- a split may be absent
                    continue
                items[split] = len(rows)
                if split == "training":
                    for r in rows:
                        s = str(r.get(DatalistKeys.SOURCE, "unknown"))
                        sources[s] = sources.get(s, 0) + 1
            out["items"], out["data_sources"] = items, sources
        except Exception as e:  # noqa: BLE001 -- the summary must never stop a training run
            out["items_error"] = f"{type(e).__name__}: {e}"
    out.update(jsonable(extra))
    return out
