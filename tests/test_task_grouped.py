"""Task-grouped batches for disjoint data (issue 15 item 1, optional part): every batch holds one annotation kind,
so ``MultiTaskTrainer(skip_unlabelled_heads=True)`` runs only that batch's heads."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from monai.bundle import ConfigParser

from monai_mcx.data.sampling import TaskGroupedSampler, annotation_signature

from conftest import CONFIGS, bundle_overrides


def _items() -> list[dict]:
    """10 class-only, 7 mask-only, 5 box-only (two with an empty box list = a known negative), 3 class + boxes."""
    items = [{"image": f"c{i}", "label": [i % 2], "mask": None, "boxes": None} for i in range(10)]
    items += [{"image": f"m{i}", "label": None, "mask": f"m{i}.png", "boxes": None} for i in range(7)]
    items += [
        {"image": f"b{i}", "label": None, "mask": None, "boxes": [] if i < 2 else [[1, 1, 5, 5]]} for i in range(5)
    ]
    items += [{"image": f"x{i}", "label": [1], "mask": None, "boxes": [[1, 1, 5, 5]]} for i in range(3)]
    return items


def test_annotation_signature_unknown_is_not_empty():
    assert annotation_signature({"label": [0], "mask": None, "boxes": []}) == ("classification", "localization")
    assert annotation_signature({"label": None, "mask": None, "boxes": None}) == ()


def test_every_batch_has_one_signature_and_every_item_appears():
    items = _items()
    sampler = TaskGroupedSampler(items, batch_size=4, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 4 * (3 + 2 + 2 + 1)  # ceil(10/4) + ceil(7/4) + ceil(5/4) + ceil(3/4)
    chunks = [order[s : s + 4] for s in range(0, len(order), 4)]  # what the DataLoader makes of the stream
    for chunk in chunks:
        assert len({annotation_signature(items[i]) for i in chunk}) == 1, chunk
    assert set(order) == set(range(len(items)))
    # a mixed shuffled order would not be grouped: the signatures of the batches differ in an epoch
    assert len({annotation_signature(items[c[0]]) for c in chunks}) == 4
    # only the filled-up partial batches repeat items: at most batch_size - 1 per group
    extra = sum(n - 1 for n in Counter(order).values())
    assert extra == len(order) - len(items) <= 4 * 3


def test_order_depends_on_seed_and_epoch_and_resumes():
    items = _items()
    a, b = TaskGroupedSampler(items, 4, seed=0), TaskGroupedSampler(items, 4, seed=0)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second and sorted(set(first)) == sorted(set(second))
    a.skip_next(8)  # LastCheckpoint: two batches of 4 already seen in this epoch
    assert list(a) == second[8:]
    assert list(a) == second  # skipping applies to the next pass only


def test_ranks_split_the_batches(monkeypatch):
    items = _items()
    full = TaskGroupedSampler(items, 4, seed=0).batches()
    parts = []
    for rank in (0, 1):
        s = TaskGroupedSampler(items, 4, seed=0)
        s.rank, s.world = rank, 2
        parts.append(s.batches())
        assert len(list(s)) == len(s)
    assert len(parts[0]) == len(parts[1]) == 4
    assert parts[0] + parts[1] == full[0::2] + full[1::2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        TaskGroupedSampler(_items(), 0)
    with pytest.raises(ValueError, match="empty"):
        TaskGroupedSampler([], 4)


def test_bundle_option_builds_single_task_batches(demo_datalist, tmp_path):
    """``--task_grouped_batches true`` puts TaskGroupedSampler into train.json's DataLoader; on a disjoint datalist
    each collated batch carries a single annotation kind."""
    data = json.loads(demo_datalist.read_text())
    disjoint = []
    for i, it in enumerate(data["training"][:24]):
        keep = ("label", "mask", "boxes")[i % 3]
        disjoint.append({**it, **{k: None for k in ("label", "mask", "boxes") if k != keep}})
    for it in disjoint:
        for k in ("image", "mask"):
            if it.get(k):
                it[k] = str((demo_datalist.parent / it[k]).resolve())
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"class_names": data["class_names"], "training": disjoint, "validation": []}))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(bundle_overrides(tmp_path, datalist_file=str(dl), task_grouped_batches=True, batch_size=4))
    loader = parser.get_parsed_content("train#dataloader")
    assert isinstance(loader.sampler, TaskGroupedSampler)
    kinds = set()
    for batch in loader:
        flags = {
            (float(a) > 0.5, float(b) > 0.5, float(c) > 0.5)
            for a, b, c in zip(batch["has_label"], batch["has_mask"], batch["has_boxes"])
        }
        assert len(flags) == 1, flags
        kinds |= flags
    assert {(True, False, False), (False, True, False), (False, False, True)} <= kinds
    # off by default: the resumable shuffling sampler
    parser.update({"task_grouped_batches": False})
    assert not isinstance(parser.get_parsed_content("train#dataloader", lazy=False).sampler, TaskGroupedSampler)
