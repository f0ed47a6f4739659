"""MONAI Label app serving the monai_mcx MultiCheXNet bundle from a local folder.

Start (see README.md beside this file)::

    MONAI_LABEL_DATASTORE_FILE_EXT='["*.png","*.jpg","*.dcm","*.nii.gz"]' \\
    .venv-monailabel/bin/python -m monailabel.main start_server --app monailabel_app --studies <images dir> \\
        --conf zoo_source github --conf sam2 false --host 127.0.0.1 --port 8000 \\
        [--conf bundle <bundle dir>] [--conf overrides '{"encoder": "densenet-tiny"}'] [--conf skip_trainers true]

``--conf`` keys read here:

* ``bundle``: bundle folder (default ``<repo>/bundle``); ``configs/inference.json`` builds the network,
  ``models/model.pt`` holds the weights.
* ``overrides``: JSON object (or a JSON file) of bundle config overrides, e.g. the encoder or ``spatial_size``
  the checkpoint was trained with.
* ``model_name``: the task name in ``/info`` and ``/infer/<name>`` (default ``multichexnet``).
* ``skip_trainers``: ``true`` to serve inference only.
* ``teacher_forcing``: default teacher-forcing mode of the train task (``positive_only``).
* ``saliency``: ``true`` to add each class's Grad-CAM map to every infer result (``saliency`` of the result JSON; a
  request can ask for it with ``params={"saliency": true}``); default ``false``.
* ``modalities``: with ``--studies http://host:port/dicom-web`` (a DICOMweb server such as Orthanc), the modalities
  whose series are images (default ``DX,CR``); see ``lib/dicomweb.py`` (images read as DICOM, final labels stored
  back as DICOM SEG written by ``monai_mcx.dicom.seg``, no dcmqi download).
"""

from __future__ import annotations

import logging
import os

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

from lib.bundle import BundleSpec, parse_overrides
from lib.images import ImageRequestError, check_image, make_upload_dir

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MultiCheXNetApp(MONAILabelApp):
    """One infer task (lesion mask + class probabilities + gate + boxes) and one train task (segmentation)."""

    def __init__(self, app_dir, studies, conf):
        bundle_dir = conf.get("bundle") or os.path.join(REPO, "bundle")
        self.spec = BundleSpec(bundle_dir, parse_overrides(conf.get("overrides")))
        self.model_name = conf.get("model_name", "multichexnet")
        self.uploads = make_upload_dir()  # where POST /infer writes an uploaded file (not the system temp folder)
        logger.info(f"MultiCheXNet bundle: {self.spec.info()}; weights: {self.spec.model_path}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_mcx MultiCheXNet",
            description="Chest X-ray lesion segmentation with class probabilities, classifier gate and boxes",
            version="0.1",
            labels={"lesion": 1},
        )

    def init_infers(self) -> dict[str, InferTask]:
        from lib.infer import MultiCheXNetInfer

        if not self.spec.has_weights():
            logger.warning(f"no weights at {self.spec.model_path}: the infer task is not available")
            return {}
        preload = strtobool(self.conf.get("preload", "false"))
        saliency = strtobool(self.conf.get("saliency", "false"))
        return {self.model_name: MultiCheXNetInfer(self.spec, preload=preload, saliency=saliency)}

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        from lib.train import MultiCheXNetSegTrain

        return {
            self.model_name: MultiCheXNetSegTrain(
                self.spec, teacher_forcing=self.conf.get("teacher_forcing", "positive_only")
            )
        }

    def _init_dicomweb_datastore(self) -> Datastore:
        """``--studies http(s)://.../dicom-web``: MONAI Label's DICOMweb datastore fitted to radiographs
        (``lib/dicomweb.py``); unlike MONAI Label's own, it downloads no dcmqi binary."""
        from dicomweb_client.session_utils import create_session_from_user_pass
        from monailabel.config import settings
        from monailabel.datastore.dicom import DICOMwebClientX

        from lib.dicomweb import CXRDICOMwebDatastore, parse_modalities

        session = None
        user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
        password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
        if user and password:
            session = create_session_from_user_pass(user, password)
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH).strip()
        modalities = parse_modalities(self.conf.get("modalities"))
        logger.info(f"DICOMweb datastore {self.studies}: series of modality {', '.join(modalities)} are the images")
        return CXRDICOMwebDatastore(
            client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            modalities=modalities,
            cache_path=cache or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        )

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    # -- clean errors for bad requests ----------------------------------------------------------------
    def _check_image(self, request) -> None:
        """A datastore id, a study or an upload only; anything else is 404, whether or not it exists
        (``lib.images``)."""
        try:
            check_image(request.get("image"), self.datastore().list_images, [self.studies, self.uploads])
        except ImageRequestError as e:
            raise HTTPException(status_code=e.status, detail=e.detail) from None

    def infer(self, request, datastore=None):
        from monai_mcx.data.errors import DataError

        self._check_image(request)
        try:
            return super().infer(request, datastore)
        except DataError as e:  # unreadable / corrupt study: names the file and the problem
            logger.error(f"bad study: {e}")
            raise HTTPException(status_code=422, detail=f"cannot read the study: {e}") from None
