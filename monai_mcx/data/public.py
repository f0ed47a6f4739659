"""Adapters for the public chest X-ray data sets: each reads the data set's own files, as shipped.

One class per data set (in the style of TorchXRayVision):

=========================  =========  ===========================================================
class                      source     what it yields
=========================  =========  ===========================================================
:class:`RSNAPneumonia`     ``rsna``   boxes per patient (``[]`` for Target 0), finding from the
                                      detailed class file when present
:class:`SIIMPneumothorax`  ``siim``   masks decoded from the RLE file, written once as PNG
:class:`NIHChestXray14`    ``nih``    14 ``|``-separated findings, radiologist boxes
:class:`KermanyPneumonia`  ``kermany`` NORMAL / PNEUMONIA (bacteria, virus) folders
:class:`COVIDLungs`        ``covid_lungs`` lung masks + lung boxes + ieee8023 findings
:class:`QUViralLungs`      ``qu_viral_lungs`` lung masks on Kermany viral pneumonia images
:class:`COVIDLesions`      ``covid_lesions`` lesion masks (GGO + consolidation) + ieee8023 findings
=========================  =========  ===========================================================

Every adapter iterates datalist items (see ``monai_mcx.data.datalist``) with **absolute** paths::

    {"image": "/data/rsna/stage_2_train_images/<id>.dcm", "patient": "rsna:<id>", "source": "rsna",
     "label": [1.0] | None, "mask": path | None, "boxes": [[x1, y1, x2, y2], ...] | [] | None,
     "findings": [...], "info": {...source-specific extras}}

``label`` is the vector over ``class_map.class_names``; it is ``None`` (unknown) when the class map
does not say how this source annotates **every** class (unknown is not negative). ``boxes`` are
``[x1, y1, x2, y2]`` in pixel-edge coordinates, x = column (MONAI ``StandardMode``).

Bad rows raise :class:`~monai_mcx.data.errors.DataError` naming the file and CSV row; with
``on_error="skip"`` the item is left out and recorded in ``adapter.skipped``.
CSV files may be plain, ``.gz`` or ``.zip`` (single CSV member); a name given without the extension
is also found compressed, or as any file in ``root`` whose name contains it (e.g. the RSNA file
``kaggle_stage_2_train_labels.csv.zip``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from monai_mcx.data.boxes import check_box
from monai_mcx.data.errors import DataError
from monai_mcx.data.rle import rle_check, rle_decode

__all__ = [
    "ClassMap",
    "DEFAULT_CLASS_NAMES",
    "DEFAULT_CLASS_MAP",
    "PublicDataset",
    "RSNAPneumonia",
    "SIIMPneumothorax",
    "NIHChestXray14",
    "KermanyPneumonia",
    "COVIDLungs",
    "QUViralLungs",
    "COVIDLesions",
    "ieee8023_patient_groups",
    "ADAPTERS",
    "find_file",
    "read_csv",
    "check_box",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz", ".tif", ".tiff", ".bmp")

# --------------------------------------------------------------------------------------------------
# files and CSVs
# --------------------------------------------------------------------------------------------------


def find_file(root: str | os.PathLike, name: str, required: bool = True) -> Path | None:
    """Find ``name`` under the data set folder ``root``: exact, then ``name.gz`` / ``name.zip``, then a glob
    pattern (``name`` may contain ``*``), then any file whose name contains ``name``. An absolute ``name`` is
    used as is; a relative one is looked up under ``root`` only (a same-named file in the current working
    directory is never used).

    Raises:
        DataError: nothing found and ``required``.
    """
    root = Path(root)
    p = Path(name)
    if p.is_absolute():  # a relative name is looked up under root only, never in the working directory
        if p.is_file():
            return p
        if required:
            raise DataError("file not found", p)
        return None
    for cand in (root / name, root / f"{name}.gz", root / f"{name}.zip"):
        if cand.is_file():
            return cand
    pattern = name if "*" in name else f"*{name}*"
    for pat in (pattern, f"{pattern}.gz", f"{pattern}.zip"):
        hits = sorted(x for x in root.glob(pat) if x.is_file())
        if hits:
            return hits[-1]  # e.g. Data_Entry_2017_v2020.csv over Data_Entry_2017.csv
    if required:
        raise DataError(f"no file matching {name!r} (plain, .gz or .zip)", root)
    return None


def _open_text(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    if suffix == ".zip":
        zf = zipfile.ZipFile(path)
        members = [m for m in zf.namelist() if not m.endswith("/") and not m.startswith("__MACOSX")]
        csvs = [m for m in members if m.lower().endswith((".csv", ".txt"))] or members
        if not csvs:
            raise DataError("zip archive holds no CSV file", path)
        return io.TextIOWrapper(zf.open(csvs[0]), encoding="utf-8-sig", newline="")
    return open(path, newline="", encoding="utf-8-sig")


def read_csv(path: str | os.PathLike, required: Sequence[str] = ()) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a (possibly .gz/.zip) CSV.

    Returns:
        ``(header, rows)``: header names stripped of surrounding spaces (SIIM writes ``" EncodedPixels"``),
        rows as ``(line_number, values)`` with line 1 = header; blank lines are dropped.

    Raises:
        DataError: unreadable/corrupt file, empty file (no header or no rows), or a missing required column.
    """
    path = Path(path)
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [(i + 2, r) for i, r in enumerate(reader) if r and any(v.strip() for v in r)]
    except DataError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV ({type(e).__name__}: {e})", path) from e
    if header is None:
        raise DataError("empty CSV (no header)", path)
    header = [h.strip() for h in header]
    if not rows:
        raise DataError(f"empty CSV (header {header} but no rows)", path)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing}; the header is {header}", path)
    return header, rows


