"""Tests of monai_mcx.networks: encoders, heads, MultiCheXNet and its wrappers."""

from __future__ import annotations

import itertools
import types

import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from torch.utils.flop_counter import FlopCounterMode

from monai_mcx.keys import TASKS
from monai_mcx.networks import (
    ENCODER_NAMES,
    LocalizationHead,
    MultiCheXNet,
    MultiCheXNetExport,
    MultiCheXNetHead,
    SegmentationDecoder,
    build_encoder,
    flatten_head_maps,
    make_anchor_generator,
)

SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(TASKS, r)]
SIZES = [(64, 64), (72, 64)]  # the second is not a multiple of 32 and has W != H


pytestmark = pytest.mark.usefixtures("single_thread")


def _encoder_sizes(net, size):
    with torch.no_grad():
        return [tuple(f.shape[2:]) for f in net.encoder(torch.zeros(1, 1, *size))]


@pytest.mark.parametrize("tasks", SUBSETS, ids=["+".join(t) for t in SUBSETS])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_output_keys_and_shapes(tasks, size):
    torch.manual_seed(0)
    net = MultiCheXNet("densenet-tiny", class_names=("a", "b", "c"), tasks=tasks, num_anchors=3).eval()
    image = torch.rand(2, 1, *size)
    with torch.no_grad():
        out = net(image)
    expected = {
        "classification": {"class_logits"},
        "segmentation": {"seg_logits"},
        "localization": {"box_cls_logits", "box_regression"},
    }
    assert set(out) == set().union(*(expected[t] for t in tasks))
    if "classification" in tasks:
        assert out["class_logits"].shape == (2, 3)
    if "segmentation" in tasks:
        assert out["seg_logits"].shape == (2, 1, *size)
    if "localization" in tasks:
        feat = _encoder_sizes(net, size)
        assert net.box_strides == [8, 16, 32]
        assert len(out["box_cls_logits"]) == len(out["box_regression"]) == 3
        for lvl, cls, reg in zip((1, 2, 3), out["box_cls_logits"], out["box_regression"]):
            assert cls.shape == (2, 3 * 1, *feat[lvl])
            assert reg.shape == (2, 3 * 4, *feat[lvl])
        # the stride-8 map follows W and H (no swap): 72x64 -> 9x8
        assert out["box_cls_logits"][0].shape[2:] == (size[0] // 8, size[1] // 8)


def test_densenet121_default():
    enc = build_encoder("densenet121")
    assert enc.out_channels == [256, 512, 1024, 1024]
    assert enc.strides == [4, 8, 16, 32]
    net = MultiCheXNet().eval()  # densenet121 is the default encoder
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        feats = net.encoder(x)
        out = net(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (1024, 2, 2)]
    assert (feats[-1] >= 0).all()  # norm5 + ReLU
    assert out["class_logits"].shape == (1, 1) and out["seg_logits"].shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet-b0"])
def test_monai_backbones_four_levels(name):
    enc = build_encoder(name, in_channels=1)
    assert enc.strides == [4, 8, 16, 32]
    with torch.no_grad():
        feats = enc.eval()(torch.rand(1, 1, 64, 96))
    assert len(feats) == 4
    for f, c, s in zip(feats, enc.out_channels, enc.strides):
        assert tuple(f.shape[1:]) == (c, 64 // s, 96 // s)
    out = MultiCheXNet(name, tasks=("segmentation",)).eval()(torch.rand(1, 1, 64, 96))
    assert out["seg_logits"].shape == (1, 1, 64, 96)


def test_invalid_names():
    with pytest.raises(ValueError, match="densenet121"):
        build_encoder("vgg16")
    assert "densenet-tiny" in ENCODER_NAMES
    with pytest.raises(ValueError):
        MultiCheXNet("densenet-tiny", tasks=("classification", "detection"))
    with pytest.raises(ValueError):
        MultiCheXNet("densenet-tiny", tasks=())
    with pytest.raises(ValueError):
        MultiCheXNet("nope")


@pytest.mark.parametrize("task", TASKS)
def test_single_task_has_only_its_head(task):
    net = MultiCheXNet("densenet-tiny", tasks=(task,))
    heads = {
        "classification": net.classification_head,
        "segmentation": net.segmentation_head,
        "localization": net.localization_head,
    }
    for other, head in heads.items():
        assert (head is None) == (other != task)
    n_params = sum(p.numel() for p in net.parameters())
    n_expected = sum(p.numel() for p in net.encoder.parameters()) + sum(p.numel() for p in heads[task].parameters())
    assert n_params == n_expected
    prefixes = {name.split(".")[0] for name, _ in net.named_parameters()}
    assert prefixes == {"encoder", f"{task}_head"}


def test_head_wrapper():
    torch.manual_seed(0)
    net = MultiCheXNet("densenet-tiny", class_names=("a", "b")).eval()
    x = torch.rand(2, 1, 72, 64)
    with torch.no_grad():
        out = net(x)
        cls = MultiCheXNetHead(net, "classification")(x)
        seg = MultiCheXNetHead(net, "segmentation")(x)
    assert torch.allclose(cls, out["class_logits"]) and cls.shape == (2, 2)
    assert torch.allclose(seg, out["seg_logits"]) and seg.shape == (2, 1, 72, 64)
    # TorchScript (script) with the DenseNet encoders, same outputs
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(MultiCheXNetHead(net, "segmentation"))(x), seg, atol=1e-5)
        scripted = torch.jit.script(net)(x)
    assert set(scripted) == set(out) and torch.allclose(scripted["class_logits"], out["class_logits"], atol=1e-5)
    # state-dict keys are the MultiCheXNet's own
    keys = set(MultiCheXNetHead(net, "classification").state_dict())
    assert keys and keys <= set(net.state_dict())
    assert not any(k.startswith(("segmentation_head", "localization_head")) for k in keys)
    assert set(MultiCheXNetExport(net).state_dict()) == set(net.state_dict())
    with pytest.raises(ValueError):
        MultiCheXNetHead(net, "localization")
    with pytest.raises(ValueError):
        MultiCheXNetHead(MultiCheXNet("densenet-tiny", tasks=("segmentation",)), "classification")


def test_export_trace_matches_eager_and_monai_order():
    torch.manual_seed(0)
    net = MultiCheXNet("densenet-tiny", class_names=("a", "b"), num_anchors=3).eval()
    export = MultiCheXNetExport(net).eval()
    x = torch.rand(2, 1, 96, 64)
    with torch.no_grad():
        eager = export(x)
        traced = torch.jit.trace(export, x, check_trace=False)
        res = traced(x)
        out = net(x)
    assert len(res) == 4
    for a, b in zip(eager, res):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    cls, seg, box_cls, box_reg = eager
    assert cls.shape == (2, 2) and seg.shape == (2, 1, 96, 64)
    gen = make_anchor_generator([[16, 16], [12, 24], [24, 12]])
    n_anchors = gen(x, out["box_cls_logits"])[0].shape[0]
    assert box_cls.shape == (2, n_anchors, 1) and box_reg.shape == (2, n_anchors, 4)
    # same flattening as MONAI's RetinaNetDetector._reshape_maps
    fake_detector = types.SimpleNamespace(num_anchors_per_loc=3, spatial_dims=2)
    assert torch.equal(box_cls, RetinaNetDetector._reshape_maps(fake_detector, out["box_cls_logits"]))
    assert torch.equal(box_reg, RetinaNetDetector._reshape_maps(fake_detector, out["box_regression"]))
    assert torch.equal(box_reg, flatten_head_maps(out["box_regression"], 3))
    # the trace is not tied to the example size
    y = torch.rand(1, 1, 64, 128)
    with torch.no_grad():
        for a, b in zip(export(y), traced(y)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_resnet18_scripts_and_traces_to_the_eager_values():
    """Issue 24 item 21: MONAI's ResNet-18 shortcut (a functools.partial concatenating ``out.data``) could not be
    scripted, and a trace recorded the example input's activations as a constant (wrong values for any other input,
    an error for another batch size). The encoder's shortcuts are now modules; the state dict is unchanged."""
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    from monai_mcx.networks.encoders import ZeroPadShortcut

    torch.manual_seed(0)
    net = MultiCheXNet("resnet18", num_anchors=3).eval()
    assert sum(isinstance(m, ZeroPadShortcut) for m in net.encoder.modules()) == 3
    entry = FLEXUNET_BACKBONE.register_dict["resnet18"]
    monai_body = entry["type"](**dict(entry["parameter"], spatial_dims=2, in_channels=1, pretrained=False))
    assert list(net.encoder.body.state_dict()) == list(monai_body.state_dict())  # checkpoints load as before
    export = MultiCheXNetExport(net).eval()
    x, y = torch.rand(1, 1, 64, 64), torch.rand(3, 1, 64, 96)
    with torch.no_grad():
        scripted = torch.jit.script(export)
        traced = torch.jit.trace(export, x, check_trace=False)
        for compiled in (scripted, traced):
            for a, b in zip(export(y), compiled(y)):
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_export_missing_tasks_are_empty():
    net = MultiCheXNet("densenet-tiny", tasks=("localization",)).eval()
    with torch.no_grad():
        cls, seg, box_cls, box_reg = MultiCheXNetExport(net)(torch.rand(1, 1, 64, 64))
    assert cls.shape == (1, 0) and seg.shape == (1, 0, 64, 64)
    assert box_cls.shape[1] == box_reg.shape[1] > 0


def test_heads_are_light():
    enc = build_encoder("densenet121")
    ch = enc.out_channels
    n_enc = sum(p.numel() for p in enc.parameters())
    n_seg = sum(p.numel() for p in SegmentationDecoder(ch).parameters())
    n_loc = sum(p.numel() for p in LocalizationHead(ch).parameters())
    assert n_seg < 0.2 * n_enc and n_loc < 0.2 * n_enc


def _flops(net, size=256):
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.rand(1, 1, size, size))
    return counter.get_total_flops()


def test_flops_three_heads_vs_classification_only():
    torch.manual_seed(0)
    f_cls = _flops(MultiCheXNet("densenet121", tasks=("classification",)))
    f_all = _flops(MultiCheXNet("densenet121"))
    ratio = f_all / f_cls
    print(f"densenet121 @256: cls-only {f_cls / 1e9:.2f} GFLOPs, 3-head {f_all / 1e9:.2f} GFLOPs, ratio {ratio:.3f}")
    assert 1.0 < ratio <= 1.5
