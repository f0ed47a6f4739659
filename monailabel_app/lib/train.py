"""MONAI Label train task: fine-tune MultiCheXNet's segmentation head (+ encoder) on the annotators' masks.

MONAI Label's datastore hands the task ``{"image", "label"}`` file pairs (the ``final`` labels saved from
OHIF / 3D Slicer or ``PUT /datastore/label``). The task

* builds the bundle's MultiCheXNet and starts from ``<bundle>/models/model.pt`` (``pretrained``);
* trains the segmentation head only, by default: the classification and localization heads AND the shared
  encoder are frozen, BatchNorm statistics included (:func:`.publish.freeze_for_segmentation`), so the published
  model's class probabilities, gate and boxes are exactly those its description's thresholds were chosen for.
  ``train_encoder=true`` (request / ``--conf``) also trains the encoder's weights (BatchNorm statistics stay
  frozen); the classifier then moves, and its drift is measured;
* uses the mcx multi-task loss (:class:`monai_mcx.losses.MultiCheXNetLoss`, segmentation term only) with
  teacher forcing: every pair is an annotated mask (``has_mask = 1``) and its ground-truth positivity is
  "the mask is non-empty". With ``teacher_forcing="positive_only"`` (default) empty masks contribute no
  loss; ``"all"`` trains on them as negatives too;
* measures the classifier's drift on the annotated images (:func:`.publish.classifier_drift`: mean and max
  change of the class probabilities; 0 with the encoder frozen) and publishes the best checkpoint (key metric:
  mean Dice) together with its description (new weights hash, the fine-tuning and the drift under
  ``training["monailabel"]``) to ``<bundle>/models/model.pt`` + ``model.json`` (:func:`.publish.publish_model`),
  unless the drift exceeds ``max_drift`` (default 0.05), in which case nothing is published and the train stats
  say why. The infer task reloads the pair on its next request.

Training runs and checkpoints go to ``<bundle>/models/monailabel/<name>/``.
"""

from __future__ import annotations

import logging
import os

import torch
from ignite.metrics import Metric
from monai.handlers import MeanDice, from_engine
from monai.inferers import Inferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    EnsureTyped,
    RandScaleIntensityd,
    Resized,
    SelectItemsd,
)
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from monai_mcx.keys import BatchKeys, PredKeys
from monai_mcx.model import has_description
from monai_mcx.networks.weights import load_weights, read_state_dict, unwrap_module

from .bundle import BundleSpec
from .publish import classifier_drift, freeze_for_segmentation, load_published, publish_model

logger = logging.getLogger(__name__)


class SegLogitsInferer(Inferer):
    """Run the whole network and return its ``seg_logits`` ``(B, 1, W, H)`` (what the loss and Dice see)."""

    def __call__(self, inputs, network, *args, **kwargs):
        return network(inputs, *args, **kwargs)[PredKeys.SEG_LOGITS]