def _col(header: list[str], rows, path, row_no, values, name) -> str:
    i = header.index(name)
    if i >= len(values):
        raise DataError(f"row has {len(values)} values, no {name!r}", path, row_no)
    return values[i].strip()


def _index_files(root: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of every file under ``root`` (recursively) with one of ``suffixes``."""
    out: dict[str, Path] = {}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            low = f.lower()
            for s in suffixes:
                if low.endswith(s):
                    out.setdefault(f[: -len(s)], Path(dirpath) / f)
                    break
    return out


# --------------------------------------------------------------------------------------------------
# class mapping
# --------------------------------------------------------------------------------------------------

DEFAULT_CLASS_NAMES = ("pneumonia",)

#: source -> {finding: class name(s)}; findings are matched case-insensitively
DEFAULT_CLASS_MAP: dict[str, dict[str, str | list[str]]] = {
    "rsna": {"Lung Opacity": "pneumonia"},
    "nih": {"Pneumonia": "pneumonia"},
    "kermany": {"pneumonia": "pneumonia"},
    "covid_lungs": {"COVID-19": "pneumonia", "Pneumonia": "pneumonia"},
    # every finding of the ieee8023 lesion set is a pneumonia (viral, bacterial, fungal or ARDS); "No Finding"
    # maps to no class, i.e. negative
    "covid_lesions": {
        f: "pneumonia"
        for f in (
            "COVID-19",
            "ARDS",
            "SARS",
            "MERS",
            "Pneumocystis",
            "Streptococcus",
            "Legionella",
            "Klebsiella",
            "Chlamydophila",
            "E.Coli",
            "Mycoplasma",
            "Staphylococcus",
            "Influenza",
            "Varicella",
            "Herpes",
            "Aspergillosis",
            "Nocardia",
            "Lipoid",
            "Pneumonia",
            "Bacterial",
            "Viral",
            "Fungal",
        )
    },
    "qu_viral_lungs": {"viral pneumonia": "pneumonia"},
}


class ClassMap:
    """Maps each source's findings to the bundle's class names.

    Args:
        class_names: the bundle's classes (the label vector's order).
        sources: ``{source: {finding: class_name | [class_names] | None}}``. A source whose mapping does
            not reach **every** class name gets ``label=None`` (the data set does not annotate the other
            classes, and unknown must not become negative). A source not listed gets ``label=None``.

    JSON form (``--class-map``): ``{"class_names": [...], "sources": {...}}``.

    Raises:
        DataError: a mapping names a class that is not in ``class_names``.
    """

    def __init__(
        self,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        sources: Mapping[str, Mapping[str, str | Sequence[str] | None]] | None = None,
        file: str | os.PathLike | None = None,
    ):
        self.class_names = [str(c) for c in class_names]
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"class_names must be a non-empty list of distinct names, got {self.class_names}", file)
        self.file = file
        sources = DEFAULT_CLASS_MAP if sources is None else sources
        self.sources: dict[str, dict[str, list[str]]] = {}
        for src, mapping in sources.items():
            m: dict[str, list[str]] = {}
            for finding, target in (mapping or {}).items():
                targets = [] if target is None else [target] if isinstance(target, str) else list(target)
                for t in targets:
                    if t not in self.class_names:
                        raise DataError(
                            f"unknown class name {t!r} (source {src!r}, finding {finding!r}); "
                            f"class_names are {self.class_names}",
                            file,
                        )
                m[str(finding).strip().lower()] = targets
            self.sources[src] = m

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ClassMap":
        """Read ``{"class_names": [...], "sources": {...}}``; a missing ``sources`` keeps the defaults."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read class map ({e})", path) from e
        if not isinstance(data, dict) or "class_names" not in data:
            raise DataError('a class map is {"class_names": [...], "sources": {source: {finding: class}}}', path)
        return cls(data["class_names"], data.get("sources"), file=path)

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "sources": {s: dict(m) for s, m in self.sources.items()}}

    def covered(self, source: str) -> set[str]:
        """Class names that ``source``'s findings can reach."""
        return {t for ts in self.sources.get(source, {}).values() for t in ts}

    def label(self, source: str, findings: Sequence[str]) -> list[float] | None:
        """The label vector for an image of ``source`` with ``findings`` (``[]`` = no finding), or ``None``."""
        if self.covered(source) != set(self.class_names):
            return None
        m = self.sources[source]
        hit = {t for f in findings for t in m.get(str(f).strip().lower(), [])}
        return [1.0 if c in hit else 0.0 for c in self.class_names]


