"""An archive's inference in several processes (issue 24 item 19): inference.json + multi_gpu_inference.json under
torchrun (2 gloo processes on CPU) writes the files one process writes, each image once, and ``--resume`` continues
a run where it stopped."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_distributed import _torchrun
from tiny_model import ANCHORS, save_always_positive_model

from conftest import BUNDLE, run_bundle

pytestmark = pytest.mark.slow

MODEL = {"spatial_size": [64, 64], "encoder": "densenet-tiny", "base_anchor_shapes": ANCHORS}
#: one image per batch on both sides (and one thread: torchrun's OMP_NUM_THREADS=1, `single_thread` here): each
#: image goes through the same kernels, so even the overlays are the same bytes
RUN = {"batch_size": 1, "num_workers": 0, "background_writes": True}
MANIFEST = ".monai_mcx_run.jsonl"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A folder of 10 PNGs of different sizes, two PNGs of one name in two sub-folders, a datalist of them all
    (and of a missing file), and a fresh tiny network whose gate is always positive (masks, boxes: every file)."""
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    folder = root / "folder"
    folder.mkdir()
    for k in range(10):
        w, h = 40 + 3 * k, 70 - 2 * k
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / f"img_{k:02d}.png")
    for sub in ("site_a", "site_b"):
        (root / sub).mkdir()
        Image.fromarray(rng.integers(0, 256, (48, 56), dtype=np.uint8)).save(root / sub / "same.png")
    items = [{"image": str(root / "site_a" / "same.png")}]
    items += [{"image": str(p)} for p in sorted(folder.iterdir())]
    items += [{"image": str(root / "site_b" / "same.png")}, {"image": str(root / "missing.png")}]
    (root / "datalist.json").write_text(json.dumps({"test": items}))
    save_always_positive_model(root / "models" / "model.pt")
    return root


def _single(root: Path, input: Path, out: Path, **extra) -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_bundle(
            "inference.json",
            workflow_type="infer",
            bundle_root=str(BUNDLE),
            input=str(input),
            ckpt_dir=str(root / "models"),
            output_dir=str(out),
            **MODEL,
            **RUN,
            **extra,
        )
    finally:
        torch.set_num_threads(n)


def _two_processes(root: Path, input: Path, out: Path, **extra):
    return _torchrun(
        ["inference.json", "multi_gpu_inference.json"],
        {
            "bundle_root": str(BUNDLE),
            "input": str(input),
            "ckpt_dir": str(root / "models"),
            "output_dir": str(out),
            **MODEL,
            **RUN,
            **extra,
        },
    )


def _nifti_content(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())  # the gzip header holds the time it was written


def _assert_same_files(a: Path, b: Path, names: list[str] | None = None) -> None:
    """The same files in ``a`` and ``b`` (all, or ``names``), byte for byte (NIfTI: their content)."""
    names = names if names is not None else sorted(p.name for p in b.iterdir() if p.name != MANIFEST)
    for name in names:
        if name.endswith(".nii.gz"):
            assert _nifti_content(a / name) == _nifti_content(b / name), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _written(out: Path) -> list[str]:
    """The images the output folder's manifest says were written (``done``), in record order."""
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines() if line.strip()]
    return [r["image"] for r in records if r.get("event") == "done"]


def test_two_processes_write_what_one_process_writes(archive):
    """Same-named inputs on two ranks get the stems one process gives them; every file (JSON, masks, overlays,
    NIfTI content, predictions.csv in input order) is the same; each image is written once."""
    single, ddp = archive / "single", archive / "ddp"
    _single(archive, archive / "datalist.json", single)
    _two_processes(archive, archive / "datalist.json", ddp)

    names = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in ddp.iterdir()) == names
    assert "same.json" in names and len([n for n in names if n.startswith("same_") and n.endswith(".json")]) == 1
    assert len([n for n in names if n.endswith(".json")]) == 12, names
    assert len([n for n in names if n.endswith("_overlay.png")]) == 12
    _assert_same_files(ddp, single)  # predictions.csv included: the rows in input order, whatever rank wrote them
    rows = (ddp / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 13 and "missing.png" in rows[-1] and "not found" in rows[-1]
    written = _written(ddp)
    assert sorted(written) == sorted(set(written)) and len(written) == 12, "each image written once"


def test_resume_with_two_processes_writes_only_what_is_missing(archive):
    """A one-process run completed half of the folder; two processes with --resume on the whole folder write the
    other half only, and the folder ends as a complete run's. Resuming a complete folder (one item to run: rank 1
    has none) writes nothing and does not hang."""
    folder = archive / "folder"
    images = sorted(str(p) for p in folder.iterdir())
    half = archive / "half.json"
    half.write_text(json.dumps({"test": [{"image": p} for p in images[:5]]}))
    out = archive / "resumed"
    _single(archive, half, out)
    assert sorted(_written(out)) == images[:5]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.endswith(".json")}

    _two_processes(archive, folder, out, resume=True)
    assert sorted(_written(out)) == images, "the first five once (first run), the others once (resumed run)"
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before, "complete images are not written again"
    full = archive / "full"
    _single(archive, folder, full)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in full.iterdir())
    _assert_same_files(out, full)

    _two_processes(archive, folder, out, resume=True)
    assert sorted(_written(out)) == images, "nothing written again"
    _assert_same_files(out, full, ["predictions.csv"])
