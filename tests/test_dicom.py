"""monai_mcx.dicom: study trees and DICOMDIRs, header checks, SEG / SR writing and reading, atomic writes, dciodvfy.

Sources are synthetic radiographs made with pydicom (tests/dicom_factory.py) and, when the shared pack is present,
real RSNA challenge DICOMs (JPEG Baseline, Secondary Capture SOP class, PatientAge "51")."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import make_radiograph
from pydicom.fileset import FileSet
from pydicom.sr.codedict import codes

from monai_mcx import __version__
from monai_mcx.dicom import (
    LUNG_LABEL,
    check_header,
    find_dicom,
    make_seg,
    make_sr,
    parse_age,
    read_dicomdir,
    read_seg,
    read_sr,
    write_seg,
    write_sr,
)
from monai_mcx.dicom.io import conform_age, save_dataset
from monai_mcx.dicom.web import parse_dicomweb_url, store_instances

from conftest import SHARED

RSNA = SHARED / "data" / "cxr-lesions" / "rsna" / "stage_2_train_images"
NO_RSNA = f"the RSNA DICOMs of the shared pack are not at {RSNA}"


def rsna_files(n: int = 2) -> list[Path]:
    files = sorted(RSNA.glob("*.dcm"))[:n] if RSNA.is_dir() else []
    if not files:
        pytest.skip(NO_RSNA)
    return files


# ---------------------------------------------------------------------------------------------- tree / DICOMDIR
def _save(ds: pydicom.Dataset, path: Path, preamble: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # "raw" DICOM: no preamble, no file meta (old systems write such files)
        raw = pydicom.Dataset()
        raw.update(ds)
        raw.save_as(path, implicit_vr=True, little_endian=True)
    return path


@pytest.fixture
def study_tree(tmp_path):
    """<patient>/<study>/<series>/<uid> with extension-less files, a raw file, a corrupt one and non-DICOM files."""
    root = tmp_path / "tree"
    s1, s2 = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    made = []
    for study, patient in ((s2, "P2"), (s1, "P1")):  # written out of order on purpose
        series = f"{study}.7"
        for number in (3, 1, 2):
            ds = make_radiograph(patient_id=patient, study_uid=study, series_uid=series, instance_number=number)
            made.append(ds)
            _save(ds, root / patient / study / series / ds.SOPInstanceUID)
    raw = make_radiograph(patient_id="P3", study_uid="1.2.826.0.1.3680043.8.498.3")
    _save(raw, root / "P3" / "raw" / "IM0001", preamble=False)
    (root / "P1" / "corrupt.dcm").write_bytes(b"not dicom at all")
    (root / "P1" / "truncated").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    (root / "README.txt").write_text("a study tree")
    (root / "notes").write_text("extension-less, not DICOM")
    return root, made, raw


def test_find_dicom_walks_nested_extensionless_and_raw(study_tree):
    root, made, raw = study_tree
    records = find_dicom(root)
    ok = [r for r in records if r.ok]
    bad = [r for r in records if not r.ok]
    assert len(ok) == len(made) + 1
    assert {r.sop_instance_uid for r in ok} == {d.SOPInstanceUID for d in made} | {raw.SOPInstanceUID}
    # sorted by study, series, instance number
    keys = [(r.study_instance_uid, r.series_instance_uid, r.instance_number) for r in ok]
    assert keys == sorted(keys)
    assert [r.instance_number for r in ok[:3]] == [1, 2, 3]
    assert all(r.modality == "DX" for r in ok)
    # the corrupt .dcm and the truncated DICM file are error records naming the file, after the good ones
    assert records[-len(bad) :] == bad
    assert {r.path.name for r in bad} == {"corrupt.dcm", "truncated"}
    assert all(str(r.path) in r.error for r in bad)
    # README.txt and the extension-less text file are not DICOM: not listed at all
    assert not any(r.path.name in ("README.txt", "notes") for r in records)


def test_find_dicom_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_dicom(tmp_path / "nowhere")


def test_dicomdir_read_and_missing_file(tmp_path):
    datasets = [
        make_radiograph(patient_id="P1", instance_number=i, study_uid="1.2.3.4", series_uid="1.2.3.4.5") for i in (2, 1)
    ]
    datasets.append(make_radiograph(patient_id="P2", modality="CR"))
    fs = FileSet()
    for ds in datasets:
        fs.add(ds)
    media = tmp_path / "media"
    fs.write(media)
    records = read_dicomdir(media / "DICOMDIR")
    assert [r.sop_instance_uid for r in records] == [r.sop_instance_uid for r in read_dicomdir(media)]
    assert {r.sop_instance_uid for r in records} == {d.SOPInstanceUID for d in datasets}
    assert all(r.ok and r.path.is_file() and r.path.name != "DICOMDIR" for r in records)
    for r in records:  # the UIDs of the directory records are those of the files they point at
        assert pydicom.dcmread(r.path, stop_before_pixels=True).SOPInstanceUID == r.sop_instance_uid
    same_series = [r for r in records if r.series_instance_uid == "1.2.3.4.5"]
    assert [r.instance_number for r in same_series] == [1, 2]
    assert {r.modality for r in records} == {"DX", "CR"}
    # walking the media folder finds the same instances and skips the DICOMDIR itself
    assert {r.sop_instance_uid for r in find_dicom(media)} == {d.SOPInstanceUID for d in datasets}
    assert find_dicom(media / "DICOMDIR") == records
    # a referenced file that went missing is an error record naming it
    records[0].path.unlink()
    again = read_dicomdir(media)
    assert sum(r.ok for r in again) == 2
    assert again[-1].error is not None and str(records[0].path) in again[-1].error


def test_dicomdir_unreadable(tmp_path):
    (tmp_path / "DICOMDIR").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="DICOMDIR"):
        read_dicomdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_dicomdir(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- header checks
@pytest.mark.parametrize(
    "value, years",
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("010D", 10 / 365.25),
        ("002W", 14 / 365.25),
        ("51", 51.0),
        ("", None),
        ("abc", None),
        (None, None),
    ],
)
def test_parse_age(value, years):
    assert parse_age(value) == (None if years is None else pytest.approx(years))


def test_conform_age():
    assert [conform_age(v) for v in ("045Y", "51", "006M", "x", "")] == ["045Y", "051Y", "006M", None, None]


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({}, None),
        ({"modality": "CR"}, None),
        ({"view": "AP"}, None),
        ({"view": None}, None),
        ({"body_part": None}, None),
        ({"view": "LL"}, "lateral view (ViewPosition LL): the model reads frontal radiographs"),
        ({"view": "RL"}, "lateral view (ViewPosition RL): the model reads frontal radiographs"),
        ({"view": "LATERAL"}, "lateral view (ViewPosition LATERAL): the model reads frontal radiographs"),
        ({"view": "LLD"}, "view LLD (ViewPosition): the model reads frontal radiographs (PA/AP)"),
        ({"modality": "CT"}, "modality CT: the model reads chest radiographs (CR/DX)"),
        ({"body_part": "KNEE"}, "body part KNEE (BodyPartExamined): the model reads chest radiographs"),
        ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer image"),
        ({"image_type": ("DERIVED", "SECONDARY")}, "secondary capture"),
    ],
)
def test_check_header(kwargs, reason):
    result = check_header(make_radiograph(**kwargs))
    assert result.accepted is (reason is None)
    if reason is None:
        assert result.reason is None
    else:
        assert result.reason.startswith(reason)


def test_check_header_options_and_age(tmp_path):
    lateral = make_radiograph(view="LL")
    assert check_header(lateral, views=None).accepted
    assert check_header(lateral, views=("PA", "AP", "LL")).accepted
    assert check_header(make_radiograph(modality="CT"), modalities=("CT",)).accepted
    assert check_header(make_radiograph(image_type=("DERIVED", "SECONDARY")), allow_secondary=True).accepted
    assert check_header(make_radiograph(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), allow_localizer=True).accepted
    assert not check_header(make_radiograph(view=None), allow_missing_view=False).accepted
    no_modality = make_radiograph()
    del no_modality.Modality
    assert check_header(no_modality).reason.startswith("no Modality")

    adult = check_header(make_radiograph(age="045Y"))
    assert (adult.age_years, adult.pediatric) == (45.0, False)
    child = check_header(make_radiograph(age="006M"))
    assert child.accepted and child.pediatric and child.age_years == pytest.approx(0.5)
    refused = check_header(make_radiograph(age="010Y"), refuse_pediatric=True)
    assert not refused.accepted and refused.reason.startswith("pediatric patient (age 10.0 y < 18)")
    assert check_header(make_radiograph(age="017Y"), pediatric_age=16).pediatric is False
    unknown = check_header(make_radiograph(age=None))
    assert unknown.accepted and unknown.age_years is None and unknown.pediatric is None
    dated = make_radiograph(age=None)
    dated.PatientBirthDate, dated.StudyDate = "20140101", "20240101"
    assert check_header(dated).age_years == pytest.approx(10.0, abs=0.01)
    # a path is read header-only; an unreadable one names the file
    path = _save(make_radiograph(view="RL"), tmp_path / "rl.dcm")
    assert check_header(path).reason.startswith("lateral view (ViewPosition RL)")
    (tmp_path / "bad.dcm").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.dcm"):
        check_header(tmp_path / "bad.dcm")


@pytest.mark.shared
def test_check_header_rsna():
    for path in rsna_files():
        result = check_header(path)
        assert result.accepted, (path, result.reason)
        assert result.modality == "CR" and result.view_position in ("PA", "AP")
        assert result.age_years is not None and result.pediatric is not None


# ---------------------------------------------------------------------------------------------- SEG
def _masks(shape=(64, 48)):
    lesion = np.zeros(shape, bool)
    lesion[10:22, 5:30] = True
    lesion[40, 40] = True
    lung = np.zeros(shape, bool)
    lung[5:60, 3:45] = True
    return lesion, lung


def test_seg_round_trip(tmp_path):
    src = make_radiograph(shape=(64, 48))
    lesion, lung = _masks()
    path = write_seg(src, lesion, tmp_path / "out" / "seg.dcm", lung_mask=lung)
    np.testing.assert_array_equal(read_seg(path), lesion)
    np.testing.assert_array_equal(read_seg(path, LUNG_LABEL), lung)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert (ds.Rows, ds.Columns) == (64, 48)
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    seg1, seg2 = ds.SegmentSequence
    assert seg1.SegmentLabel == "Lung opacity" and seg2.SegmentLabel == "Lung"
    assert seg1.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Lesion.value
    assert seg1.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.MorphologicallyAbnormalStructure.value
    assert seg2.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Lung.value
    assert seg1.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "MultiCheXNet"
    assert seg1.SegmentAlgorithmType == "AUTOMATIC"


def test_seg_empty_mask_and_errors(tmp_path):
    src = make_radiograph(shape=(40, 30))
    path = write_seg(src, np.zeros((40, 30), np.uint8), tmp_path / "empty.dcm")
    mask = read_seg(path)
    assert mask.shape == (40, 30) and not mask.any()
    with pytest.raises(ValueError, match=r"transposed\? the project's \(W, H\) masks need \.T"):
        make_seg(src, np.zeros((30, 40), bool))
    with pytest.raises(ValueError, match="binary"):
        make_seg(src, np.full((40, 30), 0.5))
    with pytest.raises(ValueError, match="no segment labelled 'Lung'"):
        read_seg(path, LUNG_LABEL)
    (tmp_path / "bad.dcm").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.dcm"):
        read_seg(tmp_path / "bad.dcm")


def test_seg_from_a_wh_mask(tmp_path):
    """The project's (W, H) masks go in transposed; the SEG then holds the lesion at the right rows/columns."""
    src = make_radiograph(shape=(30, 50))  # rows=30, columns=50
    mask_wh = np.zeros((50, 30), bool)  # (W, H): x first
    mask_wh[40:45, 2:5] = True  # x in 40..44 (columns), y in 2..4 (rows)
    back = read_seg(write_seg(src, mask_wh.T, tmp_path / "seg.dcm"))
    assert back[2:5, 40:45].all() and back.sum() == 15


