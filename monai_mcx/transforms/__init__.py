"""Dictionary transforms: CXR loading, label availability, box-aware geometry, channel handling."""

from monai_mcx.transforms.channels import ToSingleChanneld
from monai_mcx.transforms.geometry import (
    AddBoxLabelsd,
    ClipBoxesToImaged,
    RandCropWithBoxesd,
    RandZoomWithBoxesd,
    RemoveBoxLabelsd,
    cxr_box_augmentations,
)
from monai_mcx.transforms.guard import ERROR_KEY, GuardLoadd
from monai_mcx.transforms.io import KeepOverlayImaged, LoadCXR, LoadCXRd
from monai_mcx.transforms.labels import AnnotationError, PrepareAnnotationsd, ResizeWithBoxesd
