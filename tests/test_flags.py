"""Command-line flags: ``--resume false`` reaches the bundle as the string "false" (python-fire parses only
``False``), which Python counts as true. Every flag goes through :func:`monai_mcx.utils.as_bool`."""

from __future__ import annotations

import os
import re
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


def test_a_path_starting_with_dollar_is_refused_naming_it_and_the_escape(tmp_path):
    """Issue 24 item 11: MONAI's ConfigParser evaluates a value starting with '$' as Python, so a folder named
    '$scans' passed as --input failed with "NameError: name 'scans' is not defined". The error now names the value
    and says how to pass it; './$scans' (the '$' not at the start) is a plain string to MONAI."""
    (tmp_path / "$scans").mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json")]
    cmd += ["--bundle_root", str(CONFIGS.parent), "--output_dir", str(tmp_path / "out"), "--input", "$scans"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--input '$scans'" in proc.stderr and "--input './$scans'" in proc.stderr, proc.stderr[-3000:]
    assert "name 'scans' is not defined" not in proc.stderr
    assert ConfigParser({"input": "./$scans"}).get_parsed_content("input") == "./$scans"  # the escape works


def test_check_cli_paths_only_refuses_existing_paths_that_monai_would_evaluate(tmp_path, monkeypatch):
    from monai_mcx.utils import check_cli_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "$scans").mkdir()
    (tmp_path / "@refs.json").write_text("{}")
    check_cli_paths(["run", "--input", "./$scans", "--x", "$1 + 1", "--output_dir", "$@bundle_root + '/out'"])
    for argv, value in ((["--input", "$scans"], "$scans"), (["--datalist_file=@refs.json"], "@refs.json")):
        with pytest.raises(ValueError, match=re.escape(f"'{value}'")):
            check_cli_paths(argv)
