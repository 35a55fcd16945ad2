"""Metrics against a data law known exactly (the Gaussian-mixture toy, ``data.mixture``).

* ``energy``: energy distance (Szekely & Rizzo) of the samples to the mixture,
  E(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, unbiased, against ``num_reference`` fresh
  draws of the exact mixture (not the finite training set). 0 exactly when the laws agree,
  comparable across heads, paths and samplers, unlike their losses.
* The gap of the model's NLL to the exact one comes with bits/dim (``likelihood.py``): on
  vector data with an exact density, ``bpd`` also reports ``nll_gap``.
"""

from __future__ import annotations

import torch

from scorelab.metrics.registry import SampleMetric, register_metric
from scorelab.metrics.statistics import energy_distance
from scorelab.util.checks import check_values, integer, optional


@register_metric("energy")
class EnergyToMixture(SampleMetric):
    """Args:
        num_reference: exact draws to compare with (None: as many as samples).
        seed: seed of those draws (the same on every process).
    """

    def __init__(self, num_reference: int | None = None, seed: int = 0):
        super().__init__(features="raw")
        check_values("metrics.energy", dict(num_reference=num_reference, seed=seed),
                     {"num_reference": optional(integer(2)), "seed": integer()})
        self.num_reference, self.seed = num_reference, seed

    def skip_reason(self, data):
        if getattr(data, "mixture", None) is None:
            return f"needs data with an exact law (data=gmm), not {data.name}"
        return None

    def reference(self, data, extractor, cache):
        return {"mixture": data.mixture}, "exact mixture draws"

    def compute(self, fake, real):
        x = fake["features"]
        n = self.num_reference or x.shape[0]
        y, _ = real["mixture"].sample(n, torch.Generator().manual_seed(self.seed))
        return {"energy": energy_distance(x, y.reshape(n, -1))}
