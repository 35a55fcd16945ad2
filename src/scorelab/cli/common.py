"""What the three commands share: one-line errors, output files, progress bars."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from scorelab.errors import ScorelabError

log = logging.getLogger("scorelab")


def reports_errors(main):
    """Turn the errors a user can fix into one line on stderr and exit status 2."""
    @functools.wraps(main)
    def wrapper(cfg):
        try:
            return main(cfg)
        except ScorelabError as e:
            print(f"scorelab: error: {e}", file=sys.stderr)
            sys.exit(2)
    return wrapper


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


class SamplingProgress:
    """A tqdm bar driven by the samplers' per-step callback."""

    def __init__(self, total_steps: int, desc: str = "sampling"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, desc=desc, leave=False)

    def __call__(self, i, x):
        self.bar.update(1)

    def close(self):
        self.bar.close()
