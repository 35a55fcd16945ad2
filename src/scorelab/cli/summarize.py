"""Summary of a multirun sweep directory: one row per job and one per configuration
aggregated over seeds.

    python -m scorelab.cli.summarize SWEEP_DIR [--seed-key seed]

Every job directory of the sweep (it holds ``.hydra/overrides.yaml``) gives a row: its
overrides, its final numbers (``metrics.json``), status and wall time (``job_status.json``,
written by the command-line wrapper), or ``unfinished`` when a job never wrote its status (a
sweep that was interrupted or is still running). Jobs whose overrides differ only in the seed
form one configuration; each number of its completed jobs is given as mean ± the half-width
of the 95 % Student-t interval, mean ± t(0.975, n − 1) · s / √n, with n.

Writes ``summary.csv`` (jobs), ``summary_configs.csv`` and ``summary.md`` (both tables) into
the sweep directory; the sweep's Hydra callback calls it when the sweep ends.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

JOB_STATUS = "job_status.json"
# Bookkeeping numbers that are not results.
NOT_RESULTS = {"seed", "epochs", "processes", "global_step", "num_val_examples"}


def _overrides(job: Path) -> list[str]:
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    return [ln[2:].strip().strip("'\"") for ln in lines if ln.startswith("- ")]


def _numbers(job: Path) -> dict[str, float]:
    """The run's final numbers: metrics.json (a resumed run's latest metrics_step*.json)."""
    files = sorted(job.glob("metrics_step*.json")) or [job / "metrics.json"]
    if not files[-1].is_file():
        return {}
    data = json.loads(files[-1].read_text())
    return {k: float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_RESULTS}


def job_status(run_dir: Path) -> dict:
    """The run directory's ``job_status.json`` ({} when there is none: unfinished)."""
    path = Path(run_dir) / JOB_STATUS
    return json.loads(path.read_text()) if path.is_file() else {}


def job_rows(sweep: Path) -> list[dict]:
    """One dict per job directory: job, overrides (those that differ between jobs; the
    others in common), status, error, wall_time_s, numbers."""
    jobs = [d for d in sweep.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    jobs.sort(key=lambda d: (int(d.name.split("_")[0]) if d.name.split("_")[0].isdigit()
                             else math.inf, d.name))
    rows = []
    common = set.intersection(*(set(_overrides(j)) for j in jobs)) if len(jobs) > 1 else set()
    for job in jobs:
        status = job_status(job) or {"status": "unfinished"}
        rows.append({"job": job.name, "common": [o for o in _overrides(job) if o in common],
                     "overrides": [o for o in _overrides(job) if o not in common],
                     "status": status["status"], "error": status.get("error", ""),
                     "wall_time_s": status.get("wall_time_s"), "numbers": _numbers(job)})
    return rows


def _configuration(overrides: list[str], seed_key: str) -> str:
    return " ".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != seed_key) \
        or "(no overrides)"


def t_quantile(n: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1))


def config_rows(rows: list[dict], seed_key: str = "seed") -> list[dict]:
    """Per configuration: {configuration, jobs, completed, stats: {name: (mean, ci, n)}}."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_configuration(r["overrides"], seed_key), []).append(r)
    out = []
    for name, members in groups.items():
        done = [r for r in members if r["status"] == "completed"]
        keys = sorted({k for r in done for k in r["numbers"]})
        stats = {}
        for key in keys:
            values = [r["numbers"][key] for r in done if key in r["numbers"]]
            n = len(values)
            mean = sum(values) / n
            ci = math.nan
            if n > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
                ci = t_quantile(n) * sd / math.sqrt(n)
            stats[key] = (mean, ci, n)
        out.append({"configuration": name, "jobs": len(members), "completed": len(done),
                    "stats": stats})
    return out


def _fmt(v, digits: int = 8) -> str:
    """CSV cells keep 8 significant digits; the Markdown tables 4."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def write_summary(sweep: Path, seed_key: str = "seed") -> list[Path]:
    """Write summary.csv, summary_configs.csv and summary.md into the sweep directory."""
    sweep = Path(sweep)
    rows = job_rows(sweep)
    configs = config_rows(rows, seed_key)
    numbers = sorted({k for r in rows for k in r["numbers"]})
    with open(sweep / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "overrides", "status", "wall_time_s", *numbers, "error"])
        for r in rows:
            w.writerow([r["job"], " ".join(r["overrides"]), r["status"], _fmt(r["wall_time_s"]),
                        *(_fmt(r["numbers"].get(k)) for k in numbers), r["error"]])
    with open(sweep / "summary_configs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["configuration", "jobs", "completed",
                    *(f"{k}_{part}" for k in numbers for part in ("mean", "ci95", "n"))])
        for c in configs:
            cells = []
            for k in numbers:
                mean, ci, n = c["stats"].get(k, (None, None, 0))
                cells += [_fmt(mean), _fmt(ci), n]
            w.writerow([c["configuration"], c["jobs"], c["completed"], *cells])
    md = [f"# Sweep {sweep}", "", f"{len(rows)} jobs: " + ", ".join(
        f"{sum(r['status'] == s for r in rows)} {s}" for s in ("completed", "failed", "unfinished")
        if any(r["status"] == s for r in rows)), "",
        "Overrides of every job: " + (" ".join(rows[0]["common"]) if rows else "") + "", "",
        "## Jobs", "",
        "| " + " | ".join(["job", "overrides", "status", "wall time (s)", *numbers]) + " |",
        "|" + "---|" * (4 + len(numbers))]
    for r in rows:
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        md.append("| " + " | ".join([r["job"], " ".join(r["overrides"]), status,
                                     _fmt(r["wall_time_s"], 4),
                                     *(_fmt(r["numbers"].get(k), 4) for k in numbers)]) + " |")
    md += ["", f"## Configurations (over {seed_key}s: mean ± 95 % CI, n)", "",
           "| " + " | ".join(["configuration", "completed / jobs", *numbers]) + " |",
           "|" + "---|" * (2 + len(numbers))]
    for c in configs:
        cells = []
        for k in numbers:
            mean, ci, n = c["stats"].get(k, (None, None, 0))
            cells.append("" if mean is None else
                         f"{mean:.4g} ± {ci:.2g} ({n})" if not math.isnan(ci) else
                         f"{mean:.4g} ({n})")
        md.append("| " + " | ".join([c["configuration"], f"{c['completed']} / {c['jobs']}",
                                     *cells]) + " |")
    (sweep / "summary.md").write_text("\n".join(md) + "\n")
    return [sweep / "summary.csv", sweep / "summary_configs.csv", sweep / "summary.md"]


def main(argv=None):
    p = argparse.ArgumentParser(description="Summarise a scorelab multirun sweep directory.")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--seed-key", default="seed", help="the override that repeats a "
                   "configuration (default: seed)")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        p.error(f"{args.sweep_dir}: no such directory")
    paths = write_summary(args.sweep_dir, args.seed_key)
    print(paths[-1].read_text())
    print("wrote " + ", ".join(str(q) for q in paths))


if __name__ == "__main__":
    main()