# ---------------------------------------------------------------------------------------------- SR
def test_sr_round_trip(tmp_path):
    src = make_radiograph(shape=(64, 48))
    boxes = [[1.0, 2.0, 30.5, 40.25], [0.0, 0.0, 48.0, 64.0]]
    path = write_sr(
        src, tmp_path / "sr.dcm", probability=0.8312, gate=True, boxes=boxes, scores=[0.9, 0.125], weights_sha256="ab12"
    )
    back = read_sr(path)
    assert back["probability"] == pytest.approx(0.8312)
    assert back["gate"] is True
    np.testing.assert_allclose(back["boxes"], boxes, rtol=1e-6)
    assert back["scores"] == pytest.approx([0.9, 0.125])
    assert back["algorithm"] == {"name": "MultiCheXNet", "version": __version__, "weights_sha256": "ab12"}
    assert back["source_sop_instance_uid"] == src.SOPInstanceUID
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    closed = read_sr(write_sr(src, tmp_path / "sr0.dcm", probability=0.1, gate=False))
    assert closed["gate"] is False and closed["boxes"] == [] and closed["scores"] == []
    assert closed["probability"] == pytest.approx(0.1) and closed["algorithm"]["weights_sha256"] is None


def test_sr_errors(tmp_path):
    src = make_radiograph()
    with pytest.raises(ValueError, match="probability"):
        make_sr(src, probability=1.5, gate=True)
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        make_sr(src, probability=0.5, gate=True, boxes=[[0, 0, 2, 2], [1, 1, 3, 3]], scores=[0.5])
    with pytest.raises(ValueError, match="x2 > x1"):
        make_sr(src, probability=0.5, gate=True, boxes=[[5, 0, 2, 2]], scores=[0.5])
    (tmp_path / "bad.dcm").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.dcm"):
        read_sr(tmp_path / "bad.dcm")


