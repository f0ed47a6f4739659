"""NIH ChestX-ray14: 14 ``|``-separated findings, radiologist boxes, the official split lists."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from monai_mcx.data.boxes import check_box
from monai_mcx.data.errors import DataError
from monai_mcx.data.public.common import PublicDataset, _index_files, find_file, read_csv
from monai_mcx.keys import DatalistKeys

__all__ = ["NIHChestXray14"]


class NIHChestXray14(PublicDataset):
    """NIH ChestX-ray14.

    Reads ``Data_Entry_2017*.csv`` (``Image Index, Finding Labels, Follow-up #, Patient ID, ...``;
    findings ``|``-separated, ``No Finding`` = none), ``BBox_List_2017.csv`` when present
    (``Image Index, Finding Label, Bbox [x,y,w,h]`` on the 1024x1024 images) and the official
    ``train_val_list.txt`` / ``test_list.txt`` when present (``info["official_split"]``).
    PNGs are found anywhere under ``root`` (``images_001/images/...``).

    Items: ``findings`` = the image's findings; ``boxes`` = its radiologist boxes of findings that the
    class map maps to a class name (``info["box_findings"]`` names each box's finding), else ``None``
    (the box list covers a few findings on 880 images only, so no box is *unknown*, not negative).
    """

    source = "nih"
    population = "adult"
    patient_namespace = "nih"
    FINDINGS = (
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    )

    def __init__(
        self,
        root,
        data_entry_csv: str = "Data_Entry_2017*.csv",
        bbox_csv: str | None = "BBox_List_2017.csv",
        train_val_list: str | None = "train_val_list.txt",
        test_list: str | None = "test_list.txt",
        image_size: tuple[int, int] = (1024, 1024),
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.data_entry_csv = find_file(self.root, data_entry_csv)
        self.bbox_csv = find_file(self.root, bbox_csv, required=False) if bbox_csv else None
        self.train_val_list = find_file(self.root, train_val_list, required=False) if train_val_list else None
        self.test_list = find_file(self.root, test_list, required=False) if test_list else None
        self.image_size = image_size

    def parse_entries(self) -> "OrderedDict[str, dict]":
        path = self.data_entry_csv
        header, rows = read_csv(path, ("Image Index", "Finding Labels", "Patient ID"))
        ii, il, ip = header.index("Image Index"), header.index("Finding Labels"), header.index("Patient ID")
        iv = header.index("View Position") if "View Position" in header else None
        out: OrderedDict[str, dict] = OrderedDict()
        for row_no, r in rows:
            try:
                if len(r) <= max(ii, il, ip):
                    raise DataError(f"row has {len(r)} values", path, row_no)
                name, labels, pid = r[ii].strip(), r[il].strip(), r[ip].strip()
                if not name or not pid:
                    raise DataError("empty Image Index or Patient ID", path, row_no)
                findings = [f.strip() for f in labels.split("|") if f.strip() and f.strip() != "No Finding"]
                unknown = [f for f in findings if f not in self.FINDINGS]
                if unknown:
                    raise DataError(f"unknown finding(s) {unknown}", path, row_no)
                if name in out:
                    raise DataError(f"image {name} listed twice (first in row {out[name]['row']})", path, row_no)
                out[name] = {
                    DatalistKeys.FINDINGS.value: findings,
                    DatalistKeys.PATIENT.value: pid.lstrip("0") or "0",
                    "row": row_no,
                    "view": r[iv].strip() if iv is not None and iv < len(r) else None,
                }
            except DataError as e:
                self._fail(e)
        return out

    def parse_boxes(self) -> dict[str, list[tuple[str, list[float], int]]]:
        """``{image: [(finding, [x1, y1, x2, y2], row), ...]}`` from the box list (positional columns)."""
        out: dict[str, list] = {}
        if self.bbox_csv is None:
            return out
        path = self.bbox_csv
        header, rows = read_csv(path, ("Image Index", "Finding Label"))
        w, h = self.image_size
        for row_no, r in rows:
            try:
                if len(r) < 6:
                    raise DataError(f"row has {len(r)} values, expected image, finding, x, y, w, h", path, row_no)
                try:
                    x, y, bw, bh = (float(v) for v in r[2:6])
                except ValueError as e:
                    raise DataError(f"box values are not numbers ({e})", path, row_no) from e
                box = check_box([x, y, x + bw, y + bh], w, h, path, row_no)
                finding = r[1].strip()
                if finding == "Infiltrate":  # the box list's spelling of Infiltration
                    finding = "Infiltration"
                out.setdefault(r[0].strip(), []).append((finding, box, row_no))
            except DataError as e:
                self._fail(e)
        return out

    def _official(self) -> dict[str, str]:
        out = {}
        for path, name in ((self.train_val_list, "train_val"), (self.test_list, "test")):
            if path is not None:
                for line in Path(path).read_text().split():
                    out[line.strip()] = name
        return out

    def items(self) -> Iterator[dict]:
        entries = self.parse_entries()
        boxes = self.parse_boxes()
        official = self._official()
        files = _index_files(self.root, (".png",)) if self.check_files else {}
        for name, rec in entries.items():
            stem = name[:-4] if name.lower().endswith(".png") else name
            image = files.get(stem, self.root / "images" / name)
            mapped = self.class_map.sources.get(self.source, {})
            kept = [(f, b) for f, b, _ in boxes.get(name, []) if mapped.get(f.lower())]
            item = self._item(
                image,
                rec[DatalistKeys.PATIENT],
                rec[DatalistKeys.FINDINGS],
                boxes=[b for _, b in kept] if kept else None,
                view=rec["view"],
            )
            if kept:
                item[DatalistKeys.INFO]["box_findings"] = [f for f, _ in kept]
            if name in official:
                item[DatalistKeys.INFO]["official_split"] = official[name]
            try:
                self._check_exists(
                    image if stem in files else None, f"image {name} under {self.root}", self.data_entry_csv, rec["row"]
                )
            except DataError as e:
                self._fail(e, item)
                continue
            yield item
