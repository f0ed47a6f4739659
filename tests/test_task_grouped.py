"""Task-grouped batches for disjoint data (issue 15 item 1, optional part): every batch holds one annotation kind,
so ``MultiTaskTrainer(skip_unlabelled_heads=True)`` runs only that batch's heads."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events
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


def test_every_batch_has_one_signature_and_every_item_appears_once():
    items = _items()
    sampler = TaskGroupedSampler(items, batch_size=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 2 + 1  # ceil(10/4) + ceil(7/4) + ceil(5/4) + ceil(3/4)
    for batch in batches:
        assert 1 <= len(batch) <= 4
        assert len({annotation_signature(items[i]) for i in batch}) == 1, batch
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(items)))  # an exact epoch: no item twice, none left out
    # the batch order is shuffled across the groups (not all of one group, then the next)
    sigs = [annotation_signature(items[b[0]]) for b in batches]
    assert any(a != b for a, b in zip(sigs, sigs[1:])) and sigs != sorted(sigs)


def test_order_depends_on_seed_and_epoch_and_resumes():
    items = _items()
    a, b = TaskGroupedSampler(items, 4, seed=0), TaskGroupedSampler(items, 4, seed=0)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second
    a.skip_next_batches(2)  # LastCheckpoint: two batches already seen in this epoch
    assert list(a) == second[2:]
    assert list(a) == second  # skipping applies to the next pass only


def test_ranks_split_the_batches():
    items = _items()
    full = TaskGroupedSampler(items, 4, seed=0).batches()
    parts = []
    for rank in (0, 1):
        s = TaskGroupedSampler(items, 4, seed=0)
        s.rank, s.world = rank, 2
        parts.append(s.batches())
        assert len(list(s)) == len(s) == 4
    assert parts[0] == full[0::2] and parts[1] == full[1::2]


def test_trainer_sets_the_epoch_of_any_sampler():
    """MONAI's engines call ``set_epoch`` only for a DistributedSampler: without MultiTaskTrainer's handler,
    TaskGroupedSampler and SourceWeightedSampler repeat the first epoch's order in every epoch."""
    from monai_mcx.data.sampling import SourceWeightedSampler

    data = [{"source": "a" if i < 50 else "b", "label": [0], "mask": None, "boxes": None} for i in range(60)]
    for make in (
        lambda: {"sampler": SourceWeightedSampler(data, {"a": 0.5, "b": 0.5}, num_samples=8), "batch_size": 4},
        lambda: {"batch_sampler": TaskGroupedSampler(data, 4)},
    ):
        seen = _run_two_epochs(data, **make())
        assert seen[1] != seen[2], seen


def _run_two_epochs(data, **loader_kwargs) -> dict[int, list]:
    from torch.utils.data import DataLoader

    from monai_mcx.engines import MultiTaskTrainer

    seen: dict[int, list] = {1: [], 2: []}

    class Recorder(MultiTaskTrainer):
        def _iteration(self, engine, batch):
            seen[engine.state.epoch].append(batch)
            return {}

    loader = DataLoader(list(range(len(data))), collate_fn=list, **loader_kwargs)
    net = torch.nn.Linear(1, 1)
    Recorder(
        device="cpu",
        max_epochs=2,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda *a: {},
        skip_unlabelled_heads=False,
    ).run()
    return seen


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
    assert isinstance(loader.batch_sampler, TaskGroupedSampler)
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
    loader = parser.get_parsed_content("train#dataloader", lazy=False)
    assert not isinstance(loader.batch_sampler, TaskGroupedSampler) and loader.batch_size == 4


def test_killed_run_resumes_on_the_batches_it_had_not_seen(tmp_path):
    """LastCheckpoint + TaskGroupedSampler: a run killed mid-epoch continues with exactly the batches of the
    uninterrupted run (skip_next_batches), in this epoch and the next."""
    from torch.utils.data import DataLoader

    from monai_mcx.engines import LastCheckpoint, MultiTaskTrainer

    data = _items()

    class Killed(Exception):
        pass

    def run(folder, resume=False, kill_at=None) -> list:
        seen = []

        class Recorder(MultiTaskTrainer):
            def _iteration(self, engine, batch):
                seen.append(tuple(batch))
                return {}

        net = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loader = DataLoader(list(range(len(data))), collate_fn=list, batch_sampler=TaskGroupedSampler(data, 4))
        trainer = Recorder(
            device="cpu",
            max_epochs=2,
            train_data_loader=loader,
            network=net,
            optimizer=opt,
            loss_function=lambda *a: {},
            skip_unlabelled_heads=False,
        )
        LastCheckpoint(folder, {"model": net, "optimizer": opt}, interval_iters=1, resume=resume).attach(trainer)
        if kill_at is not None:

            @trainer.on(Events.ITERATION_COMPLETED(once=kill_at))
            def _kill(engine):
                raise Killed

        try:
            trainer.run()
        except Killed:
            pass
        return seen

    reference = run(tmp_path / "a")
    assert len(reference) == 2 * 8
    killed = run(tmp_path / "b", kill_at=3)
    assert killed == reference[:3]
    resumed = run(tmp_path / "b", resume=True)
    assert resumed == reference[3:]
