"""Bits/dim of held-out examples through the probability-flow ODE (``bpd``), and on data
with an exact density (the Gaussian mixture) the gap of the model's NLL to the exact one.

For images, bits/dim of the 8-bit dequantised pixels; for vectors, the NLL in nats per
dimension, -log p_model(x) / d; for a latent model ``latent_bpd``, bits per dimension of
the autoencoder's latent. With ``data.mixture``:

    nll_gap = mean_i [log p(x_i) - log p_model(x_i)] / d   ~  KL(p || p_model) / d >= 0

on the same held-out examples x_i ~ p (``nll_exact`` is the first term's negative).
"""

from __future__ import annotations

import math

import torch

from scorelab.latent.space import nats_to_latent_bits
from scorelab.likelihood.pf_ode import check_likelihood_options
from scorelab.metrics.evaluation import gather_union, heldout_bits_per_dim
from scorelab.metrics.registry import HeldoutMetric, register_metric
from scorelab.util.checks import check_values, integer


def _mean_stderr(key: str, values: torch.Tensor) -> dict:
    n = values.shape[0]
    return {key: float(values.mean()), f"{key}_stderr": float(values.std() / math.sqrt(n))}


@register_metric("bpd")
class BitsPerDim(HeldoutMetric):
    """Args:
        num_examples: the first held-out examples, split across processes in chunks.
        chunk: examples per ODE solve.
        **likelihood: options of ``log_likelihood`` (divergence, n_probes, probe, eps,
            rtol, atol, solver).
    """

    def __init__(self, num_examples: int = 256, chunk: int = 64, **likelihood):
        check_values("metrics.bpd", dict(num_examples=num_examples, chunk=chunk),
                     {"num_examples": integer(1), "chunk": integer(1)})
        check_likelihood_options(likelihood, "metrics.bpd")
        self.num_examples, self.chunk, self.likelihood = num_examples, chunk, likelihood
        self.key = "bpd"        # or nll_nats_per_dim / latent_bpd, known at run

    def run(self, module, data, seed: int, rank: int, world: int, gather, progress):
        """Returns (values, number of examples done, number wanted, settings)."""
        val = data.val_set
        n = min(self.num_examples, len(val))
        device, latent = module.device, module.latent
        if latent is None:
            x = torch.stack([val[i][0] for i in range(n)]).to(device)
        else:
            # One latent draw per example, the same on every process.
            gen = torch.Generator(device=device).manual_seed(seed)
            x = module.model_input(data.posteriors(val, range(n)).to(device), gen)
        y = torch.tensor([int(val[i][1]) for i in range(n)], device=device)
        model = module.model
        pixels = module.is_image and latent is None
        local, nfe = heldout_bits_per_dim(
            lambda yb: model.prediction_fn(yb if module.conditional else None), model.path,
            x, y, self.chunk, seed, pixels, rank, world, progress=progress, **self.likelihood)
        union = gather_union(local, gather)
        values, done = union["value"], union["value"].shape[0]
        self.key = "bpd" if pixels else "nll_nats_per_dim"
        if latent is not None:
            self.key, values = "latent_bpd", nats_to_latent_bits(values, latent.log_scale_per_dim())
        settings = {**self.likelihood, "num_examples": n, "chunk": self.chunk,
                    "nfe_last_chunk": nfe, "seed": seed, "processes": world}
        if latent is not None:
            settings["space"] = ("latent z of the autoencoder (continuous density, one "
                                 "posterior draw per example; not pixel bits/dim)")
        if not done:
            return {}, 0, n, settings
        result = _mean_stderr(self.key, values)
        mixture = getattr(data, "mixture", None)
        if mixture is not None and latent is None and not pixels:
            xs = x[union["index"].to(device)].cpu()
            exact = -mixture.log_prob(xs.double().flatten(1)) / xs[0].numel()
            result.update(_mean_stderr("nll_gap", values.double() - exact))
            result["nll_exact"] = float(exact.mean())
        return result, done, n, settings
