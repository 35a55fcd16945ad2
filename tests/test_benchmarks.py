"""The benchmark scripts run end to end (their numbers are for people, not asserts)."""

import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run


def test_train_throughput_prints_a_ratio_per_backbone():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--backbones",
         "dit_digits,ddpmpp_digits", "--batch", "8", "--steps", "2", "--warmup", "1",
         "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines()
            if re.match(r"(dit_digits|ddpmpp_digits)\s+equal-fp32", line)]
    assert [r[0] for r in rows] == ["dit_digits", "ddpmpp_digits"]
    for row in rows:
        plain, lightning, ratio = map(float, row[2:5])
        assert plain > 0 and lightning > 0
        # img/s are printed to 0.1, the ratio to 0.001
        rounding = ratio * (0.05 / plain + 0.05 / lightning) + 5e-4
        assert abs(ratio - lightning / plain) <= rounding


@pytest.mark.slow      # (about a minute: a tiny flow model, then both scripts on it)
def test_sampler_peers_and_optimize_grid_run_on_a_tiny_flow_model(tmp_path):
    """benchmarks/sampler_peers.py: scorelab samplers and diffusers' schedulers at one
    budget, a table with a noise level; scripts/optimize_grid.py: a grid file that
    sample.py reads."""
    run("train.py", "experiment=digits_fm", "trainer.max_steps=20",
        "trainer.val_check_interval=10", "backbone.channels=8", "backbone.num_res_blocks=1",
        "callbacks.progress=null", "num_samples=4", "sampler.steps=2",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/sampler_peers.py"), str(ckpt), "--nfe", "4",
         "--n", "20", "--batch", "10", "--seeds", "0", "1", "--samplers", "unipc:order=2",
         "edm", "--peers", "unipc", "euler", "--peer-shifts", "3", "--out",
         str(tmp_path / "peers")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "peers.md").read_text()
    assert "unipc[order=2]" in table and "diffusers unipc[shift=3]" in table
    assert "diffusers euler[shift=3]" in table
    assert re.search(r"NFE 4: best scorelab .* best peer .*: (ahead|tie|behind)", proc.stdout)
    grid = tmp_path / "grid.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/optimize_grid.py"), str(ckpt), "--nfe", "4",
         "--starts", "16", "--check", "16", "--sweeps", "1", "--reference",
         "unipc:order=3,steps=10", "--out", str(grid)], capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"NFE 4 \(4 steps\): error [0-9.]+ -> [0-9.]+; fresh starts", proc.stdout)
    run("sample.py", f"ckpt={ckpt}", "sampler=unipc", "sampler.steps=4",
        f"sampler.grid={grid}", "num_samples=4", f"hydra.run.dir={tmp_path / 's'}",
        cwd=tmp_path)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/sampler_peers.py"), str(ckpt), "--nfe", "4",
         "--n", "20", "--batch", "10", "--seeds", "0", "1", "--samplers",
         f"unipc:order=2,grid={grid}", "--peers", "--out", str(tmp_path / "peers"), "--merge"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "peers.md").read_text()
    assert "unipc[order=2,grid=optimised(grid)]" in table and "diffusers unipc[shift=3]" in table


def test_sampler_peers_merges_rows_labels_grid_files_and_calls_ties_by_the_noise(tmp_path):
    """A table built over several invocations keeps the rows a later run does not redo; a
    grid file is labelled as optimised; ahead / behind need a gap beyond the summed noise."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sampler_peers import label, merge, verdict

    from scorelab.sampling.grids import save_grid_file

    old = [{"sampler": "a", "nfe_budget": 4, "fid": 9.0}, {"sampler": "a", "nfe_budget": 6,
                                                          "fid": 7.0}]
    new = [{"sampler": "a", "nfe_budget": 6, "fid": 6.0}, {"sampler": "b", "nfe_budget": 6,
                                                          "fid": 5.0}]
    assert merge(old, new) == [old[0]] + new
    grid = tmp_path / "mine.json"
    save_grid_file(grid, {2: [1.0, 0.5, 0.0]})
    assert label({"name": "unipc", "order": 2, "grid": str(grid)}) == \
        "unipc[order=2,grid=optimised(mine)]"
    assert label({"name": "edm", "steps": 9}) == "edm"
    row = lambda fid, noise: {"fid": fid, "fid_noise": noise}  # noqa: E731
    assert verdict(row(5.0, 0.1), row(5.15, 0.1)) == "tie"
    assert verdict(row(5.0, 0.1), row(5.3, 0.1)) == "ahead"
    assert verdict(row(5.3, 0.1), row(5.0, 0.1)) == "behind"


@pytest.mark.parametrize("path_name", ["vp", "ve"])
def test_kdiffusion_peers_see_the_network_as_the_exact_ve_denoiser(path_name):
    """k-diffusion's samplers run in VE coordinates (x / alpha, sigma / alpha): wrapped by
    ``ve_denoiser``, the mixture's exact prediction on a VP or VE path is the mixture's own
    denoiser at alpha = 1, sigma / alpha (a closed form independent of the path)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sampler_peers import is_peer, ve_denoiser

    from scorelab.models.mixture import GaussianMixture
    from scorelab.paths.sde import VESDE, VPSDE

    path = VPSDE() if path_name == "vp" else VESDE()
    mixture = GaussianMixture.ring(dim=2, n_components=4)
    denoise = ve_denoiser(path, mixture.prediction_fn(path))
    sigma = torch.tensor([0.02, 0.3, 1.0, 5.0, 40.0])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)) * (1 + sigma[:, None])
    want = mixture.noised_denoiser(x, torch.ones(5), sigma)
    torch.testing.assert_close(denoise(x, sigma), want, rtol=1e-4, atol=1e-5)
    assert is_peer("k-diffusion dpmpp_2m[karras]") and is_peer("diffusers unipc")
    assert not is_peer("unipc[order=2]")


def test_reverse_variances_collects_fid_by_variance_and_steps_and_the_bounds(tmp_path):
    """benchmarks/reverse_variances.py: each model's ancestral FID points by variance and
    steps and its vlb / elbo / bpd, from evaluate.py's metrics.json files."""
    import json

    def write(where, data):
        where.mkdir(parents=True)
        (where / "metrics.json").write_text(json.dumps(data))
    for i, (variance, steps, fid) in enumerate([("posterior", 25, 30.0), ("learned", 25, 9.5),
                                                ("learned", 250, 4.0)]):
        write(tmp_path / "sweep" / str(i), {"fid": fid, "sample_settings": {
            "steps": steps, "sampler": {"name": "pc", "predictor": "ancestral",
                                        "variance": variance}}})
    write(tmp_path / "lik", {"vlb": 1.5, "vlb_stderr": 0.01, "vlb_prior": 0.0,
                             "elbo": 1.2, "elbo_stderr": 0.02, "bpd": 1.1, "bpd_stderr": 0.01})
    out = tmp_path / "out" / "rv"
    model = f"learned={tmp_path / 'sweep'},{tmp_path / 'lik'}"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/reverse_variances.py"),
                           model, "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())["learned"]
    assert result["fid"] == {"posterior": {"25": 30.0}, "learned": {"25": 9.5, "250": 4.0}}
    assert result["bounds"]["vlb"] == 1.5 and result["bounds"]["bpd"] == 1.1
    md = out.with_suffix(".md").read_text()
    assert "| learned | learned | 9.50 | 4.00 |" in md
    assert "| learned | posterior | 30.00 |  |" in md
    assert "| learned | 1.500 ± 0.010 | 1.200 ± 0.020 | 1.100 ± 0.010 |" in md
    assert out.with_suffix(".png").is_file()