# --------------------------------------------------------------------------------------------------
# adapters
# --------------------------------------------------------------------------------------------------


class PublicDataset:
    """Base class: iterate datalist items; collect skipped items when ``on_error="skip"``.

    Args:
        root: the data set's folder, as downloaded.
        class_map: :class:`ClassMap` (default: ``class_names=["pneumonia"]`` and :data:`DEFAULT_CLASS_MAP`).
        check_files: check that every image (and mask) exists; ``False`` parses the label files alone.
        on_error: ``"raise"`` (default) or ``"skip"`` (bad items are left out and listed in ``skipped``).
    """

    source = "unknown"
    #: prefix of patient ids, so that ids from different data sets never collide
    patient_namespace = "unknown"

    def __init__(self, root, class_map: ClassMap | None = None, check_files: bool = True, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{type(self).__name__}: data set folder not found", self.root)
        self.class_map = class_map or ClassMap()
        self.check_files = check_files
        self.on_error = on_error
        self.skipped: list[dict] = []

    def _fail(self, err: DataError, item: dict | None = None) -> None:
        if self.on_error == "raise":
            raise err
        rec = {"source": self.source, **err.as_dict(), "message": str(err)}
        if item is not None:
            rec["image"] = item.get("image")
        self.skipped.append(rec)

    def _patient(self, pid) -> str:
        return f"{self.patient_namespace}:{pid}"

    def _item(self, image, patient, findings, mask=None, boxes=None, **extra) -> dict:
        return {
            "image": str(image),
            "patient": self._patient(patient),
            "source": self.source,
            "label": self.class_map.label(self.source, findings),
            "mask": None if mask is None else str(mask),
            "boxes": boxes,
            "findings": list(findings),
            "info": dict(extra),
        }

    def _check_exists(self, path: Path | None, what: str, csv_file=None, row=None) -> None:
        if self.check_files and (path is None or not Path(path).is_file()):
            raise DataError(f"{what} not found: {path}", csv_file, row)

    def items(self) -> Iterator[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        return self.items()

    def load(self) -> list[dict]:
        """All items as a list."""
        return list(self.items())


class RSNAPneumonia(PublicDataset):
    """RSNA Pneumonia Detection Challenge (2018).

    Reads ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``, one row per box, a
    single empty row for Target 0) and, when present, ``stage_2_detailed_class_info.csv``
    (``patientId,class``: ``Lung Opacity`` / ``No Lung Opacity / Not Normal`` / ``Normal``); images are
    ``<images_dir>/<patientId>.dcm`` (1024 x 1024).

    Items: ``boxes`` = the patient's boxes (xywh converted to xyxy), ``[]`` for Target 0;
    ``findings = [detailed class]`` (``"Lung Opacity"`` / ``"No Lung Opacity / Not Normal"`` / ``"Normal"``;
    ``"No Lung Opacity"`` for Target 0 without the detailed file), so "Not Normal" stays a finding a class
    map can use; ``info["target"]`` = 0/1. Each patientId is one image.
    """

    source = "rsna"
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
                rec = out.setdefault(pid, {"target": int(target), "boxes": [], "row": row_no})
                if rec["target"] != int(target):
                    raise DataError(f"patient {pid} has rows with Target 0 and Target 1", path, row_no)
                if target == "1":
                    try:
                        x, y, w, h = (float(r[ix[c]]) for c in ("x", "y", "width", "height"))
                    except ValueError as e:
                        raise DataError(f"Target 1 row needs numeric x, y, width, height ({e})", path, row_no) from e
                    rec["boxes"].append(check_box([x, y, x + w, y + h], w_img, h_img, path, row_no))
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
            item = self._item(image, pid, [rec["finding"]], boxes=[list(b) for b in rec["boxes"]], target=rec["target"])
            try:
                self._check_exists(image, "image", self.labels_csv, rec["row"])
            except DataError as e:
                self._fail(e, item)
                continue
            yield item


class SIIMPneumothorax(PublicDataset):
    """SIIM-ACR Pneumothorax Segmentation (2019).

    Reads ``train-rle.csv`` (``ImageId, EncodedPixels`` -- the second header has a leading space;
    ``-1`` = no pneumothorax; an image with several pneumothoraces has several rows, OR-ed) and finds the
    DICOMs anywhere under ``images_dir`` (nested study/series folders) by ``SOPInstanceUID`` = file stem.

    Masks are decoded once and written as 0/1 PNG into ``mask_dir`` (default ``<root>/masks_png``; all
    empty masks of one size share one file ``empty_<W>x<H>.png``). An existing PNG is reused.
    Measured (1024x1024, 200 positive masks, 2 shared CPU cores): decoding the RLE costs 1.6-3.3 ms,
    reading the cached PNG 1-4 ms, writing it once ~9 ms -- the same order, so speed does not decide.
    The cache is used because it keeps the datalist schema uniform (``mask`` = a file path, as for
    every other data set; loadable by any reader and viewable); ``write_masks=False`` instead puts
    the RLE rows in ``item["rle"]`` (after checking they fit the image) for decoding in a transform.

    Items: ``findings = ["Pneumothorax"]`` or ``[]``; ``boxes = None``; ``patient`` = the DICOM
    PatientID when the file is present, else the ImageId.
    """

    source = "siim"
    patient_namespace = "siim"

    def __init__(
        self,
        root,
        rle_csv: str = "train-rle.csv",
        images_dir: str = "dicom-images-train",
        mask_dir: str | os.PathLike | None = None,
        image_size: tuple[int, int] = (1024, 1024),
        write_masks: bool = True,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.rle_csv = find_file(self.root, rle_csv)
        self.images_dir = self.root / images_dir
        self.mask_dir = Path(mask_dir) if mask_dir is not None else self.root / "masks_png"
        self.image_size = image_size
        self.write_masks = write_masks

    def parse(self) -> "OrderedDict[str, dict]":
        """``{ImageId: {"rles": [str], "rows": [int], "positive": bool}}``; every RLE checked to fit ``image_size``."""
        path = self.rle_csv
        header, rows = read_csv(path, ("ImageId", "EncodedPixels"))
        ii, ie = header.index("ImageId"), header.index("EncodedPixels")
        out: OrderedDict[str, dict] = OrderedDict()
        bad: set[str] = set()
        w, h = self.image_size
        for row_no, r in rows:
            iid = r[ii].strip() if len(r) > ii else ""
            try:
                if not iid or len(r) <= ie:
                    raise DataError("row needs ImageId and EncodedPixels", path, row_no)
                rle = r[ie].strip()
                npx = rle_check(rle, w, h, file=path, row=row_no)
                rec = out.setdefault(iid, {"rles": [], "rows": [], "positive": False})
                rec["rles"].append(rle)
                rec["rows"].append(row_no)
                rec["positive"] |= npx > 0
            except DataError as e:
                bad.add(iid)
                self._fail(e)
        for iid in bad:
            out.pop(iid, None)
        return out

    def decode(self, rec: dict, width: int, height: int) -> np.ndarray:
        """The OR of an image's RLE rows as a ``(height, width)`` uint8 0/1 mask."""
        mask = np.zeros((height, width), dtype=np.uint8)
        for rle, row in zip(rec["rles"], rec["rows"]):
            mask |= rle_decode(rle, width, height, file=self.rle_csv, row=row)
        return mask

    def _write_png(self, path: Path, mask: np.ndarray) -> None:
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.fromarray(mask).save(tmp, format="PNG")
        os.replace(tmp, path)  # atomic

    def items(self) -> Iterator[dict]:
        records = self.parse()
        files = _index_files(self.images_dir, (".dcm",)) if self.check_files else {}
        for iid, rec in records.items():
            image = files.get(iid, self.images_dir / f"{iid}.dcm")
            width, height = self.image_size
            patient = iid
            item = self._item(image, iid, ["Pneumothorax"] if rec["positive"] else [], boxes=None)
            try:
                self._check_exists(
                    image if iid in files else None,
                    f"DICOM with SOPInstanceUID {iid} under {self.images_dir}",
                    self.rle_csv,
                    rec["rows"][0],
                )
                if self.check_files:
                    import pydicom

                    try:
                        ds = pydicom.dcmread(image, stop_before_pixels=True)
                    except Exception as e:  # noqa: BLE001 - any reader failure is bad input
                        raise DataError(f"not a readable DICOM ({type(e).__name__}: {e})", image) from e
                    width, height = int(ds.get("Columns", width)), int(ds.get("Rows", height))
                    patient = str(ds.get("PatientID", "") or iid)
                if self.write_masks:
                    if rec["positive"]:
                        mpath = self.mask_dir / f"{iid}.png"
                        if not mpath.is_file():
                            self._write_png(mpath, self.decode(rec, width, height))
                    else:
                        mpath = self.mask_dir / f"empty_{width}x{height}.png"
                        if not mpath.is_file():
                            self._write_png(mpath, np.zeros((height, width), np.uint8))
                    item["mask"] = str(mpath)
                else:
                    for rle, row in zip(rec["rles"], rec["rows"]):
                        rle_check(rle, width, height, file=self.rle_csv, row=row)
                    item["rle"] = rec["rles"]
            except DataError as e:
                self._fail(e, item)
                continue
            item["patient"] = self._patient(patient)
            yield item


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
                    "findings": findings,
                    "patient": pid.lstrip("0") or "0",
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
                image, rec["patient"], rec["findings"], boxes=[b for _, b in kept] if kept else None, view=rec["view"]
            )
            if kept:
                item["info"]["box_findings"] = [f for f, _ in kept]
            if name in official:
                item["info"]["official_split"] = official[name]
            try:
                self._check_exists(
                    image if stem in files else None, f"image {name} under {self.root}", self.data_entry_csv, rec["row"]
                )
            except DataError as e:
                self._fail(e, item)
                continue
            yield item


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
                    item["info"]["official_split"] = split.lower()
                yield item


class COVIDLungs(PublicDataset):
    """COVID-19 lung set as in ``cxr-real/covid_lungs`` (ieee8023 images, V7 lung masks, lung boxes).

    Reads ``labels.csv`` (``image, finding, view, patient, patient_group, ...``), ``annotations.csv``
    (``image, x1, y1, x2, y2, label``: two **lung** boxes per image), ``images/`` and ``masks/``.
    ``findings`` = the finding split at ``,`` and ``/`` (``No Finding`` = none); patient = ``patient_group``
    (joins patients sharing a duplicated radiograph). ``mask`` / ``boxes`` are **lung** annotations
    (``info["mask_kind"] = info["box_kind"] = "lung"``, ``info["box_names"]``); ``lung_annotations=False`` leaves them ``None``.
    """

    source = "covid_lungs"
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
                    self._fail(e, {"image": str(self.root / "images" / name)})
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
                view=view,
                finding_raw=finding,
            )
            if self.lung_annotations:
                item["info"]["mask_kind"] = item["info"]["box_kind"] = "lung"
                if bx is not None:
                    item["info"]["box_names"] = [lab for _, lab in bx]
            try:
                self._check_exists(image, "image", path, row_no)
            except DataError as e:
                self._fail(e, item)
                continue
            yield item


class QUViralLungs(PublicDataset):
    """Lung masks on pediatric viral pneumonia images, as in ``cxr-real/qu_viral_lungs``.

    Reads ``labels.csv`` (``image, label, patient, ...``), ``images/`` and ``masks/`` (0/1 PNG).
    The radiographs are Kermany TRAIN viral pneumonia images, so patient ids share the Kermany
    namespace (``kermany:personNNN``) and the patient-level split keeps both copies together.
    ``info["mask_kind"] = "lung"``; ``boxes = None``.
    """

    source = "qu_viral_lungs"
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
            )
            if self.lung_annotations:
                item["info"]["mask_kind"] = "lung"
            try:
                self._check_exists(image, "image", path, row_no)
                if self.lung_annotations:
                    self._check_exists(mask, "mask", path, row_no)
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


#: command-line name -> adapter class
ADAPTERS = {
    "rsna": RSNAPneumonia,
    "siim": SIIMPneumothorax,
    "nih": NIHChestXray14,
    "kermany": KermanyPneumonia,
    "covid_lungs": COVIDLungs,
    "qu_viral_lungs": QUViralLungs,
    "covid_lesions": COVIDLesions,
}
