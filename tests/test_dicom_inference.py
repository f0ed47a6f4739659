"""inference.json with DICOM in and out (issue 22 items 1-4): study trees and DICOMDIRs as input, UID columns, header
checks that say why an image is not read, SEG + SR per predicted instance, and a PACS (Orthanc over DICOMweb) as
input and output.

Real RSNA challenge DICOMs (Secondary Capture, no ImageType, PatientAge "51") when the shared pack is there (the
tree and Orthanc runs skip without it); synthetic radiographs (tests/dicom_factory.py) for the header checks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import make_radiograph
from PIL import Image
from test_dicom import rsna_files
from tiny_model import save_always_positive_model

from monai_mcx.data import inference_items
from monai_mcx.dicom import parse_age, read_seg, read_sr
from monai_mcx.dicom.inputs import annotate_items
from monai_mcx.handlers.output_folder import OutputFolderError, check_outside_inputs

from conftest import BUNDLE, run_bundle

LATERAL = "lateral view (ViewPosition LL): the model reads frontal radiographs"


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "predictions.csv").open()))


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------- item 2: header checks
def test_header_checks_refuse_with_the_reason_and_report_age(tmp_path):
    files = {
        "pa": make_radiograph(age="045Y"),
        "lateral": make_radiograph(view="LL"),
        "secondary": make_radiograph(image_type=("DERIVED", "SECONDARY")),
        "child": make_radiograph(age="006Y"),
        "ct": make_radiograph(modality="CT"),
    }
    items = [{"image": str(_save(ds, tmp_path / f"{name}.dcm"))} for name, ds in files.items()]
    items.append({"image": str(tmp_path / "x.png")})
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "x.png")
    got = {Path(it["image"]).stem: it for it in annotate_items(items)}
    assert (
        "error" not in got["pa"] and got["pa"]["dicom"]["age_years"] == 45 and got["pa"]["dicom"]["pediatric"] is False
    )
    assert got["pa"]["dicom"]["SOPInstanceUID"] == files["pa"].SOPInstanceUID
    assert got["lateral"]["error"] == f"{tmp_path / 'lateral.dcm'}: not read: {LATERAL}"
    assert "secondary capture" in got["secondary"]["error"]
    assert "error" not in got["child"] and got["child"]["dicom"]["pediatric"] is True
    assert "modality CT" in got["ct"]["error"]
    assert got["x"] == {"image": str(tmp_path / "x.png")}  # not DICOM: unchanged
    # the documented overrides
    lenient = {Path(it["image"]).stem: it for it in annotate_items(items, allow_lateral="true", allow_secondary=True)}
    assert "error" not in lenient["lateral"] and "error" not in lenient["secondary"] and "error" in lenient["ct"]
    off = annotate_items(items, dicom_checks=False)
    assert not any("error" in it for it in off) and all("dicom" in it for it in off[:5])


def test_rsna_secondary_capture_without_image_type_is_accepted():
    (path,) = rsna_files(1)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert "ImageType" not in header and header.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    (item,) = annotate_items([{"image": str(path)}])
    assert "error" not in item and item["dicom"]["age_years"] == float(header.PatientAge)


# ---------------------------------------------------------------------------------------- item 3: SEG and SR
def test_dicom_outputs_transpose_the_mask_and_note_what_is_not_written(tmp_path):
    """The writer's (W, H) mask becomes the SEG's (rows, columns): an asymmetric mask on a source that is not
    square reads back as mask_wh.T; a non-DICOM input or an image without mask / probabilities gets notes."""
    from monai_mcx.dicom.outputs import NOT_DICOM, DicomOutputs

    src = _save(make_radiograph(shape=(40, 56)), tmp_path / "dx.dcm")  # rows 40, columns 56: (W, H) = (56, 40)
    mask_wh = np.zeros((56, 40), np.uint8)
    mask_wh[5:30, 2:10] = 1  # x 5..29, y 2..9
    record = {"class_probabilities": {"pneumonia": 0.8}, "gate": {"positive": True}}
    record["boxes"] = [{"box": [5.0, 2.0, 30.0, 10.0], "score": 0.9}, {"box": [3.0, 3.0, 3.0, 9.0], "score": 0.1}]
    steps = []
    hook = DicomOutputs(store_to=None)
    hook.add(str(src), {"SOPInstanceUID": "x"}, record, mask_wh, "dx", steps)
    assert [name for name, _ in steps] == ["dx_seg.dcm", "dx_sr.dcm"] and record["dicom_outputs"]["notes"] == []
    for name, write in steps:
        write(tmp_path / name)
    seg = read_seg(tmp_path / "dx_seg.dcm")
    assert seg.shape == (40, 56) and seg[2:10, 5:30].all() and seg.sum() == mask_wh.sum()
    sr = read_sr(tmp_path / "dx_sr.dcm")
    assert sr["boxes"] == [[5.0, 2.0, 30.0, 10.0]] and sr["scores"] == [pytest.approx(0.9)]  # degenerate box dropped
    other, steps = {}, []
    hook.add(str(tmp_path / "x.png"), None, other, mask_wh, "x", steps)
    assert steps == [] and other["dicom_outputs"]["notes"] == [NOT_DICOM]
    bare = {}
    hook.add(str(src), {"SOPInstanceUID": "x"}, bare, None, "dx", steps)
    assert steps == [] and [n.split(":")[0] for n in bare["dicom_outputs"]["notes"]] == ["no SEG", "no SR"]
    with pytest.raises(ValueError, match="not a DICOMweb address"):
        DicomOutputs(store_to="ftp://pacs/dicom-web")


# ---------------------------------------------------------------------------------------- item 1: trees in
def _tree(root: Path, n_nested: int = 3) -> dict[str, pydicom.Dataset]:
    """root/<patient>/<study>/<series>/<sop>.dcm for RSNA files (the last one extension-less), a lateral copy of one
    more, a synthetic DX that is not square, a PNG at the top and a PNG sub-folder; returns name -> header of each
    DICOM."""
    files = rsna_files(n_nested + 1)
    headers = {}
    for k, src in enumerate(files):
        ds = pydicom.dcmread(src)
        name = f"{ds.SOPInstanceUID}.dcm" if k < n_nested - 1 else str(ds.SOPInstanceUID)
        folder = root / str(ds.PatientID) / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
        if k == n_nested:  # the lateral: a copy with ViewPosition LL
            ds.ViewPosition, name = "LL", "lateral.dcm"
            _save(ds, folder / name)
        else:
            folder.mkdir(parents=True)
            shutil.copyfile(src, folder / name)
        headers[name] = ds
    dx = make_radiograph(shape=(72, 56), patient_id="DX1")  # not square: the (W, H) -> (rows, columns) transpose
    headers["dx.dcm"] = dx
    _save(dx, root / "DX1" / str(dx.StudyInstanceUID) / str(dx.SeriesInstanceUID) / "dx.dcm")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 50), dtype=np.uint8)).save(root / "top.png")
    (root / "pngs").mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "pngs" / "not_run.png")
    return headers


def test_tree_listing_groups_by_study_and_keeps_the_output_folder_out(tmp_path):
    headers = _tree(tmp_path / "in")
    items = inference_items(tmp_path / "in")
    names = [Path(it["image"]).name for it in items]
    assert names[0] == "top.png" and names[-1] == "pngs"  # top-level files, then the tree, then skipped entries
    dicom = [it for it in items if "dicom" in it]
    assert len(dicom) == 5 and [it["dicom"]["StudyInstanceUID"] for it in dicom] == sorted(
        str(h.StudyInstanceUID) for h in headers.values()
    )
    assert items[-1]["error"].endswith(
        "skipped: a folder without DICOM files (sub-folders are searched for DICOM only)"
    )
    assert [it["error"].split("not read: ")[1] for it in dicom if "error" in it] == [LATERAL]
    for out in (tmp_path / "in" / "out", tmp_path / "in"):  # inside the tree (not in a series folder) or the tree
        with pytest.raises(OutputFolderError, match="input folder"):
            check_outside_inputs(out, items)
    check_outside_inputs(tmp_path / "out", items)


def test_dicomdir_input_lists_its_instances_and_a_folder_run_skips_the_dicomdir(tmp_path):
    from pydicom.fileset import FileSet

    uids = {"study_uid": pydicom.uid.generate_uid(), "series_uid": pydicom.uid.generate_uid()}
    datasets = [make_radiograph(**uids, instance_number=n, view=v) for n, v in ((2, "AP"), (1, "LL"))]
    fs = FileSet()
    for ds in datasets:
        fs.add(ds)
    fs.write(tmp_path / "media")
    items = inference_items(tmp_path / "media" / "DICOMDIR")
    assert [it["dicom"]["SOPInstanceUID"] for it in items] == [d.SOPInstanceUID for d in datasets[::-1]]
    assert items[0]["error"].endswith(LATERAL) and "error" not in items[1]
    from_folder = inference_items(tmp_path / "media")  # the same instances; the DICOMDIR is no input
    assert sorted(it["image"] for it in from_folder) == sorted(it["image"] for it in items)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny described model whose gate is always positive with every candidate box (boxes and masks written)."""
    root = tmp_path_factory.mktemp("dicom_model")
    save_always_positive_model(root / "model.pt", mask_threshold=0.45)
    return root


