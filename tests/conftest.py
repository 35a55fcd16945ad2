import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from scorelab.conf import CONF_DIR as CONF  # noqa: E402,F401  (the shipped configs)
from scorelab.paths.interpolants import CosinePath, LinearPath  # noqa: E402
from scorelab.paths.sde import SubVPSDE, VESDE, VPSDE  # noqa: E402


def all_sdes():
    """One of each SDE family (VE with a sigma_max suited to unit-scale data) and each
    flow-matching path."""
    return {
        "vp": VPSDE(),
        "vp_cosine": VPSDE(schedule="cosine"),
        "subvp": SubVPSDE(),
        "ve": VESDE(sigma_min=0.01, sigma_max=50.0),
        "linear": LinearPath(),
        "cosine": CosinePath(),
    }


def oracle(gmm, path):
    """The exact model of a mixture: a plain score function on the SDEs (the wrapped
    user-code path), the exact denoiser on paths with alpha(T) = 0, where x0 cannot be read
    off a score."""
    return gmm.prediction_fn(path) if path.alpha_vanishes else gmm.score_fn(path)


@pytest.fixture(params=list(all_sdes()))
def path(request):
    return all_sdes()[request.param]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread: float sums in the same order whatever the machine's core count,
    and small models run many times faster than on oversubscribed cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
