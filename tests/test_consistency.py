"""Consistency models (scorelab.models.consistency, scorelab.training.consistency,
sampler=consistency): the boundary, the distillation target against the exact ODE map, iCT's
curriculum and ECT's stages, sampling with the mixture's exact consistency function, and
the command line's refusals."""

import math

import pytest
import torch

from scorelab.metrics.statistics import energy_distance
from scorelab.models.consistency import Boundary
from scorelab.models.heads import VelocityHead, get_head
from scorelab.models.mixture import GaussianMixture
from scorelab.models.prediction import Prediction, prediction_fn
from scorelab.models.score import ScoreModel
from scorelab.nets.mlp import MLP
from scorelab.paths.interpolants import LinearPath
from scorelab.paths.sde import VESDE, VPSDE
from scorelab.sampling import sample
from scorelab.training.consistency import ConsistencyLoss, karras_levels
from scorelab.training.losses import IncompatibleError

EDM_VE = VESDE(sigma_min=0.002, sigma_max=80.0)


def level_time(path, s):
    return path.t_from_log_snr(-torch.as_tensor(s, dtype=torch.float64).log()).float()


@pytest.mark.parametrize("path, head", [(EDM_VE, "edm"), (LinearPath(), "velocity"),
                                        (VPSDE(), "eps")])
def test_the_consistency_function_is_the_identity_at_sigma_min(path, head):
    """f(x, t(sigma_min)) = x / alpha (= x on VE) whatever the network outputs; finite at
    alpha = 0 (t = T on the linear path), where it is the network's denoiser."""
    torch.manual_seed(0)
    net = MLP((2,), width=16, depth=1)
    for p in net.parameters():
        p.data.normal_()
    boundary = Boundary(0.002, 0.5)
    model = ScoreModel(net, get_head(head), path, boundary=boundary)
    x = torch.randn(5, 2, dtype=torch.float64)
    model.double()
    t = level_time(path, 0.002).double().expand(5)
    alpha = path.alpha_sigma(t)[0][:, None]
    torch.testing.assert_close(model.x0(x, t), x / alpha, rtol=1e-12, atol=1e-12)
    if path.alpha_vanishes:
        T = torch.full((5,), float(path.T), dtype=torch.float64)
        plain = ScoreModel(net, get_head(head), path)
        torch.testing.assert_close(model.prediction(x, T).x0, plain.prediction(x, T).x0)


def rk4(slope, y, levels):
    """EDM's ODE dy/ds = slope(y, s) by RK4 through the noise levels ``levels``."""
    for a, b in zip(levels[:-1], levels[1:]):
        h = b - a
        k1 = slope(y, a)
        k2 = slope(y + h / 2 * k1, a + h / 2)
        k3 = slope(y + h / 2 * k2, a + h / 2)
        k4 = slope(y + h * k3, b)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def exact_consistency_function(gm, path, steps=64):
    """The mixture's exact f(x, t): the probability-flow ODE from t down to the level
    sigma_min, by RK4 in EDM's units dy/ds = (y - D(y; s)) / s."""
    exact = gm.prediction_fn(path)

    def denoise(y, s):
        t = level_time(path, s).expand(y.shape[0])
        alpha = path.alpha_sigma(t)[0][:, None]
        return exact(alpha * y, t).x0

    def model(x, t):
        alpha, sigma = path.alpha_sigma(t[:1])
        s_hi = float(sigma / alpha)
        y = x / alpha
        y = rk4(lambda v, s: (v - denoise(v, s)) / s, y,
                karras_levels(steps + 1, 0.002, s_hi).flip(0).tolist())
        return Prediction.from_x0(path, x, t, y)
    return prediction_fn(model)