def _infer(model_dir: Path, source: str, out: Path, **overrides):
    return run_bundle(
        "inference.json",
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        input=source,
        ckpt_dir=str(model_dir),
        output_dir=str(out),
        batch_size=2,
        write_overlay=False,
        **overrides,
    )


def _check_seg_sr(out: Path, row: dict, header: pydicom.Dataset, weights_sha256: str | None) -> dict:
    """The SEG and SR of a predicted instance read back equal its JSON (mask PNG, probability, gate, boxes)."""
    rec = json.loads((out / row["json"]).read_text())
    assert rec["dicom"]["SOPInstanceUID"] == row["SOPInstanceUID"] == header.SOPInstanceUID
    entry = rec["dicom_outputs"]
    assert (entry["seg"], entry["sr"]) == (row["dicom_seg"], row["dicom_sr"]) and entry["notes"] == []
    mask = np.asarray(Image.open(out / rec["mask"])) > 0  # rows x columns
    seg = read_seg(out / entry["seg"])
    assert seg.shape == (header.Rows, header.Columns)
    np.testing.assert_array_equal(seg, mask)
    sr = read_sr(out / entry["sr"])
    assert sr["probability"] == pytest.approx(rec["class_probabilities"]["pneumonia"], rel=1e-6)
    assert sr["gate"] is rec["gate"]["positive"] is True
    assert rec["boxes"] and len(sr["boxes"]) == len(rec["boxes"])
    np.testing.assert_allclose(sr["boxes"], [b["box"] for b in rec["boxes"]], rtol=1e-6)
    assert sr["scores"] == pytest.approx([b["score"] for b in rec["boxes"]], rel=1e-6)
    assert sr["source_sop_instance_uid"] == header.SOPInstanceUID
    assert sr["algorithm"]["weights_sha256"] == weights_sha256 and sr["algorithm"]["name"] == "MultiCheXNet"
    for path in (out / entry["seg"], out / entry["sr"]):
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == header.StudyInstanceUID
    return entry


