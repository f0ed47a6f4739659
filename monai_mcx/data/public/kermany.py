"""Kermany / Mooney pediatric pneumonia (``chest_xray``): NORMAL / PNEUMONIA folders."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from monai_mcx.data.errors import DataError
from monai_mcx.data.public.common import PublicDataset
from monai_mcx.keys import DatalistKeys

__all__ = ["KermanyPneumonia"]

_KERMANY_RE = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
#: normal images are ``[NORMAL2-]IM-<study>-<image>[-<n>]``: every image of one study is one patient
_KERMANY_NORMAL_RE = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)?$", re.IGNORECASE)


class KermanyPneumonia(PublicDataset):
    """Kermany / Mooney pediatric pneumonia (``chest_xray``): ``NORMAL/`` and ``PNEUMONIA/`` folders.

    Every ``NORMAL``/``PNEUMONIA`` folder under ``root`` is read (so ``root`` may be ``chest_xray`` with its
    ``train/val/test`` splits, or one split); the split folder name goes to ``info["official_split"]``.
    Pneumonia files are ``personNNN_bacteria_MMMM.jpeg`` / ``personNNN_virus_MMMM.jpeg``: patient
    ``personNNN``, ``info["subtype"]`` bacteria/virus. Normal images carry no person id but a study number:
    ``IM-0429-0001.jpeg``, ``IM-0429-0001-0001.jpeg``, ``IM-0429-0001-0002.jpeg`` are one patient
    ``IM-0429`` (``NORMAL2-IM-0383-0001.jpeg`` -> ``NORMAL2-IM-0383``, a separate numbering); other names
    keep the file stem as patient.
    ``findings``: ``["normal"]`` -> no finding, or ``["pneumonia", subtype]``. Boxes/masks: ``None``.
    """

    source = "kermany"
    population = "pediatric"
    patient_namespace = "kermany"

    def items(self) -> Iterator[dict]:
        for dirpath, dirs, files in sorted(os.walk(self.root)):
            dirs.sort()
            folder = Path(dirpath)
            cls = folder.name.upper()
            if cls not in ("NORMAL", "PNEUMONIA"):
                continue
            split = folder.parent.name if folder.parent != self.root.parent else None
            for f in sorted(files):
                if f.startswith(".") or not f.lower().endswith((".jpeg", ".jpg", ".png")):
                    continue
                stem = f.rsplit(".", 1)[0]
                path = folder / f
                if cls == "NORMAL":
                    m = _KERMANY_NORMAL_RE.match(stem)
                    patient, subtype, findings = (m.group(1) if m else stem), "normal", []
                else:
                    m = _KERMANY_RE.match(stem)
                    if m is None:
                        self._fail(DataError("pneumonia file name is not personNNN_<bacteria|virus>_NNNN", path))
                        continue
                    patient, subtype = m.group(1).lower(), m.group(2).lower()
                    findings = ["pneumonia", subtype]
                item = self._item(path, patient, findings, subtype=subtype)
                if split and split.lower() in ("train", "val", "test"):
                    item[DatalistKeys.INFO]["official_split"] = split.lower()
                yield item
