"""The output folder of inference (issue 24 items 1-5): where outputs may go, their names, a second run into the same
folder, bad file names and a full disk.

Every test runs ``bundle/configs/inference.json`` (MONAI's ``ConfigWorkflow``) with a tiny random network whose
gate is always positive and which keeps every candidate box, so every readable image gets its JSON, masks and
overlay.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLE, run_bundle

ANCHORS = [[8, 8], [12, 12], [16, 10]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny network's checkpoint and description (gate always positive, every candidate box kept)."""
    from monai_mcx.artifact import ModelDescription, save_model

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    desc = ModelDescription(
        class_names=["pneumonia"],
        tasks=["classification", "segmentation", "localization"],
        encoder="densenet-tiny",
        spatial_size=[32, 32],
        base_anchor_shapes=ANCHORS,
        class_thresholds={"pneumonia": 0.0},
        box_score_threshold=0.0,
        candidate_score_thresh=0.0,
    )
    save_model(desc.build_network(), desc, folder / "model.pt")
    return folder


def _png(path: Path, seed: int = 0, size_wh: tuple[int, int] = (40, 36)) -> Path:
    """A random gray PNG of ``size_wh``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size_wh
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    return path


def _infer(model_dir: Path, source: Path, out: Path, **overrides):
    """inference.json on ``source`` (folder, datalist or file) into ``out``."""
    return run_bundle(
        "inference.json",
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        input=str(source),
        ckpt_dir=str(model_dir),
        output_dir=str(out),
        batch_size=2,
        **overrides,
    )


def _rows(out: Path) -> dict[str, dict]:
    """``predictions.csv`` rows by the input's file name."""
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        return {Path(r["image"]).name: r for r in csv.DictReader(f)}


def _refused(model_dir: Path, source: Path, out: Path, **overrides) -> str:
    """Run inference expecting a refusal; return the message of the error behind MONAI's config-expression error."""
    from monai_mcx.handlers.output_folder import OutputFolderError

    with pytest.raises(Exception) as info:
        _infer(model_dir, source, out, **overrides)
    e: BaseException | None = info.value
    while e is not None and not isinstance(e, OutputFolderError):
        e = e.__cause__ or e.__context__
    assert e is not None, f"not refused by an OutputFolderError: {info.value!r}"
    return str(e)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- item 1: an output folder that is, contains or lies inside an input -------------------------------------------
def _inputs_with_ground_truth(folder: Path) -> Path:
    """``a.png`` and its ground-truth mask ``a_mask.png`` (the file a run must never replace)."""
    _png(folder / "a.png", seed=1)
    Image.fromarray(np.full((36, 40), 255, np.uint8)).save(folder / "a_mask.png")
    return folder


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_an_output_folder_at_the_input_folder_is_refused_before_anything_is_written(model_dir, tmp_path, where):
    data = _inputs_with_ground_truth(tmp_path / "data" / "xrays")
    out = {"same": data, "inside": data / "predictions", "contains": tmp_path / "data"}[where]
    before = _snapshot(tmp_path)
    message = _refused(model_dir, data, out)
    assert str(out) in message and str(data) in message, message
    assert _snapshot(tmp_path) == before  # a_mask.png (the ground truth) is untouched, nothing was written
    assert not (data / "predictions").exists()


def test_the_folder_of_a_single_input_file_is_refused(model_dir, tmp_path):
    data = _inputs_with_ground_truth(tmp_path / "data")
    before = _snapshot(tmp_path)
    assert str(data) in _refused(model_dir, data / "a.png", data)
    assert _snapshot(tmp_path) == before


def test_the_folder_of_any_image_of_a_datalist_is_refused(model_dir, tmp_path):
    """The datalist lives in ``project/``, its images in ``project/images`` and ``project/more``: the output folder
    may be beside them in ``project/out``, not in either image folder."""
    project = tmp_path / "project"
    _png(project / "images" / "a.png", seed=1)
    _png(project / "more" / "b.png", seed=2)
    dl = project / "list.json"
    dl.write_text(json.dumps({"test": [{"image": "images/a.png"}, {"image": "more/b.png"}]}))
    before = _snapshot(tmp_path)
    assert str(project / "more") in _refused(model_dir, dl, project / "more")
    assert _snapshot(tmp_path) == before
    _infer(model_dir, dl, project / "out")  # beside the images: allowed
    assert set(_rows(project / "out")) == {"a.png", "b.png"}


def test_a_run_never_replaces_a_file_it_did_not_create(model_dir, tmp_path):
    """A file already in the output folder under an output's name keeps its bytes: the image's outputs take
    another name, and predictions.csv names it."""
    data = tmp_path / "xrays"
    _png(data / "a.png", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text('{"mine": true}')
    _infer(model_dir, data, out)
    assert json.loads((out / "a.json").read_text()) == {"mine": True}
    row = _rows(out)["a.png"]
    assert row["error"] == "" and row["json"] != "a.json" and (out / row["json"]).is_file()
    assert json.loads((out / row["json"]).read_text())["image"] == str(data / "a.png")