@pytest.mark.shared
def test_seg_sr_for_rsna(tmp_path):
    """A real RSNA DICOM (JPEG Baseline, Secondary Capture, PatientAge '51') as the source, read from its path."""
    path = rsna_files(1)[0]
    src = pydicom.dcmread(path, stop_before_pixels=True)
    lesion = np.zeros((src.Rows, src.Columns), bool)
    lesion[100:300, 200:420] = True
    seg = write_seg(path, lesion, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_seg(seg), lesion)
    sr = write_sr(path, tmp_path / "sr.dcm", probability=0.6, gate=True, boxes=[[200, 100, 420, 300]], scores=[0.7])
    assert read_sr(sr)["boxes"] == [[200.0, 100.0, 420.0, 300.0]]
    for out in (seg, sr):
        ds = pydicom.dcmread(out)
        assert ds.PatientAge == "051Y" and ds.StudyInstanceUID == src.StudyInstanceUID


# ---------------------------------------------------------------------------------------------- atomic writes
def test_writes_are_atomic(tmp_path, monkeypatch):
    src = make_radiograph()
    lesion, _ = _masks()
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"previous")
    replaced = []
    real_replace = os.replace

    def spy(a, b):
        replaced.append((Path(a), Path(b), Path(b).read_bytes()))
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", spy)
    write_seg(src, lesion, target)
    (tmp_name, dst, before), *_ = replaced
    assert dst == target and tmp_name.parent == target.parent and tmp_name != target
    assert before == b"previous"  # the old file stays whole until the rename
    np.testing.assert_array_equal(read_seg(target), lesion)

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pydicom.Dataset, "save_as", broken)
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="disk full"):
        save_dataset(make_sr(src, probability=0.5, gate=False), target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- dciodvfy
def _dciodvfy(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).splitlines()


@pytest.fixture(scope="module")
def dciodvfy():
    if shutil.which("dciodvfy") is None:
        if os.environ.get("MCX_REQUIRE_DCIODVFY") == "1":
            pytest.fail("dciodvfy is not installed (MCX_REQUIRE_DCIODVFY=1)")
        pytest.skip("NOT RUN: DICOM validation of SEG/SR: dciodvfy is not installed (apt-get install dicom3tools)")
    return _dciodvfy


def test_dciodvfy_seg_and_sr(tmp_path, dciodvfy):
    src = make_radiograph(shape=(64, 48))
    lesion, lung = _masks()
    sources = [("synthetic DX", src)]
    if RSNA.is_dir():
        sources.append(("RSNA", rsna_files(1)[0]))
    checked = 0
    for name, source in sources:
        header = pydicom.dcmread(source, stop_before_pixels=True) if isinstance(source, Path) else source
        shape = (header.Rows, header.Columns)
        big_lesion = np.zeros(shape, bool)
        big_lesion[: shape[0] // 2, : shape[1] // 3] = True
        seg = write_seg(
            source,
            big_lesion if name == "RSNA" else lesion,
            tmp_path / f"{checked}.seg.dcm",
            lung_mask=None if name == "RSNA" else lung,
        )
        sr = write_sr(
            source, tmp_path / f"{checked}.sr.dcm", probability=0.7, gate=True, boxes=[[1, 2, 20, 30]], scores=[0.5]
        )
        for kind, path, iod in (("SEG", seg, "Segmentation"), ("SR", sr, "Comprehensive3DSR")):
            lines = dciodvfy(path)
            assert iod in lines, (name, kind, lines)  # dciodvfy recognised the IOD it validated
            errors = [line for line in lines if line.startswith("Error")]
            assert not errors, f"dciodvfy on the {kind} of the {name} source:\n" + "\n".join(lines)
            checked += 1
    assert checked == 2 * len(sources)


# ---------------------------------------------------------------------------------------------- DICOMweb URLs
def test_parse_dicomweb_url():
    assert parse_dicomweb_url("dicomweb://127.0.0.1:8042/dicom-web?StudyInstanceUID=1.2.3") == (
        "http://127.0.0.1:8042/dicom-web",
        {"StudyInstanceUID": "1.2.3"},
    )
    assert parse_dicomweb_url("dicomwebs://pacs.example:443/dw/?Modality=CR&PatientID=7") == (
        "https://pacs.example:443/dw",
        {"Modality": "CR", "PatientID": "7"},
    )
    assert parse_dicomweb_url("http://localhost:8042/dicom-web") == ("http://localhost:8042/dicom-web", {})
    with pytest.raises(ValueError, match="not DICOM keywords"):
        parse_dicomweb_url("http://localhost/dicom-web?study=1.2.3")
    with pytest.raises(ValueError, match="not a DICOMweb address"):
        parse_dicomweb_url("ftp://localhost/dicom-web")


def test_store_instances_reports_failed_sops():
    """A STOW response that lists failed instances (FailedSOPSequence) raises, naming them."""

    class Client:
        def store_instances(self, datasets):
            failed = pydicom.Dataset()
            failed.ReferencedSOPInstanceUID, failed.FailureReason = datasets[0].SOPInstanceUID, 0xA700
            response = pydicom.Dataset()
            response.FailedSOPSequence = [failed]
            return response

    ds = make_radiograph()
    with pytest.raises(RuntimeError, match=f"refused 1 instance.*{ds.SOPInstanceUID}"):
        store_instances(Client(), [ds])
