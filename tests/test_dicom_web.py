"""monai_mcx.dicom.web against a real PACS: a throw-away Orthanc with its DICOMweb plugin (tests/orthanc_fixture.py).

STOW a real RSNA DICOM (a synthetic DX without the shared pack), find it with QIDO, retrieve it with WADO (byte-identical: as stored, no transcoding),
STOW a SEG and an SR made for it, then find them by Modality (SEG / SR series of the study) and read them back.
Skipped with a ``NOT RUN:`` reason (banner at the end of the run) when Orthanc or its plugin is not installed."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import requests
from dicom_factory import make_radiograph
from test_dicom import RSNA

from monai_mcx.dicom import find_dicom, read_seg, read_sr, write_seg, write_sr
from monai_mcx.dicom.web import fetch, make_client, retrieve_instances, search_instances, search_series, store_instances


def _source(tmp_path):
    """A real RSNA DICOM when the shared pack is there, else a synthetic DX (the test runs in CI either way)."""
    files = sorted(RSNA.glob("*.dcm"))[:1] if RSNA.is_dir() else []
    if files:
        return files[0]
    path = tmp_path / "synthetic_dx.dcm"
    make_radiograph(shape=(1024, 800)).save_as(path, enforce_file_format=True)
    return path


def test_orthanc_stow_qido_wado_seg_sr(orthanc, tmp_path):
    source = _source(tmp_path)
    header = pydicom.dcmread(source, stop_before_pixels=True)
    study = str(header.StudyInstanceUID)
    client = make_client(f"dicomweb://{orthanc['base'].removeprefix('http://')}/dicom-web")

    # STOW the radiograph; QIDO finds it by study; WADO brings back the very bytes that were stored
    response = store_instances(client, [source])
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    found = search_instances(client, {"StudyInstanceUID": study})
    assert [str(d.SOPInstanceUID) for d in found] == [header.SOPInstanceUID]
    (path,) = retrieve_instances(client, found, tmp_path / "wado")
    assert path.read_bytes() == source.read_bytes()
    assert path == tmp_path / "wado" / study / header.SeriesInstanceUID / f"{header.SOPInstanceUID}.dcm"
    (ds,) = retrieve_instances(client, found)
    assert ds.pixel_array.shape == (header.Rows, header.Columns)

    # SEG + SR made for it, stored together
    lesion = np.zeros((header.Rows, header.Columns), bool)
    lesion[120:340, 200:460] = True
    boxes, scores = [[200.0, 120.0, 460.0, 340.0], [600.0, 500.0, 700.5, 650.25]], [0.75, 0.3]
    seg = write_seg(path, lesion, tmp_path / "out" / "seg.dcm")
    sr = write_sr(path, tmp_path / "out" / "sr.dcm", probability=0.64, gate=True, boxes=boxes, scores=scores)
    store_instances(client, [seg, sr])

    # QIDO: the study now has three series; one SEG and one SR series, found by Modality
    assert len(search_series(client, {"StudyInstanceUID": study})) == 3
    for modality, written in (("SEG", seg), ("SR", sr)):
        series = search_series(client, {"StudyInstanceUID": study, "Modality": modality})
        assert [str(s.SeriesInstanceUID) for s in series] == [pydicom.dcmread(written).SeriesInstanceUID]
    # ... and retrieved from the PACS they read back as written
    fetched = fetch(f"{orthanc['dicomweb']}?StudyInstanceUID={study}&Modality=SEG", tmp_path / "seg_in")
    assert len(fetched) == 1
    np.testing.assert_array_equal(read_seg(fetched[0]), lesion)
    sr_series = search_series(client, {"StudyInstanceUID": study, "Modality": "SR"})[0].SeriesInstanceUID
    instances = search_instances(client, {"StudyInstanceUID": study, "SeriesInstanceUID": str(sr_series)})
    (sr_path,) = retrieve_instances(client, instances, tmp_path / "sr_in")
    back = read_sr(sr_path)
    assert back["gate"] is True and back["probability"] == pytest.approx(0.64)
    np.testing.assert_allclose(back["boxes"], boxes, rtol=1e-6)
    assert back["scores"] == pytest.approx(scores)
    assert back["source_sop_instance_uid"] == header.SOPInstanceUID
    # the retrieved tree is a study tree that find_dicom walks
    records = find_dicom(tmp_path / "wado")
    assert [(r.study_instance_uid, r.sop_instance_uid) for r in records] == [(study, header.SOPInstanceUID)]


def test_orthanc_refused_store_is_an_error(orthanc):
    """A dataset the PACS cannot take (no SOP Instance UID): Orthanc refuses the whole request (400), which
    raises; the study stays empty."""
    client = make_client(orthanc["dicomweb"])
    broken = pydicom.Dataset()
    broken.file_meta = pydicom.dataset.FileMetaDataset()
    broken.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    broken.PatientID = "X"
    with pytest.raises(requests.HTTPError, match="400"):
        store_instances(client, [broken])
    assert search_instances(client, {"PatientID": "X"}) == []
