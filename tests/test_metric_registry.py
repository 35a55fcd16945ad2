"""The metric registry's plumbing: metrics built by name from conf/metrics, one pass of
samples for every sample metric, identical on 1 and several processes, feature extractors
swapped per metric, and closed forms through the registry (the statistics themselves are
tested in test_metric_statistics.py)."""

import math

import pytest
import torch

from conftest import compose_train
from scorelab.metrics import METRICS, build_metric
from scorelab.metrics.callbacks import Metrics
from scorelab.metrics.evaluation import gather_union, sample_features
from scorelab.metrics.features import FeatureWeightsMissing, build_extractor, feature_spec
from scorelab.metrics.sample_pass import SampleEvaluation
from scorelab.metrics.statistics import kid
from scorelab.models.mixture import GaussianMixture


class VectorData:
    """A stand-in DataModule of vector data: ``load()`` gives (x, y) pairs."""
    is_image, name, root = False, "toy", None

    def __init__(self, x, y=None, mixture=None):
        self.x, self.shape, self.mixture = x, tuple(x.shape[1:]), mixture
        self.y = torch.zeros(len(x), dtype=torch.long) if y is None else y

    def load(self):
        return list(zip(self.x, self.y))


def _whitened(n, d, mu, seed=0):
    """n rows whose sample mean is exactly ``mu`` and sample covariance exactly I."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    return torch.linalg.solve_triangular(chol, z.T, upper=False).T + mu


def _union(x):
    return {"index": torch.arange(len(x)), "features/raw": x.double(),
            "logits/raw": torch.zeros(len(x), 0, dtype=torch.float64)}


def test_every_config_names_a_registered_metric_and_holds_its_only_defaults(tmp_path):
    """callbacks=metrics composes the metrics group (no option repeated in the callback);
    metrics=[...] picks others, and each config builds its registered class."""
    cfg = compose_train(["callbacks=metrics"], tmp_path)
    assert sorted(cfg.metrics) == ["bpd", "fid", "is"]
    assert cfg.callbacks.metrics.metrics == cfg.metrics
    assert set(cfg.callbacks.metrics) == {"_target_", "_convert_", "metrics", "every_n_steps",
                                          "at_end", "num_samples", "sampler", "batch_size",
                                          "seed", "prompts"}
    cfg = compose_train(["callbacks=metrics", "metrics=[fid,kid,prdc,energy,class_fid]",
                         "metrics.kid.subsets=7", "features=dinov2", "features.weights=w.pt"],
                        tmp_path)
    assert cfg.callbacks.metrics.metrics.kid.subsets == 7
    assert dict(cfg.metrics.fid.features) == {"name": "dinov2", "weights": "w.pt"}
    from hydra.utils import instantiate
    for name, node in cfg.metrics.items():
        metric = instantiate(node)
        assert type(metric) is METRICS[name] and metric.name == name
    assert instantiate(cfg.metrics.kid).subsets == 7


def test_frechet_distance_of_shifted_unit_gaussians_is_the_squared_shift():
    """FD(N(0, I), N(mu, I)) = |mu|^2, through the registry's FID on features whose sample
    mean and covariance are exactly mu and I (against exact reference statistics)."""
    d, mu = 5, torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25], dtype=torch.float64)
    fake = {"features": _whitened(400, d, mu), "logits": torch.zeros(400, 0)}
    real = {"mu": torch.zeros(d).numpy(), "sigma": torch.eye(d).numpy()}
    fid = build_metric("fid", {"features": "raw"}).compute(fake, real)["fid"]
    assert fid == pytest.approx(float(mu @ mu), rel=1e-6)


def test_prdc_fid_kid_of_a_set_with_itself_through_one_pass():
    """Scored against itself (samples = the data), precision, recall and coverage are 1
    and density (k + 1) / k; FID is 0; KID is the statistic on those sets."""
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(1))
    metrics = {n: build_metric(n, {"features": "raw"}) for n in ("fid", "kid", "prdc")}
    ev = SampleEvaluation(metrics, VectorData(x))
    assert list(ev.extractors) == ["raw"]                      # one extractor for all three
    values = ev.compute(_union(x))
    assert values["precision"] == values["recall"] == values["coverage"] == 1.0
    assert values["density"] == pytest.approx(6 / 5)
    assert abs(values["fid"]) < 1e-9
    expected = kid(x.double(), x.double(), 100, 1000, torch.Generator().manual_seed(0))
    assert (values["kid"], values["kid_std"]) == expected


def test_kid_of_two_draws_of_one_law_is_near_zero_and_of_two_laws_is_not():
    """Unbiased: for two draws of N(0, I) the mean over subsets is within a few standard
    errors of 0 (it may be negative); a shifted law gives a clearly positive value."""
    g = torch.Generator().manual_seed(2)
    real, same = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g)
    shifted = torch.randn(300, 4, generator=g) + 1.0
    metric = build_metric("kid", {"features": "raw", "subsets": 50, "subset_size": 100})
    ev = SampleEvaluation({"kid": metric}, VectorData(real))
    near = ev.compute(_union(same))
    far = ev.compute(_union(shifted))
    assert abs(near["kid"]) < 3 * near["kid_std"] + 1e-3
    assert far["kid"] > 3 * far["kid_std"] and far["kid"] > 20 * abs(near["kid"])


class _Extractor:
    """Counts its calls; features = the flattened samples, logits = their first 3 values."""
    name, dim, num_logits, tag = "count", 4, 3, None

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        f = x.flatten(1).double()
        return f, f[:, :3]


def test_one_draw_and_one_featurisation_per_chunk_and_the_same_union_on_any_world():
    """fid, kid and prdc requested together: every chunk is sampled once and featurised
    once; the shards of 3 processes gathered in index order give the single-process
    values exactly (the DDP rule of ``gather_union``)."""
    draws = []

    def sample_fn(m, y, gen):
        draws.append(m)
        return torch.randn(m, 4, generator=gen), 1

    ex = _Extractor()
    n, chunk = 23, 5
    single, _ = sample_features(sample_fn, {"count": ex}, n, chunk, seed=4, device="cpu")
    assert len(draws) == ex.calls == math.ceil(n / chunk) and sum(draws) == n
    shards = [sample_features(sample_fn, {"count": ex}, n, chunk, 4, "cpu", 0, r, 3)[0]
              for r in range(3)]
    joined = gather_union({k: torch.cat([s[k] for s in shards]) for k in single}, None)
    for key in single:
        assert torch.equal(joined[key], single[key]), key
    real = torch.randn(40, 4, generator=torch.Generator().manual_seed(5))
    ev = SampleEvaluation({m: build_metric(m, {"features": "raw"}) for m in ("fid", "kid",
                                                                             "prdc")},
                          VectorData(real))
    as_raw = {"index": single["index"], "features/raw": single["features/count"],
              "logits/raw": single["features/count"][:, :0]}
    as_raw_joined = {**as_raw, "features/raw": joined["features/count"]}
    assert ev.compute(as_raw) == ev.compute(as_raw_joined)


class _Trainer:
    def __init__(self, rank=0, world=1):
        self.global_rank, self.world_size, self.is_global_zero = rank, world, rank == 0


class _Module:
    """What the callback asks of a DiffusionModule: exact mixture samples as the model."""
    device, guidance, num_classes, takes_labels = torch.device("cpu"), None, 0, False
    sampler = {"name": "exact", "steps": 1}

    def __init__(self, mixture):
        self.mixture, self.draws = mixture, 0

    def sample(self, m, y=None, generator=None, sampler=None):
        self.draws += 1
        from types import SimpleNamespace
        return SimpleNamespace(x=self.mixture.sample(m, generator)[0], nfe=1)


def test_callback_runs_every_sample_metric_in_one_pass_and_keeps_partial_values(monkeypatch):
    """The training callback on the Gaussian mixture: fid (raw features), kid, prdc and the
    exact energy distance from one draw per chunk; IS is skipped with its reason (vector
    data has no class logits). A stop request after the first chunk keeps partial_*."""
    gmm = GaussianMixture.ring(2, 4, 1.0, 0.1)
    data = VectorData(gmm.sample(200, torch.Generator().manual_seed(0))[0], mixture=gmm)
    cb = Metrics({"fid": {}, "kid": {"subsets": 10}, "prdc": {}, "energy": {}, "is": {}},
                 num_samples=60, batch_size=20, datamodule=data)
    module = _Module(gmm)
    values = cb.compute(_Trainer(), module, None)
    assert module.draws == 3
    assert set(values) == {"fid", "kid", "kid_std", "precision", "recall", "density",
                           "coverage", "energy"}
    s = cb.settings["sample_settings"]
    assert s["features"] == "raw" and s["num_samples"] == 60
    assert "class logits" in s["skipped"]["is"]
    assert values["energy"] < 0.02 and values["fid"] < 0.05           # exact samples
    from scorelab.metrics import evaluation
    calls = iter([False, True])
    monkeypatch.setattr(evaluation, "requested", lambda: next(calls, True))
    partial = cb.compute(_Trainer(), module, None)
    assert set(partial) == {f"partial_{k}" for k in values}
    assert cb.settings["sample_settings"]["completed"] == "20 of 60"


def test_energy_distance_to_the_mixture_orders_samplers():
    """Samples of the exact mixture score ~0; samples that miss half the modes score
    clearly higher: the number a gmm sweep's summary ranks configurations by."""
    gmm = GaussianMixture.ring(2, 8, 1.0, 0.1)
    wide = GaussianMixture(gmm.means[::2], gmm.stds[::2])
    metric = build_metric("energy", {"num_reference": 500, "seed": 3})
    data = VectorData(gmm.sample(100)[0], mixture=gmm)
    ev = SampleEvaluation({"energy": metric}, data)
    good = ev.compute(_union(gmm.sample(500, torch.Generator().manual_seed(7))[0]))["energy"]
    bad = ev.compute(_union(wide.sample(500, torch.Generator().manual_seed(7))[0]))["energy"]
    assert abs(good) < 5e-3 and bad > 10 * max(abs(good), 1e-3)
    assert "exact law" in metric.skip_reason(VectorData(torch.zeros(3, 2)))


