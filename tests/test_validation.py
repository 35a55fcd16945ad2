"""Option values are checked when the config is built: bad values stop train.py at start-up
with one line naming the key (exit status 2), before any training; the rules themselves."""

import pytest

from conftest import refused_at_start, run
from scorelab.metrics import build_metric
from scorelab.metrics.callbacks import Metrics
from scorelab.util.checks import check_value, integer, number, one_of, optional
from scorelab.cli.build import sampler_settings
from scorelab.data import GMMDataModule
from scorelab.util.errors import ConfigError
from scorelab.likelihood.pf_ode import check_likelihood_options
from scorelab.sampling import SAMPLERS, check_options
from scorelab.sampling.registry import FEW_STEP
from scorelab.sampling.registry import _defaults


@pytest.mark.parametrize("overrides, key", [
    (["sampler=pc_vp", "sampler.predictor=foo"], "sampler.predictor"),
    (["sampler=dpm_solver", "sampler.order=4"], "sampler.order"),
    (["sampler.grid=cosine"], "sampler.grid"),
    (["data=gmm", "data.n_components=0"], "data.n_components"),
    (["optim.optimizer.lr=-1"], "optim.optimizer.lr"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
])
def test_bad_value_stops_train_before_training(tmp_path, capsys, overrides, key):
    refused_at_start("train", overrides, key, tmp_path, capsys)


def test_bad_value_exits_with_status_2_and_one_line(tmp_path):
    proc = run("train.py", "trainer.max_steps=0", f"hydra.run.dir={tmp_path / 'run'}",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("scorelab: error:")]
    assert len(lines) == 1 and "trainer.max_steps" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for produced in ("checkpoints", "csv", "samples.png", "metrics.json", "config.yaml"):
        assert not (tmp_path / "run" / produced).exists(), produced


def test_rules_and_their_messages():
    check_value("a", 3, integer(1, 3))
    for bad in (0, 4, 2.0, "2", True, None):
        with pytest.raises(ValueError, match=r"^a: must be an integer in \[1, 3\]"):
            check_value("a", bad, integer(1, 3))
    check_value("x", 0.5, number(0, 1, lo_open=True, hi_open=True))
    for bad in (0, 1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match=r"x: must be a number in \(0, 1\)"):
            check_value("x", bad, number(0, 1, lo_open=True, hi_open=True))
    check_value("inf", float("inf"), number(0))
    with pytest.raises(ValueError, match="g: unknown grid 'cosine'; known: a, b"):
        check_value("g", "cosine", one_of(("a", "b"), "grid"))
    check_value("o", None, optional(integer(1)))
    with pytest.raises(ValueError, match="o: must be an integer >= 1, got 0"):
        check_value("o", 0, optional(integer(1)))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_accepts_its_defaults_and_checks_every_option(name):
    """The sampler's keyword defaults pass its rules, and each of its options, given a
    value of no type it takes, fails with the message naming that option."""
    defaults = _defaults(name)
    assert (defaults or name in FEW_STEP) and check_options(name, {"steps": 10, **defaults}) is None
    for option in defaults:
        with pytest.raises(ValueError, match=rf"^sampler\.{option}: "):
            check_options(name, {"steps": 10, **defaults, option: object()})


@pytest.mark.parametrize("name, options, message", [
    ("pc", {"predictor": "foo"}, "sampler.predictor: unknown predictor 'foo'"),
    ("pc", {"corrector": "bar"}, "sampler.corrector: unknown corrector 'bar'"),
    ("pc", {"predictor": "none", "corrector": "none"}, "does nothing"),
    ("pc", {"snr": 0.0}, "sampler.snr: must be a number > 0"),
    ("pc", {"n_steps": 0}, "sampler.n_steps"),
    ("dpm_solver", {"order": 4}, r"sampler.order: must be an integer in \[1, 3\], got 4"),
    ("dpm_solver", {"order": 0}, "sampler.order"),
    ("ddim", {"eta": -0.1}, "sampler.eta: must be a number >= 0"),
    ("ode", {"method": "rk4"}, "sampler.method: unknown method 'rk4'"),
    ("ode", {"solver": "julia"}, "sampler.solver: unknown solver 'julia'"),
    ("ode", {"rtol": 0}, "sampler.rtol"),
    ("edm", {"s_churn": -1.0}, "sampler.s_churn"),
    ("ddim", {"grid": "cosine"}, "sampler.grid: unknown time grid 'cosine'"),
    ("ddim", {"steps": 0}, "sampler.steps: must be an integer >= 1"),
    ("ddim", {"rho": -7.0}, "sampler.rho"),
    ("ddim", {"eps": -1e-3}, "sampler.eps"),
])
def test_sampler_values_checked_by_sample_and_cli_alike(name, options, message):
    with pytest.raises(ValueError, match=message):
        check_options(name, options)
    with pytest.raises(ConfigError, match=message):
        sampler_settings({"name": name, "steps": 10, **options})


def test_sampler_settings_needs_steps():
    with pytest.raises(ConfigError, match="sampler.steps: must be an integer >= 1, got None"):
        sampler_settings({"name": "ddim"})


@pytest.mark.parametrize("kwargs, message", [
    ({"n_components": 0}, "data.n_components: must be an integer >= 1, got 0"),
    ({"batch_size": 0}, "data.batch_size"),
    ({"val_fraction": 1.0}, r"data.val_fraction: must be a number in \(0, 1\)"),
    ({"std": 0.0}, "data.std"),
    ({"layout": "grid"}, "data.layout: unknown layout 'grid'"),
    ({"dim": 1}, "data.dim: a ring mixture needs dim >= 2"),
    ({"n_samples": 1}, "data.n_samples"),
    ({"num_workers": -1}, "data.num_workers"),
])
def test_data_module_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GMMDataModule(**kwargs)


def test_metric_callback_arguments():
    with pytest.raises(ValueError, match="metrics.bpd.num_examples: must be an integer >= 1"):
        Metrics({"bpd": {"num_examples": 0}})
    with pytest.raises(ValueError, match="metrics.bpd.divergence: unknown divergence 'trace'"):
        build_metric("bpd", {"divergence": "trace"})
    with pytest.raises(ValueError, match="metrics.bpd: no option.*rtl"):
        build_metric("bpd", {"rtl": 1e-3})
    with pytest.raises(ValueError, match="num_samples: fid need at least 2 samples"):
        Metrics({"fid": {}}, num_samples=0)
    with pytest.raises(ValueError, match="features: unknown features 'clip'"):
        Metrics({"fid": {"features": "clip"}}, datamodule=GMMDataModule())
    check_likelihood_options({"solver": "scipy", "n_probes": 2})
    with pytest.raises(ValueError, match="likelihood.solver"):
        check_likelihood_options({"solver": "euler"})


def test_sample_checks_before_drawing():
    from scorelab.models.mixture import GaussianMixture
    from scorelab.sampling import sample
    from scorelab.paths.sde import VPSDE

    calls = []

    def score_fn(x, t):
        calls.append(1)
        return GaussianMixture.ring(2, 4).score_fn(VPSDE())(x, t)

    with pytest.raises(ValueError, match="sampler.order"):
        sample(score_fn, VPSDE(), (4, 2), sampler="dpm_solver", steps=5, order=5)
    assert not calls
    assert sample(score_fn, VPSDE(), (4, 2), sampler="dpm_solver", steps=5).x.shape == (4, 2)
    assert len(calls) == 5