def _dciodvfy_errors(paths) -> list[str]:
    import subprocess

    if shutil.which("dciodvfy") is None:
        return []
    lines = []
    for p in paths:
        proc = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
        out = (proc.stdout + proc.stderr).splitlines()
        assert {"Segmentation", "Comprehensive3DSR"} & set(out), (p, out)  # it recognised the IOD it validated
        lines += [f"{p.name}: {line}" for line in out if line.startswith("Error")]
    return lines


def test_tree_inference_writes_uid_columns_error_rows_seg_and_sr(model_dir, tmp_path):
    from monai_mcx.model import load_description

    headers = _tree(tmp_path / "in")
    out = tmp_path / "out"
    _infer(model_dir, str(tmp_path / "in"), out, write_dicom=True)
    rows = {Path(r["image"]).name: r for r in _rows(out)}
    assert set(rows) == {*headers, "top.png", "pngs"}
    lateral = rows["lateral.dcm"]
    assert lateral["error"].endswith(f"not read: {LATERAL}") and lateral["json"] == "" and lateral["dicom_seg"] == ""
    assert lateral["SOPInstanceUID"] == headers["lateral.dcm"].SOPInstanceUID and lateral["age_years"] != ""
    assert (
        rows["top.png"]["SOPInstanceUID"] == "" and rows["top.png"]["dicom_seg"] == "" and not rows["top.png"]["error"]
    )
    top = json.loads((out / "top.json").read_text())
    assert "no source header" in top["dicom_outputs"]["notes"][0]
    weights = load_description(model_dir / "model.pt").weights_sha256
    written = []
    for name, header in headers.items():
        if name == "lateral.dcm":
            continue
        row = rows[name]
        assert row["error"] == "" and row["StudyInstanceUID"] == header.StudyInstanceUID
        assert row["SeriesInstanceUID"] == header.SeriesInstanceUID
        assert float(row["age_years"]) == parse_age(header.PatientAge) and row["pediatric"] == "False"
        entry = _check_seg_sr(out, row, header, weights)
        written += [out / entry["seg"], out / entry["sr"]]
    # rows grouped by study: the DICOM rows in study order
    studies = [r["StudyInstanceUID"] for r in _rows(out) if r["StudyInstanceUID"]]
    assert studies == sorted(studies)
    # the run manifest records the SEG and SR as the image's files (overwrite removes them)
    manifest = [json.loads(line) for line in (out / ".monai_mcx_run.jsonl").read_text().splitlines()]
    files = {f for rec in manifest if rec["event"] == "image" for f in rec["files"]}
    assert {p.name for p in written} <= files
    assert _dciodvfy_errors(written) == []


