"""Data-set adapters, datalist schema, splits and the synthetic demo data."""

from .boxes import check_box, check_boxes
from .collate import collate_cxr
from .datalist import (
    SPLITS,
    UNCERTAIN_POLICIES,
    DatalistError,
    check_label,
    inference_items,
    list_image_folder,
    load_datalist,
    resolve_datalist,
    resolve_path,
    validate_item,
)
from .demo import ensure_demo_data, generate_demo_data
from .errors import DataError
from .synthetic import synthesize_cxr
