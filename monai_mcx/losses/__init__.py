"""Losses of monai_mcx: the localization loss and the teacher-forced multi-task loss."""

from .localization import LocalizationLoss
from .multitask import TEACHER_FORCING_MODES, MultiCheXNetLoss, select_samples
