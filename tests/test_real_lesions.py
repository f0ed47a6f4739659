"""Real lesion data (issue 12): the RSNA and covid_lesions adapters, patient grouping across folders
(issue 13 item 16), the source-weighted sampler and the box-aware rotation of the real-data recipe."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_mcx.data.errors import DataError
from monai_mcx.data.public import COVIDLesions, COVIDLungs, KermanyPneumonia, RSNAPneumonia, ieee8023_patient_groups
from monai_mcx.data.sampling import SourceWeightedSampler
from monai_mcx.data.splits import check_patient_splits

ROOT = Path(__file__).resolve().parents[1]
from conftest import SHARED  # noqa: E402

REAL = SHARED / "data" / "cxr-real"
LESIONS = SHARED / "data" / "cxr-lesions"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared cxr-real / cxr-lesions packs; set MCX_SHARED)")
    return path


def _prepare():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png(path: Path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


# ---------------------------------------------------------------------------- synthetic (always run)


def test_kermany_normals_of_one_study_are_one_patient(tmp_path):
    root = tmp_path / "train"
    names = [
        "IM-0429-0001.jpeg",
        "IM-0429-0001-0001.jpeg",
        "IM-0429-0001-0002.jpeg",
        "IM-0430-0001.jpeg",
        "NORMAL2-IM-0429-0001.jpeg",
        "odd_name.jpeg",
    ]
    for n in names:
        _png(root / "NORMAL" / n, np.zeros((8, 8)))
    pats = {Path(it["image"]).name: it["patient"] for it in KermanyPneumonia(tmp_path).load()}
    assert (
        pats["IM-0429-0001.jpeg"]
        == pats["IM-0429-0001-0001.jpeg"]
        == pats["IM-0429-0001-0002.jpeg"]
        == "kermany:IM-0429"
    )
    assert pats["IM-0430-0001.jpeg"] == "kermany:IM-0430"
    assert pats["NORMAL2-IM-0429-0001.jpeg"] == "kermany:NORMAL2-IM-0429"  # a separate numbering
    assert pats["odd_name.jpeg"] == "kermany:odd_name"


def _covid_pair(tmp_path):
    lungs = tmp_path / "covid_lungs"
    with open(_mk(lungs / "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "finding", "patient", "patient_group"])
        w.writerows(
            [
                ["a.png", "COVID-19", "78", "201+78"],
                ["b.png", "COVID-19", "201", "201+78"],
                ["c.png", "COVID-19", "5", "5"],
            ]
        )
    for n in "abc":
        _png(lungs / "images" / f"{n}.png", np.zeros((8, 8)))
    les = tmp_path / "covid_lesions"
    rows = [
        ["a.png", "COVID-19", "78"],
        ["d.png", "Pneumocystis", "9"],
        ["e.png", "COVID-19, ARDS", "5"],
        ["f.png", "No Finding", "10"],
    ]
    with open(_mk(les / "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "finding", "view", "patient"])
        w.writerows([[r[0], r[1], "PA", r[2]] for r in rows])
    for r in rows:
        _png(les / "images" / r[0], np.zeros((8, 8)))
        _png(les / "masks" / r[0], np.eye(8))
        _png(les / "lungs" / r[0], np.ones((8, 8)))
    return lungs, les


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_covid_lesions_adapter(tmp_path):
    lungs, les = _covid_pair(tmp_path)
    assert ieee8023_patient_groups(lungs) == {"78": "201+78", "201": "201+78", "5": "5"}
    items = {Path(it["image"]).name: it for it in COVIDLesions(les, covid_lungs_root=lungs).load()}
    assert items["a.png"]["patient"] == "covid:201+78"  # the covid_lungs group, not the raw id 78
    assert items["d.png"]["patient"] == "covid:9" and items["e.png"]["patient"] == "covid:5"
    # every pneumonia finding is positive (COVID-19 too), "No Finding" negative
    assert [items[n]["label"] for n in "adef" for n in [f"{n}.png"]] == [[1.0], [1.0], [1.0], [0.0]]
    assert items["e.png"]["findings"] == ["COVID-19", "ARDS"] and items["e.png"]["info"]["covid"] == 1
    assert items["d.png"]["info"]["covid"] == 0
    assert all(
        Path(it["mask"]).parent.name == "masks" and it["info"]["mask_kind"] == "lesion" and it["boxes"] is None
        for it in items.values()
    )
    lung_items = COVIDLesions(les, lung_annotations=True).load()
    assert all(Path(it["mask"]).parent.name == "lungs" and it["info"]["mask_kind"] == "lung" for it in lung_items)
    # the covid_lungs adapter names the same patient alike
    assert {Path(it["image"]).name: it["patient"] for it in COVIDLungs(lungs).load()}["a.png"] == "covid:201+78"


def test_covid_lesions_refuses_unmapped_finding(tmp_path):
    _lungs, les = _covid_pair(tmp_path)
    text = (les / "labels.csv").read_text().replace("Pneumocystis", "Tuberculosis")
    (les / "labels.csv").write_text(text)
    with pytest.raises(DataError, match="Tuberculosis.*labels.csv|labels.csv.*Tuberculosis"):
        COVIDLesions(les).load()
    ad = COVIDLesions(les, on_error="skip")
    assert len(ad.load()) == 3 and "Tuberculosis" in ad.skipped[0]["message"]


def test_prepare_data_covid_lesions_share_patients_with_covid_lungs(tmp_path):
    lungs, les = _covid_pair(tmp_path)
    out = tmp_path / "dl" / "datalist.json"
    for seed in range(6):
        assert (
            _prepare().main(
                [
                    "--covid-lungs",
                    str(lungs),
                    "--covid-lesions",
                    str(les),
                    "--output",
                    str(out),
                    "--quiet",
                    "--val-fraction",
                    "0.4",
                    "--test-fraction",
                    "0.2",
                    "--seed",
                    str(seed),
                ]
            )
            == 0
        )
        dl = json.loads(out.read_text())
        check_patient_splits(dl)
        where = defaultdict(set)
        for s in ("training", "validation", "test"):
            for it in dl[s]:
                if it["patient"] == "covid:201+78":
                    where[it["source"]].add(s)
        assert len(where["covid_lungs"] | where["covid_lesions"]) == 1, (seed, dict(where))


def test_source_weighted_sampler():
    data = [{"source": "big"}] * 900 + [{"source": "small"}] * 10 + [{"source": "other"}] * 90
    s = SourceWeightedSampler(data, {"big": 0.5, "small": 0.3, "other": 0.2}, num_samples=4000, seed=3)
    assert len(s) == 4000
    s.set_epoch(2)
    idx = list(s)
    share = Counter(data[i]["source"] for i in idx)
    assert abs(share["small"] / 4000 - 0.3) < 0.03 and abs(share["big"] / 4000 - 0.5) < 0.03
    assert list(s) == idx  # same epoch, same draws
    s.set_epoch(3)
    assert list(s) != idx
    s.set_epoch(2)
    s.skip_next(1000)
    assert list(s) == idx[1000:]  # resume mid-epoch on the draws not yet seen
    assert list(s) == idx  # the skip is used once
    only = SourceWeightedSampler(data, {"small": 1.0}, num_samples=50)
    assert {data[i]["source"] for i in only} == {"small"}
    with pytest.raises(ValueError, match="no item"):
        SourceWeightedSampler(data, {"missing": 1.0})


def test_rotate_with_boxes_matches_rotated_mask():
    from monai_mcx.transforms.geometry import RandRotateWithBoxesd, cxr_box_augmentations

    t = RandRotateWithBoxesd(["image", "mask"], prob=1.0, max_angle=10.0, mode=["bilinear", "nearest"])
    for seed in range(5):
        t.set_random_state(seed)
        mask = torch.zeros(1, 64, 48)
        boxes = torch.tensor([[10.0, 5.0, 20.0, 30.0], [40.0, 20.0, 60.0, 44.0]])
        for b in boxes.int().tolist():
            mask[0, b[0] : b[2], b[1] : b[3]] = 1
        d = t({"image": mask.clone(), "mask": mask.clone(), "boxes": boxes, "box_labels": torch.tensor([1, 1])})
        assert abs(t._angle) > 0.1
        assert d["image"].shape == (1, 64, 48) and d["boxes"].shape == (2, 4) and d["box_labels"].shape == (2,)
        # independent check: the enclosing box of the rotated mask's pixels equals the union of the boxes
        m = torch.as_tensor(d["mask"][0]) > 0
        xs, ys = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        union = [d["boxes"][:, 0].min(), d["boxes"][:, 1].min(), d["boxes"][:, 2].max(), d["boxes"][:, 3].max()]
        assert [float(v) for v in union] == [float(xs[0]), float(ys[0]), float(xs[-1]) + 1, float(ys[-1]) + 1]
    # in the ready list, before the clip / label removal; no flips by default
    names = [type(x).__name__ for x in cxr_box_augmentations((64, 64), rotate_prob=0.5)]
    assert names.index("RandRotateWithBoxesd") < names.index("ClipBoxesToImaged") and "RandFlipBoxd" not in names


def test_train_real_config_merges_over_train():
    from monai.bundle import ConfigParser

    cfg = ConfigParser.load_config_files(
        [str(ROOT / "bundle/configs/train.json"), str(ROOT / "bundle/configs/train_real.json")]
    )
    assert cfg["run_name"] == "real" and "runs/" in cfg["ckpt_dir"] and "runs/" in cfg["output_dir"]
    assert "trainer" in cfg["train"] and cfg["train"]["sampler"]["_target_"].endswith("SourceWeightedSampler")
    base = [t["_target_"] for t in cfg["preprocessing_base"]]
    assert "ScaleIntensityd" not in base and cfg["preprocessing_base"][0]["scale"] == "auto"
    # RSNA boxes every opacity: its images without a box train the mask head on an empty lesion mask
    prepare = next(t for t in cfg["preprocessing_base"] if t["_target_"].endswith("PrepareAnnotationsd"))
    assert prepare["empty_mask_if_no_boxes"] is True
    # the GPU preset is merged over both and changes only the budget, not the recipe
    gpu = ConfigParser.load_config_files(
        [str(ROOT / "bundle/configs") + f"/{f}.json" for f in ("train", "train_real", "train_real_gpu")]
    )
    assert gpu["spatial_size"] == cfg["spatial_size"] and gpu["preprocessing_base"] == cfg["preprocessing_base"]
    assert gpu["epochs"] > cfg["epochs"] and gpu["samples_per_epoch"] > cfg["samples_per_epoch"]


# ---------------------------------------------------------------------------- the real packs


@pytest.mark.shared
def test_rsna_real_pack():
    root = need(LESIONS / "rsna")
    items = RSNAPneumonia(root).load()
    assert len(items) == 560
    pos = [it for it in items if it["boxes"]]
    assert len(pos) == 226 and sum(len(it["boxes"]) for it in items) == 372
    assert all(it["label"] == [1.0] for it in pos)
    neg = [it for it in items if it["info"]["target"] == 0]
    assert len(neg) == 334 and all(it["boxes"] == [] and it["label"] == [0.0] for it in neg)
    assert all(0 <= b[0] < b[2] <= 1024 and 0 <= b[1] < b[3] <= 1024 for it in pos for b in it["boxes"])
    # real JPEG-compressed DICOMs: LoadCXR gives pixel / 255 (8-bit, no window, no rescale)
    import pydicom

    from monai_mcx.transforms.io import LoadCXR

    ds = pydicom.dcmread(pos[0]["image"])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit and ds.PatientID == Path(pos[0]["image"]).stem
    img = LoadCXR()(pos[0]["image"])
    assert img.shape == (1, 1024, 1024)
    np.testing.assert_allclose(np.asarray(img[0]), ds.pixel_array.T.astype(np.float32) / 255.0, atol=1e-6)


@pytest.mark.shared
def test_covid_lesions_real_pack():
    root = need(LESIONS / "covid_lesions")
    items = COVIDLesions(
        root, covid_lungs_root=REAL / "covid_lungs" if (REAL / "covid_lungs").is_dir() else None
    ).load()
    assert len(items) == 55 and all(it["label"] == [1.0] for it in items)
    assert sum(it["info"]["covid"] for it in items) == 37
    with_lesion = 0
    for it in items:
        m = np.asarray(Image.open(it["mask"]))
        assert m.shape == np.asarray(Image.open(it["image"])).shape[:2] and set(np.unique(m)) <= {0, 1}
        with_lesion += int(m.any())
    assert with_lesion == 51


@pytest.mark.shared
def test_patient_split_through_adapters_real(tmp_path):
    """#13 item 16: images of one patient land in one split, through the adapters and prepare_data.py."""
    kermany, lungs, les = need(REAL / "kermany"), need(REAL / "covid_lungs"), need(LESIONS / "covid_lesions")
    out = tmp_path / "datalist.json"
    assert (
        _prepare().main(
            [
                "--kermany",
                str(kermany),
                "--covid-lungs",
                str(lungs),
                "--covid-lesions",
                str(les),
                "--output",
                str(out),
                "--quiet",
                "--no-check-files",
            ]
        )
        == 0
    )
    dl = json.loads(out.read_text())
    split_of = {}
    for s in ("training", "validation", "test"):
        for it in dl[s]:
            split_of[(it["source"], Path(it["image"]).name)] = s
    # Kermany normals: every image of a study (IM-0429-0001.jpeg, IM-0429-0001-0001.jpeg, ...) in one split
    studies = defaultdict(list)
    for (src, name), s in split_of.items():
        m = re.match(r"^((?:NORMAL2-)?IM-\d+)-", name)
        if src == "kermany" and m:
            studies[m.group(1)].append(s)
    multi = {k: v for k, v in studies.items() if len(v) > 1}
    assert len(multi) > 50  # studies with several normal images
    assert split_of[("kermany", "IM-0429-0001.jpeg")] == split_of[("kermany", "IM-0429-0001-0001.jpeg")]
    assert all(len(set(v)) == 1 for v in multi.values()), [k for k, v in multi.items() if len(set(v)) > 1][:5]
    # covid_lungs + covid_lesions: one ieee8023 patient (raw id, via covid_lungs' groups) in one split
    raw = defaultdict(set)
    for folder, src in ((lungs, "covid_lungs"), (les, "covid_lesions")):
        with open(folder / "labels.csv", newline="") as f:
            for row in csv.DictReader(f):
                raw[row["patient"]].add(split_of[(src, row["image"])])
    shared_patients = {r["patient"] for r in csv.DictReader(open(les / "labels.csv"))} & {
        r["patient"] for r in csv.DictReader(open(lungs / "labels.csv"))
    }
    assert len(shared_patients) >= 20
    assert all(len(raw[p]) == 1 for p in raw), {p: v for p, v in raw.items() if len(v) > 1}


def test_source_weighted_sampler_gives_every_rank_the_same_number_of_batches():
    """Issue 24 item 13: 33 draws, batch 16, 2 ranks gave 2 vs 1 batches and a distributed run hung until the
    process-group timeout. As torch's DistributedSampler, the draws are padded so every rank gets as many."""
    data = [{"source": "a"}] * 20 + [{"source": "b"}] * 5
    whole = SourceWeightedSampler(data, num_samples=33, seed=4, num_replicas=1, rank=0).indices()
    assert len(whole) == 33
    parts = []
    for rank in (0, 1):
        s = SourceWeightedSampler(data, num_samples=33, seed=4, num_replicas=2, rank=rank)
        loader = torch.utils.data.DataLoader(list(range(len(data))), sampler=s, batch_size=16)
        assert len(s) == len(list(s)) == 17
        assert len(loader) == len(list(loader)) == 2
        parts.append(s.indices())
    padded = [None] * 34
    padded[0::2], padded[1::2] = parts
    assert padded == whole + whole[:1]  # the same draws, the first repeated to fill the last rank
    with pytest.raises(ValueError, match="rank"):
        SourceWeightedSampler(data, num_samples=33, num_replicas=2, rank=2)
