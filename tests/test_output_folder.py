"""The output folder of inference (issue 24 items 1-5): where outputs may go, their names, a second run into the same
folder, bad file names and a full disk.

Every test runs ``bundle/configs/inference.json`` (MONAI's ``ConfigWorkflow``) with a tiny random network whose
gate is always positive and which keeps every candidate box, so every readable image gets its JSON, masks and
overlay.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import save_always_positive_model

from conftest import BUNDLE, run_bundle


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny network's checkpoint and description (gate always positive, every candidate box kept)."""
    folder = tmp_path_factory.mktemp("model")
    save_always_positive_model(folder / "model.pt", spatial_size=(32, 32))
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
    """A file the user put into an output folder under an output's name keeps its bytes, also with ``--overwrite``:
    the image's outputs take another name, and predictions.csv names it."""
    _png(tmp_path / "first" / "b.png", seed=2)
    data = tmp_path / "xrays"
    _png(data / "a.png", seed=1)
    out = tmp_path / "out"
    _infer(model_dir, tmp_path / "first", out)
    (out / "a.json").write_text('{"mine": true}')
    _infer(model_dir, data, out, overwrite=True)
    assert json.loads((out / "a.json").read_text()) == {"mine": True}
    row = _rows(out)["a.png"]
    assert row["error"] == "" and row["json"] != "a.json" and (out / row["json"]).is_file()
    assert json.loads((out / row["json"]).read_text())["image"] == str(data / "a.png")
    assert not list(out.glob("b*"))  # the previous run's files are gone


# -- item 2: a second run into the same folder --------------------------------------------------------------------
def _listed_files(out: Path) -> set[str]:
    """The files predictions.csv describes: each row's JSON and the files its JSON names."""
    files = set()
    for row in _rows(out).values():
        if row["json"]:
            rec = json.loads((out / row["json"]).read_text())
            files |= {row["json"]} | {rec[k] for k in ("mask", "mask_nifti", "overlay") if rec.get(k)}
    return files


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """``a/`` holds x.png and y.png, ``b/`` another y.png (another size) and z.png."""
    a, b = tmp_path / "a", tmp_path / "b"
    _png(a / "x.png", seed=1)
    _png(a / "y.png", seed=2, size_wh=(40, 36))
    _png(b / "y.png", seed=3, size_wh=(56, 40))
    _png(b / "z.png", seed=4)
    return a, b


def test_a_second_run_into_a_non_empty_folder_is_refused(model_dir, tmp_path):
    a, b = _two_runs(tmp_path)
    out = tmp_path / "out"
    _infer(model_dir, a, out)
    before = _snapshot(out)
    message = _refused(model_dir, b, out)
    assert str(out) in message and "--overwrite true" in message and "--resume true" in message, message
    assert _snapshot(out) == before


def test_overwrite_removes_the_previous_run_and_writes_the_whole_run(model_dir, tmp_path):
    a, b = _two_runs(tmp_path)
    out = tmp_path / "out"
    _infer(model_dir, a, out)
    _infer(model_dir, b, out, overwrite="true")
    rows = _rows(out)
    assert set(rows) == {"y.png", "z.png"}
    rec = json.loads((out / rows["y.png"]["json"]).read_text())
    assert rec["image"] == str(b / "y.png") and rec["size_wh"] == [56, 40]
    assert Image.open(out / rec["overlay"]).size == (56, 40)  # the overlay is b/y.png's too
    on_disk = {p.name for p in out.iterdir()} - {"predictions.csv", ".monai_mcx_run.jsonl"}
    assert on_disk == _listed_files(out)  # no file of a/x.png is left


@pytest.mark.parametrize("option", ["overwrite", "resume"])
def test_a_folder_with_files_but_no_manifest_is_never_cleared(model_dir, tmp_path, option):
    a, _ = _two_runs(tmp_path)
    out = tmp_path / "out"
    _png(out / "x_overlay.png", seed=9)
    (out / "predictions.csv").write_text("my own table\n")
    before = _snapshot(out)
    message = _refused(model_dir, a, out, **{option: True})
    assert "not a monai_mcx output folder" in message and str(out) in message, message
    assert _snapshot(out) == before