# ---------------------------------------------------------------------------------------- item 4: a PACS in and out
def test_orthanc_in_and_out(orthanc, model_dir, tmp_path):
    """The issue's "Must show": two real RSNA DICOMs uploaded to Orthanc; inference.json reads the study from Orthanc
    (QIDO + WADO) and stores the SEG and SR back (STOW); Orthanc then has SEG and SR series that read back."""
    from monai_mcx.dicom.web import make_client, retrieve_instances, search_instances, search_series, store_instances

    client = make_client(orthanc["dicomweb"])
    first, second = (pydicom.dcmread(p) for p in rsna_files(2))
    second.StudyInstanceUID = first.StudyInstanceUID  # one study of two instances
    study = str(first.StudyInstanceUID)
    store_instances(client, [first, second])
    out = tmp_path / "out"
    url = f"dicomweb://{orthanc['base'].removeprefix('http://')}/dicom-web?StudyInstanceUID={study}"
    _infer(model_dir, url, out, store_to=orthanc["dicomweb"])
    rows = _rows(out)
    assert sorted(r["SOPInstanceUID"] for r in rows) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    assert all(r["error"] == "" and r["stored"] == "stored" for r in rows), rows
    assert {Path(r["image"]).stem for r in rows} == {r["SOPInstanceUID"] for r in rows}  # downloads: <sop>.dcm
    fetched = []
    for modality in ("SEG", "SR"):
        series = search_series(client, {"StudyInstanceUID": study, "Modality": modality})
        assert len(series) == 2, modality  # one per instance
        for s in series:
            found = search_instances(client, {"StudyInstanceUID": study, "SeriesInstanceUID": str(s.SeriesInstanceUID)})
            fetched += retrieve_instances(client, found, tmp_path / "back" / modality)
    by_source = {}
    for path in fetched:
        ds = pydicom.dcmread(path)
        if ds.Modality == "SEG":
            source = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            by_source.setdefault(source, {})["seg"] = read_seg(path)
        else:
            back = read_sr(path)
            by_source.setdefault(back["source_sop_instance_uid"], {})["sr"] = back
    assert set(by_source) == {first.SOPInstanceUID, second.SOPInstanceUID}
    for row in rows:
        rec = json.loads((out / row["json"]).read_text())
        got = by_source[row["SOPInstanceUID"]]
        np.testing.assert_array_equal(got["seg"], np.asarray(Image.open(out / rec["mask"])) > 0)
        assert got["sr"]["probability"] == pytest.approx(rec["class_probabilities"]["pneumonia"], rel=1e-6)
        np.testing.assert_allclose(got["sr"]["boxes"], [b["box"] for b in rec["boxes"]], rtol=1e-6)
    assert _dciodvfy_errors(fetched) == []
