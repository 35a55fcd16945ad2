"""Preconditioning and loss levers of the training recipe against their closed forms:
EDM's c_skip / c_out / c_in (Karras et al. 2022, Table 1), the noise label, min-SNR-gamma
weights per head (Hang et al. 2023) and the noise-level samplers."""

import math

import pytest
import torch

from scorelab.models.heads import get_head
from scorelab.training.losses import DSMLoss
from scorelab.nets.mlp import MLP
from scorelab.models.score import ScoreModel
from scorelab.paths.sde import SubVPSDE, VESDE, VPSDE

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": lambda: VESDE(0.01, 50.0)}


def _coefficients(path, n=7):
    t = torch.linspace(0.02, 1.0, n, dtype=torch.float64)
    alpha, sigma = path.alpha_sigma(t)
    return t, alpha[:, None], sigma[:, None]


@pytest.mark.parametrize("name", sorted(SDES))
def test_edm_head_is_karras_table_1_on_the_scaled_input(name):
    """On x_hat = x / alpha with EDM's sigma = sigma / alpha, x0_hat = c_skip x_hat + c_out F
    with c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), and the backbone sees
    c_in x_hat, c_in = 1 / sqrt(s^2 + sd^2)."""
    sd = 0.5
    head = get_head("edm", sigma_data=sd)
    _, alpha, sigma = _coefficients(SDES[name]())
    s = sigma / alpha
    x, out = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    c_skip, c_out = sd ** 2 / (s ** 2 + sd ** 2), s * sd / torch.sqrt(s ** 2 + sd ** 2)
    torch.testing.assert_close(head.to_x0(out, x, alpha, sigma), c_skip * x / alpha + c_out * out)
    torch.testing.assert_close(head.c_in(alpha, sigma) * x,
                               x / alpha / torch.sqrt(s ** 2 + sd ** 2))
    # The unit-weight MSE on F is EDM's lambda = 1 / c_out^2 on the x0 error.
    x0, noise = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    xt = alpha * x0 + sigma * noise
    f_err = out - head.target(x0, noise, alpha, sigma)
    x0_err = head.to_x0(out, xt, alpha, sigma) - x0
    torch.testing.assert_close(f_err ** 2, x0_err ** 2 / c_out ** 2)


def test_edm_head_with_unit_sigma_data_is_minus_v_on_vp():
    _, alpha, sigma = _coefficients(VPSDE())
    x0, noise = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(get_head("edm", sigma_data=1.0).target(x0, noise, alpha, sigma),
                               -get_head("v").target(x0, noise, alpha, sigma))


def test_edm_head_is_finite_where_alpha_vanishes():
    """Multiplied out, c_skip x and c_out stay finite at alpha = 0 (flow-matching paths)."""
    head = get_head("edm", sigma_data=0.5)
    alpha, sigma = torch.zeros(2, 1), torch.ones(2, 1)
    x, out = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(head.to_x0(out, x, alpha, sigma), 0.5 * out)


def test_heads_reject_unknown_options():
    with pytest.raises(ValueError, match="sigma_data"):
        get_head("edm", sigma_data=0.0)
    with pytest.raises(ValueError, match="no option"):
        get_head("eps", sigma_data=0.5)


@pytest.mark.parametrize("name", sorted(SDES))
def test_noise_labels(name):
    """sde: Score SDE's (999 t on VP / sub-VP, sigma(t) on VE); log_sigma: EDM's
    1/4 log(sigma / alpha)."""
    path = SDES[name]()
    net = MLP((2,), width=8, depth=1, emb_dim=8)
    t, alpha, sigma = _coefficients(path)
    score_sde = ScoreModel(net, get_head("eps"), path).noise_label(t, alpha, sigma)
    expected = sigma[:, 0] if name == "ve" else 999 * t
    torch.testing.assert_close(score_sde, expected)
    edm = ScoreModel(net, get_head("eps"), path, noise_label="log_sigma")
    torch.testing.assert_close(edm.noise_label(t, alpha, sigma),
                               0.25 * torch.log(sigma[:, 0] / alpha[:, 0]))
    torch.testing.assert_close(
        ScoreModel(net, get_head("eps"), path, noise_label="time").noise_label(t, alpha, sigma),
        999 * t)
    with pytest.raises(ValueError, match="noise_label"):
        ScoreModel(net, get_head("eps"), path, noise_label="foo")