def test_nll_gap_of_the_exact_model_is_near_zero():
    """bpd on the mixture with the exact mixture as the model: the PF-ODE NLL equals the
    exact NLL up to the solver's error, so nll_gap ~ 0; nll_exact is -log p / d."""
    from types import SimpleNamespace

    from scorelab.paths.sde import VPSDE
    gmm = GaussianMixture.ring(2, 4, 1.0, 0.3)
    x = gmm.sample(12, torch.Generator().manual_seed(1))[0]
    data = SimpleNamespace(val_set=list(zip(x, torch.zeros(12))), mixture=gmm)
    path = VPSDE()
    model = SimpleNamespace(prediction_fn=lambda y: gmm.prediction_fn(path), path=path)
    module = SimpleNamespace(device=torch.device("cpu"), latent=None, model=model,
                             is_image=False, conditional=False)
    metric = build_metric("bpd", {"num_examples": 6, "chunk": 6, "divergence": "exact",
                                  "rtol": 1e-5, "atol": 1e-5})
    values, done, wanted, _ = metric.run(module, data, 0, 0, 1, None, None)
    assert done == wanted == 6 and metric.key == "nll_nats_per_dim"
    x = x[:6]
    assert values["nll_exact"] == pytest.approx(float(-gmm.log_prob(x).mean() / 2), rel=1e-5)
    assert abs(values["nll_gap"]) < 5e-3
    assert values["nll_nats_per_dim"] == pytest.approx(values["nll_exact"] + values["nll_gap"])