def test_resume_runs_only_the_images_without_complete_outputs(model_dir, tmp_path, monkeypatch):
    """A run killed while writing its third image (of four): ``--resume true`` keeps the two complete images
    (not read nor written again, their rows kept), removes the third's partial files and runs the last two."""
    import monai_mcx.handlers.predictions as predictions
    import monai_mcx.transforms.io as cxr_io

    data = tmp_path / "archive"
    for k, name in enumerate("abcd"):
        _png(data / f"{name}.png", seed=k)
    out = tmp_path / "out"
    real_json = predictions.write_json_atomic

    def killed_at_c(obj, path):
        if Path(path).name == "c.json":
            raise KeyboardInterrupt("killed")
        real_json(obj, path)

    monkeypatch.setattr(predictions, "write_json_atomic", killed_at_c)
    with pytest.raises(BaseException):
        _infer(model_dir, data, out, background_writes=False)
    monkeypatch.setattr(predictions, "write_json_atomic", real_json)
    assert (out / "c_mask.png").exists() and not (out / "c.json").exists() and not (out / "predictions.csv").exists()
    kept = {name: (out / name).stat().st_ino for name in ("a.json", "a_overlay.png", "b.json")}

    real_read, reads = cxr_io.read_cxr, []

    def counting_read(filename, *args, **kwargs):
        reads.append(Path(filename).name)
        return real_read(filename, *args, **kwargs)

    monkeypatch.setattr(cxr_io, "read_cxr", counting_read)
    _infer(model_dir, data, out, resume=True)
    assert sorted(set(reads)) == ["c.png", "d.png"]
    assert {name: (out / name).stat().st_ino for name in kept} == kept  # not written again
    rows = _rows(out)
    assert list(rows) == ["a.png", "b.png", "c.png", "d.png"] and all(r["error"] == "" for r in rows.values())
    on_disk = {p.name for p in out.iterdir()} - {"predictions.csv", ".monai_mcx_run.jsonl"}
    assert on_disk == _listed_files(out)
    reads.clear()
    _infer(model_dir, data, out, resume=True)  # everything complete: nothing is written again
    assert list(_rows(out)) == ["a.png", "b.png", "c.png", "d.png"]
    assert {name: (out / name).stat().st_ino for name in kept} == kept


def test_a_summary_no_run_wrote_is_never_replaced(model_dir, tmp_path, monkeypatch):
    """A run killed before its summary, then the user's own ``predictions.csv`` in the folder: ``--resume`` and
    ``--overwrite`` refuse to start (the run would end by replacing it)."""
    import monai_mcx.handlers.predictions as predictions

    data = tmp_path / "xrays"
    _png(data / "a.png", seed=1)
    out = tmp_path / "out"
    monkeypatch.setattr(predictions.PredictionWriter, "write_summary", lambda self, engine=None: self.flush())
    _infer(model_dir, data, out)
    monkeypatch.undo()
    (out / "predictions.csv").write_text("my own table\n")
    before = _snapshot(out)
    for option in ("resume", "overwrite"):
        message = _refused(model_dir, data, out, **{option: True})
        assert str(out / "predictions.csv") in message and "no recorded run wrote" in message, message
        assert _snapshot(out) == before


def test_resume_with_other_output_settings_and_both_options_are_refused(model_dir, tmp_path):
    a, _ = _two_runs(tmp_path)
    out = tmp_path / "out"
    _infer(model_dir, a, out)
    before = _snapshot(out)
    message = _refused(model_dir, a, out, resume=True, overlay_format="jpg")
    assert "differing: files" in message and "--overwrite true" in message, message
    assert "exclude each other" in _refused(model_dir, a, out, resume=True, overwrite=True)
    assert _snapshot(out) == before


# -- item 3: file names that are not UTF-8 or too long ------------------------------------------------------------
def _names_on_disk(folder: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(folder)))


