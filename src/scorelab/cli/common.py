"""What the three commands share: one-line errors, output files."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only

from scorelab.util.errors import ConfigError, Interrupted, ScorelabError
from scorelab.cli.summarize import JOB_STATUS

log = logging.getLogger("scorelab")


def in_sweep() -> bool:
    """Whether this process runs one job of a ``-m`` sweep."""
    from hydra.types import RunMode
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# job_status.json of a training job that was pre-empted and handed to submitit to requeue
REQUEUED = "requeued"


def record_status(status: str, seconds: float, error: str = "") -> None:
    """``job_status.json`` in the run directory (read by ``scorelab.cli.summarize``), written by
    the first process of a multi-process job."""
    if rank_zero_only.rank != 0:
        return
    data = {"status": status, "wall_time_s": round(seconds, 2)}
    if error:
        data["error"] = error
    (output_dir() / JOB_STATUS).write_text(json.dumps(data, indent=2) + "\n")


def reports_errors(main):
    """Turn the errors a user can fix into one line on stderr and exit status 2
    (``Interrupted``: its own status). In a ``-m`` sweep a failing job, whatever the error,
    is recorded as failed in its ``job_status.json`` with its one-line error and the sweep
    goes on (Hydra's runner would stop at a ``sys.exit`` and re-raise other errors); an
    interrupted job stops the sweep."""
    @functools.wraps(main)
    def wrapper(cfg):
        sweep, start = in_sweep(), time.perf_counter()
        try:
            result = main(cfg)
        except Interrupted as e:
            print(f"scorelab: {e}", file=sys.stderr)
            if sweep:
                record_status("interrupted", time.perf_counter() - start, str(e))
            sys.exit(e.exit_code)
        except ScorelabError as e:
            if not sweep:
                print(f"scorelab: error: {e}", file=sys.stderr)
                sys.exit(2)
            error = str(e)
        except Exception as e:  # noqa: BLE001 - a sweep records any failure and goes on
            if not sweep:
                raise
            log.exception("job failed")
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            if sweep:
                record_status("completed", time.perf_counter() - start)
            return result
        print(f"scorelab: error: {error} (job {HydraConfig.get().job.num} failed; the sweep "
              f"goes on)", file=sys.stderr)
        record_status("failed", time.perf_counter() - start, error)
        return None
    return wrapper


def metric_key(name: str) -> str:
    """The metrics.json key of a number by the name a logger shows it under: ``val/loss`` ->
    ``val_loss``, ``train/loss`` (Lightning's ``train/loss_epoch``) -> ``train_loss``,
    ``metrics/fid`` -> ``fid``. A metrics.json key maps to itself."""
    name = name.removeprefix("metrics/").removesuffix("_epoch")
    return name.replace("/", "_")


def optimized(cfg, metrics: dict):
    """What the command returns to Hydra: the number ``cfg.optimized_metric`` names (by its
    logger name or its metrics.json key, ``metric_key``) as a float for a sweeper to
    optimise, or the whole dict when no metric is named."""
    name = cfg.get("optimized_metric")
    if not name:
        return metrics
    value = metrics.get(metric_key(name))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        numbers = sorted(k for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(f"optimized_metric={name}: not a number this run reports; it "
                          f"reports {', '.join(numbers)}")
    return float(value)


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def write_new(path: Path, text: str) -> Path:
    """Write a file that must not exist yet (results are never overwritten)."""
    if path.exists():
        raise ScorelabError(f"{path} already exists; refusing to overwrite a result "
                            f"(choose another hydra.run.dir)")
    path.write_text(text)
    return path


def fresh_path(path: Path, step: int) -> Path:
    """``path`` if it is free, else ``<stem>_step<step><suffix>`` (a resumed run keeps the
    results its earlier part wrote)."""
    if not path.exists():
        return path
    return path.with_name(f"{path.stem}_step{step:06d}{path.suffix}")


def write_json(path: Path, data: dict) -> Path:
    return write_new(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
