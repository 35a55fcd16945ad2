"""FID / IS / class accuracy on the shipped digit classifier, reference statistics, and the
sharding that makes metrics identical on any number of processes."""

import json

import numpy as np
import pytest
import torch

from scorelab.data import MNIST5kDataModule
from scorelab.metrics import features as features_mod
from scorelab.metrics.digit_classifier import WEIGHTS, load_digit_classifier
from scorelab.metrics.evaluation import (gather_union, my_chunks, reference_statistics,
                                         sample_features)
from scorelab.metrics.features import DigitFeatures, FeatureWeightsMissing, inception_weights
from scorelab.metrics.fid import (class_accuracy, feature_statistics, frechet_distance,
                                  inception_score, load_statistics, save_statistics)


@pytest.fixture(scope="module")
def mnist():
    dm = MNIST5kDataModule(batch_size=64)
    full = dm.load()
    x = torch.stack([full[i][0] for i in range(len(full))])
    y = torch.tensor([int(full[i][1]) for i in range(len(full))])
    return x, y


@pytest.fixture(scope="module")
def digit_features(mnist):
    x, _ = mnist
    return DigitFeatures()(x)


def test_shipped_classifier_is_accurate_on_heldout_digits(mnist):
    """The DataModule's held-out split (never trained on) is classified >= 98 % right."""
    dm = MNIST5kDataModule(batch_size=64)
    dm.setup("fit")
    x = torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])
    y = torch.tensor([int(dm.val_set[i][1]) for i in range(len(dm.val_set))])
    logits = DigitFeatures()(x)[1]
    assert class_accuracy(logits, y) >= 0.98
    recorded = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert recorded["heldout_accuracy_mnist5k"] >= 0.98


def test_fid_baselines_self_halves_noise(digit_features):
    """FID(data, data) = 0; the numbers README's baselines quote (scripts/fid_baselines.py):
    two disjoint halves of MNIST-5k 0.209, 500 real digits against the full statistics
    1.399, uniform noise against real digits 2,772. Deterministic data and weights; 1 %
    leaves room for float32 summation order in the classifier, not for a changed pipeline
    (a different quantisation, resizing or feature layer moves them by far more)."""
    feats = digit_features[0]
    full = feature_statistics(feats)
    assert abs(frechet_distance(full, full)) < 1e-6
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    half_a, half_b = feats[perm[:2500]], feats[perm[2500:]]
    halves = frechet_distance(feature_statistics(half_a), feature_statistics(half_b))
    noise_images = torch.rand(2500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    noise = DigitFeatures()(noise_images * 2 - 1)[0]
    vs_noise = frechet_distance(feature_statistics(half_a), feature_statistics(noise))
    subset = frechet_distance(feature_statistics(feats[perm[:500]]), full)
    assert halves == pytest.approx(0.2092, rel=0.01)
    assert subset == pytest.approx(1.399, rel=0.01)
    assert vs_noise == pytest.approx(2772.0, rel=0.01)


def _sqrtm_psd(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_against_the_closed_form():
    """FID is the Frechet distance of N(mu_1, S_1) and N(mu_2, S_2):
    |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2), here from an
    eigendecomposition (not torch-fidelity's sqrtm); for diagonal covariances it is
    |mu_1 - mu_2|^2 + |s_1 - s_2|^2 of the standard deviations. From samples, the
    statistics are the sample mean and the unbiased covariance, and the distance between
    two Gaussians' samples is the closed form within sampling error."""
    rng = np.random.default_rng(0)
    d = 6
    s1, s2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    diag = frechet_distance({"mu": m1, "sigma": np.diag(s1 ** 2)},
                            {"mu": m2, "sigma": np.diag(s2 ** 2)})
    assert diag == pytest.approx(((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum(), rel=1e-9)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    c1, c2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)       # non-commuting
    r1 = _sqrtm_psd(c1)
    closed = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * _sqrtm_psd(r1 @ c2 @ r1))
    assert frechet_distance({"mu": m1, "sigma": c1}, {"mu": m2, "sigma": c2}) == \
        pytest.approx(closed, rel=1e-7)
    x = rng.multivariate_normal(m1, c1, size=4000)
    stats = feature_statistics(torch.from_numpy(x))
    np.testing.assert_allclose(stats["mu"], x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["sigma"], np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    y = rng.multivariate_normal(m2, c2, size=4000)
    sampled = frechet_distance(stats, feature_statistics(torch.from_numpy(y)))
    assert sampled == pytest.approx(closed, rel=0.05)


def _is_closed_form(logits):
    """exp(mean_x KL(p(y|x) || mean_x p(y|x))) in numpy (one split)."""
    p = torch.softmax(logits.double(), 1).numpy()
    marginal = p.mean(0)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def test_inception_score_closed_forms_and_class_accuracy(digit_features):
    """IS = exp(E_x KL(p(y|x) || p(y))): 1 for identical predictions, K for confident
    predictions spread evenly over K classes, and the value computed by hand for a known
    mixture of predictive distributions."""
    uniform = torch.zeros(100, 10)
    assert inception_score(uniform, splits=1)[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -50.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 50.0
    assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    assert inception_score(confident[:, :4][torch.arange(100) % 10 < 4], splits=1)[0] == \
        pytest.approx(4.0, rel=1e-6)
    # predictive distributions p_0, p_1, p_2 with weights 1/2, 1/4, 1/4:
    # IS = exp(sum_i w_i KL(p_i || sum_j w_j p_j))
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0, 0.0], [0.1, 0.1, 0.8, 0.0, 0.0],
                      [0.2, 0.2, 0.2, 0.2, 0.2]], dtype=torch.float64)
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    marginal = (w[:, None] * p).sum(0)
    kl = torch.where(p > 0, p * (p / marginal).log(), torch.zeros_like(p)).sum(1)
    by_hand = float(torch.exp((w * kl).sum()))
    logits = torch.log(p).clamp(min=-1e4)[torch.tensor([0, 0, 1, 2] * 25)]
    assert inception_score(logits, splits=1)[0] == pytest.approx(by_hand, rel=1e-9)
    random_logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(0)) * 3
    assert inception_score(random_logits, splits=1)[0] == \
        pytest.approx(_is_closed_form(random_logits), rel=1e-9)
    real = inception_score(digit_features[1], splits=1)[0]
    assert real == pytest.approx(_is_closed_form(digit_features[1]), rel=1e-9)
    assert 9.0 < real < 10.0                              # 99 % accurate on 10 balanced classes
    assert class_accuracy(confident, torch.arange(100) % 10) == 1.0
    assert class_accuracy(confident, (torch.arange(100) + 1) % 10) == 0.0