class _Fixed(torch.nn.Module):
    """A 'backbone' whose output is a fixed tensor, so the loss can be computed by hand."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, label, y=None):
        return self.out


@pytest.mark.parametrize("head_name", ["eps", "x0", "v"])
def test_min_snr_is_the_papers_weight_in_each_head_space(head_name):
    """Hang et al. 2023: the head-space MSE weighted by eps: min(SNR, g) / SNR,
    x0: min(SNR, g), v: min(SNR, g) / (SNR + 1) (VP)."""
    gamma, path = 5.0, VPSDE()
    x0 = torch.randn(64, 3, dtype=torch.float64)
    out = torch.randn(64, 3, dtype=torch.float64)
    head = get_head(head_name)
    model = ScoreModel(_Fixed(out), head, path)
    loss = DSMLoss(weighting="min_snr", gamma=gamma)
    gen_seed = 3
    value = loss(model, x0, generator=torch.Generator().manual_seed(gen_seed))
    # redo the draw by hand with the same generator stream
    gen = torch.Generator().manual_seed(gen_seed)
    t, alpha, sigma = loss.draw(path, 64, "cpu", gen, torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    a, s = alpha[:, None], sigma[:, None]
    snr = a ** 2 / s ** 2
    w = {"eps": snr.clamp(max=gamma) / snr, "x0": snr.clamp(max=gamma),
         "v": snr.clamp(max=gamma) / (snr + 1)}[head_name]
    expected = (w * (out - head.target(x0, noise, a, s)) ** 2).mean()
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_log_normal_time_sampling_draws_edm_sigmas(name):
    """ln(sigma / alpha) of the drawn times is N(p_mean, p_std^2) where the SDE's range does
    not clip it."""
    path = SDES[name]()
    loss = DSMLoss(time_sampling="log_normal", p_mean=-1.2, p_std=1.2)
    t, alpha, sigma = loss.draw(path, 200_000, "cpu", torch.Generator().manual_seed(0),
                                torch.float64)
    assert t.min() >= loss.eps and t.max() <= path.T
    ln_s = torch.log(sigma / alpha)
    # moments of the (slightly clipped) normal: clipping moves them by < 0.01 here
    assert abs(ln_s.mean().item() + 1.2) < 0.02 and abs(ln_s.std().item() - 1.2) < 0.02
    inside = (ln_s > -2.4) & (ln_s < 0.0)          # +-1 std: 68.3 %
    assert abs(inside.double().mean().item() - 0.6827) < 0.005


def test_logit_normal_time_sampling():
    path = VPSDE()
    loss = DSMLoss(time_sampling="logit_normal", p_mean=0.0, p_std=1.0, eps=0.0)
    t, _, _ = loss.draw(path, 200_000, "cpu", torch.Generator().manual_seed(0), torch.float64)
    u = torch.log(t / (1 - t))
    assert abs(u.mean().item()) < 0.01 and abs(u.std().item() - 1.0) < 0.01


def test_loss_options_are_validated():
    for kwargs, key in [({"weighting": "snr"}, "weighting"), ({"time_sampling": "beta"},
                                                               "time_sampling"),
                        ({"gamma": 0.0}, "gamma"), ({"p_std": -1.0}, "p_std")]:
        with pytest.raises(ValueError, match=key):
            DSMLoss(**kwargs)
    assert math.isclose(DSMLoss().gamma, 5.0)


def test_lr_schedule_warms_up_then_decays_to_zero():
    from scorelab.training.diffusion_module import lr_factor
    assert [lr_factor(s, 10, 110) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(50, 10, 110, "none") == 1.0
    # cosine: half-way through the decay the factor is 1/2, at the end 0
    assert lr_factor(59, 10, 110, "cosine") == pytest.approx(0.5)
    assert lr_factor(109, 10, 110, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(59, 10, 110, "linear") == pytest.approx(0.5)
    assert lr_factor(84, 10, 110, "linear") == pytest.approx(0.25)


def test_edm_recipe_composes_and_trains_on_the_toy(tmp_path):
    """head=edm, loss=edm (log-normal sigma) and EDM's noise label build from the command
    line and lower the validation loss of the mixture toy."""
    import lightning as L
    from conftest import compose_train

    from scorelab.cli.build import build_datamodule, build_module

    cfg = compose_train(["experiment=gmm_vp_eps", "head=edm", "loss=edm",
                         "noise_label=log_sigma", "data.n_samples=2000"], tmp_path)
    assert cfg.loss.time_sampling == "log_normal" and cfg.head.sigma_data == 0.5
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm.shape, dm.num_classes, dm.is_image)
    assert module.model.noise_label_kind == "log_sigma"
    x = torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])

    def val_loss():
        return module.loss_fn(module.model, x, generator=torch.Generator().manual_seed(0)).item()

    before = val_loss()
    L.Trainer(max_steps=150, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, accelerator="cpu").fit(
        module, datamodule=dm)
    assert val_loss() < 0.9 * before


def test_checkpoints_from_before_the_label_choice_load_with_the_time_label(tmp_path):
    """A stored config without ``noise_label`` was trained with 999 t on every SDE."""
    from conftest import compose_train
    from omegaconf import OmegaConf

    from scorelab.cli.build import LoadedCheckpoint, build_module

    cfg = compose_train(["experiment=gmm_vp_eps", "sde=ve"], tmp_path)
    module = build_module(cfg, (2,), 0, False)
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["noise_label"]
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "current_model_state": module.state_dict(),
                "scorelab": {"config": stored, "data_shape": [2], "num_classes": 0,
                             "is_image": False}}, path)
    loaded = LoadedCheckpoint(str(path))
    assert loaded.module.model.noise_label_kind == "time"
    t = torch.tensor([0.5])
    assert loaded.module.model.noise_label(t, *loaded.module.model.path.alpha_sigma(t)) == 499.5
