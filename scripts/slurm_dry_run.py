"""Print the sbatch script that ``python train.py -m hydra/launcher=slurm ...`` would submit,
without a cluster (a dry run of the SLURM launcher config).

    python scripts/slurm_dry_run.py [train.py overrides ...]

The train config is composed with ``hydra/launcher=slurm`` and the overrides, its launcher
node turned into submitit parameters as hydra-submitit-launcher does, and submitit's SLURM
executor writes the submission file for one job.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from unittest import mock

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from scorelab.conf import CONF_DIR

CONF = CONF_DIR


def sbatch_text(overrides: list[str]) -> str:
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.job.name=train",
                                          *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    folder = params.pop("submitit_folder")
    # submitit's SLURM executor looks for srun before it writes anything: pretend there is one
    real_which = shutil.which
    with mock.patch("shutil.which",
                    lambda name, *a, **k: f"/usr/bin/{name}" if name == "srun"
                    else real_which(name, *a, **k)):
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v
                                  for k, v in params.items()})
    command = " ".join([sys.executable, "-u", "-m", "submitit.core._submit", folder])
    return executor._executor._make_submission_file_text(command, "dry_run")


if __name__ == "__main__":
    print(sbatch_text(sys.argv[1:]))
