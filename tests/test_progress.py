"""Long metric work shows progress on stderr: FID/IS samples and bits/dim examples drawn,
with the NFE of the last chunk."""

import re

import pytest

from conftest import run

TINY = ["experiment=digits_ve_eps", "backbone.channels=8", "trainer.max_steps=4",
        "trainer.val_check_interval=4", "sampler.steps=5", "num_samples=4",
        "callbacks.sample_grid=null", "callbacks.progress.refresh_rate=50"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    base = tmp_path_factory.mktemp("progress")
    run("train.py", *TINY, f"hydra.run.dir={base / 'train'}", cwd=base)
    return base / "train/checkpoints/last.ckpt"


def test_evaluate_prints_fid_and_bpd_progress(ckpt, tmp_path):
    proc = run("evaluate.py", f"ckpt={ckpt}", "metrics=[fid,bpd]", "num_samples=8",
               "sample_batch_size=4", "sampler=ddim", "sampler.steps=3",
               "metrics.bpd.num_examples=6", "metrics.bpd.chunk=3", "metrics.bpd.rtol=1e-3",
               "metrics.bpd.atol=1e-3", f"metrics.fid.cache_dir={tmp_path / 'stats'}",
               f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    err = proc.stderr
    assert "FID/IS samples 4/8 [NFE 3]" in err and "FID/IS samples 8/8 [NFE 3]" in err, err[-3000:]
    done = re.findall(r"bits/dim examples 6/6 \[NFE (\d+)\]", err)
    assert done and int(done[-1]) > 10, err[-3000:]
    assert "bits/dim examples 3/6" in err
