"""Lung masks on pediatric viral pneumonia images (Kermany TRAIN images): ``qu_viral_lungs``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from monai_mcx.data.errors import DataError
from monai_mcx.data.public.common import PublicDataset, find_file, read_csv
from monai_mcx.keys import DatalistKeys

__all__ = ["QUViralLungs"]


class QUViralLungs(PublicDataset):
    """Lung masks on pediatric viral pneumonia images, as in ``cxr-real/qu_viral_lungs``.

    Reads ``labels.csv`` (``image, label, patient, ...``), ``images/`` and ``masks/`` (0/1 PNG).
    The radiographs are Kermany TRAIN viral pneumonia images, so patient ids share the Kermany
    namespace (``kermany:personNNN``) and the patient-level split keeps both copies together.
    ``info["mask_kind"] = "lung"``; ``boxes = None``.
    """

    source = "qu_viral_lungs"
    population = "pediatric"
    patient_namespace = "kermany"

    def __init__(self, root, labels_csv="labels.csv", lung_annotations=True, **kwargs):
        super().__init__(root, **kwargs)
        self.labels_csv = find_file(self.root, labels_csv)
        self.lung_annotations = lung_annotations

    def items(self) -> Iterator[dict]:
        path = self.labels_csv
        header, rows = read_csv(path, ("image", "label"))
        ix = {c: header.index(c) for c in header}
        for row_no, r in rows:
            get = lambda c: r[ix[c]].strip() if c in ix and ix[c] < len(r) else ""  # noqa: E731
            name = get("image")
            label = get("label")
            image = self.root / "images" / name
            mask = self.root / "masks" / name
            patient = get("patient") or Path(name).stem
            item = self._item(
                image,
                patient.lower(),
                [label] if label else [],
                mask=mask if self.lung_annotations else None,
                boxes=None,
                lung_mask=mask,
            )
            if self.lung_annotations:
                item[DatalistKeys.INFO]["mask_kind"] = "lung"
            try:
                self._check_exists(image, "image", path, row_no)
                self._check_exists(mask, "mask", path, row_no)
            except DataError as e:
                self._fail(e, item)
                continue
            yield item
