"""Progress bars on stderr.

``WorkProgress``: long metric work (FID / IS samples, bits/dim examples, reference
statistics, latent encoding)::

    bar = WorkProgress(500, "FID/IS samples")
    bar.update(250, nfe=50)        # -> "FID/IS samples 250/500 [NFE 50] 00:41<00:41"
    bar.close()

A tqdm counter that also shows the number of function evaluations of the last unit of
work (one refresh per chunk: chunks are seconds each); silent off rank 0 (``enabled=False``)
so a DDP run prints one bar.

``SamplingProgress``: a sampler's progress in function evaluations (NFE), the one unit that
every sampler shares -- an adaptive ODE solver takes an unknown number of them on one grid
interval, so grid steps would show it at 1/1 until the end. It is the samplers' ``callback``
and counts through its ``evaluated()`` hook (``scorelab.sampling.sample``).
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
                        bar_format=self._format(None))

    @staticmethod
    def _format(nfe) -> str:
        """The bar's layout; the NFE once work that has one reported it (encoding has
        none)."""
        shown = "" if nfe is None else f" [NFE {nfe}]"
        return f"{{desc}} {{n_fmt}}/{{total_fmt}}{shown} {{elapsed}}<{{remaining}}"

    def update(self, n: int, nfe: int | None = None) -> None:
        if nfe is not None:
            self.bar.bar_format = self._format(nfe)
        self.bar.update(n)

    def __call__(self, n: int, nfe: int | None = None) -> None:
        self.update(n, nfe)

    def close(self) -> None:
        self.bar.close()


class SamplingProgress:
    """Args:
        batches: sampling calls (batches) this bar follows. The total NFE is estimated once
            the first has finished (the mean NFE per batch so far times ``batches``: exact
            for fixed-grid samplers, and after the last batch); a plain count before.
        desc: what is sampled, e.g. "sampling (edm)".
    """

    def __init__(self, batches: int = 1, desc: str = "sampling", enabled: bool = True):
        from tqdm.auto import tqdm

        self.batches, self.done = int(batches), 0
        self.bar = tqdm(total=None, desc=desc, unit="NFE", leave=False, file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True)

    def evaluated(self) -> None:
        """One model evaluation (called by the sampler)."""
        self.bar.update(1)

    def __call__(self, i, x) -> None:
        """After grid step i: nothing to add (the NFE count moves with the evaluations)."""

    def batch_done(self) -> None:
        """One sampling call (batch) finished."""
        self.done += 1
        self.bar.total = round(self.bar.n * max(self.batches, self.done) / self.done)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
