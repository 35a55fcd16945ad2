"""Backbones: the UNet family and DiT, their presets (parameter counts of the papers), shapes,
initialisation, conditioning, no batch-statistics leaks, save/load; FIR resampling."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, ROOT
from scorelab.models.heads import get_head
from scorelab.training.losses import DSMLoss
from scorelab.nets.dit import DiT, SelfAttention, sincos_2d
from scorelab.nets.layers import sinusoidal_embedding
from scorelab.nets.mlp import MLP
from scorelab.nets.resample import Downsample, Upsample, downsample, fir_filter, upsample
from scorelab.nets.unet import Attention, UNet
from scorelab.models.score import ScoreModel
from scorelab.paths.sde import VESDE, VPSDE
from scorelab.util.speed import apply_speed

# Published sizes: Score SDE (Song et al. 2021, Table 3 / reference configs) for 3x32x32,
# DiT (Peebles & Xie 2023, Table 1/4) for 4x32x32 latents with 1000 classes, in millions.
PAPER_COUNTS = {"ddpm_cifar10": 35.2, "ddpmpp_cifar10": 61.8, "ddpmpp_deep_cifar10": 106.6,
                "ncsnpp_cifar10": 62.8, "ncsnpp_deep_cifar10": 107.6,
                **{f"dit_s_{p}": 33.0 for p in (2, 4, 8)},
                **{f"dit_b_{p}": 130.5 for p in (2, 4, 8)},
                **{f"dit_l_{p}": 458.1 for p in (2, 4, 8)},
                **{f"dit_xl_{p}": 675.1 for p in (2, 4, 8)}}
PRESETS = sorted(p.stem for p in (CONF / "backbone").glob("*.yaml"))
# Denoising backbones (x -> x's shape); "encoder" is the noisy classifier's network,
# "kl_autoencoder" the stage-1 autoencoder.
IMAGE_PRESETS = [p for p in PRESETS if p not in ("mlp", "encoder", "kl_autoencoder")]
BIG = {"dit_l_2", "dit_l_4", "dit_l_8", "dit_xl_2", "dit_xl_4", "dit_xl_8"}


def preset(name, **overrides):
    """The composed ``conf/backbone/<name>.yaml`` node (defaults lists resolved)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={name}"])
    node = OmegaConf.to_container(cfg.backbone, resolve=True)
    node.update(overrides)
    return node


