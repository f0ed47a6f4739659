"""``python -m monai_mcx.model {show,verify,describe} ...`` (see :mod:`monai_mcx.model.cli`)."""

from monai_mcx.model.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