def test_a_non_utf8_file_name_does_not_stop_the_run(model_dir, tmp_path):
    """``caf\\xe9.png`` (Latin-1 bytes, not UTF-8): its outputs get a UTF-8 name, its row names the input with
    the byte written as ``\\xe9`` (``backslashreplace``), and the other images and predictions.csv are written."""
    data = tmp_path / "xrays"
    _png(data / "b.png", seed=2)
    raw = os.path.join(os.fsencode(data), b"caf\xe9.png")
    _png(Path(os.fsdecode(raw)), seed=1)
    out = tmp_path / "out"
    _infer(model_dir, data, out)
    rows = _rows(out)
    assert set(rows) == {"b.png", "caf\\xe9.png"}, rows
    row = rows["caf\\xe9.png"]
    assert row["error"] == "" and row["image"] == str(data) + "/caf\\xe9.png"
    for name in _names_on_disk(out):
        name.decode("utf-8")  # every output name is UTF-8
    rec = json.loads((out / row["json"]).read_text(encoding="utf-8"))
    assert rec["image"] == row["image"] and (out / rec["overlay"]).is_file()


def test_a_long_file_name_gets_a_shortened_unique_stem(model_dir, tmp_path):
    """A 236-character stem (240 with ``.png``) fits the file system but ``<stem>_overlay.png``'s temporary file
    does not (255 bytes): the outputs take the stem cut and a short hash of the full name; two such names that
    differ only at the end get two stems."""
    data = tmp_path / "xrays"
    long_a, long_b = "x" * 235 + "a", "x" * 235 + "b"
    for k, stem in enumerate((long_a, long_b, "short")):
        _png(data / f"{stem}.png", seed=k)
    out = tmp_path / "out"
    _infer(model_dir, data, out)
    rows = _rows(out)
    assert set(rows) == {f"{long_a}.png", f"{long_b}.png", "short.png"}
    assert all(r["error"] == "" for r in rows.values()), rows
    stems = {rows[f"{s}.png"]["json"][: -len(".json")] for s in (long_a, long_b)}
    assert len(stems) == 2 and all(len(s.encode()) <= 128 and s.startswith("x" * 100) for s in stems), stems
    assert max(len(n) for n in _names_on_disk(out)) <= 160
    assert rows["short.png"]["json"] == "short.json"


# -- item 4: the stem is the name without its image suffix, and unique ---------------------------------------------
@pytest.mark.parametrize(
    "name,stem",
    [
        ("1.2.840.113619.2.55.3.1234.dcm", "1.2.840.113619.2.55.3.1234"),
        ("SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.png", "SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0"),
        ("scan.NII.GZ", "scan"),
        ("scan.nii", "scan"),
        ("film.v2.TIFF", "film.v2"),
        ("photo.jpeg", "photo"),
        ("1.2.840.10008.99", "1.2.840.10008.99"),  # an extension-less DICOM keeps its whole name
        ("notes.txt.bak", "notes.txt.bak"),  # no image suffix: the whole name
    ],
)
def test_the_stem_is_the_name_without_its_image_suffix(name, stem):
    from monai_mcx.handlers.output_folder import candidate_stems

    assert next(candidate_stems(f"/data/{name}")) == stem


