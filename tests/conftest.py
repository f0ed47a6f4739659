"""Shared fixtures: one small synthetic demo data set and one short bundle training run per test session."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from orthanc_fixture import orthanc  # noqa: F401 - the Orthanc PACS fixture of the DICOMweb tests

try:  # property tests draw the same examples on every run (a CI run must not fail on a new random draw);
    from hypothesis import settings  # HYPOTHESIS_PROFILE=explore searches fresh examples (hypothesis' default)

    settings.register_profile("reproducible", derandomize=True)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))
except ImportError:  # the dev extra is not installed: the property tests are not collected either
    pass

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SHARED = Path(os.environ.get("MCX_SHARED", REPO.parent / "shared"))

#: overrides that make the bundle small enough for 2 CPU cores (64 px, tiny DenseNet, 2 epochs)
SMALL = {
    "demo_num_images": 60,
    "demo_image_size": 64,
    "spatial_size": [64, 64],
    "encoder": "densenet-tiny",
    "epochs": 2,
    "batch_size": 8,
    "base_anchor_shapes": [[8, 8], [12, 12], [16, 10]],
}


def bundle_overrides(root: Path, **extra) -> dict:
    """Overrides that point every output of the bundle into ``root``."""
    return {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(root / "demo_data"),
        "output_dir": str(root / "eval"),
        "ckpt_dir": str(root / "models"),
        **SMALL,
        **extra,
    }


@pytest.fixture(scope="session")
def demo_datalist(tmp_path_factory) -> Path:
    from monai_mcx.data import generate_demo_data

    root = tmp_path_factory.mktemp("demo")
    return Path(
        generate_demo_data(
            root / "demo_data", num_images=SMALL["demo_num_images"], image_size=SMALL["demo_image_size"], seed=0
        )
    )


def run_bundle(configs, workflow_type: str = "train", **overrides):
    """Run ``initialize -> run -> finalize`` of the bundle configs (names in ``bundle/configs``, merged in
    order) through MONAI's ``ConfigWorkflow`` with ``overrides``; return the workflow."""
    from monai.bundle import ConfigWorkflow

    files = [str(CONFIGS / c) for c in ([configs] if isinstance(configs, str) else configs)]
    wf = ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def run_inference(root: Path, out: Path, **overrides):
    """inference.json (ConfigWorkflow) on ``root/inputs`` with the model of ``root/models``, into ``out``."""
    return run_bundle(
        "inference.json",
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        input=str(root / "inputs"),
        ckpt_dir=str(root / "models"),
        output_dir=str(out),
        **overrides,
    )


@pytest.fixture
def single_thread():
    """The CI/dev machines are small and shared: intra-op threads only add contention at tiny sizes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, demo_datalist):
    """Train the bundle once (ConfigWorkflow, 2 epochs at 64 px); return (root, overrides)."""
    root = tmp_path_factory.mktemp("bundle_run")
    overrides = bundle_overrides(root, dataset_dir=str(demo_datalist.parent))
    run_bundle("train.json", **overrides)
    return root, overrides


@pytest.fixture(scope="session")
def evaluated_bundle(trained_bundle):
    """Evaluate the trained bundle once (train.json + evaluate.json, validation split) into
    ``<root>/eval_cw``; return (root, overrides, output folder)."""
    root, overrides = trained_bundle
    out = root / "eval_cw"
    run_bundle(["train.json", "evaluate.json"], **dict(overrides, output_dir=str(out)))
    return root, overrides, out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Repeat skips whose reason starts with ``NOT RUN:`` (e.g. the MONAI Label server test without a package
    index, the Orthanc DICOMweb test without Orthanc) in a banner at the very end of the output, so a green run
    that left them out cannot pass unnoticed."""
    groups: dict[str, list[str]] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(rep, "longrepr", None)
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith("NOT RUN:"):
            groups.setdefault(reason.splitlines()[0], []).append(rep.nodeid)
    if not groups:
        return
    terminalreporter.section("TESTS NOT RUN (skipped, the run is green without them)", sep="!", red=True, bold=True)
    for reason, nodeids in groups.items():
        terminalreporter.line(f"{len(nodeids)} skipped: {reason}", red=True, bold=True)
        for nodeid in nodeids:
            terminalreporter.line(f"    {nodeid}")
    terminalreporter.line(
        "set MCX_REQUIRE_MONAILABEL=1 to make a MONAI Label environment that cannot be built a failure, "
        "MCX_REQUIRE_ORTHANC=1 a missing Orthanc, MCX_REQUIRE_DCIODVFY=1 a missing dciodvfy"
    )


@pytest.fixture
def fake_monailabel(monkeypatch):
    """Just enough of ``monailabel`` (absent from the core environment) to import ``monailabel_app/lib/infer.py``;
    yields that module. The fake ``BasicInferTask`` keeps what the task's own code uses (``_config``, ``_networks``,
    ``path``, ``load_strict``, ``get_path``); :func:`monailabel_request` merges a request into the task's config
    as MONAI Label's ``BasicInferTask.__call__`` does."""

    class BasicInferTask:
        def __init__(self, **kwargs):
            self._config = kwargs.get("config", {})
            self._networks = {}
            self.path = kwargs.get("path")
            self.load_strict = kwargs.get("load_strict", True)
            self.output_label_key = "pred"
            self.output_json_key = "result"

        def get_path(self):
            return self.path if self.path and os.path.exists(self.path) else None

    mods = {
        "monailabel": types.ModuleType("monailabel"),
        "monailabel.interfaces": types.ModuleType("monailabel.interfaces"),
        "monailabel.interfaces.tasks": types.ModuleType("monailabel.interfaces.tasks"),
        "monailabel.interfaces.tasks.infer_v2": types.ModuleType("monailabel.interfaces.tasks.infer_v2"),
        "monailabel.tasks": types.ModuleType("monailabel.tasks"),
        "monailabel.tasks.infer": types.ModuleType("monailabel.tasks.infer"),
        "monailabel.tasks.infer.basic_infer": types.ModuleType("monailabel.tasks.infer.basic_infer"),
    }
    mods["monailabel.interfaces.tasks.infer_v2"].InferType = types.SimpleNamespace(SEGMENTATION="segmentation")
    mods["monailabel.tasks.infer.basic_infer"].BasicInferTask = BasicInferTask
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    for name in [n for n in sys.modules if n == "lib" or n.startswith("lib.")]:
        monkeypatch.delitem(sys.modules, name)
    yield importlib.import_module("lib.infer")
    for name in [n for n in sys.modules if n == "lib" or n.startswith("lib.")]:
        sys.modules.pop(name, None)


def monailabel_request(task, request: dict) -> dict:
    """The data ``run_inferer`` gets for ``request``: the task's config updated with the request (MONAI Label's
    ``BasicInferTask.__call__``: ``req = copy.deepcopy(self._config); req.update(request)``)."""
    import copy

    data = copy.deepcopy(task._config)
    data.update(request)
    return data
