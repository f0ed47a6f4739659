"""Ignite-based trainer and evaluator for dict outputs and partial labels."""

from monai_mcx.engines.checkpoint import (
    CheckpointError,
    SafeCheckpointLoader,
    load_checkpoint,
    save_checkpoint,
)
from monai_mcx.engines.resume import LastCheckpoint
from monai_mcx.engines.utils import TARGET_KEYS, loss_items, prepare_cxr_batch
from monai_mcx.engines.workflows import MultiTaskEvaluator, MultiTaskTrainer
