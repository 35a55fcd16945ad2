"""MeanFlow (scorelab.training.meanflow, sampler=meanflow): the JVP target against finite
differences, flow matching at r = t, one- and two-step sampling with the mixture's exact
average velocity, the two-time backbones and the command line's refusals."""

import pytest
import torch

from scorelab.metrics.statistics import energy_distance
from scorelab.models.heads import VelocityHead
from scorelab.models.mixture import GaussianMixture
from scorelab.models.prediction import Prediction, prediction_fn
from scorelab.models.score import ScoreModel
from scorelab.nets.dit import DiT
from scorelab.nets.mlp import MLP
from scorelab.nets.unet import UNet
from scorelab.paths.interpolants import LinearPath
from scorelab.paths.sde import VPSDE
from scorelab.sampling import sample
from scorelab.training.losses import IncompatibleError
from scorelab.training.meanflow import MeanFlowLoss


def two_time_mlp(dtype=torch.float64):
    """A small two-time MLP whose interval embedding is not zero (as after training)."""
    torch.manual_seed(0)
    net = MLP((2,), width=32, depth=2, emb_dim=32, interval=True).to(dtype)
    for p in net.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    return ScoreModel(net, VelocityHead(), LinearPath())


def test_jvp_is_the_total_time_derivative_along_the_flow():
    """d/dt u(z + tau v, r, t + tau) at tau = 0, by central differences, is the JVP."""
    model = two_time_mlp()
    z, v = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) * 0.8 + 0.1
    r = t * torch.rand(6, dtype=torch.float64)
    u, dudt = MeanFlowLoss.average_velocity_jvp(model, z, r, t, v)
    h = 1e-7      # (the labels are 999 t: the embedding's fastest frequency is ~1000 / t)

    def u_at(tau):
        return model.outputs(z + tau * v, t + tau, None, None, r)[0]
    fd = (u_at(h) - u_at(-h)) / (2 * h)
    torch.testing.assert_close(u, model.outputs(z, t, None, None, r)[0])
    torch.testing.assert_close(dudt, fd, rtol=1e-5, atol=1e-7)


def test_loss_is_flow_matching_at_r_equal_t_and_trains_through_the_jvp_part():
    model = two_time_mlp()
    x0 = torch.randn(8, 2, dtype=torch.float64)
    plain = MeanFlowLoss(ratio=0.0, norm_p=0.0)
    got = plain(model, x0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    t, r = plain.draw(8, "cpu", gen, torch.float64)
    assert torch.equal(t, r)
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    z = (1 - t)[:, None] * x0 + t[:, None] * noise
    want = ((model.output(z, t) - (noise - x0)) ** 2).sum(1).mean()
    torch.testing.assert_close(got, want)
    # r < t for round(ratio n) examples; the loss's gradient reaches every parameter
    mf = MeanFlowLoss(ratio=0.5)
    t, r = mf.draw(8, "cpu", torch.Generator().manual_seed(0))
    assert (r[:4] < t[:4]).all() and torch.equal(r[4:], t[4:]) and (t <= 1).all()
    mf(model, x0).backward()
    assert model.backbone.interval_embed.mlp[0].weight.grad.abs().sum() > 0


def exact_average_velocity(gm, path, steps=64):
    """The mixture's exact u(z, r, t) = (z_t - z_r) / (t - r), z_r from the exact flow by
    RK4 on [r, t] (r = None: the exact velocity at t)."""
    exact = gm.prediction_fn(path)

    def velocity(x, t):
        return exact(x, t).velocity

    def model(x, t, r=None):
        if r is None:
            return exact(x, t)
        end = r.clamp(min=1e-6)           # (the exact eps_hat is 0 / 0 at t = 0)
        z, h = x, (end - t)[:, None] / steps
        for k in range(steps):
            s = t + (end - t) * k / steps
            k1 = velocity(z, s)
            k2 = velocity(z + h / 2 * k1, s + (end - t) / (2 * steps))
            k3 = velocity(z + h / 2 * k2, s + (end - t) / (2 * steps))
            k4 = velocity(z + h * k3, s + (end - t) / steps)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        u = (x - z) / (t - r)[:, None]
        return Prediction.from_head(VelocityHead(), u, x, path.coefficients(t, like=x))
    return prediction_fn(model)


@pytest.mark.parametrize("steps", [1, 2])
def test_one_and_two_steps_with_the_exact_average_velocity_reproduce_the_mixture(steps):
    path = LinearPath()
    gm = GaussianMixture.ring(n_components=4, radius=1.0, std=0.2)
    x_init = path.prior_sampling((2000, 2), generator=torch.Generator().manual_seed(0))
    res = sample(exact_average_velocity(gm, path), path, None, sampler="meanflow",
                 steps=steps, x_init=x_init)
    assert res.nfe == steps
    # the exact flow map, sample by sample (adaptive RK45 on the exact velocity)
    ode = sample(gm.prediction_fn(path), path, None, sampler="ode", steps=10, method="rk45",
                 x_init=x_init, eps=1e-6)
    torch.testing.assert_close(res.x, ode.x, rtol=0, atol=2e-3)
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(1))[0]
    got = energy_distance(res.x, ref)
    assert got < 0.01, got
    # one Euler step of the exact *instantaneous* velocity is far off: the average is what
    # makes one step work
    euler = sample(gm.prediction_fn(path), path, None, sampler="ode", steps=1,
                   method="euler", x_init=x_init)
    assert energy_distance(euler.x, ref) > 0.1


