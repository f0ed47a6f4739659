"""Each head runs on the samples its task trains on: ``MultiCheXNet.forward(image, samples=...)``,
``MultiCheXNetLoss(..., gathered=True)`` and ``MultiTaskTrainer(heads_on_selected_samples=True)``."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from test_skip_heads import make_batch, make_loss, tiny_net, trainer_for


def _rows(out: dict, key: str, idx: torch.Tensor):
    value = out[key]
    if isinstance(value, list):
        return [v[idx] for v in value]
    return value[idx]


def _close(a, b, atol=1e-5) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(torch.allclose(x, y, atol=atol, rtol=1e-4) for x, y in zip(a, b))
    return torch.allclose(a, b, atol=atol, rtol=1e-4)


def test_forward_samples_gives_the_rows_of_the_whole_batch_outputs():
    """In eval mode (BatchNorm on running statistics, GroupNorm per image) a head run on some images gives
    the rows of the whole-batch outputs for those images, in the order of the indices."""
    net = tiny_net().eval()
    x = torch.rand(5, 1, 64, 48)
    samples = {
        "classification": torch.tensor([4, 0]),
        "segmentation": torch.tensor([1, 3, 2]),
        "localization": torch.tensor([2]),
    }
    with torch.no_grad():
        full = net(x)
        part = net(x, samples=samples)
        only_seg = net(x, tasks=["segmentation"], samples={"segmentation": samples["segmentation"]})
    assert part["class_logits"].shape[0] == 2 and part["seg_logits"].shape[0] == 3
    assert all(m.shape[0] == 1 for m in part["box_cls_logits"] + part["box_regression"])
    assert _close(part["class_logits"], _rows(full, "class_logits", samples["classification"]))
    assert _close(part["seg_logits"], _rows(full, "seg_logits", samples["segmentation"]))
    for key in ("box_cls_logits", "box_regression"):
        assert _close(part[key], _rows(full, key, samples["localization"]))
    assert set(only_seg) == {"seg_logits"} and _close(only_seg["seg_logits"], part["seg_logits"])
    # a task left out of samples runs on the whole batch
    with torch.no_grad():
        mixed = net(x, samples={"localization": samples["localization"]})
    assert mixed["class_logits"].shape[0] == 5 and mixed["seg_logits"].shape[0] == 5
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert scripted(x, None, samples)["seg_logits"].shape[0] == 3


@pytest.mark.parametrize("kinds", ["ffnc", "cfnf", "fnnc"])
@pytest.mark.parametrize("mode", ["positive_only", "all"])
def test_gathered_loss_and_gradients_equal_whole_batch_heads_in_eval_mode(kinds, mode):
    """With the BatchNorm statistics fixed (eval mode), gathering changes no number: same terms, same sample
    counts, same gradients as the heads run on the whole batch."""
    batch = make_batch(kinds, seed=5)
    results = []
    for gathered in (False, True):
        net, loss = tiny_net(), make_loss(mode)
        net.eval()
        sel = loss.select(batch, net.tasks)
        needed = loss.needed_tasks(sel)
        if gathered:
            out = loss(
                net(batch["image"], tasks=needed, samples={t: sel[t] for t in needed}), batch, sel, gathered=True
            )
        else:
            out = loss(net(batch["image"], tasks=needed), batch, sel)
        out["loss"].backward()
        results.append((out, {n: p.grad for n, p in net.named_parameters()}))
    (whole, g_whole), (part, g_part) = results
    for key in ("loss", "classification", "segmentation", "localization"):
        assert torch.allclose(part[key].detach(), whole[key].detach(), atol=1e-6, rtol=1e-5), key
        assert int(part[f"n_{key}"]) == int(whole[f"n_{key}"]) if key != "loss" else True
    for name, g in g_whole.items():
        if g is None:
            assert g_part[name] is None, name
        else:
            assert torch.allclose(g_part[name], g, atol=1e-6, rtol=1e-4), name


def test_gathered_loss_refuses_rows_that_do_not_match_the_selection():
    net, loss = tiny_net().eval(), make_loss()
    batch = make_batch("ffnc")
    sel = loss.select(batch, net.tasks)
    with torch.no_grad():
        whole = net(batch["image"])
    with pytest.raises(ValueError, match="gathered segmentation outputs have 4 rows for 2 selected samples"):
        loss(whole, batch, sel, gathered=True)
    with pytest.raises(ValueError, match="need the selection"):
        loss(whole, batch, gathered=True)


def _decoder_batch_sizes(net, batches, **kwargs) -> tuple[list[int], list[dict]]:
    """Run a trainer; return the batch size the segmentation decoder saw per call and the outputs per step."""
    seen: list[int] = []
    hook = net.segmentation_head.register_forward_pre_hook(lambda m, args: seen.append(int(args[0][0].shape[0])))
    trainer = trainer_for(net, make_loss(), batches, **kwargs)
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    try:
        trainer.run()
    finally:
        hook.remove()
    return seen, outputs


def test_trainer_runs_each_head_on_its_selected_samples_only():
    """A mixed batch of disjoint data (class-only positives ``c``, annotated negatives ``n``, fully annotated
    positives ``f``): with positive_only teacher forcing the decoder and the box head see the ``f`` images
    only; with the option off they see the whole batch (the loss terms of the box head agree: GroupNorm)."""
    batches = [make_batch("cfnc", seed=2), make_batch("ffcn", seed=3)]
    seen, outs = _decoder_batch_sizes(tiny_net(), batches)
    assert seen == [1, 2]
    for out, batch in zip(outs, batches):
        sel = out["selection"]
        assert sel["segmentation"].tolist() == [i for i in range(4) if batch["mask"][i].sum() > 0]
        assert out["pred"]["seg_logits"].shape[0] == sel["segmentation"].numel()
        assert out["pred"]["box_cls_logits"][0].shape[0] == sel["localization"].numel()
        assert out["pred"]["class_logits"].shape[0] == 4
    seen_off, outs_off = _decoder_batch_sizes(tiny_net(), batches, heads_on_selected_samples=False)
    assert seen_off == [4, 4]
    # first step, same initial weights: the box term does not depend on the other images
    assert outs[0]["losses"]["localization"] == pytest.approx(outs_off[0]["losses"]["localization"], rel=1e-5)
    assert outs[0]["losses"]["classification"] == pytest.approx(outs_off[0]["losses"]["classification"], rel=1e-5)


def test_decoder_batchnorm_statistics_come_from_the_selected_samples():
    """The documented difference: in training the decoder normalises with the statistics of the samples it
    learns from. Reference: the decoder run by hand on the encoder features of those samples."""
    batch = make_batch("cfnf", seed=4)
    net = tiny_net()
    reference = tiny_net()
    reference.train()
    with torch.no_grad():
        feats = reference.encoder(batch["image"])
        idx = torch.tensor([1, 3])
        reference.segmentation_head([f[idx] for f in feats], batch["image"].shape[2:])
    _decoder_batch_sizes(net, [batch])
    stats = {n: b for n, b in net.segmentation_head.named_buffers() if "running_mean" in n}
    expected = dict(reference.segmentation_head.named_buffers())
    assert stats and all(torch.allclose(b, expected[n], atol=1e-6) for n, b in stats.items())


def test_one_selected_image_with_a_one_pixel_map_trains_on_the_whole_batch_rows():
    """32 px images give the decoder a 1 x 1 map at stride 32: one selected image alone would leave BatchNorm one
    value per channel ('Expected more than 1 value per channel when training'). The decoder then runs on the
    whole batch and the output keeps the selected row (the same numbers as the whole-batch run)."""
    net = tiny_net().train()
    x = torch.rand(3, 1, 32, 32)
    idx = torch.tensor([2])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net.segmentation_head([f[idx] for f in net.encoder(x)], x.shape[2:])
    torch.manual_seed(0)
    whole = net(x, tasks=["segmentation"])["seg_logits"]
    torch.manual_seed(0)
    part = net(x, tasks=["segmentation"], samples={"segmentation": idx})["seg_logits"]
    assert part.shape == (1, 1, 32, 32) and torch.allclose(part, whole[idx], atol=1e-6)
    # two images are enough for BatchNorm: gathered as usual
    two = net(x, tasks=["segmentation"], samples={"segmentation": torch.tensor([0, 2])})["seg_logits"]
    assert two.shape[0] == 2


def test_a_network_without_samples_argument_runs_its_heads_on_the_whole_batch():
    """Skipping heads needs only ``tasks``; a network whose forward takes no ``samples`` must still train."""
    from monai_mcx.networks import MultiCheXNet

    class TasksOnly(MultiCheXNet):
        def forward(self, image, tasks=None):  # the interface before heads_on_selected_samples
            return super().forward(image, tasks)

    torch.manual_seed(0)
    net = TasksOnly("densenet-tiny", class_names=("a",), num_anchors=3, dropout=0.0)
    seen, outs = _decoder_batch_sizes(net, [make_batch("cfnc", seed=2)])
    assert seen == [4] and outs[0]["losses"]["segmentation"] > 0
    assert "selection" in outs[0]
