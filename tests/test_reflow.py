"""Reflow (scorelab.data.reflow, the straightness metric): pairs are the teacher's ODE
endpoints bit for bit, on any number of processes and after a restart; on the oracle the
reflowed flow is straighter and one Euler step lands closer to the mixture; a pairs
directory of another teacher and a teacher of other data are refused."""

import json
from functools import partial

import pytest
import torch

from scorelab.data.reflow import PairsDataset, ReflowDataModule
from scorelab.data.toy import GMMDataModule
from scorelab.metrics.statistics import energy_distance
from scorelab.metrics.straightness import straightness
from scorelab.models.heads import VelocityHead
from scorelab.models.mixture import GaussianMixture
from scorelab.models.score import ScoreModel
from scorelab.nets.mlp import MLP
from scorelab.paths.interpolants import LinearPath
from scorelab.sampling import sample
from scorelab.sampling.grids import make_grid
from scorelab.training.diffusion_module import DiffusionModule
from scorelab.training.losses import DSMLoss
from scorelab.util.errors import ConfigError

SAMPLER = {"name": "ode", "steps": 4, "method": "heun"}


def tiny_teacher():
    torch.manual_seed(0)
    model = ScoreModel(MLP((2,), width=16, depth=1), VelocityHead(), LinearPath())
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    return DiffusionModule(model, DSMLoss(weighting="velocity"), partial(torch.optim.Adam),
                           (2,), is_image=False)


def pairs_module(tmp_path, teacher, **kw):
    base = GMMDataModule(n_samples=200, batch_size=16)
    base.setup("fit")
    options = {"sampler": SAMPLER, "num_pairs": 50, "chunk": 16, "directory": tmp_path,
               **kw}
    return ReflowDataModule(base, "teacher.ckpt", load_teacher=lambda _: teacher, **options)


def test_pairs_are_the_teachers_ode_endpoints_on_any_number_of_processes(tmp_path):
    teacher = tiny_teacher()
    one = pairs_module(tmp_path / "one", teacher)
    one.check_directory(7)
    one.generate()
    files = [one.chunk_file(k) for k in range(one.num_chunks())]
    assert len(files) == 4 and all(f.is_file() for f in files)
    pairs = PairsDataset(files)
    assert len(pairs) == 50
    x, noise = pairs.x, pairs.noise
    settings = dict(SAMPLER)
    name, steps = settings.pop("name"), settings.pop("steps")
    # (chunk by chunk: a batch of another size may round differently)
    prior = teacher.model.path.prior_std()
    again = torch.cat([sample(teacher.model.prediction_fn(), teacher.model.path, None, name,
                              steps, x_init=prior * part, **settings).x
                       for part in noise.split(16)])
    assert torch.equal(x, again)
    # two processes, each its chunks, make the same files; a lost chunk is drawn again
    two = pairs_module(tmp_path / "two", teacher)
    two.check_directory(7)
    two.generate(0, 2)
    assert [two.chunk_file(k).is_file() for k in range(4)] == [True, False, True, False]
    two.generate(1, 2)
    two.chunk_file(2).unlink()
    two.generate(0, 2)
    for k in range(4):
        a = torch.load(one.chunk_file(k), weights_only=True)
        b = torch.load(two.chunk_file(k), weights_only=True)
        assert all(torch.equal(a[key], b[key]) for key in ("x", "y", "noise"))
    record = json.loads((tmp_path / "one" / "pairs.json").read_text())
    assert record["teacher_step"] == 7 and record["sampler"] == SAMPLER


def test_a_pairs_directory_of_another_teacher_or_sampler_is_refused(tmp_path):
    teacher = tiny_teacher()
    pairs_module(tmp_path, teacher).check_directory(7)
    with pytest.raises(ConfigError, match="teacher_step"):
        pairs_module(tmp_path, teacher).check_directory(8)
    with pytest.raises(ConfigError, match="sampler"):
        pairs_module(tmp_path, teacher, sampler={"name": "edm", "steps": 18}).check_directory(7)


def fit_on_pairs(loss, x1, noise, gen, steps=400):
    """A small MLP flow trained with ``loss`` on the coupled pairs (x1, noise)."""
    model = ScoreModel(MLP((2,), width=64, depth=2), VelocityHead(), LinearPath())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        i = torch.randint(0, x1.shape[0], (256,), generator=gen)
        value = loss(model, x1[i], noise=noise[i], generator=gen)
        opt.zero_grad()
        value.backward()
        opt.step()
    return model


