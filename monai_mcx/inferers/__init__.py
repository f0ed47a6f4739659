"""MultiCheXNet post-processing, written once: network outputs -> probabilities, gate, mask, boxes.

Following the MONAI model zoo's detection bundles (``RetinaNetInferer`` wraps a ``RetinaNetDetector`` so that
the evaluator's ``inferer`` returns boxes, not head maps), :class:`MultiCheXNetInferer` is a MONAI ``Inferer``
that runs the network and hands its dict of head outputs to a :class:`MultiCheXNetPostprocessor`. Every
consumer goes through this one component:

- the evaluator (``MultiTaskEvaluator``'s ``inferer``) and so the metrics, the report and the TensorBoard
  overlays, which read the post-processed keys in the network's geometry;
- the prediction writer and the MONAI Label infer task, which map one image back to its ORIGINAL pixels with
  :func:`to_original` (the only place where a mask or a box is resized back).

Post-processed prediction (keys :class:`monai_mcx.keys.PredKeys`), network input geometry ``(B, C, W, H)``,
x along spatial dim 0, boxes MONAI ``StandardMode`` (``xyxy``, pixel edges):

- ``class_probs`` ``(B, K)``: the probabilities that leave the model, ``sigmoid(class_logits / T_k)`` with the
  model's per-class temperatures (``calibration`` of the model description, see
  :class:`monai_mcx.metrics.TemperatureScaling`; plain ``sigmoid(class_logits)`` for a model without one);
- ``class_probs_raw`` ``(B, K)``: ``sigmoid(class_logits)``, uncalibrated (what evaluation refits the temperatures
  on);
- ``gate`` ``(B,)`` bool, the gate rule (:func:`gate_decision`): an image is **positive when some class ``k``
  reaches its own threshold**, ``any_k p_k >= t_k`` on the (calibrated) ``class_probs``; a network without a classifier lets every image through;
- ``seg_probs`` ``(B, 1, W, H)``, ``seg_mask`` (``seg_probs >= seg_threshold``) and ``seg_mask_gated``
  (``seg_mask`` and the gate);
- ``detections``: per image every box the decoder keeps (its candidate score floor, NMS, detections per
  image), ungated: what AP / mAP are computed on;
- ``detections_op``: the boxes at the operating point (``score >= box_score_threshold``), ungated;
- ``detections_gated``: ``detections_op`` of the positive images, none for the negative ones (the deployed
  output).

- per image, ``population_point`` (``{"population", "reason"}``) and ``decision_thresholds`` ``(B, K)``: a model with
  per-population operating points (``operating_points`` of its description) applies, to each image, the class
  thresholds, gate thresholds and box score of that image's population (the caller passes ``populations``, see
  :mod:`monai_mcx.data.populations`; unknown: the model's ``default_population``, else the global point);
- with a ``lungs`` head: ``lung_probs``, ``lung_seg_mask`` (a lung OUTLINE, never a lesion) and ``lung_field``; when
  the model's ``lung_restriction`` is enabled the lesion mask is cut to the dilated lung field and a box whose
  centre lies outside it is dropped (an image with an empty lung mask is left unrestricted).

The raw head outputs (``class_logits``, ``seg_logits``, ``box_cls_logits``, ``box_regression``) are kept.
"""

from .decisions import GATE_RULE, GATE_RULE_TEXT, boxes_in_field, gate_decision, select_detections
from .original import probs_to_original, scale_boxes_to_original, to_original
from .postprocessor import MultiCheXNetInferer, MultiCheXNetPostprocessor

__all__ = [
    "GATE_RULE",
    "GATE_RULE_TEXT",
    "gate_decision",
    "select_detections",
    "boxes_in_field",
    "to_original",
    "probs_to_original",
    "scale_boxes_to_original",
    "MultiCheXNetPostprocessor",
    "MultiCheXNetInferer",
]
