"""Skip what has no label: heads (and their losses, the anchor matching) without a usable sample are not run."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from monai_mcx.engines import MultiTaskTrainer
from monai_mcx.losses import LocalizationLoss, MultiCheXNetLoss
from monai_mcx.networks import MultiCheXNet, make_anchor_generator

SIZE = 64


def tiny_net(seed: int = 0) -> MultiCheXNet:
    torch.manual_seed(seed)
    return MultiCheXNet("densenet-tiny", class_names=("a",), num_anchors=3, dropout=0.0)


def make_loss(mode: str = "positive_only") -> MultiCheXNetLoss:
    gen = make_anchor_generator([[8, 8], [12, 12], [16, 10]], feature_map_scales=(1, 2, 4))
    return MultiCheXNetLoss(localization_loss=LocalizationLoss(gen), teacher_forcing=mode)


def make_batch(kinds: str, seed: int = 0) -> dict:
    """One sample per letter: ``f`` positive with all three annotations, ``n`` annotated negative
    (label 0, empty mask, no box), ``c`` positive with a class label only."""
    g = torch.Generator().manual_seed(seed)
    b = len(kinds)
    batch = {
        "image": torch.rand(b, 1, SIZE, SIZE, generator=g),
        "label": torch.zeros(b, 1),
        "has_label": torch.ones(b),
        "mask": torch.zeros(b, 1, SIZE, SIZE),
        "has_mask": torch.zeros(b),
        "boxes": [torch.zeros(0, 4) for _ in kinds],
        "has_boxes": torch.zeros(b),
        "positive": torch.zeros(b),
    }
    for i, k in enumerate(kinds):
        if k in "fc":
            batch["label"][i] = 1.0
            batch["positive"][i] = 1.0
        if k in "fn":
            batch["has_mask"][i] = 1.0
            batch["has_boxes"][i] = 1.0
        if k == "f":
            x0 = 8 + 4 * i
            batch["mask"][i, 0, x0 : x0 + 16, 10:30] = 1.0
            batch["boxes"][i] = torch.tensor([[float(x0), 10.0, x0 + 16.0, 30.0]])
    return batch


def make_optimizer(net) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay: a parameter whose ``grad`` is None is left alone, one with a zero
    gradient still moves (momentum, decay); unlike Adam it does not amplify rounding noise of tiny gradients."""
    return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)


def trainer_for(net, loss, batches, **kwargs) -> MultiTaskTrainer:
    opt = make_optimizer(net)
    return MultiTaskTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=opt,
        loss_function=loss,
        **kwargs,
    )


def test_forward_tasks_subset_same_outputs_and_state_dict():
    net = tiny_net().eval()
    keys = list(net.state_dict())
    x = torch.rand(2, 1, SIZE, 48)
    with torch.no_grad():
        full = net(x)
        cls_only = net(x, tasks=["classification"])
        seg_loc = net(x, tasks=["segmentation", "localization"])
    assert set(cls_only) == {"class_logits"}
    assert set(seg_loc) == {"seg_logits", "box_cls_logits", "box_regression"}
    assert torch.equal(cls_only["class_logits"], full["class_logits"])
    assert torch.equal(seg_loc["seg_logits"], full["seg_logits"])
    assert all(torch.equal(a, b) for a, b in zip(seg_loc["box_regression"], full["box_regression"]))
    assert list(net.state_dict()) == keys
    with pytest.raises(ValueError, match="not built"):
        MultiCheXNet("densenet-tiny", tasks=("classification",))(x, tasks=["segmentation"])
    # TorchScript keeps the option
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert set(scripted(x, ["classification"])) == {"class_logits"}


