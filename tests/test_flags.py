"""Command-line flags: ``--resume false`` reaches the bundle as the string "false" (python-fire parses only
``False``), which Python counts as true. Every flag goes through :func:`monai_mcx.utils.as_bool`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from monai.bundle import ConfigParser

from monai_mcx.engines import LastCheckpoint
from monai_mcx.engines.rng import configure_determinism
from monai_mcx.handlers import MultiTaskMetrics, PredictionWriter
from monai_mcx.utils import as_bool

from conftest import CONFIGS, REPO


@pytest.mark.parametrize("value", [True, 1, "true", "True", "YES", "on", "1", " true "])
def test_true_values(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, None, "false", "False", "no", "off", "0", "none", ""])
def test_false_values(value):
    assert as_bool(value) is False


@pytest.mark.parametrize("value", ["flase", "2", 2, 0.5, [], "yes please"])
def test_anything_else_is_an_error_naming_the_option(value):
    with pytest.raises(ValueError, match="'resume' must be true or false"):
        as_bool(value, "resume")


def test_fire_hands_lowercase_flags_over_as_strings():
    """The premise: what ``python -m monai.bundle run ... --flag false`` gives the config."""
    code = "import fire; fire.Fire(lambda **kw: print(repr(kw['flag'])))"
    out = subprocess.run([sys.executable, "-c", code, "--flag", "false"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "'false'"


def test_components_read_string_flags(tmp_path):
    writer = PredictionWriter(tmp_path, ["pneumonia"], write_nifti="false", write_overlay="False")
    assert writer.write_nifti is False and writer.write_overlay is False
    assert LastCheckpoint(tmp_path, {}, resume="false").resume is False
    assert LastCheckpoint(tmp_path, {}, resume="true").resume is True
    assert MultiTaskMetrics(["pneumonia"], original_resolution="false").original_resolution is False
    with pytest.raises(ValueError, match="deterministic"):
        configure_determinism(0, "maybe")


def test_config_expressions_read_string_flags(tmp_path, demo_datalist):
    from torch.utils.data import BatchSampler

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(REPO / "bundle"), "dataset_dir": str(demo_datalist.parent)})
    parser.update({"task_grouped_batches": "false"})
    loader = parser.get_parsed_content("train#dataloader", lazy=False)
    assert type(loader.batch_sampler) is BatchSampler  # the plain batch sampler over ResumableSampler
    parser.update({"task_grouped_batches": "flase"})
    with pytest.raises(Exception, match="task_grouped_batches"):
        parser.get_parsed_content("train#dataloader", lazy=False)