@pytest.mark.parametrize("net", ["unet", "dit"])
def test_image_backbones_take_the_interval_and_start_as_one_time_networks(net):
    """A fresh interval embedding is zero: the two-time network equals itself at any r, so a
    flow checkpoint fine-tunes into MeanFlow from where it was; the JVP runs through the
    attention (math backend)."""
    torch.manual_seed(0)
    if net == "unet":
        backbone = UNet((1, 8, 8), channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attn_resolutions=(4,), dropout=0.0, interval=True)
    else:
        backbone = DiT((1, 8, 8), patch=2, hidden=16, depth=1, heads=2, interval=True)
    for name, p in backbone.named_parameters():
        if "interval_embed" not in name:
            p.data.add_(0.05 * torch.randn_like(p))
    model = ScoreModel(backbone, VelocityHead(), LinearPath())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.9, 0.4])
    one = model.output(x, t)
    torch.testing.assert_close(model.outputs(x, t, None, None, t * 0.3)[0], one)
    u, dudt = MeanFlowLoss.average_velocity_jvp(model, x, t * 0.3, t, torch.randn_like(x))
    assert torch.isfinite(dudt).all() and dudt.abs().sum() > 0


def test_incompatible_paths_heads_and_backbones_are_refused():
    loss = MeanFlowLoss()
    with pytest.raises(IncompatibleError, match="interpolant path"):
        loss.check(VPSDE(), VelocityHead())
    with pytest.raises(IncompatibleError, match="head=velocity"):
        from scorelab.models.heads import EpsHead
        loss.check(LinearPath(), EpsHead())
    one_time = ScoreModel(MLP((2,), width=8, depth=1), VelocityHead(), LinearPath())
    with pytest.raises(IncompatibleError, match="backbone.interval=true"):
        loss.check_model(one_time)
    with pytest.raises(ValueError, match="takes one time"):
        sample(one_time.prediction_fn(), LinearPath(), (2, 2), sampler="meanflow")
    with pytest.raises(ValueError, match="loss.ratio"):
        MeanFlowLoss(ratio=1.5)


def test_cli_refuses_meanflow_without_its_path_head_or_backbone(tmp_path, capsys):
    from conftest import refused_at_start
    refused_at_start("train", ["experiment=gmm_fm", "loss=meanflow"], "backbone.interval",
                     tmp_path / "r1", capsys)
    refused_at_start("train", ["experiment=gmm_vp_eps", "loss=meanflow",
                               "backbone.interval=true"], "interpolant path", tmp_path / "r2",
                     capsys)
    refused_at_start("train", ["experiment=gmm_fm", "sampler=meanflow"], "two-time model",
                     tmp_path / "r3", capsys)


def test_finetuning_a_flow_checkpoint_into_meanflow_may_lack_only_the_interval():
    from scorelab.cli.build import state_mismatch
    from scorelab.training.callbacks.finetune import NEW_PARAMETERS
    teacher = MLP((2,), width=8, depth=1)
    student = MLP((2,), width=8, depth=1, interval=True)
    state = teacher.state_dict()
    assert "missing interval_embed" in state_mismatch(student, state)
    assert state_mismatch(student, state, NEW_PARAMETERS) is None
    del state["inp.weight"]
    assert "inp.weight" in state_mismatch(student, state, NEW_PARAMETERS)


@pytest.mark.slow
def test_cli_meanflow_training_and_one_step_sampling(tmp_path):
    """train.py loss=meanflow on the toy mixture, then sample.py and evaluate.py with
    sampler=meanflow at 1 and 2 steps (NFE recorded), and a flow sampler at r = t."""
    import json
    import math

    from conftest import run
    out = tmp_path / "mf"
    run("train.py", "experiment=gmm_fm", "loss=meanflow", "backbone.interval=true",
        "sampler=meanflow", "backbone.width=32", "backbone.depth=1", "data.n_samples=400",
        "trainer.max_steps=30", "callbacks=default", "num_samples=20",
        f"hydra.run.dir={out}", cwd=tmp_path)
    ckpt = out / "checkpoints/last.ckpt"
    for steps in (1, 2):
        run("sample.py", f"ckpt={ckpt}", "sampler=meanflow", f"sampler.steps={steps}",
            "num_samples=16", f"hydra.run.dir={tmp_path / str(steps)}", cwd=tmp_path)
        info = json.loads((tmp_path / str(steps) / "sampling.json").read_text())
        assert info["nfe_per_sample"] == steps
    run("sample.py", f"ckpt={ckpt}", "sampler=euler", "sampler.steps=5", "num_samples=16",
        f"hydra.run.dir={tmp_path / 'euler'}", cwd=tmp_path)
    run("evaluate.py", f"ckpt={ckpt}", "sampler=meanflow", "sampler.steps=1", "num_samples=64",
        "metrics=[energy]", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    metrics = json.loads((tmp_path / "e/metrics.json").read_text())
    assert metrics["sample_settings"]["nfe"] == 1 and math.isfinite(metrics["energy"])


def test_one_time_guidance_is_refused_with_the_two_time_sampler():
    from types import SimpleNamespace

    from scorelab.cli.build import check_sampler_guidance
    from scorelab.util.errors import ConfigError
    check_sampler_guidance({"name": "meanflow"}, None)
    check_sampler_guidance({"name": "meanflow"}, SimpleNamespace(kind="cfg"))
    check_sampler_guidance({"name": "edm"}, SimpleNamespace(kind="classifier"))
    for kind in ("classifier", "autoguidance"):
        with pytest.raises(ConfigError, match=f"guidance={kind} acts at one time"):
            check_sampler_guidance({"name": "meanflow"}, SimpleNamespace(kind=kind))