def test_reflow_on_the_oracle_is_straighter_and_one_euler_step_is_closer():
    """The exact mixture flow as teacher (its RK45 ODE endpoints as pairs); a small MLP
    trained on the coupled pairs (the 2-rectified flow) is straighter than the teacher's
    flow and its one-step Euler samples are closer to the mixture than the teacher's."""
    torch.manual_seed(0)
    path = LinearPath()
    gm = GaussianMixture.ring(n_components=4, radius=1.0, std=0.15)
    exact = gm.prediction_fn(path)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 2, generator=gen)
    x1 = sample(exact, path, None, "ode", 10, method="rk45", x_init=noise, eps=1e-4).x
    student = fit_on_pairs(DSMLoss(weighting="velocity", time_sampling="uniform"), x1, noise,
                           gen)
    test_noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    ts = make_grid("uniform", path, 16, 0.0)
    with torch.no_grad():
        s_teacher = straightness(exact, path, test_noise, ts).mean()
        s_student = straightness(student.prediction_fn(), path, test_noise, ts).mean()
        one = {name: sample(fn, path, None, "ode", 1, method="euler", x_init=test_noise,
                            eps=0.0).x
               for name, fn in (("teacher", exact), ("student", student.prediction_fn()))}
    ref = gm.sample(1000, generator=torch.Generator().manual_seed(6))[0]
    e_teacher, e_student = (energy_distance(one[k], ref) for k in ("teacher", "student"))
    assert s_student < s_teacher / 3, (s_student, s_teacher)
    assert e_student < e_teacher / 3, (e_student, e_teacher)
    # one-step distillation (loss time_sampling=end: t = T, the target z - x a function of
    # z) of the same pairs: one Euler step is a learned map noise -> sample
    end = DSMLoss(weighting="velocity", time_sampling="end")
    assert (end.draw(path, 5, "cpu", None)[0] == path.T).all()
    distilled = fit_on_pairs(end, x1, noise, gen)
    with torch.no_grad():
        x = sample(distilled.prediction_fn(), path, None, "ode", 1, method="euler",
                   x_init=test_noise, eps=0.0).x
    assert energy_distance(x, ref) < e_teacher / 3


def test_straightness_is_zero_for_straight_trajectories_only():
    """Data at one point m: every trajectory x_t = (1 - t) m + t z is a line at constant
    speed (S ~ 0); a ring mixture's trajectories bend towards their components (S > 0)."""
    path = LinearPath()
    ts = make_grid("uniform", path, 8, 0.0)
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    point = GaussianMixture(torch.tensor([[0.5, -0.5]]), torch.tensor([1e-3]))
    ring = GaussianMixture.ring(n_components=4, radius=1.0, std=0.1)
    assert straightness(point.prediction_fn(path), path, z, ts).max() < 1e-4
    assert straightness(ring.prediction_fn(path), path, z, ts).mean() > 0.01


def test_cli_refuses_a_missing_teacher(tmp_path, capsys):
    from conftest import refused_at_start
    refused_at_start("train", ["experiment=gmm_fm", f"teacher.ckpt={tmp_path}/none.ckpt"],
                     "teacher.ckpt", tmp_path / "r1", capsys)


@pytest.mark.slow
def test_cli_reflow_from_a_trained_teacher_and_the_straightness_metric(tmp_path):
    """train.py a teacher; train.py teacher.ckpt=... (pairs drawn, then trained on); a
    teacher of another data shape refused; evaluate.py metrics=[straightness,energy] on
    the student at one Euler step."""
    from conftest import run
    base = ["backbone.width=32", "backbone.depth=1", "data.n_samples=400",
            "trainer.max_steps=30", "callbacks=default", "num_samples=20"]
    run("train.py", "experiment=gmm_fm", *base, f"hydra.run.dir={tmp_path / 'teacher'}",
        cwd=tmp_path)
    teacher = tmp_path / "teacher/checkpoints/last.ckpt"
    run("train.py", "experiment=gmm_fm", f"teacher.ckpt={teacher}", "teacher.num_pairs=600",
        "teacher.chunk=200", "teacher.sampler.steps=4", *base,
        f"hydra.run.dir={tmp_path / 'student'}", cwd=tmp_path)
    pairs = tmp_path / "student/reflow_pairs"
    assert len(list(pairs.glob("pairs_*.pt"))) == 3 and (pairs / "pairs.json").is_file()
    bad = run("train.py", "experiment=gmm_fm", f"teacher.ckpt={teacher}", "data.dim=3", *base,
              f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "same data" in bad.stderr
    run("evaluate.py", f"ckpt={tmp_path / 'student/checkpoints/last.ckpt'}", "sampler=euler",
        "sampler.steps=1", "num_samples=64", "metrics=[straightness,energy]",
        "metrics.straightness.num_samples=32", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    metrics = json.loads((tmp_path / "e/metrics.json").read_text())
    assert metrics["straightness"] >= 0 and metrics["sample_settings"]["nfe"] == 1