def test_statistics_files_round_trip_and_are_checked(tmp_path, digit_features):
    stats = feature_statistics(digit_features[0][:500])
    path = save_statistics(tmp_path / "s.npz", stats, "digits", 500)
    back = load_statistics(path, "digits")
    np.testing.assert_array_equal(back["mu"], stats["mu"])
    with pytest.raises(ValueError, match="made with digits features, not inception"):
        load_statistics(path, "inception")
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats["mu"].astype(np.float32),
             sigma=stats["sigma"])                       # pytorch-fid's layout is accepted
    assert load_statistics(tmp_path / "pytorch_fid.npz")["mu"].dtype == np.float64
    np.savez(tmp_path / "bad.npz", mean=stats["mu"])
    with pytest.raises(ValueError, match="needs arrays mu and sigma"):
        load_statistics(tmp_path / "bad.npz")


def test_reference_statistics_are_computed_once_and_cached(tmp_path, mnist):
    x, y = mnist
    data = list(zip(x[:300], y[:300]))
    extractor = DigitFeatures()
    stats, path = reference_statistics(data, "tiny", extractor, cache_dir=tmp_path)
    assert path == str(tmp_path / f"fid_stats_tiny_{extractor.tag}.npz")
    again, _ = reference_statistics([], "tiny", extractor, cache_dir=tmp_path)   # from cache
    np.testing.assert_array_equal(again["sigma"], stats["sigma"])


def test_missing_inception_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(features_mod, "URL_INCEPTION_V3", "http://127.0.0.1:9/w.pth")
    with pytest.raises(FeatureWeightsMissing, match=r"Put weights-inception-2015-12-05-"
                                                    r"6726825d.pth .* at .*hub/checkpoints"):
        inception_weights()
    with pytest.raises(FeatureWeightsMissing, match="Inception weights /no/such: no such file"):
        inception_weights("/no/such")


