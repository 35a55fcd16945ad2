"""Backbones: the UNet family and DiT, their presets (parameter counts of the papers), shapes,
initialisation, conditioning, no batch-statistics leaks, save/load; FIR resampling."""

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT
from scorelab.heads import get_head
from scorelab.losses import DSMLoss
from scorelab.nets.dit import DiT, sincos_2d
from scorelab.nets.mlp import MLP
from scorelab.nets.resample import Downsample, Upsample, fir_filter
from scorelab.nets.unet import UNet
from scorelab.score import ScoreModel
from scorelab.sde import VESDE, VPSDE
from scorelab.speed import apply_speed

# Published sizes: Score SDE (Song et al. 2021, Table 3 / reference configs) for 3x32x32,
# DiT (Peebles & Xie 2023, Table 1/4) for 4x32x32 latents with 1000 classes, in millions.
PAPER_COUNTS = {"ddpm_cifar10": 35.2, "ddpmpp_cifar10": 61.8, "ddpmpp_deep_cifar10": 106.6,
                "ncsnpp_cifar10": 62.8, "ncsnpp_deep_cifar10": 107.6,
                **{f"dit_s_{p}": 33.0 for p in (2, 4, 8)},
                **{f"dit_b_{p}": 130.5 for p in (2, 4, 8)},
                **{f"dit_l_{p}": 458.1 for p in (2, 4, 8)},
                **{f"dit_xl_{p}": 675.1 for p in (2, 4, 8)}}
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "backbone").glob("*.yaml"))
IMAGE_PRESETS = [p for p in PRESETS if p != "mlp"]
BIG = {"dit_l_2", "dit_l_4", "dit_l_8", "dit_xl_2", "dit_xl_4", "dit_xl_8"}


def preset(name, **overrides):
    """The composed ``conf/backbone/<name>.yaml`` node (defaults lists resolved)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
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
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG))
def test_big_presets_forward_at_full_size(name):
    net = build(preset(name))
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        assert net(x, torch.tensor([500.0]), torch.tensor([7])).shape == x.shape


# ---------------------------------------------------------------------- UNet

@pytest.mark.parametrize("resblock", ["ddpm", "biggan"])
@pytest.mark.parametrize("fir", [False, True])
@pytest.mark.parametrize("progressive,progressive_input,combine", [
    ("none", "none", "sum"), ("output_skip", "input_skip", "sum"),
    ("output_skip", "input_skip", "cat"), ("residual", "residual", "sum")])
def test_unet_variants_shapes(resblock, fir, progressive, progressive_input, combine):
    net = UNet((3, 16, 16), channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
               attn_resolutions=(8,), resblock=resblock, fir=fir, progressive=progressive,
               progressive_input=progressive_input, progressive_combine=combine,
               embedding="fourier" if fir else "positional", init_scale=1.0)
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([1.0, 999.0]))
    assert out.shape == x.shape and out.abs().sum() > 0


def test_fourier_embedding_takes_the_discrete_losses_label_zero():
    net = randomize_zero_init(UNet((1, 8, 8), channels=16, channel_mult=(1, 2),
                                   embedding="fourier"))
    assert torch.isfinite(net(torch.randn(2, 1, 8, 8), torch.tensor([0.0, 999.0]))).all()


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


# ---------------------------------------------------------------------- FIR resampling

def test_fir_resampling_against_closed_forms():
    x = torch.randn(2, 3, 8, 8)
    # Box kernel [1, 1]: FIR down = 2x2 mean, FIR up = nearest-neighbour copy.
    torch.testing.assert_close(fir_filter(x, (1, 1), down=2), F.avg_pool2d(x, 2))
    torch.testing.assert_close(fir_filter(x, (1, 1), up=2),
                               F.interpolate(x, scale_factor=2.0, mode="nearest"))
    # [1, 3, 3, 1]: a constant image stays constant away from the zero-padded border.
    c = torch.full((1, 1, 8, 8), 2.5)
    torch.testing.assert_close(fir_filter(c, (1, 3, 3, 1), up=2)[..., 2:-2, 2:-2],
                               torch.full((1, 1, 12, 12), 2.5))
    torch.testing.assert_close(fir_filter(c, (1, 3, 3, 1), down=2)[..., 1:-1, 1:-1],
                               torch.full((1, 1, 2, 2), 2.5))
    assert Upsample(3, 5, fir=True)(x).shape == (2, 5, 16, 16)
    assert Downsample(3, 5, fir=True)(x).shape == (2, 5, 4, 4)
    assert Downsample(3, with_conv=False, fir=True)(x).shape == (2, 3, 4, 4)


# ---------------------------------------------------------------------- DiT

def test_dit_position_table_is_the_2d_sincos_embedding():
    table = sincos_2d(8, 2, 3)                         # rows: (y, x) raster order
    assert table.shape == (6, 8)
    y, x = 1, 2
    omega = 1.0 / 10000 ** (torch.arange(2) / 2.0)
    expect = torch.cat([torch.sin(x * omega), torch.cos(x * omega),
                        torch.sin(y * omega), torch.cos(y * omega)])
    torch.testing.assert_close(table[y * 3 + x], expect)


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


def test_mlp_shapes():
    net = MLP((5,), width=32, depth=2)
    x = torch.randn(7, 5)
    assert net(x, torch.rand(7)).shape == (7, 5)


# ---------------------------------------------------------------------- with ScoreModel

def test_score_model_divides_by_sigma_and_drops_the_variance_channels():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    unet = randomize_zero_init(UNet((1, 8, 8), channels=16, channel_mult=(1, 2),
                                    embedding="fourier", scale_by_sigma=True)).eval()
    model = ScoreModel(unet, get_head("score"), sde, input_scaling=False)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    sigma = sde.alpha_sigma(t)[1][:, None, None, None]
    raw = unet(x, sde.noise_label(t))
    torch.testing.assert_close(model.score_fn(x, t), raw / sigma)

    dit = randomize_zero_init(DiT((1, 8, 8), patch=2, hidden=32, depth=1, heads=4,
                                  learn_sigma=True))
    model = ScoreModel(dit, get_head("eps"), VPSDE())
    out = model.output(x, t)
    torch.testing.assert_close(out, dit(x, model.sde.noise_label(t))[:, :1])


@pytest.mark.parametrize("head", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)])
def test_dit_trains_with_every_head_and_sde(head, sde):
    """A few Adam steps on a fixed batch lower the loss: gradients reach every block."""
    torch.manual_seed(0)
    dit = DiT((1, 8, 8), patch=2, hidden=32, depth=2, heads=4)
    model = ScoreModel(dit, get_head(head), sde)
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
