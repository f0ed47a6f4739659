"""DICOM Segmentation (SEG) of the lesion mask, at the source radiograph's pixel grid, with highdicom.

The SEG is BINARY, references the source image (same study, a new series and SOP instance), and holds segment 1
"Lung opacity" (property category *Morphologically Abnormal Structure*, type *Lesion*, SNOMED CT codes from
pydicom's code dictionary) and, when a lung mask is given, segment 2 "Lung" (*Anatomical Structure* / *Lung*). Each
segment names the algorithm (name, version, family *Artificial Intelligence*).

Mask order: ``(rows, columns)`` as DICOM stores pixels (``ds.pixel_array``'s order). The project's images are
``(W, H)`` (x first, as MONAI's ``LoadImage`` reads them): pass ``mask_wh.T``.
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from monai_mcx import __version__
from monai_mcx.dicom.io import ALGORITHM_NAME, MANUFACTURER, read_header, save_dataset, source_header

__all__ = ["LESION_LABEL", "LUNG_LABEL", "make_seg", "write_seg", "read_seg"]

LESION_LABEL = "Lung opacity"
LUNG_LABEL = "Lung"
#: SeriesNumber of the SEG series (far from the modality's own series numbers)
SEG_SERIES_NUMBER = 901


def _binary(mask, shape: tuple[int, int], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        hint = " (transposed? the project's (W, H) masks need .T)" if mask.shape == shape[::-1] else ""
        raise ValueError(f"{name} has shape {mask.shape}; the source image is (rows, columns) = {shape}{hint}.")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1); it has values {np.unique(mask)[:5]}...")
        mask = mask.astype(bool)
    return mask


def make_seg(
    source: pydicom.Dataset | str | os.PathLike,
    lesion_mask: np.ndarray,
    *,
    lung_mask: np.ndarray | None = None,
    algorithm_name: str = ALGORITHM_NAME,
    algorithm_version: str = __version__,
    series_number: int = SEG_SERIES_NUMBER,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """Build the SEG for ``source`` (not written; see :func:`write_seg`).

    Args:
        source: the radiograph (a pydicom dataset, pixels not needed, or a path).
        lesion_mask: ``(rows, columns)`` bool (or 0/1) lesion mask at the source's pixel grid; may be empty.
        lung_mask: optional ``(rows, columns)`` lung mask: a second segment "Lung".
        algorithm_name, algorithm_version: the algorithm identification of each segment (also the SEG's
            ManufacturerModelName and SoftwareVersions).
        series_number, series_instance_uid, sop_instance_uid: of the new object (new UIDs by default).

    Returns:
        a highdicom ``Segmentation`` (a pydicom dataset).

    Raises:
        ValueError: a mask whose shape is not the source's (rows, columns) or that is not binary.
    """
    source = read_header(source)
    shape = (int(source.Rows), int(source.Columns))
    masks = [_binary(lesion_mask, shape, "lesion_mask")]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=algorithm_version
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label=LESION_LABEL,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.Lung],
        )
    ]
    if lung_mask is not None:
        masks.append(_binary(lung_mask, shape, "lung_mask"))
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=2,
                segment_label=LUNG_LABEL,
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.Lung,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    header = source_header(source)
    seg = hd.seg.Segmentation(
        source_images=[header],
        pixel_array=np.stack(masks, axis=-1)[None],  # (frames=1, rows, columns, segments)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        content_label="LUNG_OPACITY",
        content_description=f"{algorithm_name} lung opacity segmentation",
        omit_empty_frames=False,  # an empty lesion mask is an answer too
    )
    seg.SeriesDescription = f"{algorithm_name} SEG"
    # Type 2C in the General Image module when there is no plane orientation: the source's (same pixel grid)
    seg.PatientOrientation = header.get("PatientOrientation", "")
    return seg


def write_seg(
    source: pydicom.Dataset | str | os.PathLike, lesion_mask: np.ndarray, path: str | os.PathLike, **kwargs
) -> Path:
    """Build (:func:`make_seg`, same arguments as keywords) and write the SEG to ``path`` atomically; return
    the path."""
    return save_dataset(make_seg(source, lesion_mask, **kwargs), path)


def read_seg(path: str | os.PathLike, label: str = LESION_LABEL) -> np.ndarray:
    """Read one segment of a SEG back (highdicom) as a ``(rows, columns)`` bool mask at the source's grid.

    Args:
        path: the SEG file.
        label: the segment's label (:data:`LESION_LABEL` by default, :data:`LUNG_LABEL` for the lung).

    Raises:
        ValueError: the file is not a readable SEG, or it has no segment of that label (the message names both).
    """
    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # noqa: BLE001 - pydicom/highdicom raise many types for a broken file
        raise ValueError(f"{path}: not a readable DICOM SEG ({type(e).__name__}: {e}).") from e
    numbers = seg.get_segment_numbers(segment_label=label)
    if not numbers:
        labels = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
        raise ValueError(f"{path}: no segment labelled {label!r} (it has {labels}).")
    (_, _, source_uid), *_ = seg.get_source_image_uids()
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=numbers[:1], combine_segments=False
    )
    return np.asarray(pixels[0, :, :, 0]).astype(bool)
