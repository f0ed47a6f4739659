"""MONAI Label's DICOMweb datastore made fit for single-instance radiographs (DX/CR) and offline use.

``--studies http://host:port/dicom-web`` makes MONAI Label 0.8.5 build a ``DICOMWebDatastore``
(``monailabel/datastore/dicom.py``). Three of its steps do not fit this app; :class:`CXRDICOMwebDatastore`
replaces them and keeps the rest (QIDO series search, WADO-RS download into a local cache, the local label
bookkeeping):

* **Images** are series; MONAI Label's default search filter is ``{"Modality": "CT"}``. Here the series of the
  modalities in ``modalities`` (default ``DX`` and ``CR``: the RSNA challenge's files are CR) are listed, one QIDO
  query per modality, with the other keys of ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` kept.
* **Reading**: MONAI Label downloads the series (``dicom_web_download_series``, WADO-RS) and converts it to NIfTI with
  SimpleITK/GDCM (``dicom_to_nifti``), which drops the DICOM intensity pipeline (VOI LUT, MONOCHROME1). Here the
  series is downloaded the same way and its single instance is registered in the cache as ``<series uid>.dcm``
  (the image id is the SeriesInstanceUID, as in MONAI Label), read by the bundle's own ``LoadCXRd`` like any local
  DICOM.
* **Saving a final label**: MONAI Label converts it with ``nifti_to_dicom_seg`` -> ``itkimage2segimage`` (dcmqi), a
  binary it downloads from GitHub when the datastore is created (``MONAILabelApp._download_dcmqi_tools``): not on
  PyPI nor in Debian, so not offline. Here the label becomes a DICOM SEG with the project's writer
  (``monai_mcx.dicom.seg.make_seg``, highdicom; ``lib/labels.py``) and is STOWed to the same server. Other tags
  (``original``, drafts) stay in the local cache as MONAI Label keeps them.
"""

from __future__ import annotations

import glob
import logging
import os
import pathlib

from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from .labels import label_to_seg

logger = logging.getLogger(__name__)

#: default modalities listed as images
MODALITIES = ("DX", "CR")
#: SeriesNumber of SEGs saved from MONAI Label (the model's own SEG series is 901)
LABEL_SERIES_NUMBER = 902


def parse_modalities(value: str | None) -> tuple[str, ...]:
    """``"DX,CR"`` -> ``("DX", "CR")``; empty -> :data:`MODALITIES`."""
    mods = tuple(m.strip().upper() for m in (value or "").split(",") if m.strip())
    return mods or MODALITIES


class CXRDICOMwebDatastore(DICOMWebDatastore):
    """See the module docstring.

    Args:
        client: the DICOMweb client (MONAI Label's ``DICOMwebClientX``).
        search_filter: QIDO filters of every image search (its ``Modality`` is replaced by ``modalities``).
        modalities: the modalities whose series are images.
        cache_path: where series and labels are cached (default MONAI Label's ``~/.cache/monailabel/dicom``).
        fetch_by_frame: MONAI Label's frame-wise download.
    """

    def __init__(self, client, search_filter=None, modalities=MODALITIES, cache_path=None, fetch_by_frame=False):
        self.modalities = tuple(modalities)
        search_filter = {k: v for k, v in (search_filter or {}).items() if k != "Modality"}
        super().__init__(client, search_filter, cache_path, fetch_by_frame=fetch_by_frame, convert_to_nifti=False)

    def list_images(self) -> list[str]:
        """SeriesInstanceUIDs of the images (not cached: a study stored a moment ago is listed)."""
        series: list[str] = []
        for modality in self.modalities:
            found = self._client.search_for_series(search_filters={**self._search_filter, "Modality": modality})
            series += [str(Dataset.from_json(ds).SeriesInstanceUID) for ds in found]
        return list(dict.fromkeys(series))

    def _to_id(self, file: str) -> tuple[str, str]:
        if file.lower().endswith(".dcm"):  # UIDs are full of dots: the extension is the last one only
            return file[: -len(".dcm")], file[-len(".dcm") :]
        return super()._to_id(file)

    def get_image_uri(self, image_id: str) -> str:
        """The image's DICOM file ``<cache>/<series uid>.dcm``, downloaded (WADO-RS) and registered in the local
        cache on first use; for a series of several instances, its folder."""
        path = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.dcm"))
        if os.path.isfile(path):
            return path
        image_dir = super().get_image_uri(image_id)  # downloads the series into a folder (no NIfTI)
        files = sorted(glob.glob(os.path.join(image_dir, "*.dcm")))
        if len(files) != 1:
            return image_dir
        self.add_image(image_id, files[0], self._dicom_info(image_id))  # copies it to `path`
        return path

    def _source_file(self, image_id: str) -> str:
        uri = self.get_image_uri(image_id)
        if os.path.isdir(uri):
            raise HTTPException(
                status_code=422, detail=f"series {image_id} has several instances; this app labels single images"
            )
        return uri

    def save_label(self, image_id, label_filename, label_tag, label_info, label_id=""):
        """A final label goes to the DICOMweb server as a DICOM SEG (project writer), then into the local cache;
        other tags only into the cache. Returns the label id."""
        label_info = dict(label_info or {})
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        source = self._source_file(image_id)
        converted = ""
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # a viewer's raw buffer (MONAI Label's rule)
            label_filename = converted = binary_to_image(source, label_filename)
        try:
            seg = label_to_seg(source, label_filename, series_number=LABEL_SERIES_NUMBER)
        except ValueError as e:
            raise HTTPException(status_code=422, detail=f"cannot save the label of {image_id}: {e}") from None
        seg.SeriesDescription = "MONAI Label final label (MultiCheXNet app)"
        self._client.store_instances([seg])
        logger.info(f"label of {image_id} stored as DICOM SEG series {seg.SeriesInstanceUID}")
        label_info.update(
            {
                "SeriesInstanceUID": str(seg.SeriesInstanceUID),
                "SOPInstanceUID": str(seg.SOPInstanceUID),
                "StudyInstanceUID": str(seg.StudyInstanceUID),
                "PatientID": str(seg.get("PatientID", "")),
                "Modality": "SEG",
            }
        )
        try:
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        finally:
            if converted:
                os.unlink(converted)