class TeacherForcedSegLoss(torch.nn.Module):
    """``loss(seg_logits, mask)`` for SupervisedTrainer, computed by ``MultiCheXNetLoss`` on the seg term.

    Every sample has an annotated mask; ``positive`` = the mask is non-empty (teacher forcing).
    """

    def __init__(self, teacher_forcing: str = "positive_only"):
        super().__init__()
        from monai_mcx.losses import MultiCheXNetLoss

        self.loss = MultiCheXNetLoss(teacher_forcing=teacher_forcing)

    def forward(self, seg_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = (torch.as_tensor(mask) > 0.5).float()
        b = mask.shape[0]
        targets = {
            BatchKeys.MASK.value: mask,
            BatchKeys.HAS_MASK.value: torch.ones(b, device=mask.device),
            BatchKeys.POSITIVE.value: (mask.reshape(b, -1).amax(dim=1) > 0).float(),
        }
        return self.loss({PredKeys.SEG_LOGITS.value: torch.as_tensor(seg_logits)}, targets)["loss"]


class MultiCheXNetSegTrain(BasicTrainTask):
    """Segmentation fine-tuning of the bundle's MultiCheXNet from MONAI Label's image/label pairs.

    Args:
        spec: the parsed bundle; ``spec.model_path`` is both the starting point and where the best model is published.
        model_dir: run folder (``<bundle>/models/monailabel`` by default).
        teacher_forcing: ``positive_only`` | ``all`` | ``balanced`` (see ``MultiCheXNetLoss``).
        kwargs: ``BasicTrainTask`` arguments.
    """

    def __init__(
        self,
        spec: BundleSpec,
        model_dir: str | None = None,
        teacher_forcing: str = "positive_only",
        description: str = "Fine-tune MultiCheXNet's segmentation head + encoder on the annotated lesion masks",
        **kwargs,
    ):
        self.spec = spec
        self.teacher_forcing = teacher_forcing
        model_dir = model_dir or os.path.join(spec.bundle_dir, "models", "monailabel")
        config = {
            "max_epochs": 10,
            "train_batch_size": 2,
            "val_batch_size": 2,
            "val_split": 0.2,
            "learning_rate": 1e-4,
            "teacher_forcing": ["positive_only", "all", "balanced"],
            "train_encoder": False,
            "max_drift": 0.05,
            "dataset": ["CacheDataset", "Dataset"],
            "dataloader": ["DataLoader", "ThreadDataLoader"],
            # experiment tracking off by default: MONAI Label's mlflow default (a file store) is refused by
            # current MLflow; pick "mlflow" with a "tracking_uri" such as sqlite:///<path>/mlruns.db
            "tracking": ["None", "mlflow"],
        }
        kwargs.setdefault("amp", torch.cuda.is_available())
        kwargs.setdefault("tracking", None)
        kwargs.setdefault("load_strict", True)
        super().__init__(
            model_dir,
            description,
            config=config,
            load_path=spec.model_path,
            publish_path=None,  # published with its description by _publish (not copied by MONAI Label)
            labels={"lesion": 1},
            **kwargs,
        )

    @staticmethod
    def _flag(context: Context, name: str, default):
        v = context.request.get(name, default)
        return str(v).lower() in ("1", "true", "yes") if isinstance(v, str) else bool(v)

    def network(self, context: Context):
        net = self.spec.build_network()
        freeze_for_segmentation(net, train_encoder=self._flag(context, "train_encoder", False))
        return net

    def finalize(self, context: Context):
        super().finalize(context)
        if context.local_rank == 0:
            from ignite.engine import Events

            context.trainer.add_event_handler(Events.COMPLETED, lambda engine: self._publish(context))

    def _publish(self, context: Context) -> dict:
        """Publish the best weights with their description, after measuring the classifier's drift."""
        from monai.transforms import Compose

        best = os.path.join(context.output_dir, self._key_metric_filename)
        if os.path.isfile(best):
            state, _ = read_state_dict(best)
        else:
            state = unwrap_module(context.network).state_dict()
        desc, old_net = None, None
        if has_description(self.spec.model_path):  # the published pair, hash-checked
            old_net, desc, _ = load_published(self.spec.model_path)
        elif os.path.isfile(self.spec.model_path):  # a model without a description: its weights alone
            old_net = self.spec.build_network()
            load_weights(old_net, self.spec.model_path)
        new_net = self.spec.build_network()
        load_weights(new_net, state)
        drift = {"images": 0, "mean_abs": 0.0, "max_abs": 0.0}
        if old_net is not None:
            pre = Compose(self.val_pre_transforms(context))
            images = [pre(dict(item))["image"][None].float() for item in context.datalist]
            drift = classifier_drift(old_net, new_net, images)
        note = {
            "pairs": len(context.datalist),
            "epochs": int(context.trainer.state.epoch),
            "train_encoder": self._flag(context, "train_encoder", False),
            "classifier_drift": drift,
        }
        max_drift = float(context.request.get("max_drift", 0.05))
        if drift["max_abs"] > max_drift:
            logger.warning(
                f"not published: the classifier moved by up to {drift['max_abs']:.4f} (> max_drift "
                f"{max_drift}) on the {drift['images']} annotated images; its thresholds would not hold"
            )
            note["published"] = False
        else:
            publish_model(state, self.spec.model_path, desc, note)
            note["published"] = True
            logger.info(f"published {self.spec.model_path} with its description; classifier drift {drift}")
        self.last_publish = note
        return note

    def optimizer(self, context: Context):
        params = [p for p in context.network.parameters() if p.requires_grad]  # frozen: see freeze_for_segmentation
        return torch.optim.AdamW(params, lr=float(context.request.get("learning_rate", 1e-4)), weight_decay=1e-4)

    def loss_function(self, context: Context):
        mode = context.request.get("teacher_forcing", self.teacher_forcing)
        mode = mode[0] if isinstance(mode, (list, tuple)) else mode
        return TeacherForcedSegLoss(teacher_forcing=mode)

    def lr_scheduler_handler(self, context: Context):
        return None

    def train_pre_transforms(self, context: Context):
        from monai_mcx.transforms.io import LoadCXRd

        return [
            SelectItemsd(keys=["image", "label"]),  # the datastore's items may carry other (None) fields
            # the [0, 1] image comes from LoadCXRd alone, as in the bundle; mask size is checked against its image
            LoadCXRd(keys="image", mask_keys="label"),
            Resized(keys=["image", "label"], spatial_size=self.spec.spatial_size, mode=["area", "nearest"]),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            # plain tensors: the loader's metadata holds None values (e.g. pixel_spacing of a PNG) that do not collate
            EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
        ]

    def val_pre_transforms(self, context: Context):
        return [t for t in self.train_pre_transforms(context) if not isinstance(t, RandScaleIntensityd)]

    def train_post_transforms(self, context: Context):
        return [
            Activationsd(keys="pred", sigmoid=True),
            AsDiscreted(keys="pred", threshold=0.5),
        ]

    def train_inferer(self, context: Context):
        return SegLogitsInferer()

    def val_inferer(self, context: Context):
        return SegLogitsInferer()

    def train_key_metric(self, context: Context) -> dict[str, Metric]:
        return {
            self.TRAIN_METRIC_MEAN_DICE: MeanDice(
                output_transform=from_engine(["pred", "label"]), include_background=True
            )
        }

    def val_key_metric(self, context: Context) -> dict[str, Metric]:
        return {
            self.VAL_METRIC_MEAN_DICE: MeanDice(
                output_transform=from_engine(["pred", "label"]), include_background=True
            )
        }