def test_batch_without_boxes_never_runs_localization():
    net, loss = tiny_net(), make_loss()
    # positive_only: annotated negatives ("n") and class-only positives ("c") give no localization sample
    batches = [make_batch("cncn"), make_batch("ffnc", seed=1)]
    trainer = trainer_for(net, loss, batches)
    matcher = mock.Mock(wraps=loss.localization_loss.matcher)
    anchors = mock.Mock(wraps=loss.localization_loss.anchor_generator.forward)
    head = mock.Mock(wraps=net.localization_head.forward)
    seen = []

    def record(engine):
        out = engine.state.output
        seen.append(
            {
                "matcher": matcher.call_count,
                "anchors": anchors.call_count,
                "head": head.call_count,
                "pred": set(out["pred"]),
                "losses": dict(out["losses"]),
                "loc_grad": [p.grad for p in net.localization_head.parameters()],
            }
        )

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    with (
        mock.patch.object(loss.localization_loss, "matcher", matcher),
        mock.patch.object(loss.localization_loss.anchor_generator, "forward", anchors),
        mock.patch.object(net.localization_head, "forward", head),
    ):
        trainer.run()
    first, second = seen
    # batch 1: no box sample -> no head, no anchors, no matching, exact zero term, no gradient
    assert first["matcher"] == first["anchors"] == first["head"] == 0
    assert first["pred"] == {"class_logits"}  # no positive with a mask either
    assert first["losses"]["localization"] == 0.0 and first["losses"]["segmentation"] == 0.0
    assert all(g is None for g in first["loc_grad"])
    # batch 2 has two positives with boxes: the spies see the head and the matcher run
    assert second["head"] == 1 and second["anchors"] == 1 and second["matcher"] == 2
    assert "box_cls_logits" in second["pred"] and second["losses"]["localization"] > 0
    assert any(g is not None and g.abs().sum() > 0 for g in second["loc_grad"])


@pytest.mark.parametrize("kinds", ["ffnc", "cncc", "ncnn"])
@pytest.mark.parametrize("mode", ["positive_only", "all"])
def test_loss_and_gradients_equal_full_computation(kinds, mode):
    batch = make_batch(kinds, seed=3)
    targets = {k: v for k, v in batch.items()}
    results = []
    for skip in (False, True):
        net, loss = tiny_net(), make_loss(mode)
        net.train()
        if skip:
            sel = loss.select(targets, net.tasks)
            needed = loss.needed_tasks(sel)
            out = loss(net(batch["image"], tasks=needed), targets, sel)
        else:
            out = loss(net(batch["image"]), targets)
        out["loss"].backward()
        grads = {n: p.grad for n, p in net.named_parameters()}
        results.append((out, grads))
    (full, g_full), (skipped, g_skip) = results
    for key in ("loss", "classification", "segmentation", "localization"):
        assert torch.allclose(skipped[key].detach(), full[key].detach(), atol=1e-6, rtol=1e-5), key
    for key in ("n_classification", "n_segmentation", "n_localization"):
        assert int(skipped[key]) == int(full[key])
    for name, g in g_full.items():
        other = g_skip[name]
        if other is None:  # a skipped head: the full computation gave it an exact zero gradient
            assert not name.startswith(("encoder", "classification_head")), name
            assert g is None or torch.count_nonzero(g) == 0, name
        else:
            assert torch.allclose(other, g, atol=1e-6, rtol=1e-4), name


def test_no_usable_sample_at_all_keeps_exact_zero_in_graph():
    net, loss = tiny_net(), make_loss()
    batch = make_batch("nn")
    batch["has_label"][:] = 0.0  # nothing labelled for any task
    trainer = trainer_for(net, loss, [batch])
    trainer.run()
    out = trainer.state.output
    assert float(out["loss"].detach()) == 0.0 and set(out["pred"]) >= {"class_logits", "seg_logits", "box_cls_logits"}


def test_skip_off_computes_every_head():
    net, loss = tiny_net(), make_loss()
    trainer = trainer_for(net, loss, [make_batch("cc")], skip_unlabelled_heads=False)
    trainer.run()
    assert set(trainer.state.output["pred"]) == {"class_logits", "seg_logits", "box_cls_logits", "box_regression"}
    trainer = trainer_for(net, loss, [make_batch("cc")])
    trainer.run()
    assert set(trainer.state.output["pred"]) == {"class_logits"}