def build(node, data_shape=None, num_classes=None, device="cpu"):
    shape = data_shape or node.get("data_shape") or (1, 28, 28)
    classes = node.get("num_classes") if num_classes is None else num_classes
    with torch.device(device):
        return instantiate(node, data_shape=tuple(shape), num_classes=classes or 0)


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def randomize_zero_init(net):
    """Give the zero-initialised layers weights, so outputs depend on every input."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad and torch.all(p == 0):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


# ---------------------------------------------------------------------- presets

@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_preset_parameter_counts_match_the_papers(name):
    """Counted on the meta device: nothing is allocated, so the 675M DiT-XL costs nothing."""
    net = build(preset(name), device="meta")
    assert abs(n_params(net) / 1e6 - PAPER_COUNTS[name]) <= 0.005 * PAPER_COUNTS[name]


def test_dit_xl_2_with_learned_sigma_is_the_published_network_exactly():
    net = build(preset("dit_xl_2", learn_sigma=True), device="meta")
    assert n_params(net) == 675_129_632          # DiT-XL/2's reported 675,129,632


@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_each_preset_maps_its_input_shape_to_itself(name):
    """Small inputs: full-width UNets at their published shape, DiTs of reduced depth (the
    size-defining width and patching kept); all presets at full size run in the slow test."""
    node = preset(name)
    if node["_target_"].endswith("DiT"):
        node["depth"] = 1
    net = build(node, num_classes=10 if node.get("num_classes") is None else None)
    shape = tuple(node["data_shape"] or (1, 28, 28))
    x = torch.randn(2, *shape)
    y = torch.tensor([0, 3])
    with torch.no_grad():
        out = net(x, torch.tensor([3.0, 700.0]), y)
    assert out.shape == x.shape
    # Every preset promises a zero output at initialisation: init_scale=0 zeroes the UNets'
    # output convolution(s), adaLN-Zero the DiTs' final layer.
    assert torch.all(out == 0)
    # With weights everywhere: one image at two noise levels gives two different outputs.
    randomize_zero_init(net).eval()
    with torch.no_grad():
        out = net(x[:1].expand_as(x), torch.tensor([3.0, 700.0]), y[:1].expand(2))
    assert torch.isfinite(out).all() and not torch.allclose(out[0], out[1], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG))
def test_big_presets_forward_at_full_size(name):
    net = build(preset(name))
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        out = net(x, torch.tensor([500.0]), torch.tensor([7]))
    assert out.shape == x.shape and torch.all(out == 0)           # adaLN-Zero


# ---------------------------------------------------------------------- UNet

@pytest.mark.parametrize("resblock", ["ddpm", "biggan"])
@pytest.mark.parametrize("fir", [False, True])
@pytest.mark.parametrize("progressive,progressive_input,combine", [
    ("none", "none", "sum"), ("output_skip", "input_skip", "sum"),
    ("output_skip", "input_skip", "cat"), ("residual", "residual", "sum")])
def test_unet_variants_shapes(resblock, fir, progressive, progressive_input, combine):
    """Every wiring: the shape, a zero output at init_scale=0 (the output_skip pyramid's
    convolutions too), the noise label reaching the output, no batch-statistics leak."""
    def make(init_scale):
        return UNet((3, 16, 16), channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                    attn_resolutions=(8,), resblock=resblock, fir=fir,
                    progressive=progressive, progressive_input=progressive_input,
                    progressive_combine=combine, dropout=0.0, init_scale=init_scale,
                    embedding="fourier" if fir else "positional")
    x = torch.randn(1, 3, 16, 16).expand(3, 3, 16, 16)      # one image at three noise labels
    label = torch.tensor([1.0, 999.0, 40.0])
    with torch.no_grad():
        assert torch.all(make(0.0)(x, label) == 0)
        net = make(1.0)
        out = net(x, label)
        alone = net(x[1:2], label[1:2])
    assert out.shape == x.shape
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    torch.testing.assert_close(alone, out[1:2], rtol=1e-4, atol=1e-5)


def test_fourier_embedding_takes_the_discrete_losses_label_zero():
    """NCSN++'s features [sin(2 pi W log v), cos(2 pi W log v)] at a few labels, written
    out by hand; label 0 is clamped to 1e-3 (finite, and the same as 1e-3)."""
    net = randomize_zero_init(UNet((1, 8, 8), channels=16, channel_mult=(1, 2),
                                   embedding="fourier"))
    assert torch.isfinite(net(torch.randn(2, 1, 8, 8), torch.tensor([0.0, 999.0]))).all()
    W = net.embed.fourier.W.detach().double()
    assert not net.embed.fourier.W.requires_grad and W.std() > 4       # frozen N(0, 16^2)
    v = torch.tensor([0.01, 0.5, 1.0, 80.0])
    feats = net.embed.fourier(torch.log(v))
    for i, value in enumerate(v.tolist()):
        arg = [2 * math.pi * w * math.log(value) for w in W.tolist()]
        expect = torch.tensor([math.sin(a) for a in arg] + [math.cos(a) for a in arg])
        torch.testing.assert_close(feats[i], expect, rtol=0, atol=1e-3)   # |arg| ~ 1e3
    emb = net.embed(torch.tensor([0.0, 1e-3, 1.0]))
    torch.testing.assert_close(emb[0], emb[1])
    assert not torch.allclose(emb[1], emb[2])


def test_sinusoidal_embedding_against_its_closed_forms():
    """DDPM (Ho et al. 2020): [sin(t w_j), cos(t w_j)], w_j = 10000^(-j / (half - 1));
    ADM / DiT: [cos(t w_j), sin(t w_j)], w_j = 10000^(-j / half); odd widths pad a zero."""
    t = [0.0, 1.0, 7.5, 999.0]
    got_ddpm = sinusoidal_embedding(torch.tensor(t), 8, ddpm=True).double()
    got_adm = sinusoidal_embedding(torch.tensor(t), 8).double()
    got_odd = sinusoidal_embedding(torch.tensor(t), 9).double()
    for i, ti in enumerate(t):
        w = [10000 ** (-j / 3) for j in range(4)]
        expect = [math.sin(ti * wj) for wj in w] + [math.cos(ti * wj) for wj in w]
        torch.testing.assert_close(got_ddpm[i], torch.tensor(expect, dtype=torch.float64),
                                   rtol=0, atol=1e-4)
        w = [10000 ** (-j / 4) for j in range(4)]
        expect = [math.cos(ti * wj) for wj in w] + [math.sin(ti * wj) for wj in w]
        torch.testing.assert_close(got_adm[i], torch.tensor(expect, dtype=torch.float64),
                                   rtol=0, atol=1e-4)
        torch.testing.assert_close(got_odd[i], torch.tensor(expect + [0.0], dtype=torch.float64),
                                   rtol=0, atol=1e-4)
    assert got_ddpm[0, :4].eq(0).all() and got_ddpm[0, 4:].eq(1).all()     # t = 0


def test_unet_output_is_zero_at_init_and_batch_independent():
    """init_scale=0 zero-initialises the output; with weights everywhere, each example's
    output is the same alone as in a batch (GroupNorm, not BatchNorm: no batch statistics),
    in train mode too."""
    net = build(preset("ddpmpp_mnist", dropout=0.0))
    x, label = torch.randn(5, 1, 28, 28), torch.rand(5) * 999
    assert torch.all(net(x, label) == 0)
    randomize_zero_init(net).train()
    full = net(x, label)
    single = torch.cat([net(x[i:i + 1], label[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)
    shuffled = net(x.flip(0), label.flip(0)).flip(0)
    torch.testing.assert_close(full, shuffled, rtol=1e-4, atol=1e-5)


def test_unet_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="image data shaped"):
        UNet((2,))
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet((1, 10, 10), channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="backbone.resblock must be one of"):
        UNet((1, 8, 8), channel_mult=(1, 2), resblock="resnet")
    with pytest.raises(ValueError, match="backbone.embedding"):
        UNet((1, 8, 8), channel_mult=(1, 2), embedding="learned")


def test_channels_last_changes_layout_not_values():
    net = randomize_zero_init(UNet((1, 8, 8), channels=16, channel_mult=(1, 2),
                                   attn_resolutions=(4,), resblock="biggan")).eval()
    x, label = torch.randn(3, 1, 8, 8), torch.rand(3) * 999
    with torch.no_grad():
        ref = net(x, label)
        applied = apply_speed(net, compile=False, channels_last=True)
        out = net(x, label)
    assert applied == {"channels_last": True, "compile": False}
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_channels_last_weights_load_uncompiled(tmp_path):
    """The GPU speed switches forced on CPU: a few training steps through the compiled,
    channels_last UNet, then its saved weights load strictly into a plain UNet (compile
    keeps parameter names) that computes the same function on a fixed input.
    (tests/test_cli.py runs the same switches through train.py / sample.py.)"""
    node = preset("ddpmpp_digits", dropout=0.0, init_scale=1.0)
    net = build(node)
    assert apply_speed(net, compile=True, channels_last=True) == \
        {"channels_last": True, "compile": True}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, label = torch.randn(4, 1, 8, 8), torch.tensor([0.5, 3.0, 40.0, 900.0])
    for _ in range(2):
        opt.zero_grad()
        net(x, label).square().mean().backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        compiled = net(x, label)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(7)
    plain = build(node).eval()
    plain.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))   # strict
    assert not plain.channels_last
    with torch.no_grad():
        torch.testing.assert_close(plain(x, label), compiled, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- FIR resampling

def _fir_up_1331(x):
    """[1, 3, 3, 1] upsampling written out along the last axis: each pixel becomes
    (x[i-1] + 3 x[i]) / 4, (3 x[i] + x[i+1]) / 4 (half-pixel bilinear), zeros outside."""
    xp = F.pad(x, (1, 1))
    even = 0.25 * xp[..., :-2] + 0.75 * xp[..., 1:-1]
    odd = 0.75 * xp[..., 1:-1] + 0.25 * xp[..., 2:]
    return torch.stack([even, odd], dim=-1).flatten(-2)


def _fir_down_1331(x):
    """[1, 3, 3, 1] downsampling along the last axis: (x[2i-1] + 3 x[2i] + 3 x[2i+1]
    + x[2i+2]) / 8, zeros outside."""
    xp = F.pad(x, (1, 1))
    return (xp[..., 0:-2:2] + 3 * xp[..., 1:-1:2] + 3 * xp[..., 2::2] + xp[..., 3::2]) / 8


def _separable(f, x):
    return f(f(x).transpose(-1, -2)).transpose(-1, -2)


def test_fir_resampling_against_closed_forms():
    x = torch.randn(2, 3, 8, 6)
    nearest = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    box_mean = x.reshape(2, 3, 4, 2, 3, 2).mean(dim=(3, 5))
    # Box kernel [1, 1]: FIR down = 2x2 mean, FIR up = nearest-neighbour copy; likewise
    # the naive (non-FIR) resampling functions and layers without convolution.
    torch.testing.assert_close(fir_filter(x, (1, 1), down=2), box_mean)
    torch.testing.assert_close(fir_filter(x, (1, 1), up=2), nearest)
    torch.testing.assert_close(downsample(x), box_mean)
    torch.testing.assert_close(upsample(x), nearest)
    torch.testing.assert_close(Downsample(3, with_conv=False)(x), box_mean)
    torch.testing.assert_close(Upsample(3, with_conv=False)(x), nearest)
    # NCSN++'s [1, 3, 3, 1] against the hand-written separable filters, borders included.
    up, down = _separable(_fir_up_1331, x), _separable(_fir_down_1331, x)
    torch.testing.assert_close(fir_filter(x, (1, 3, 3, 1), up=2), up)
    torch.testing.assert_close(upsample(x, fir=True), up)
    torch.testing.assert_close(fir_filter(x, (1, 3, 3, 1), down=2), down)
    torch.testing.assert_close(Downsample(3, with_conv=False, fir=True)(x), down)
    torch.testing.assert_close(Upsample(3, with_conv=False, fir=True)(x), up)
    # [1, 3, 3, 1]: a constant image stays constant away from the zero-padded border.
    c = torch.full((1, 1, 8, 8), 2.5)
    torch.testing.assert_close(fir_filter(c, (1, 3, 3, 1), up=2)[..., 2:-2, 2:-2],
                               torch.full((1, 1, 12, 12), 2.5))
    torch.testing.assert_close(fir_filter(c, (1, 3, 3, 1), down=2)[..., 1:-1, 1:-1],
                               torch.full((1, 1, 2, 2), 2.5))
    # FIR up then down: a constant image comes back (gain 4 up, 1 down), away from borders.
    torch.testing.assert_close(fir_filter(fir_filter(c, (1, 3, 3, 1), up=2), (1, 3, 3, 1),
                                          down=2)[..., 2:-2, 2:-2],
                               torch.full((1, 1, 4, 4), 2.5))
    # The convolutional layers: the 3x3 convolution applied to the filtered image.
    layer = Upsample(3, 5, fir=True)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.conv2d(up, layer.conv.weight, layer.conv.bias,
                                                      padding=1))
        # A blur keeps a constant image constant inside: the stride-2 convolution sees it.
        layer = Downsample(3, 5, fir=True)
        const = torch.full((1, 3, 12, 12), 1.5)
        inner = (1.5 * layer.conv.weight.sum(dim=(1, 2, 3)) + layer.conv.bias)[:, None, None]
        torch.testing.assert_close(layer(const)[0, :, 2:-2, 2:-2], inner.expand(5, 2, 2))


# ---------------------------------------------------------------------- DiT

def test_dit_position_table_is_the_2d_sincos_embedding():
    table = sincos_2d(8, 2, 3)                         # rows: (y, x) raster order
    assert table.shape == (6, 8)
    omega = [10000 ** (-j / 2) for j in range(2)]       # dim / 4 = 2 frequencies per axis
    for y in range(2):
        for x in range(3):
            expect = ([math.sin(x * w) for w in omega] + [math.cos(x * w) for w in omega]
                      + [math.sin(y * w) for w in omega] + [math.cos(y * w) for w in omega])
            torch.testing.assert_close(table[y * 3 + x], torch.tensor(expect))


def test_dit_starts_at_zero_output_and_unpatchify_inverts_patching():
    net = DiT((3, 8, 8), patch=2, hidden=32, depth=2, heads=4)
    x = torch.randn(2, 3, 8, 8)
    assert torch.all(net(x, torch.rand(2) * 999) == 0)        # adaLN-Zero + zero final layer
    tokens = x.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 12)
    torch.testing.assert_close(net.unpatchify(tokens), x)


def test_dit_is_batch_independent_and_learn_sigma_doubles_channels():
    net = randomize_zero_init(DiT((1, 8, 8), patch=2, hidden=32, depth=2, heads=4,
                                  learn_sigma=True))
    x, label = torch.randn(4, 1, 8, 8), torch.rand(4) * 999
    full = net(x, label)
    assert full.shape == (4, 2, 8, 8)
    single = torch.cat([net(x[i:i + 1], label[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


def test_dit_learn_sigma_puts_the_mean_channels_first():
    """A learn_sigma DiT's first C channels are exactly the network without learn_sigma
    whose final layer keeps the mean rows: unpatchify orders channels consistently."""
    torch.manual_seed(0)
    big = randomize_zero_init(DiT((2, 8, 8), patch=2, hidden=32, depth=1, heads=4,
                                  learn_sigma=True))
    small = DiT((2, 8, 8), patch=2, hidden=32, depth=1, heads=4)
    state = big.state_dict()
    rows = torch.arange(2 * 2 * 4).view(2, 2, 4)[..., :2].flatten()   # (py, px, c) with c < C
    state["final.linear.weight"] = state["final.linear.weight"][rows]
    state["final.linear.bias"] = state["final.linear.bias"][rows]
    small.load_state_dict(state)
    x, label = torch.randn(3, 2, 8, 8), torch.rand(3) * 999
    with torch.no_grad():
        torch.testing.assert_close(big(x, label)[:, :2], small(x, label), rtol=0, atol=1e-6)


def test_dit_patch_errors_name_the_problem():
    with pytest.raises(ValueError, match="patch=4 needs sides divisible by 4"):
        DiT((1, 10, 10), patch=4)


# ---------------------------------------------------------------------- shared behaviour

@pytest.mark.parametrize("make", [
    lambda: UNet((1, 8, 8), channels=16, channel_mult=(1, 2), num_classes=10, dropout=0.0),
    lambda: DiT((1, 8, 8), patch=2, hidden=32, depth=2, heads=4, num_classes=10),
    lambda: MLP((2,), width=32, depth=2, num_classes=10)])
def test_class_conditioning_and_null_label(make):
    net = randomize_zero_init(make())
    shape = (4,) + ((2,) if isinstance(net, MLP) else (1, 8, 8))
    x, label = torch.randn(shape), torch.rand(4) * 999
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert not torch.allclose(net(x, label, y0), net(x, label, y1))
    null = torch.full((4,), 10, dtype=torch.long)
    torch.testing.assert_close(net(x, label, None), net(x, label, null))


@pytest.mark.parametrize("name", ["ncsnpp_mnist", "dit_mnist"])
def test_save_load_round_trip(name, tmp_path):
    node = preset(name)
    net = randomize_zero_init(build(node, num_classes=10)).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(123)                            # a differently initialised twin
    twin = build(node, num_classes=10).eval()
    twin.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x, label, y = torch.randn(2, 1, 28, 28), torch.tensor([2.0, 600.0]), torch.tensor([1, 9])
    with torch.no_grad():
        torch.testing.assert_close(twin(x, label, y), net(x, label, y), rtol=0, atol=0)


def test_mlp_starts_as_identity_blocks_and_keeps_the_data_shape():
    """Zero-initialised second layers: every residual block starts as the identity, so the
    output is out(inp(x)) and ignores the noise label; with weights everywhere the label
    matters, examples do not mix (LayerNorm), and (2, 3) samples keep their shape."""
    net = MLP((2, 3), width=32, depth=2)
    x = torch.randn(7, 2, 3)
    with torch.no_grad():
        out = net(x, torch.rand(7) * 999)
        torch.testing.assert_close(out, net.out(net.inp(x.reshape(7, 6))).reshape(7, 2, 3))
        torch.testing.assert_close(net(x, torch.rand(7) * 999), out)
        randomize_zero_init(net)
        same = x[:1].expand(2, 2, 3)
        two = net(same, torch.tensor([1.0, 900.0]))
        assert two.shape == (2, 2, 3) and not torch.allclose(two[0], two[1], atol=1e-4)
        full, label = net(x, torch.linspace(0, 999, 7)), torch.linspace(0, 999, 7)
        single = torch.cat([net(x[i:i + 1], label[i:i + 1]) for i in range(7)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


def _attention_reference(q, k, v):
    """softmax(q k^T / sqrt(d)) v, in float64: [..., tokens, d]."""
    w = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    return w @ v.double()


@pytest.mark.parametrize("heads,skip_rescale", [(1, False), (2, True)])
def test_unet_attention_against_a_hand_written_reference(heads, skip_rescale):
    att = Attention(8, heads=heads, skip_rescale=skip_rescale, init_scale=1.0).eval()
    with torch.no_grad():
        for p in att.norm.parameters():                  # non-trivial GroupNorm affine
            p.copy_(torch.randn(p.shape))
        x = torch.randn(2, 8, 3, 4)
        n = F.group_norm(x, att.norm.num_groups, att.norm.weight, att.norm.bias, 1e-6)
        qkv = torch.einsum("oc,bchw->bohw", att.qkv.weight[:, :, 0, 0], n) \
            + att.qkv.bias[:, None, None]
        q, k, v = (t.reshape(2, heads, 8 // heads, 12).transpose(-1, -2)
                   for t in qkv.split(8, dim=1))
        h = _attention_reference(q, k, v).transpose(-1, -2).reshape(2, 8, 3, 4).float()
        h = torch.einsum("oc,bchw->bohw", att.proj.weight[:, :, 0, 0], h) \
            + att.proj.bias[:, None, None]
        expect = (x + h) / (math.sqrt(2) if skip_rescale else 1.0)
        torch.testing.assert_close(att(x), expect, rtol=1e-4, atol=1e-5)
        # The zero-initialised projection (init_scale=0) makes the layer the identity.
        torch.testing.assert_close(Attention(8, heads=heads)(x), x)


def test_dit_attention_against_a_hand_written_reference():
    att = SelfAttention(16, heads=4)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        q, k, v = (t.reshape(2, 5, 4, 4).transpose(1, 2)            # [B, heads, T, d]
                   for t in att.qkv(x).split(16, dim=-1))
        h = _attention_reference(q, k, v).transpose(1, 2).reshape(2, 5, 16).float()
        torch.testing.assert_close(att(x), att.proj(h), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: UNet((1, 8, 8), channels=16, channel_mult=(1, 2), dropout=0.0),
    lambda: UNet((1, 8, 8), channels=16, channel_mult=(1, 2), dropout=0.0,
                 embedding="fourier"),
    lambda: DiT((1, 8, 8), patch=2, hidden=32, depth=2, heads=4),
    lambda: MLP((2,), width=32, depth=2)], ids=["unet", "unet_fourier", "dit", "mlp"])
def test_outputs_depend_on_the_noise_label(make):
    """One input at several noise labels: every pair of outputs differs."""
    net = randomize_zero_init(make()).eval()
    shape = (2,) if isinstance(net, MLP) else (1, 8, 8)
    x = torch.randn(1, *shape).expand(4, *shape)
    with torch.no_grad():
        out = net(x, torch.tensor([0.5, 10.0, 250.0, 999.0])).flatten(1)
    gaps = torch.cdist(out, out) + torch.eye(4)
    assert gaps.min() > 1e-3 * out.abs().max()


# ---------------------------------------------------------------------- with ScoreModel

def test_score_model_divides_by_sigma_and_drops_the_variance_channels():
    path = VESDE(sigma_min=0.01, sigma_max=50.0)
    unet = randomize_zero_init(UNet((1, 8, 8), channels=16, channel_mult=(1, 2),
                                    embedding="fourier", scale_by_sigma=True)).eval()
    model = ScoreModel(unet, get_head("score"), path, input_scaling=False)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    sigma = path.alpha_sigma(t)[1][:, None, None, None]
    raw = unet(x, path.noise_label(t))
    torch.testing.assert_close(model.score_fn(x, t), raw / sigma)

    dit = randomize_zero_init(DiT((1, 8, 8), patch=2, hidden=32, depth=1, heads=4,
                                  learn_sigma=True))
    model = ScoreModel(dit, get_head("eps"), VPSDE())
    out = model.output(x, t)
    torch.testing.assert_close(out, dit(x, model.path.noise_label(t))[:, :1])


@pytest.mark.parametrize("head", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("path", [VPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)])
def test_dit_trains_with_every_head_and_sde(head, path):
    """A few Adam steps on a fixed batch lower the loss: gradients reach every block."""
    torch.manual_seed(0)
    dit = DiT((1, 8, 8), patch=2, hidden=32, depth=2, heads=4)
    model = ScoreModel(dit, get_head(head), path)
    loss_fn = DSMLoss()
    x = torch.randn(16, 1, 8, 8).clamp(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - same noise every step
    first = loss_fn(model, x, generator=gen()).item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn(model, x, generator=gen()).backward()
        opt.step()
    assert loss_fn(model, x, generator=gen()).item() < 0.8 * first
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_encoder_classifier_gives_logits_and_depends_on_the_noise_label():
    net = build(preset("encoder"), num_classes=10)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        a = net(x, torch.full((3,), 10.0))
        b = net(x, torch.full((3,), 900.0))
    assert a.shape == (3, 10) and torch.isfinite(a).all()
    assert not torch.allclose(a, b)
