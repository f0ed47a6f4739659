"""Synthetic radiographs as DICOM (pydicom datasets) for the monai_mcx.dicom tests: a DX (For Presentation) or CR
image from a numpy array, with the header fields a chest radiograph carries (the DX one passes ``dciodvfy``)."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"


def _code_item(code) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def make_radiograph(
    pixels: np.ndarray | None = None,
    *,
    shape: tuple[int, int] = (64, 48),
    modality: str = "DX",
    view: str | None = "PA",
    body_part: str | None = "CHEST",
    age: str | None = "045Y",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY"),
    patient_id: str = "MCX001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    seed: int = 0,
) -> pydicom.Dataset:
    """A chest radiograph as a pydicom dataset with file meta (ready for ``save_as``).

    Args:
        pixels: ``(rows, columns)`` uint16 image; random 12-bit noise of ``shape`` when None.
        modality: "DX" (Digital X-Ray Image Storage - For Presentation) or "CR" (CR Image Storage); any other
            value keeps the DX SOP class with that Modality (for the refusal tests).
        view, body_part, age, image_type: ViewPosition, BodyPartExamined, PatientAge, ImageType (None: absent).
    """
    if pixels is None:
        pixels = np.random.default_rng(seed).integers(0, 4096, shape).astype(np.uint16)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CR_IMAGE if modality == "CR" else DX_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", patient_id, "", "F"
    if age is not None:
        ds.PatientAge = age
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "A1", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, instance_number
    ds.Modality, ds.Manufacturer, ds.PatientOrientation = modality, "MCX test", ["L", "F"]
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.ImageType = list(image_type)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    if ds.SOPClassUID == DX_PRESENTATION:  # the DX modules' Type 1 / 2 attributes
        ds.PresentationIntentType, ds.BurnedInAnnotation, ds.LossyImageCompression = "FOR PRESENTATION", "NO", "00"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape, ds.ImageLaterality = "IDENTITY", "U"
        ds.ImagerPixelSpacing, ds.DetectorType, ds.PositionerType = [0.2, 0.2], "SCINTILLATOR", ""
        ds.AnatomicRegionSequence = [_code_item(codes.SCT.Chest)] if body_part == "CHEST" else []
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.AcquisitionContextSequence = []
    else:
        ds.PixelSpacing = [0.2, 0.2]
    return ds