def test_dotted_names_keep_their_whole_stem_and_equal_stems_get_a_predictable_suffix(model_dir, tmp_path):
    """DICOM UIDs and dotted names keep their whole stem. Images of one stem, in run order: ``a``, then the stem and
    the suffix (``a_dcm``, ``a_png``), then 8 hex digits of the SHA-1 of the input path."""
    import hashlib

    from test_inference import _write_dicom

    rng = np.random.default_rng(0)
    project = tmp_path / "project"
    _png(project / "one" / "SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.png", seed=1)
    _write_dicom(project / "one" / "1.2.840.113619.2.55.3.1234.dcm", rng.integers(0, 4096, (36, 40)))
    _write_dicom(project / "one" / "1.2.840.113619.2.55.3.99", rng.integers(0, 4096, (36, 40)))
    _png(project / "one" / "a.png", seed=2)
    _write_dicom(project / "one" / "a.dcm", rng.integers(0, 4096, (36, 40)))
    _png(project / "two" / "a.png", seed=3)
    _png(project / "three" / "a.png", seed=4)
    listed = [
        "one/SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.png",
        "one/1.2.840.113619.2.55.3.1234.dcm",
        "one/1.2.840.113619.2.55.3.99",
        "one/a.png",
        "one/a.dcm",
        "two/a.png",
        "three/a.png",
    ]
    dl = project / "list.json"
    dl.write_text(json.dumps({"test": [{"image": p} for p in listed]}))
    out = tmp_path / "out"
    _infer(model_dir, dl, out)
    with (out / "predictions.csv").open(newline="") as f:
        stems = {r["image"]: r["json"][: -len(".json")] for r in csv.DictReader(f)}
    third_a = str(project / "three" / "a.png")
    assert stems == {
        str(project / "one" / "SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.png"): (
            "SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0"
        ),
        str(project / "one" / "1.2.840.113619.2.55.3.1234.dcm"): "1.2.840.113619.2.55.3.1234",
        str(project / "one" / "1.2.840.113619.2.55.3.99"): "1.2.840.113619.2.55.3.99",
        str(project / "one" / "a.png"): "a",
        str(project / "one" / "a.dcm"): "a_dcm",
        str(project / "two" / "a.png"): "a_png",
        third_a: "a_" + hashlib.sha1(third_a.encode()).hexdigest()[:8],
    }
    for stem in stems.values():
        assert json.loads((out / f"{stem}.json").read_text())["image"] in stems
        assert (out / f"{stem}_overlay.png").is_file()


# -- item 5: a full disk ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds a descriptor's file name in /proc/self/fd")
@pytest.mark.parametrize("background", [True, False])
def test_a_full_disk_while_writing_one_image_leaves_it_absent_and_an_error_row(
    model_dir, tmp_path, monkeypatch, background
):
    """``fsync`` of ``b``'s overlay fails with ENOSPC (after its masks were written): none of ``b``'s files stays
    (no JSON pointing to a missing overlay, no temporary file), its row names the file and the error, the other
    images are complete and predictions.csv is written; ``--resume true`` later writes ``b``."""
    import errno

    data = tmp_path / "xrays"
    for k, name in enumerate("abc"):
        _png(data / f"{name}.png", seed=k)
    out = tmp_path / "out"
    real_fsync = os.fsync

    def full_disk_for_b_overlay(fd):
        if "b_overlay.png" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_for_b_overlay)
    _infer(model_dir, data, out, background_writes=background)
    monkeypatch.setattr(os, "fsync", real_fsync)
    rows = _rows(out)
    assert set(rows) == {"a.png", "b.png", "c.png"}
    error = rows["b.png"]["error"]
    assert str(out / "b_overlay.png") in error and "No space left on device" in error, error
    assert rows["b.png"]["json"] == "" and not [p.name for p in out.iterdir() if "b" in p.name.split("_")[0]]
    assert all(rows[n]["error"] == "" and (out / rows[n]["json"]).is_file() for n in ("a.png", "c.png"))
    on_disk = {p.name for p in out.iterdir()} - {"predictions.csv", ".monai_mcx_run.jsonl"}
    assert on_disk == _listed_files(out)
    _infer(model_dir, data, out, resume=True)
    rows = _rows(out)
    assert rows["b.png"]["error"] == "" and json.loads((out / "b.json").read_text())["overlay"] == "b_overlay.png"
    assert (out / "b_overlay.png").is_file()


def test_a_summary_that_cannot_be_written_names_the_file(model_dir, tmp_path, monkeypatch):
    import errno

    import monai_mcx.handlers.predictions as predictions

    data = tmp_path / "xrays"
    _png(data / "a.png", seed=1)
    real_write = predictions.write_bytes_atomic

    def full_disk_for_the_summary(payload, path):
        if Path(path).name == "predictions.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(payload, path)

    monkeypatch.setattr(predictions, "write_bytes_atomic", full_disk_for_the_summary)
    with pytest.raises(Exception) as info:
        _infer(model_dir, data, tmp_path / "out")
    e: BaseException | None = info.value
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    assert e is not None and e.errno == errno.ENOSPC and str(tmp_path / "out" / "predictions.csv") in str(e), e
