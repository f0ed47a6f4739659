"""RSNA Pneumonia Detection Challenge (2018): boxes per patient from the challenge's CSV files."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator

from monai_mcx.data.boxes import check_box
from monai_mcx.data.errors import DataError
from monai_mcx.data.public.common import PublicDataset, find_file, read_csv
from monai_mcx.keys import DatalistKeys

__all__ = ["RSNAPneumonia"]

#: how many dropped duplicate rows the warning lists one by one
_LISTED = 20


def _drop_exact_duplicates(path, rows: list[tuple[int, list[str]]], pid_col: int) -> list[tuple[int, list[str]]]:
    """``rows`` without the rows that repeat an earlier one exactly (every value, surrounding spaces ignored); a
    warning names the dropped CSV lines, their patientId and the line they repeat. A repeated box row would
    otherwise be a second, identical box of the patient."""
    first: dict[tuple[str, ...], int] = {}
    kept, dropped = [], []
    for row_no, r in rows:
        key = tuple(v.strip() for v in r)
        if key in first:
            pid = r[pid_col].strip() if len(r) > pid_col else ""
            dropped.append(f"row {row_no} (patientId {pid}, repeats row {first[key]})")
            continue
        first[key] = row_no
        kept.append((row_no, r))
    if dropped:
        more = f", ... and {len(dropped) - _LISTED} more" if len(dropped) > _LISTED else ""
        warnings.warn(
            f"{path}: {len(dropped)} exact duplicate rows dropped (each box counted once): "
            + ", ".join(dropped[:_LISTED])
            + more,
            UserWarning,
            stacklevel=3,
        )
    return kept


class RSNAPneumonia(PublicDataset):
    """RSNA Pneumonia Detection Challenge (2018).

    Reads ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``, one row per box, a
    single empty row for Target 0) and, when present, ``stage_2_detailed_class_info.csv``
    (``patientId,class``: ``Lung Opacity`` / ``No Lung Opacity / Not Normal`` / ``Normal``); images are
    ``<images_dir>/<patientId>.dcm`` (1024 x 1024).

    Rows that repeat an earlier row exactly are dropped with a warning naming their CSV lines and patientId (a
    repeated box row is one box, not two).

    Items: ``boxes`` = the patient's boxes (xywh converted to xyxy), ``[]`` for Target 0;
    ``findings = [detailed class]`` (``"Lung Opacity"`` / ``"No Lung Opacity / Not Normal"`` / ``"Normal"``;
    ``"No Lung Opacity"`` for Target 0 without the detailed file), so "Not Normal" stays a finding a class
    map can use; ``info["target"]`` = 0/1. Each patientId is one image.
    """

    source = "rsna"
    population = "adult"
    patient_namespace = "rsna"

    def __init__(
        self,
        root,
        labels_csv: str = "stage_2_train_labels.csv",
        detailed_csv: str | None = "stage_2_detailed_class_info.csv",
        images_dir: str = "stage_2_train_images",
        image_size: tuple[int, int] = (1024, 1024),
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.labels_csv = find_file(self.root, labels_csv)
        self.detailed_csv = find_file(self.root, detailed_csv, required=False) if detailed_csv else None
        self.images_dir = self.root / images_dir
        self.image_size = image_size

    def parse(self) -> "OrderedDict[str, dict]":
        """``{patientId: {"target", "boxes", "row", "finding"}}`` in file order (errors per ``on_error``)."""
        path = self.labels_csv
        header, rows = read_csv(path, ("patientId", "x", "y", "width", "height", "Target"))
        ix = {c: header.index(c) for c in ("patientId", "x", "y", "width", "height", "Target")}
        rows = _drop_exact_duplicates(path, rows, ix["patientId"])
        out: OrderedDict[str, dict] = OrderedDict()
        bad: set[str] = set()
        w_img, h_img = self.image_size
        for row_no, r in rows:
            pid = r[ix["patientId"]].strip() if len(r) > ix["patientId"] else ""
            try:
                if len(r) < len(header):
                    raise DataError(f"row has {len(r)} values, the header {len(header)}", path, row_no)
                if not pid:
                    raise DataError("empty patientId", path, row_no)
                target = r[ix["Target"]].strip()
                if target not in ("0", "1"):
                    raise DataError(f"Target must be 0 or 1, got {target!r}", path, row_no)
                rec = out.setdefault(pid, {"target": int(target), DatalistKeys.BOXES.value: [], "row": row_no})
                if rec["target"] != int(target):
                    raise DataError(f"patient {pid} has rows with Target 0 and Target 1", path, row_no)
                if target == "1":
                    try:
                        x, y, w, h = (float(r[ix[c]]) for c in ("x", "y", "width", "height"))
                    except ValueError as e:
                        raise DataError(f"Target 1 row needs numeric x, y, width, height ({e})", path, row_no) from e
                    rec[DatalistKeys.BOXES].append(check_box([x, y, x + w, y + h], w_img, h_img, path, row_no))
            except DataError as e:
                bad.add(pid)
                self._fail(e)
        for pid in bad:
            out.pop(pid, None)
        if self.detailed_csv is not None:
            dpath = self.detailed_csv
            dheader, drows = read_csv(dpath, ("patientId", "class"))
            ip, ic = dheader.index("patientId"), dheader.index("class")
            for row_no, r in drows:
                pid, cls = r[ip].strip(), r[ic].strip()
                rec = out.get(pid)
                if rec is None:
                    continue
                try:
                    if (cls == "Lung Opacity") != (rec["target"] == 1):
                        raise DataError(
                            f"class {cls!r} contradicts Target {rec['target']} of patient {pid}", dpath, row_no
                        )
                except DataError as e:
                    out.pop(pid, None)
                    self._fail(e)
                    continue
                rec["finding"] = cls
        for rec in out.values():
            rec.setdefault("finding", "Lung Opacity" if rec["target"] else "No Lung Opacity")
        return out

    def items(self) -> Iterator[dict]:
        for pid, rec in self.parse().items():
            image = self.images_dir / f"{pid}.dcm"
            item = self._item(
                image, pid, [rec["finding"]], boxes=[list(b) for b in rec[DatalistKeys.BOXES]], target=rec["target"]
            )
            try:
                self._check_exists(image, "image", self.labels_csv, rec["row"])
            except DataError as e:
                self._fail(e, item)
                continue
            yield item
