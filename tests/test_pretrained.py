"""Pretrained DenseNet encoders from state-dict files the test writes itself (nothing is downloaded)."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from monai_mcx.model.merge import MergeError, init_network
from monai_mcx.networks import MultiCheXNet
from monai_mcx.networks.encoders import DenseNetEncoder
from monai_mcx.networks.pretrained import convert_densenet_state_dict, detect_layout, load_pretrained_encoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def torchvision_densenet():
    """torchvision DenseNet-121 with random weights and random BN statistics (so every tensor is checkable)."""
    torch.manual_seed(0)
    tv = torchvision.models.densenet121(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return tv.eval()


def _old_names(sd: dict) -> dict:
    """torchvision's pre-0.3 checkpoint names: ``denselayer1.norm.1.weight`` instead of ``norm1.weight``."""
    return {re.sub(r"(denselayer\d+)\.(norm|conv)([12])\.", r"\1.\2.\3.", k): v for k, v in sd.items()}


@pytest.mark.parametrize("old", [False, True], ids=["torchvision", "torchvision-old-names"])
def test_torchvision_imagenet_layout(tmp_path, torchvision_densenet, old):
    sd = torchvision_densenet.state_dict()
    if old:
        sd = _old_names(sd)
        assert "features.denseblock1.denselayer1.norm.1.weight" in sd
    path = tmp_path / "densenet121_imagenet.pth"
    torch.save(sd, path)
    enc = DenseNetEncoder(in_channels=1)
    report = load_pretrained_encoder(enc, path)
    assert report.layout == ("torchvision-old" if old else "torchvision")
    got, tv = enc.state_dict(), torchvision_densenet.state_dict()
    assert torch.allclose(got["features.conv0.weight"], tv["features.conv0.weight"].mean(1, keepdim=True))
    for ours, theirs in [
        ("features.denseblock1.denselayer1.layers.norm1.weight", "features.denseblock1.denselayer1.norm1.weight"),
        ("features.denseblock3.denselayer24.layers.conv2.weight", "features.denseblock3.denselayer24.conv2.weight"),
        (
            "features.denseblock4.denselayer16.layers.norm2.running_var",
            "features.denseblock4.denselayer16.norm2.running_var",
        ),
        ("features.transition2.conv.weight", "features.transition2.conv.weight"),
        ("features.norm5.running_mean", "features.norm5.running_mean"),
    ]:
        assert torch.equal(got[ours], tv[theirs]), ours
    assert "classifier.weight" in report.dropped and "features.conv0.weight" in report.adapted
    assert not report.kept
    # with "sum" the encoder's last feature map on a gray image equals torchvision's on that image as RGB
    load_pretrained_encoder(enc, path, channel_reduce="sum")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ours_out = enc.eval()(x)[-1]
        theirs_out = torch.relu(torchvision_densenet.features(x.repeat(1, 3, 1, 1)))
    assert torch.allclose(ours_out, theirs_out, atol=1e-4)


def _xrv_layout(tv: torch.nn.Module) -> dict:
    """A TorchXRayVision DenseNet-121 state dict: torchvision names, 1-channel conv0, 18 outputs, op_threshs."""
    sd = {k: v.clone() for k, v in tv.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    sd["features.conv0.weight"] = torch.randn(64, 1, 7, 7, generator=g)
    sd["classifier.weight"] = torch.randn(18, 1024, generator=g)
    sd["classifier.bias"] = torch.zeros(18)
    sd["op_threshs"] = torch.rand(18, generator=g)
    return sd


def test_torchxrayvision_layout_into_multichexnet(tmp_path, torchvision_densenet):
    sd = _xrv_layout(torchvision_densenet)
    path = tmp_path / "xrv-densenet121-res224-all.pt"
    torch.save(sd, path)
    net = MultiCheXNet(encoder="densenet121", tasks=("classification",))
    head_before = {k: v.clone() for k, v in net.classification_head.state_dict().items()}
    init_network(net, pretrained_encoder=str(path))
    got = net.state_dict()
    assert torch.equal(got["encoder.features.conv0.weight"], sd["features.conv0.weight"])  # 1 channel: as is
    assert torch.equal(
        got["encoder.features.denseblock2.denselayer7.layers.conv1.weight"],
        sd["features.denseblock2.denselayer7.conv1.weight"],
    )
    assert torch.equal(got["encoder.features.norm5.weight"], sd["features.norm5.weight"])
    assert all(torch.equal(v, net.classification_head.state_dict()[k]) for k, v in head_before.items())
    assert detect_layout(sd) == "torchxrayvision"


def test_real_torchxrayvision_state_dict_keys(tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(3)
    model = xrv.models.DenseNet(weights=None).eval()
    path = tmp_path / "xrv.pt"
    torch.save(model.state_dict(), path)
    enc = DenseNetEncoder(in_channels=1).eval()
    report = load_pretrained_encoder(enc, path)
    assert report.layout == "torchxrayvision" and not report.kept
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc(x)[-1], torch.relu(model.features(x)), atol=1e-4)


def test_monai_and_multichexnet_layouts_load_as_is(tmp_path):
    torch.manual_seed(4)
    src = MultiCheXNet(encoder="densenet-tiny", tasks=("segmentation",))
    converted, dropped = convert_densenet_state_dict(src.state_dict())
    assert set(converted) == set(src.encoder.state_dict()) and all(k.startswith("segmentation_head.") for k in dropped)
    path = tmp_path / "mcx.pt"
    torch.save(src.state_dict(), path)
    enc = DenseNetEncoder(
        in_channels=1, **{"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2), "bn_size": 2}
    )
    assert load_pretrained_encoder(enc, path).layout == "multichexnet"
    assert all(torch.equal(v, src.encoder.state_dict()[k]) for k, v in enc.state_dict().items())


def test_wrong_depth_or_not_a_densenet_is_a_clear_error(tmp_path, torchvision_densenet):
    path = tmp_path / "densenet121.pth"
    torch.save(torchvision_densenet.state_dict(), path)
    tiny = MultiCheXNet(encoder="densenet-tiny", tasks=("classification",))
    with pytest.raises(MergeError, match=r"densenet121\.pth.*\n.*(shape-mismatched|keys the encoder lacks)"):
        load_pretrained_encoder(tiny, path)
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(MergeError, match=r"resnet\.pth.*not a DenseNet"):
        load_pretrained_encoder(tiny, other)
    with pytest.raises(ValueError, match="not both"):
        init_network(tiny, pretrained_encoder=str(path), encoder_from=str(path))
