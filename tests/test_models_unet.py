"""U-Net 2D/3D shapes, the model registry and the shared blocks."""
from __future__ import annotations

import pytest
import torch

from npcrepro.errors import ParameterError
from npcrepro.models import available, build, count_parameters, register
from npcrepro.models import blocks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("size", [(32, 32), (37, 50), (7, 9)])
@pytest.mark.parametrize("n_classes", [1, 3])
def test_unet2d_output_shape(size, n_classes):
    net = build("unet2d", in_channels=2, n_classes=n_classes, widths=(4, 8, 16))
    out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, n_classes, *size)


@pytest.mark.parametrize("size", [(8, 16, 16), (9, 20, 21)])
def test_unet3d_output_shape(size):
    net = build("unet3d", in_channels=1, n_classes=2, widths=(4, 8, 16), norm="instance")
    out = net(torch.randn(1, 1, *size))
    assert out.shape == (1, 2, *size)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", None])
@pytest.mark.parametrize("up", ["transpose", "nearest", "linear"])
def test_unet_options_and_gradients(norm, up):
    net = build("unet2d", in_channels=1, n_classes=1, widths=(4, 8), norm=norm, up=up, pool="stride")
    x = torch.randn(2, 1, 16, 16)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_unet_depth_follows_widths():
    shallow = build("unet2d", widths=(4, 8))
    deep = build("unet2d", widths=(4, 8, 16, 32, 64))
    assert deep.size_multiple == 16 and shallow.size_multiple == 2
    assert count_parameters(deep) > count_parameters(shallow)


def test_unet_rejects_wrong_dimensionality():
    with pytest.raises(ValueError, match="4D tensor"):
        build("unet2d")(torch.randn(1, 1, 4, 8, 8))


def test_registry_lists_and_rejects():
    names = available()
    assert {"unet2d", "unet3d"} <= set(names)
    with pytest.raises(ParameterError, match="unknown model 'nonet'.*unet2d"):
        build("nonet")
    with pytest.raises(ParameterError, match="unet2d"):
        build("unet2d", bogus=1)
    with pytest.raises(ParameterError, match="widths"):
        build("unet2d", widths=(8,))


def test_register_decorator():
    @register("tiny_test_model", overwrite=True)
    def tiny(in_channels=1):
        return torch.nn.Conv2d(in_channels, 1, 1)

    assert "tiny_test_model" in available()
    assert isinstance(build("tiny_test_model", in_channels=3), torch.nn.Conv2d)
    with pytest.raises(ParameterError, match="already registered"):
        register("tiny_test_model")(lambda: None)


def test_blocks_factories():
    assert isinstance(blocks.norm_layer(3, "batch", 8), torch.nn.BatchNorm3d)
    assert isinstance(blocks.norm_layer(2, "group", 12), torch.nn.GroupNorm)
    assert isinstance(blocks.norm_layer(2, None, 8), torch.nn.Identity)
    with pytest.raises(ParameterError):
        blocks.norm_layer(2, "layer", 8)
    with pytest.raises(ParameterError):
        blocks.act_layer("swish")
    with pytest.raises(ParameterError):
        blocks.conv(4, 1, 1)
    x = torch.randn(1, 3, 10, 11)
    y, size = blocks.pad_to_multiple(x, 4)
    assert y.shape[2:] == (12, 12) and size == (10, 11)
    assert blocks.crop_to(y, size).shape == x.shape
    up = blocks.Up(2, 8, 4, 4)
    assert up(torch.randn(1, 8, 5, 5), torch.randn(1, 4, 11, 10)).shape == (1, 4, 11, 10)
    res = blocks.ResidualBlock(3, 2, 4, norm="instance")
    assert res(torch.randn(1, 2, 4, 6, 6)).shape == (1, 4, 4, 6, 6)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv3d_equals_conv3d(layout, bias):
    """The 1x1x1 3D conv runs as a matrix product on channels-last CPU tensors: same parameters,
    state dict, output and gradients as nn.Conv3d, and the output stays channels-last."""
    torch.manual_seed(0)
    pw = blocks.conv(3, 6, 3, 1, bias=bias)
    assert type(pw) is blocks.PointwiseConv3d
    ref = torch.nn.Conv3d(6, 3, 1, bias=bias)
    ref.load_state_dict(pw.state_dict())
    assert list(ref.state_dict()) == list(pw.state_dict())
    x = torch.randn(2, 6, 3, 5, 4)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    g = torch.randn(2, 3, 3, 5, 4)
    y = pw(x)
    got = torch.autograd.grad(y, [x, *pw.parameters()], g)
    want_y = ref(x)
    want = torch.autograd.grad(want_y, [x, *ref.parameters()], g)
    assert y.shape == want_y.shape == (2, 3, 3, 5, 4)
    assert torch.allclose(y, want_y, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got, want))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last_3d)


def test_only_plain_pointwise_3d_convs_take_the_matrix_product():
    assert type(blocks.conv(3, 4, 4, (1, 1, 1))) is blocks.PointwiseConv3d
    for other in (blocks.conv(3, 4, 4, 1, stride=2), blocks.conv(3, 4, 4, 1, padding=1),
                  blocks.conv(3, 4, 4, 1, groups=2), blocks.conv(3, 4, 4, (1, 3, 3)), blocks.conv(2, 4, 4, 1)):
        assert type(other) in (torch.nn.Conv3d, torch.nn.Conv2d)


def test_init_weights_gaussian():
    net = blocks.init_weights(build("unet2d", widths=(4, 8), init=None), "gaussian", std=0.01)
    w = net.stem[0][0].weight
    assert abs(float(w.detach().std()) - 0.01) < 0.005
