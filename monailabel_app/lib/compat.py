"""pydicom 2 compatibility for the MONAI Label environment (TEMPORARY, see below).

MONAI Label 0.8.5 needs ``pydicom<3`` (through pydicom-seg), while ``monai_mcx.transforms.io`` imports
``pydicom.pixels`` (``apply_modality_lut``, ``apply_voi_lut``, ``get_decoder``), a module that exists only
in pydicom >= 3. Under pydicom 2.4 every DICOM read then fails with
``DataError: ... cannot read image (ModuleNotFoundError: No module named 'pydicom.pixels')``.

:func:`install_pydicom_pixels_shim` registers a minimal ``pydicom.pixels`` module built from pydicom 2's
``pydicom.pixel_data_handlers.util`` when (and only when) the real one is missing. It does nothing under
pydicom 3. Remove it once ``monai_mcx.transforms.io`` supports pydicom 2 itself.
"""

from __future__ import annotations

import logging
import sys
import types

logger = logging.getLogger(__name__)


class _Pydicom2Decoder:
    """What ``monai_mcx`` asks of pydicom 3's decoder objects, answered from pydicom 2's handlers."""

    def __init__(self, uid):
        import pydicom.config

        self.uid = uid
        handlers = [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(uid)]
        self.is_available = any(h.is_available() for h in handlers)
        self.missing_dependencies = [] if self.is_available else [
            f"{getattr(h, 'HANDLER_NAME', h.__name__)} (needs {', '.join(getattr(h, 'DEPENDENCIES', {}) or ['?'])})"
            for h in handlers
        ]


def install_pydicom_pixels_shim() -> bool:
    """Register ``pydicom.pixels`` for pydicom 2. Returns True when the shim was installed."""
    try:
        import pydicom.pixels  # noqa: F401  pydicom >= 3: nothing to do
        return False
    except ImportError:
        pass
    import pydicom
    from pydicom.pixel_data_handlers import util

    mod = types.ModuleType("pydicom.pixels")
    mod.apply_modality_lut = util.apply_modality_lut
    mod.apply_voi_lut = util.apply_voi_lut
    mod.get_decoder = _Pydicom2Decoder
    mod.__doc__ = "monailabel_app shim: pydicom 3's pydicom.pixels API on top of pydicom 2"
    sys.modules["pydicom.pixels"] = mod
    pydicom.pixels = mod
    logger.info("pydicom %s: installed the pydicom.pixels shim for monai_mcx", pydicom.__version__)
    return True
