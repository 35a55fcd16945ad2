"""Progress of long metric work (FID / IS samples, bits/dim examples) on stderr.

    bar = WorkProgress(500, "FID/IS samples")
    bar.update(250, nfe=50)        # -> "FID/IS samples 250/500 [NFE 50] 00:41<00:41"
    bar.close()

A tqdm counter that also shows the number of function evaluations of the last unit of
work (one refresh per chunk: chunks are seconds each); silent off rank 0 (``enabled=False``) so a DDP run prints one bar.
"""

from __future__ import annotations

import sys


class WorkProgress:
    """Args:
        total: units of work (samples or examples) this process will do.
        desc: what is counted, e.g. "bits/dim examples".
        enabled: show the bar (rank 0 only).
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr,
                        leave=True, dynamic_ncols=True, mininterval=0, miniters=1,
                        bar_format=self._format("-"))

    @staticmethod
    def _format(nfe) -> str:
        return f"{{desc}} {{n_fmt}}/{{total_fmt}} [NFE {nfe}] {{elapsed}}<{{remaining}}"

    def update(self, n: int, nfe: int | None = None) -> None:
        if nfe is not None:
            self.bar.bar_format = self._format(nfe)
        self.bar.update(n)

    def __call__(self, n: int, nfe: int | None = None) -> None:
        self.update(n, nfe)

    def close(self) -> None:
        self.bar.close()