def test_network_features_from_a_local_torchvision_state_dict(tmp_path):
    """features=network (and dinov2's loader): a torchvision architecture with its head
    removed, weights from a local file; without the file, one line that says what to
    give; a file of another architecture is refused."""
    import torchvision
    net = torchvision.models.get_model("shufflenet_v2_x0_5", weights=None)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    spec = feature_spec({"name": "network", "arch": "shufflenet_v2_x0_5", "head": "fc",
                         "size": 32, "weights": str(tmp_path / "w.pt")}, "cifar10")
    ex = build_extractor(spec)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    feats, logits = ex(x)
    assert feats.shape == (3, 1024) and ex.dim == 1024 and logits.shape == (3, 0)
    assert feats.dtype == torch.float64 and ex.tag.startswith("network-shufflenet_v2_x0_5-32-")
    with pytest.raises(FeatureWeightsMissing, match=r"^features=dinov2: needs a local weights "
                                                    r"file \(features.weights=FILE"):
        build_extractor(feature_spec("dinov2", "cifar10"))
    with pytest.raises(FeatureWeightsMissing, match="features.weights=/no/file: no such file"):
        build_extractor(feature_spec({"name": "dinov2", "weights": "/no/file"}, "x"))
    with pytest.raises(ValueError, match="does not fit torchvision resnet18"):
        build_extractor({**spec, "arch": "resnet18"})
    with pytest.raises(ValueError, match="unknown features 'clip'"):
        feature_spec("clip", "cifar10")
    assert feature_spec("auto", "mnist5k")["name"] == "digits"
    assert feature_spec("auto", "gmm", is_image=False)["name"] == "raw"
    assert feature_spec("auto", "cifar10")["name"] == "inception"