@pytest.mark.parametrize("n,chunk", [(10, 3), (7, 7), (5, 2)])
def test_sharded_sampling_gives_the_single_process_union(n, chunk):
    """Every sample index is drawn exactly once, by the same seeded chunk, whatever the
    number of processes; gather_union (with a simulated all_gather) restores the order."""
    def sample_fn(m, y, gen):
        return torch.rand(m, 1, 4, 4, generator=gen) * 2 - 1, 1

    class Extractor:
        dim, num_logits = 16, 3

        def __call__(self, x):
            return x.flatten(1).double(), x.mean((1, 2, 3))[:, None].double().repeat(1, 3)

    extractor = Extractor()

    single, _ = sample_features(sample_fn, extractor, n, chunk, seed=3, device="cpu",
                                num_classes=4)
    single = gather_union(single, None)
    world = 3
    shards = [sample_features(sample_fn, extractor, n, chunk, 3, "cpu", 4, r, world)[0]
              for r in range(world)]
    assert sorted(i for s in shards for i in s["index"].tolist()) == list(range(n))
    for r, s in enumerate(shards):
        assert s["features"].shape[1:] == (16,) and s["labels"].dtype == torch.long
        assert s["index"].tolist() == [i for k, st, sz in my_chunks(n, chunk, r, world)
                                       for i in range(st, st + sz)]

    # gather one key at a time so the fake all_gather knows which rows it carries
    for key in ("features", "logits"):
        sub = {"index": shards[0]["index"], key: shards[0][key]}
        rows = [{"index": s["index"], key: s[key]} for s in shards]

        def all_gather(t, rows=rows, key=key):
            if t.numel() == 1:
                return torch.stack([torch.tensor([len(r["index"])]) for r in rows])
            name = "index" if t.dtype == torch.long and t.dim() == 1 else key
            out = torch.zeros((len(rows),) + t.shape, dtype=t.dtype)
            for i, r in enumerate(rows):
                out[i, :len(r[name])] = r[name]
            return out

        union = gather_union(sub, all_gather)
        torch.testing.assert_close(union[key], single[key], rtol=0, atol=0)
        torch.testing.assert_close(union["index"], torch.arange(n))
    assert torch.equal(single["labels"], torch.arange(n) % 4)


def test_classifier_loads_from_the_package():
    net = load_digit_classifier()
    assert not any(p.requires_grad for p in net.parameters())
    # any size: uint8 scaled to [0, 1] and resized bilinearly to 28x28, as in training
    small = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    big = torch.nn.functional.interpolate(small.float() / 255, size=(28, 28), mode="bilinear",
                                          align_corners=False)
    torch.testing.assert_close(net(small), net(big), rtol=0, atol=0)
    assert net(small).shape == (2, 10)


def test_fid_vs_nfe_script_collects_a_sweep(tmp_path):
    """scripts/fid_vs_nfe.py turns evaluate.py's metrics.json files into a table and plot."""
    import subprocess
    import sys

    from conftest import ROOT
    for i, (name, steps, fid) in enumerate([("ddim", 10, 30.0), ("ddim", 20, 12.0),
                                            ("dpm_solver", 10, 9.0)]):
        job = tmp_path / "sweep" / f"{i}_sampler={name}"
        job.mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps({
            "fid": fid, "is": 8.0, "sample_settings": {
                "sampler": {"name": name, "steps": steps, "order": 2}, "steps": steps,
                "nfe": steps, "num_samples": 100, "features": "digits"}}))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/fid_vs_nfe.py"),
                           str(tmp_path / "sweep"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "out.md").read_text()
    assert "| ddim eta=0.0 | 10 | 10 | 30.00 |" in md
    assert "| dpm_solver++ 2M | 10 | 10 | 9.00 |" in md
    assert (tmp_path / "out.png").stat().st_size > 1000
    # named models (a teacher and a student) with their training runs
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"steps": 550,
                                                              "train_wall_time_s": 61.5}))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/fid_vs_nfe.py"),
                           f"student={tmp_path / 'sweep'}", "--train",
                           f"student={tmp_path / 'run'}", "--out", str(tmp_path / "named")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "named.md").read_text()
    assert "| student: ddim eta=0.0 | 10 | 10 | 30.00 |" in md and "| student | 550 | 61.5 |" in md


def test_inception_path_end_to_end_with_stand_in_weights(tmp_path, monkeypatch):
    """Offline, the real TF-FID weights cannot be fetched; a weights file of the right
    layout (random values) exercises the whole Inception path: uint8 quantisation, grey to
    RGB, resizing inside torch-fidelity, 2048-d features and 1008 logits, FID and IS."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from scorelab.metrics.features import InceptionFeatures
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(torch, "load", lambda *a, **k: {})
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path="unused")
    monkeypatch.undo()
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    extractor = InceptionFeatures(weights=str(tmp_path / "inception.pth"))
    feats, logits = extractor(torch.rand(6, 1, 28, 28) * 2 - 1)
    assert feats.shape == (6, 2048) and logits.shape == (6, 1008)
    assert feats.dtype == torch.float64
    # the wrapper's numbers are torch-fidelity's network on 8-bit RGB images, unchanged
    img = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    feats, logits = extractor(img)
    rgb = ((img + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)
    with torch.no_grad():
        ref_feats, ref_logits = extractor.net(rgb)
    torch.testing.assert_close(feats, ref_feats.double(), rtol=0, atol=0)
    torch.testing.assert_close(logits, ref_logits.double(), rtol=0, atol=0)
    assert inception_score(logits, splits=1)[0] == pytest.approx(_is_closed_form(logits),
                                                                  rel=1e-9)
