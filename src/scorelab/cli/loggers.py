"""The ``logger`` group -> a Lightning logger, with what a dashboard of sweeps needs: every
run's config logged flat ("optim.optimizer.lr"), so runs can be filtered by any value; and
for W&B, each run its own W&B run whose id is kept in the run directory (``wandb_run_id``)
so that ``resume=true`` continues it, and the runs of one ``-m`` sweep in one group named
after the sweep directory, with a job type from the overrides that define the configuration
(all but the seed), so that seeds of one configuration can be grouped again."""

from __future__ import annotations

import secrets
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from scorelab.cli.build import make
from scorelab.cli.common import in_sweep

RUN_ID_FILE = "wandb_run_id"


def flat_config(cfg: DictConfig) -> dict:
    """{"optim.optimizer.lr": 0.004, ...}: every leaf of the resolved config."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if not isinstance(node, list) else str(node)
    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def sweep_identity(seed_key: str = "seed") -> tuple[str, str] | None:
    """(group, job type) of this job of a -m sweep: the sweep directory's name, and the
    overrides the sweep varies (the job's overrides that are not on the sweep's own command
    line, as Hydra recorded it in multirun.yaml), without the seed; W&B allows 64
    characters."""
    if not in_sweep():
        return None
    hc = HydraConfig.get()
    sweep = Path(hc.sweep.dir)
    original = set()
    if (sweep / "multirun.yaml").is_file():
        original = set(OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task)
    varied = [o for o in hc.overrides.task
              if o not in original and o.split("=", 1)[0].lstrip("+~") != seed_key]
    return sweep.name, (",".join(varied) or "default")[:64]


def build_logger(cfg: DictConfig, out: Path):
    if not cfg.get("logger"):
        return False
    extra = {}
    if str(cfg.logger.get("_target_", "")).endswith("WandbLogger"):
        id_file = out / RUN_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)           # W&B ids: letters and digits
            if rank_zero_only.rank == 0:            # (only rank 0 logs to W&B)
                id_file.write_text(run_id + "\n")
        extra = {"id": run_id, "resume": "allow"}
        identity = sweep_identity()
        if identity is not None and cfg.logger.get("group") is None:
            extra["group"], extra["job_type"] = identity
    logger = make(cfg, "logger", **extra)
    logger.log_hyperparams(flat_config(cfg))
    return logger


def finish(logger) -> None:
    """Write out what was logged after training (the final sample grid: TensorBoard's writer
    would keep it buffered) and end this job's W&B run (a sweep's next job starts its own)."""
    if not logger:
        return
    logger.finalize("success")
    if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
        logger.experiment.finish()