def test_distillation_target_is_the_exact_ode_map_to_the_teachers_step_error():
    """With the exact denoiser as teacher, the Heun step between adjacent levels lands on
    the exact ODE solution to O(h^3): the error falls ~8x when the gap halves."""
    gm = GaussianMixture.ring(n_components=4, radius=1.0, std=0.2)
    path = EDM_VE
    exact = gm.prediction_fn(path)

    class Teacher:           # the exact mixture as a ScoreModel-like teacher
        def __init__(self):
            self.path = path

        def prediction(self, x, t, y=None):
            return exact(x, t)

        def to(self, device):
            return self

        def eval(self):
            return self

        def parameters(self):
            return []

    loss = ConsistencyLoss(mode="distillation", teacher="exact")
    loss.set_teacher(Teacher())
    x0 = gm.sample(200, generator=torch.Generator().manual_seed(0))[0]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    errors = []
    for gap in (0.4, 0.2, 0.1):
        s, s_lo = torch.full((200,), 1.0), torch.full((200,), 1.0 - gap)
        y_hi = x0 + z
        heun = loss.teacher_step(y_hi, s, s_lo, None)
        # the exact map from level 1 to 1 - gap: many small RK4 steps
        y = rk4(lambda v, lvl: (v - exact(v, level_time(path, lvl).expand(200)).x0) / lvl,
                y_hi, [1.0 - gap * k / 40 for k in range(41)])
        errors.append(float((heun - y).norm(dim=1).mean()))
    assert errors[0] < 0.02 and errors[1] < errors[0] / 4 and errors[2] < errors[1] / 4, errors


def test_ict_curriculum_and_level_pairs():
    loss = ConsistencyLoss()
    counts = []
    for k in (0, 124, 125, 500, 999):
        loss.at_step(k, 1000)
        counts.append(loss.levels_now())
    # K' = floor(1000 / (log2(128) + 1)) = 125: 11 levels, doubling every 125 steps to 1281
    assert counts == [11, 11, 21, 161, 1281]
    loss.at_step(0, 1000)
    s, s_lo = loss.draw_pairs(EDM_VE, 4000, "cpu", torch.Generator().manual_seed(0))
    levels = karras_levels(11, 0.002, 80.0)
    nearest = (s[:, None] - levels[None, 1:]).abs().min(1).values
    assert (nearest < 1e-9 * s).all() and (s > s_lo).all()
    # pair i with probability ~ erf((ln s_i+1 - P_mean) / (sqrt 2 P_std)) - erf(... s_i ...)
    cdf = torch.erf((levels.log() + 1.1) / (math.sqrt(2) * 2.0))
    p = (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])
    i = (s_lo[:, None] - levels[None, :-1]).abs().argmin(1)
    freq = torch.bincount(i, minlength=10).double() / len(i)
    assert ((freq - p).abs() < 4 * (p * (1 - p) / len(i)).sqrt() + 1e-3).all(), (freq, p)


def test_ect_starts_as_denoising_and_shrinks_its_gap():
    loss = ConsistencyLoss(mode="ect")
    gaps = []
    for k in (0, 250, 500, 1000):
        loss.at_step(k, 1000)
        s, s_lo = loss.draw_pairs(EDM_VE, 2000, "cpu", torch.Generator().manual_seed(0))
        if k == 0:
            assert (s_lo == 0).all()       # stage 0: the target is the data
        gaps.append(float(((s - s_lo) / s).mean()))
    assert gaps[0] == 1 and gaps[1] > gaps[2] > gaps[3] and gaps[3] < 0.05


def test_training_loss_trains_and_its_target_is_stop_gradient():
    torch.manual_seed(0)
    loss = ConsistencyLoss()
    model = ScoreModel(MLP((2,), width=16, depth=1), get_head("edm"), EDM_VE,
                       boundary=loss.boundary)
    loss.at_step(10, 100)
    value = loss(model, torch.randn(8, 2))
    assert math.isfinite(value.item())
    value.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("path", [EDM_VE, LinearPath()])
def test_sampling_with_the_exact_consistency_function_reproduces_the_mixture(steps, path):
    """On VE from T; on the linear path (level infinite at T) from the level sigma_max =
    80, the highest consistency training reaches."""
    gm = GaussianMixture.ring(n_components=4, radius=1.0, std=0.2)
    gen = torch.Generator().manual_seed(0)
    res = sample(exact_consistency_function(gm, path), path, (1000, 2), sampler="consistency",
                 steps=steps, generator=gen, sigma_max=80.0)
    assert res.nfe == steps
    ref = gm.sample(1000, generator=torch.Generator().manual_seed(1))[0]
    assert energy_distance(res.x, ref) < 0.01