def test_metric_options_are_checked_when_built():
    with pytest.raises(ValueError, match="metrics.kid.subsets: must be an integer >= 1"):
        build_metric("kid", {"subsets": 0})
    with pytest.raises(ValueError, match="metrics.prdc: .*unexpected keyword argument 'k'"):
        build_metric("prdc", {"k": 3})
    with pytest.raises(ValueError, match="unknown metric 'lpips'"):
        build_metric("lpips")
    with pytest.raises(ValueError, match="metrics.bpd.divergence: unknown divergence"):
        build_metric("bpd", {"divergence": "trace"})


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)

    def all_gather(t):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    try:
        values = _gmm_callback().compute(_Trainer(rank, world), _Module(_GMM), all_gather)
        if rank == 0:
            torch.save(values, out)
    finally:
        dist.destroy_process_group()


_GMM = GaussianMixture.ring(2, 4, 1.0, 0.1)


def _gmm_callback():
    data = VectorData(_GMM.sample(200, torch.Generator().manual_seed(0))[0], mixture=_GMM)
    return Metrics({"fid": {}, "kid": {"subsets": 10}, "prdc": {}, "energy": {}},
                   num_samples=50, batch_size=7, seed=3, datamodule=data)


@pytest.mark.slow
def test_sample_metrics_are_the_same_bits_on_two_gloo_processes(tmp_path):
    """Two processes (gloo, CPU) each draw their chunks, all_gather the features and compute
    FID, KID, PRDC and the energy distance from the union: the same bits as on one."""
    import socket

    import torch.multiprocessing as mp
    one = _gmm_callback().compute(_Trainer(), _Module(_GMM), None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "two.pt")), nprocs=2)
    two = torch.load(tmp_path / "two.pt")
    assert set(two) == set(one) and len(one) == 8
    for key in one:
        assert two[key] == one[key], key


def test_reference_keeps_the_real_features_and_labels_for_kid_and_prdc(tmp_path):
    """The cached reference holds the real features (float32, as extractors compute) and
    labels beside mu and sigma when a metric needs them; a cache of mu and sigma only is
    recomputed then, and a precomputed mu/sigma file is refused with what to do."""
    from scorelab.metrics.evaluation import reference_statistics
    from scorelab.metrics.fid import save_statistics

    class Tagged(_Extractor):
        name, tag = "count", "count-v1"

    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0)).float()
    data = list(zip(x, torch.arange(30) % 3))
    stats, path = reference_statistics(data, "toy", Tagged(), cache_dir=tmp_path)
    assert set(stats) == {"mu", "sigma"}
    ex = Tagged()
    full, same = reference_statistics(data, "toy", ex, cache_dir=tmp_path, keep_features=True)
    assert same == path and ex.calls == 1                         # mu/sigma-only: recomputed
    assert torch.equal(torch.as_tensor(full["features"]), x.double().float())
    assert torch.as_tensor(full["labels"]).tolist() == (torch.arange(30) % 3).tolist()
    again, _ = reference_statistics([], "toy", ex, cache_dir=tmp_path, keep_features=True)
    assert ex.calls == 1 and (again["features"] == full["features"]).all()    # from cache
    save_statistics(tmp_path / "musigma.npz", {"mu": stats["mu"], "sigma": stats["sigma"]},
                    "count", 30)
    with pytest.raises(ValueError, match="holds only mu and sigma; KID / PRDC"):
        reference_statistics(data, "toy", ex, tmp_path / "musigma.npz", keep_features=True)


def test_loggers_get_the_scalar_metrics_only(monkeypatch):
    """Per-class lists stay in metrics.json: TensorBoard's log_metrics refuses a list."""
    from types import SimpleNamespace

    from scorelab.metrics.callbacks import MetricCallback

    logged = []
    logger = SimpleNamespace(log_metrics=lambda m, step: logged.append((m, step)))
    trainer = SimpleNamespace(sanity_checking=False, global_step=7, world_size=1,
                              is_global_zero=True, loggers=[logger],
                              state=SimpleNamespace(fn=None))
    cb = MetricCallback(every_n_steps=7)
    monkeypatch.setattr(cb, "compute", lambda *a: {"fid": 1.5, "per_class_fid": [1.0, 2.0],
                                                   "nfe": 35, "exact": True}, raising=False)
    cb.on_validation_epoch_end(trainer, SimpleNamespace())
    assert logged == [({"metrics/fid": 1.5, "metrics/nfe": 35}, 7)]
    assert cb.history[0]["per_class_fid"] == [1.0, 2.0]
