"""Backbones: shapes, conditioning, no batch-statistics leaks, helpful shape errors."""

import pytest
import torch

from scorelab.nets.mlp import MLP
from scorelab.nets.unet import UNet


@pytest.mark.parametrize("shape,kw", [((1, 28, 28), dict(attn_resolutions=[7])),
                                      ((1, 8, 8), dict(attn_resolutions=[2])),
                                      ((3, 32, 32), dict(attn_resolutions=[16], num_res_blocks=2))])
def test_unet_shapes(shape, kw):
    net = UNet(shape, channels=16, **kw)
    x = torch.randn(3, *shape)
    assert net(x, torch.rand(3) * 999).shape == x.shape


def test_unet_output_zero_at_init_and_batch_independent():
    net = UNet((1, 8, 8), channels=16, attn_resolutions=[4])
    x = torch.randn(5, 1, 8, 8)
    label = torch.rand(5) * 999
    assert torch.all(net(x, label) == 0)          # zero-initialised output conv
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    full = net(x, label)
    single = torch.cat([net(x[i:i + 1], label[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: UNet((1, 8, 8), channels=16, num_classes=10),
                                  lambda: MLP((2,), width=32, depth=2, num_classes=10)])
def test_class_conditioning_and_null_label(make):
    net = make()
    for p in net.parameters():          # leave the zero init so the output depends on y
        if p.dim() > 1 and torch.all(p == 0):
            torch.nn.init.normal_(p, std=0.1)
    shape = (4,) + ((1, 8, 8) if isinstance(net, UNet) else (2,))
    x, label = torch.randn(shape), torch.rand(4) * 999
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert not torch.allclose(net(x, label, y0), net(x, label, y1))
    null = torch.full((4,), 10, dtype=torch.long)
    torch.testing.assert_close(net(x, label, None), net(x, label, null))


def test_mlp_shapes():
    net = MLP((5,), width=32, depth=2)
    x = torch.randn(7, 5)
    assert net(x, torch.rand(7)).shape == (7, 5)


def test_unet_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="image data shaped"):
        UNet((2,))
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet((1, 10, 10), channel_mult=(1, 2, 2))
