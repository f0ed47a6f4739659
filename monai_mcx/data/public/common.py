"""Shared pieces of the public data-set adapters: finding and reading the data sets' files (plain, ``.gz`` or
``.zip`` CSVs), the :class:`ClassMap` from each source's findings to the bundle's classes, and the
:class:`PublicDataset` base class of every adapter (see :mod:`monai_mcx.data.public`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from monai_mcx.data.errors import DataError
from monai_mcx.keys import DatalistKeys

__all__ = ["ClassMap", "DEFAULT_CLASS_NAMES", "DEFAULT_CLASS_MAP", "PublicDataset", "find_file", "read_csv"]

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
    # the radiologists drew an opacity box: a visible lesion, as RSNA's "Lung Opacity"
    "siim_covid": {"Lung Opacity": "pneumonia"},
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
    #: ``adult`` / ``pediatric`` / None: the population of the data set's patients (DatalistKeys.POPULATION)
    population: str | None = None
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
        rec = {DatalistKeys.SOURCE.value: self.source, **err.as_dict(), "message": str(err)}
        if item is not None:
            rec[DatalistKeys.IMAGE.value] = item.get(DatalistKeys.IMAGE)
        self.skipped.append(rec)

    def _patient(self, pid) -> str:
        return f"{self.patient_namespace}:{pid}"

    def _item(self, image, patient, findings, mask=None, boxes=None, lung_mask=None, **extra) -> dict:
        return {
            DatalistKeys.IMAGE.value: str(image),
            DatalistKeys.PATIENT.value: self._patient(patient),
            DatalistKeys.SOURCE.value: self.source,
            DatalistKeys.LABEL.value: self.class_map.label(self.source, findings),
            DatalistKeys.MASK.value: None if mask is None else str(mask),
            DatalistKeys.BOXES.value: boxes,
            DatalistKeys.LUNG_MASK.value: None if lung_mask is None else str(lung_mask),
            DatalistKeys.POPULATION.value: self.population,
            DatalistKeys.FINDINGS.value: list(findings),
            DatalistKeys.INFO.value: dict(extra),
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
