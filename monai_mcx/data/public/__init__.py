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
:class:`SIIMCovidOpacity`  ``siim_covid`` radiologists' opacity 0/1 + study appearance (patient = study),
                                      no boxes (original image size unknown)
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

from monai_mcx.data.boxes import check_box
from monai_mcx.data.public.common import (
    DEFAULT_CLASS_MAP,
    DEFAULT_CLASS_NAMES,
    ClassMap,
    PublicDataset,
    find_file,
    read_csv,
)
from monai_mcx.data.public.covid import COVIDLesions, COVIDLungs, ieee8023_patient_groups
from monai_mcx.data.public.kermany import KermanyPneumonia
from monai_mcx.data.public.nih import NIHChestXray14
from monai_mcx.data.public.qu_viral_lungs import QUViralLungs
from monai_mcx.data.public.rsna import RSNAPneumonia
from monai_mcx.data.public.siim import SIIMPneumothorax
from monai_mcx.data.public.siim_covid import SIIMCovidOpacity

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
    "SIIMCovidOpacity",
    "ieee8023_patient_groups",
    "ADAPTERS",
    "find_file",
    "read_csv",
    "check_box",
]

#: command-line name -> adapter class
ADAPTERS = {
    "rsna": RSNAPneumonia,
    "siim": SIIMPneumothorax,
    "nih": NIHChestXray14,
    "kermany": KermanyPneumonia,
    "covid_lungs": COVIDLungs,
    "qu_viral_lungs": QUViralLungs,
    "covid_lesions": COVIDLesions,
    "siim_covid": SIIMCovidOpacity,
}
