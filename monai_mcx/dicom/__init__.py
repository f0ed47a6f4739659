"""DICOM in and out: find instances in folder trees and DICOMDIRs, check that a header describes a frontal chest
radiograph, write the model's findings as DICOM SEG and SR (highdicom) and move instances over DICOMweb."""

from monai_mcx.dicom.checks import HeaderCheck, check_header, parse_age
from monai_mcx.dicom.io import save_dataset
from monai_mcx.dicom.seg import LESION_LABEL, LUNG_LABEL, make_seg, read_seg, write_seg
from monai_mcx.dicom.sr import PNEUMONIA, make_sr, read_sr, write_sr
from monai_mcx.dicom.tree import DicomRecord, find_dicom, read_dicomdir, read_record
from monai_mcx.dicom.web import (
    fetch,
    make_client,
    parse_dicomweb_url,
    retrieve_instances,
    search_instances,
    search_series,
    store_instances,
)
