"""The ``logger`` group -> the run's Lightning loggers (one, or several at once: ``logger=many``
is CSV + TensorBoard + W&B), with what a dashboard of sweeps needs: every run's config
logged flat ("optim.optimizer.lr"), so runs can be filtered by any value; and for W&B,
each run its own W&B run whose id is kept in the run directory (``wandb_run_id``) so that ``resume=true`` continues it, and the runs of one ``-m`` sweep in one group named
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
from scorelab.util.errors import ConfigError

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


def logger_nodes(cfg: DictConfig) -> list[str]:
    """The config keys of the run's loggers: ``logger`` itself when it is one logger (a
    ``_target_``), else each of its entries that is one (``logger=many``: csv, tensorboard,
    wandb; an entry set to null is switched off)."""
    node = cfg.get("logger")
    if not node:
        return []
    if "_target_" in node:
        return ["logger"]
    return [f"logger.{k}" for k, v in node.items() if v]


def _wandb_arguments(cfg: DictConfig, key: str, out: Path) -> dict:
    """The W&B run id kept in the run directory (a resumed run continues its W&B run) and,
    in a sweep, the group and job type."""
    id_file = out / RUN_ID_FILE
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(4)           # W&B ids: letters and digits
        if rank_zero_only.rank == 0:            # (only rank 0 logs to W&B)
            id_file.write_text(run_id + "\n")
    extra = {"id": run_id, "resume": "allow"}
    identity = sweep_identity()
    if identity is not None and OmegaConf.select(cfg, f"{key}.group") is None:
        extra["group"], extra["job_type"] = identity
    return extra


def build_logger(cfg: DictConfig, out: Path) -> list:
    """The run's Lightning loggers (empty: none), each with the flat config logged."""
    loggers = []
    for key in logger_nodes(cfg):
        target = str(OmegaConf.select(cfg, f"{key}._target_"))
        extra = _wandb_arguments(cfg, key, out) if target.endswith("WandbLogger") else {}
        loggers.append(make(cfg, key, **extra))
    for logger in loggers:
        try:
            logger.log_hyperparams(flat_config(cfg))     # (W&B starts its run here)
        except Exception as e:  # noqa: BLE001 - W&B's own errors: no account, no network
            if not type(e).__module__.startswith("wandb"):
                raise
            raise ConfigError(f"logger: W&B could not start ({str(e).splitlines()[0]}); "
                              f"log in (wandb login) or run with WANDB_MODE=offline") from None
    return loggers


def close_loggers(loggers) -> None:
    """Write out what was logged after training (the final sample grid: TensorBoard's writer
    would keep it buffered) and end this job's W&B run (a sweep's next job starts its own)."""
    for logger in loggers or []:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()
