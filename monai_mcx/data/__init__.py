"""Data-set adapters, datalist schema, splits and the synthetic demo data."""

from .collate import collate_cxr
from .datalist import SPLITS, DatalistError, inference_items, load_datalist, resolve_datalist, validate_item
from .errors import DataError
from .demo import ensure_demo_data, generate_demo_data, synthesize_cxr
