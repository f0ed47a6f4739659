"""Dictionary transforms: label availability, box-aware geometry, channel handling."""

from monai_mcx.transforms.channels import ToSingleChanneld
from monai_mcx.transforms.labels import AnnotationError, PrepareAnnotationsd, ResizeWithBoxesd