def test_bad_settings_and_paths_are_refused():
    with pytest.raises(ValueError, match="loss.teacher"):
        ConsistencyLoss(mode="distillation")
    with pytest.raises(ValueError, match="loss.mode"):
        ConsistencyLoss(mode="foo")
    with pytest.raises(ValueError, match="sigma_max"):
        ConsistencyLoss(sigma_max=0.001)
    with pytest.raises(IncompatibleError, match="smallest noise level"):
        ConsistencyLoss().check(VESDE(sigma_min=0.01, sigma_max=50.0), get_head("edm"))
    ConsistencyLoss().check(LinearPath(), VelocityHead())


def test_cli_refuses_a_missing_or_mismatched_teacher(tmp_path, capsys):
    from conftest import refused_at_start
    refused_at_start("train", ["experiment=gmm_fm", "loss=consistency",
                               "loss.mode=distillation"], "loss.teacher", tmp_path / "r1",
                     capsys)
    refused_at_start("train", ["experiment=gmm_fm", "loss=consistency",
                               "loss.mode=distillation", f"loss.teacher={tmp_path}/none.ckpt"],
                     "no such checkpoint", tmp_path / "r2", capsys)
    refused_at_start("train", ["experiment=gmm_fm", "loss=consistency", "trainer.max_steps=-1"],
                     "trainer.max_steps", tmp_path / "r3", capsys)


@pytest.mark.slow
def test_cli_consistency_training_distillation_and_few_step_sampling(tmp_path):
    """train.py loss=consistency (CT) on the toy mixture; a teacher of another shape is
    refused; distillation from a flow teacher; sample.py sampler=consistency at 1 and 2
    steps (NFE recorded) and evaluate.py with the exact metric."""
    import json

    from conftest import run
    base = ["backbone.width=32", "backbone.depth=1", "data.n_samples=400",
            "trainer.max_steps=30", "callbacks=default", "num_samples=20"]
    run("train.py", "experiment=gmm_fm", *base, f"hydra.run.dir={tmp_path / 'teacher'}",
        cwd=tmp_path)
    teacher = tmp_path / "teacher/checkpoints/last.ckpt"
    run("train.py", "experiment=gmm_fm", "loss=consistency", "sampler=consistency", *base,
        f"hydra.run.dir={tmp_path / 'ct'}", cwd=tmp_path)
    run("train.py", "experiment=gmm_fm", "loss=consistency", "loss.mode=distillation",
        f"loss.teacher={teacher}", "loss.steps=10", "sampler=consistency", *base,
        f"hydra.run.dir={tmp_path / 'cd'}", cwd=tmp_path)
    bad = run("train.py", "experiment=gmm_fm", "loss=consistency", "loss.mode=distillation",
              f"loss.teacher={teacher}", "data.dim=3", *base,
              f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "a teacher of the same data" in bad.stderr
    for student in ("ct", "cd"):
        ckpt = tmp_path / student / "checkpoints/last.ckpt"
        for steps in (1, 2):
            out = tmp_path / f"{student}{steps}"
            run("sample.py", f"ckpt={ckpt}", "sampler=consistency", f"sampler.steps={steps}",
                "num_samples=16", f"hydra.run.dir={out}", cwd=tmp_path)
            assert json.loads((out / "sampling.json").read_text())["nfe_per_sample"] == steps
    run("evaluate.py", f"ckpt={tmp_path / 'cd/checkpoints/last.ckpt'}", "sampler=consistency",
        "sampler.steps=1", "num_samples=64", "metrics=[energy]",
        f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    metrics = json.loads((tmp_path / "e/metrics.json").read_text())
    assert metrics["sample_settings"]["nfe"] == 1 and math.isfinite(metrics["energy"])
