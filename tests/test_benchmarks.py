"""The benchmark scripts run end to end (their numbers are for people, not asserts)."""

import re
import subprocess
import sys

from conftest import ROOT


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
