"""merge_multichexnet: the encoder and each head come from their own checkpoint (and the tests fail if not)."""

from __future__ import annotations

import json

import pytest
import torch

from monai_mcx.model.merge import MergeError, MergeWeights, merge_multichexnet, read_state_dict
from monai_mcx.networks import MultiCheXNet

from conftest import CONFIGS, bundle_overrides

torch.set_num_threads(1)
TASKS = ("classification", "segmentation", "localization")


def _net(seed: int, tasks=TASKS, **kw) -> MultiCheXNet:
    torch.manual_seed(seed)
    net = MultiCheXNet(encoder="densenet-tiny", tasks=tasks, **kw)
    with torch.no_grad():  # BN buffers random too, so running stats are checked as well
        for name, buf in net.named_buffers():
            if buf.dtype.is_floating_point:
                buf.uniform_(0.5, 1.5)
    return net


@pytest.fixture()
def sources(tmp_path):
    files = {}
    for i, task in enumerate(TASKS):
        net = _net(10 + i, tasks=(task,))
        files[task] = tmp_path / f"{task}.pt"
        torch.save(net.state_dict(), files[task])
    joint = _net(20)
    files["joint"] = tmp_path / "joint_last.pt"
    torch.save({"model": joint.state_dict(), "epoch": 3}, files["joint"])  # a last.pt-style checkpoint
    return files


def _equal(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_encoder_and_each_head_come_from_their_own_file(sources):
    target = _net(0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = merge_multichexnet(
        target,
        encoder_from=sources["segmentation"],
        heads_from={t: sources[t] for t in TASKS},
    )
    got = target.state_dict()
    sd = {t: read_state_dict(sources[t])[0] for t in (*TASKS, "joint")}
    assert _equal(got, sd["segmentation"], "encoder.")
    assert not _equal(got, sd["classification"], "encoder.")  # the sources really differ
    assert not _equal(got, before, "encoder.")
    for task in TASKS:
        prefix = f"{task}_head."
        assert _equal(got, sd[task], prefix), task
        assert not _equal(got, before, prefix), task
        assert not _equal(got, sd["joint"], prefix), task
    assert report.parts == {"encoder": str(sources["segmentation"]), **{t: str(sources[t]) for t in TASKS}}
    assert set(report.key_sources) == set(got)
    assert report.key_sources["encoder.features.conv0.weight"] == str(sources["segmentation"])
    for task in TASKS:
        assert {report.key_sources[k] for k in report.keys_from(task)} == {str(sources[task])}
    assert not report.untouched  # every tensor of the target came from a file
    assert "segmentation.pt" in str(report)


def test_multitask_checkpoint_and_partial_merge(sources):
    target = _net(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = merge_multichexnet(
        target, encoder_from=sources["joint"], heads_from={"segmentation": sources["joint"], "localization": None}
    )
    got, joint = target.state_dict(), read_state_dict(sources["joint"])[0]
    assert _equal(got, joint, "encoder.") and _equal(got, joint, "segmentation_head.")
    assert _equal(got, before, "classification_head.") and _equal(got, before, "localization_head.")
    assert set(report.parts) == {"encoder", "segmentation"}
    assert all(k.startswith(("classification_head.", "localization_head.")) for k in report.untouched)


def test_shape_mismatch_names_file_and_keys_and_leaves_target_unchanged(tmp_path, sources):
    two = _net(5, tasks=("classification",), class_names=("a", "b"))
    path = tmp_path / "two_classes.pt"
    torch.save(two.state_dict(), path)
    target = _net(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(MergeError) as err:
        merge_multichexnet(target, encoder_from=sources["classification"], heads_from={"classification": path})
    msg = str(err.value)
    assert "two_classes.pt" in msg and "classification_head.fc.weight" in msg and "(2, " in msg
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # checked before loading anything

    wide = MultiCheXNet(encoder="densenet-tiny", encoder_kwargs={"growth_rate": 4})
    wpath = tmp_path / "other_encoder.pt"
    torch.save(wide.state_dict(), wpath)
    with pytest.raises(MergeError, match=r"other_encoder\.pt.*\n.*encoder\.features\.denseblock1"):
        merge_multichexnet(target, encoder_from=wpath)


def test_missing_part_and_missing_head_are_clear(tmp_path, sources):
    target = _net(3)
    with pytest.raises(MergeError, match=r"classification\.pt.*no segmentation_head\.\* keys.*classification_head\."):
        merge_multichexnet(target, heads_from={"segmentation": sources["classification"]})
    cls_only = _net(4, tasks=("classification",))
    with pytest.raises(MergeError, match="no segmentation_head"):
        merge_multichexnet(cls_only, heads_from={"segmentation": sources["segmentation"]})
    with pytest.raises(MergeError, match="does not exist"):
        merge_multichexnet(target, encoder_from=tmp_path / "nope.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MergeError, match="garbage.pt"):
        merge_multichexnet(target, encoder_from=bad)
    with pytest.raises(MergeError, match="unknown head"):
        merge_multichexnet(target, heads_from={"detection": sources["localization"]})


def test_bundle_initialize_merges_sub_models(tmp_path, demo_datalist, sources):
    """The documented train.json option: a MergeWeights item in ``initialize``."""
    from monai.bundle import ConfigWorkflow

    init = json.loads((CONFIGS / "train.json").read_text())["initialize"]
    item = {
        "_target_": "monai_mcx.model.merge.MergeWeights",
        "network": "@network",
        "encoder_from": str(sources["classification"]),
        "heads_from": {t: str(sources[t]) for t in TASKS},
    }
    wf = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        **bundle_overrides(tmp_path, dataset_dir=str(demo_datalist.parent), initialize=init + [item]),
    )
    wf.initialize()
    got = wf.parser.get_parsed_content("network").state_dict()
    assert _equal(got, read_state_dict(sources["classification"])[0], "encoder.")
    for task in TASKS:
        assert _equal(got, read_state_dict(sources[task])[0], f"{task}_head.")
    # empty options leave the network as built
    net = _net(7)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert MergeWeights(net, encoder_from=None, heads_from={}, pretrained_encoder="").report is None
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
