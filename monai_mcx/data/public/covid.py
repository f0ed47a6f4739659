"""The ieee8023 COVID-19 image collection's two derived sets: lung masks and boxes (``covid_lungs``) and lesion
masks (``covid_lesions``); both name a patient alike (:func:`ieee8023_patient_groups`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from monai_mcx.data.boxes import check_box
from monai_mcx.data.errors import DataError
from monai_mcx.data.public.common import PublicDataset, find_file, read_csv
from monai_mcx.keys import DatalistKeys

__all__ = ["COVIDLungs", "ieee8023_patient_groups", "COVIDLesions"]


class COVIDLungs(PublicDataset):
    """COVID-19 lung set as in ``cxr-real/covid_lungs`` (ieee8023 images, V7 lung masks, lung boxes).

    Reads ``labels.csv`` (``image, finding, view, patient, patient_group, ...``), ``annotations.csv``
    (``image, x1, y1, x2, y2, label``: two **lung** boxes per image), ``images/`` and ``masks/``.
    ``findings`` = the finding split at ``,`` and ``/`` (``No Finding`` = none); patient = ``patient_group``
    (joins patients sharing a duplicated radiograph). ``mask`` / ``boxes`` are **lung** annotations
    (``info["mask_kind"] = info["box_kind"] = "lung"``, ``info["box_names"]``); ``lung_annotations=False`` leaves them ``None``.
    """

    source = "covid_lungs"
    population = "adult"
    patient_namespace = "covid"

    def __init__(
        self, root, labels_csv="labels.csv", annotations_csv="annotations.csv", lung_annotations=True, **kwargs
    ):
        super().__init__(root, **kwargs)
        self.labels_csv = find_file(self.root, labels_csv)
        self.annotations_csv = find_file(self.root, annotations_csv, required=False) if annotations_csv else None
        self.lung_annotations = lung_annotations

    def items(self) -> Iterator[dict]:
        path = self.labels_csv
        header, rows = read_csv(path, ("image", "finding"))
        ix = {c: header.index(c) for c in header}
        boxes: dict[str, list] = {}
        sizes: dict[str, tuple[float, float]] = {}
        records = []
        for row_no, r in rows:
            get = lambda c: r[ix[c]].strip() if c in ix and ix[c] < len(r) else ""  # noqa: E731
            name = get("image")
            finding = get("finding")
            findings = [f.strip() for f in re.split(r"[,/]", finding) if f.strip() and f.strip() != "No Finding"]
            patient = get("patient_group") or get("patient") or Path(name).stem
            if get("width") and get("height"):
                sizes[name] = (float(get("width")), float(get("height")))
            records.append((row_no, name, findings, patient, get("view") or None, finding))
        if self.annotations_csv is not None and self.lung_annotations:
            apath = self.annotations_csv
            aheader, arows = read_csv(apath, ("image", "x1", "y1", "x2", "y2"))
            ax = {c: aheader.index(c) for c in aheader}
            bad = set()
            for row_no, r in arows:
                name = r[ax["image"]].strip()
                try:
                    try:
                        b = [float(r[ax[c]]) for c in ("x1", "y1", "x2", "y2")]
                    except (ValueError, IndexError) as e:
                        raise DataError(f"box values are not numbers ({e})", apath, row_no) from e
                    w, h = sizes.get(name, (None, None))
                    b = check_box(b, w, h, apath, row_no)
                    lab = r[ax["label"]].strip() if "label" in ax and ax["label"] < len(r) else ""
                    boxes.setdefault(name, []).append((b, lab))
                except DataError as e:
                    bad.add(name)
                    self._fail(e, {DatalistKeys.IMAGE.value: str(self.root / "images" / name)})
            for name in bad:
                boxes.pop(name, None)
                sizes[name] = None  # marks the image as skipped
        for row_no, name, findings, patient, view, finding in records:
            if name in sizes and sizes[name] is None:
                continue
            image = self.root / "images" / name
            mask = self.root / "masks" / name
            bx = boxes.get(name)
            item = self._item(
                image,
                patient,
                findings,
                mask=mask if (self.lung_annotations and mask.is_file()) else None,
                boxes=[b for b, _ in bx] if bx is not None else None,
                lung_mask=mask if mask.is_file() else None,
                view=view,
                finding_raw=finding,
            )
            if self.lung_annotations:
                item[DatalistKeys.INFO]["mask_kind"] = item[DatalistKeys.INFO]["box_kind"] = "lung"
                if bx is not None:
                    item[DatalistKeys.INFO]["box_names"] = [lab for _, lab in bx]
            try:
                self._check_exists(image, "image", path, row_no)
            except DataError as e:
                self._fail(e, item)
                continue
            yield item


def ieee8023_patient_groups(covid_lungs_root: str | os.PathLike | None) -> dict[str, str]:
    """``{ieee8023 patient id: patient group}`` from ``covid_lungs/labels.csv`` (``patient, patient_group``).

    ``covid_lungs`` joins patients that share a duplicated radiograph into one group (``"201+78"``); a
    data set with ieee8023 patient ids (``covid_lesions``) looks its patients up here so that both folders
    name a patient alike and a patient-level split never puts one patient on two sides. ``None`` or a
    folder without the column gives ``{}``.
    """
    if covid_lungs_root is None:
        return {}
    path = find_file(covid_lungs_root, "labels.csv")
    header, rows = read_csv(path, ("patient",))
    if "patient_group" not in header:
        return {}
    ip, ig = header.index("patient"), header.index("patient_group")
    out: dict[str, str] = {}
    for _row_no, r in rows:
        if max(ip, ig) < len(r) and r[ip].strip() and r[ig].strip():
            out[r[ip].strip()] = r[ig].strip()
    return out


class COVIDLesions(PublicDataset):
    """COVID-19 and other pneumonias with lesion masks, as in ``cxr-lesions/covid_lesions`` (ieee8023 images).

    Reads ``labels.csv`` (``image, finding, view, patient, ...``; ``finding`` e.g. ``COVID-19``,
    ``COVID-19, ARDS``, ``Pneumocystis``, ``No Finding``), ``images/``, ``masks/`` (0/1 PNG: 1 = ground-glass
    opacity or consolidation; all zeros = no lesion) and ``lungs/`` (0/1 lung masks).

    Items: ``mask`` = the **lesion** mask (``info["mask_kind"] = "lesion"``), or with
    ``lung_annotations=True`` the **lung** mask (``"lung"``); ``boxes = None``; ``findings`` = the finding
    split at ``,`` and ``/`` (``No Finding`` = none), mapped by the class map (default: every pneumonia
    finding, COVID-19 included, is ``pneumonia``); ``info["covid"]`` = 1 for a COVID-19 finding.
    ``patient`` = the ieee8023 patient id in the ``covid`` namespace shared with :class:`COVIDLungs`; with
    ``covid_lungs_root`` the id is replaced by ``covid_lungs``' patient group (see
    :func:`ieee8023_patient_groups`), so an image here and one there of the same patient get one id.

    Raises:
        DataError: a finding the class map does not list for ``covid_lesions`` (it would silently become
            negative); map it to a class, or to ``null`` for "no class".
    """

    source = "covid_lesions"
    population = "adult"
    patient_namespace = "covid"

    def __init__(
        self,
        root,
        labels_csv="labels.csv",
        lung_annotations=False,
        covid_lungs_root: str | os.PathLike | None = None,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.labels_csv = find_file(self.root, labels_csv)
        self.lung_annotations = lung_annotations
        self.groups = ieee8023_patient_groups(covid_lungs_root)

    def items(self) -> Iterator[dict]:
        path = self.labels_csv
        header, rows = read_csv(path, ("image", "finding"))
        ix = {c: header.index(c) for c in header}
        mapped = self.class_map.sources.get(self.source, {})
        annotated = self.class_map.label(self.source, []) is not None
        folder = "lungs" if self.lung_annotations else "masks"
        lungs_dir = self.root / "lungs"
        for row_no, r in rows:
            get = lambda c: r[ix[c]].strip() if c in ix and ix[c] < len(r) else ""  # noqa: E731
            name = get("image")
            finding = get("finding")
            findings = [f.strip() for f in re.split(r"[,/]", finding) if f.strip() and f.strip() != "No Finding"]
            pid = get("patient") or Path(name).stem
            image = self.root / "images" / name
            mask = self.root / folder / name
            item = self._item(
                image,
                self.groups.get(pid, pid),
                findings,
                mask=mask,
                boxes=None,
                lung_mask=(lungs_dir / name) if (lungs_dir / name).is_file() else None,
                view=get("view") or None,
                finding_raw=finding,
                mask_kind="lung" if self.lung_annotations else "lesion",
                covid=int(any(f.lower() == "covid-19" for f in findings)),
            )
            try:
                unknown = [f for f in findings if f.lower() not in mapped]
                if annotated and unknown:
                    raise DataError(
                        f"finding(s) {unknown} not in the class map for {self.source!r} (they would "
                        "become negative); map them to a class or to null",
                        path,
                        row_no,
                    )
                if not name:
                    raise DataError("empty image name", path, row_no)
                self._check_exists(image, "image", path, row_no)
                self._check_exists(mask, "lung mask" if self.lung_annotations else "lesion mask", path, row_no)
            except DataError as e:
                self._fail(e, item)
                continue
            yield item
