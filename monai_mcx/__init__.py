"""monai_mcx: MultiCheXNet (one shared encoder; classification, segmentation and localization heads)
for chest X-rays, as MONAI components and a MONAI Bundle."""

__version__ = "0.1.0"
