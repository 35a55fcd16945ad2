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
    """FID(data, data) = 0; two disjoint halves of MNIST-5k: small; data vs noise: large."""
    feats = digit_features[0]
    full = feature_statistics(feats)
    assert abs(frechet_distance(full, full)) < 1e-6
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    half_a, half_b = feats[perm[:2500]], feats[perm[2500:]]
    halves = frechet_distance(feature_statistics(half_a), feature_statistics(half_b))
    noise = DigitFeatures()(torch.rand(2500, 1, 28, 28) * 2 - 1)[0]
    vs_noise = frechet_distance(feature_statistics(half_a), feature_statistics(noise))
    assert 0 < halves < 0.02 * vs_noise


def test_inception_score_closed_forms_and_class_accuracy(digit_features):
    uniform = torch.zeros(100, 10)
    assert inception_score(uniform, splits=1)[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -50.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 50.0
    assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    assert inception_score(digit_features[1], splits=10)[0] > 9.0    # real digits
    assert class_accuracy(confident, torch.arange(100) % 10) == 1.0


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
    with pytest.raises(FeatureWeightsMissing, match="inception_weights=/no/such: no such file"):
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
    assert net(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 10)   # any size


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
    assert "| ddim | 10 | 10 | 30.00 |" in md and "| dpm_solver++ 2M | 10 | 10 | 9.00 |" in md
    assert (tmp_path / "out.png").stat().st_size > 1000


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
    stats = feature_statistics(feats)
    assert abs(frechet_distance(stats, stats)) < 1e-6
    assert inception_score(logits, splits=2)[0] >= 1.0 - 1e-9     # IS >= 1 (KL >= 0)
