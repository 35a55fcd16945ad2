"""Bits/dim of held-out examples through the probability-flow ODE (``bpd``), the discrete
variational bound (``vlb``) and VDM's continuous-time ELBO (``elbo``), and on data with an
exact density (the Gaussian mixture) the gap of each to the exact NLL.

For images, bits/dim of the 8-bit dequantised pixels; for vectors, the NLL in nats per
dimension, -log p_model(x) / d; for a latent model ``latent_bpd``, bits per dimension of
the autoencoder's latent. With ``data.mixture``:

    nll_gap = mean_i [log p(x_i) - log p_model(x_i)] / d   ~  KL(p || p_model) / d >= 0

on the same held-out examples x_i ~ p (``nll_exact`` is the first term's negative); the
bounds report ``<key>_gap`` the same way (>= the model's own gap: a bound on its NLL).

The bounds (``scorelab.likelihood.bound``) are upper bounds on the same NLL: ``vlb`` of
8-bit images through DDPM's discretised decoder on the raw pixels, ``elbo`` of the pixels
dequantised exactly as ``bpd`` does (+7 bits/dim, in the decoder term), so a model's three
numbers stand in one table. Their terms (prior, diffusion, decoder; ``vlb`` also each step's
L_t) are in metrics.json in the same units.
"""

from __future__ import annotations

import abc
import math

import torch

from scorelab.latent.space import nats_to_latent_bits
from scorelab.likelihood.bound import continuous_elbo, discrete_vlb
from scorelab.likelihood.pf_ode import check_likelihood_options
from scorelab.likelihood.reverse_step import VARIANCES
from scorelab.metrics.evaluation import (chunk_generator, gather_union, heldout_bits_per_dim,
                                         my_chunks)
from scorelab.metrics.registry import HeldoutMetric, register_metric
from scorelab.sampling.grids import make_grid
from scorelab.training.diffusion_module import dataset_examples
from scorelab.util.checks import check_values, integer, number, one_of, optional
from scorelab.util.interrupt import requested


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
        x, y = dataset_examples(module, data, data.val_set, self.num_examples, seed)
        n = x.shape[0]
        latent, model = module.latent, module.model
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
            xs = x[union["index"].to(x.device)].cpu()
            exact = -mixture.log_prob(xs.double().flatten(1)) / xs[0].numel()
            result.update(_mean_stderr("nll_gap", values.double() - exact))
            result["nll_exact"] = float(exact.mean())
        return result, done, n, settings


class _Bound(HeldoutMetric, abc.ABC):
    """A variational bound of held-out examples, per example with its terms, chunked across
    processes like ``bpd``. Subclasses give ``terms(model, path, x, gen, bins)`` ->
    ``BoundTerms`` in nats and the names of their terms."""

    prefix = ""
    term_names = ("prior", "diffusion", "decoder")

    def __init__(self, num_examples: int = 256, chunk: int = 64):
        check_values(f"metrics.{self.prefix}", dict(num_examples=num_examples, chunk=chunk),
                     {"num_examples": integer(1), "chunk": integer(1)})
        self.num_examples, self.chunk = num_examples, chunk
        self.key = self.prefix

    def prepare(self, module, data, seed: int) -> dict:
        """Anything the bound needs before its first chunk; returns settings to record."""
        return {}

    @abc.abstractmethod
    def terms(self, model, path, x, generator, bins):
        """``BoundTerms`` (nats per example) of the examples x; ``bins``: 8-bit pixels."""

    def per_step_width(self) -> int:
        """Columns of the per-step terms (0: none)."""
        return 0

    @abc.abstractmethod
    def evaluations(self) -> int:
        """Model evaluations per example (the progress bar's NFE)."""

    def run(self, module, data, seed: int, rank: int, world: int, gather, progress):
        """Returns (values, number of examples done, number wanted, settings)."""
        x, y = dataset_examples(module, data, data.val_set, self.num_examples, seed)
        n = x.shape[0]
        latent, model = module.latent, module.model
        pixels = module.is_image and latent is None
        settings = {"num_examples": n, "chunk": self.chunk, "seed": seed, "processes": world,
                    **self.prepare(module, data, seed)}
        rows: dict[str, list] = {"index": [], "total": [],
                                 **{name: [] for name in self.term_names}, "per_step": []}
        for k, start, size in my_chunks(n, self.chunk, rank, world):
            if requested():
                break
            xb = x[start:start + size]
            yb = y[start:start + size] if module.conditional else None
            gen = chunk_generator(seed, k, x.device)
            out = self.terms(model.prediction_fn(yb), model.path, xb, gen, pixels)
            rows["index"].append(torch.arange(start, start + size, device=x.device))
            rows["total"].append(out.total)
            for name, value in zip(self.term_names, (out.prior, out.diffusion, out.decoder)):
                rows[name].append(value)
            if out.per_step is not None:
                rows["per_step"].append(out.per_step)
            if progress is not None:
                progress(size, self.evaluations())
        # every process sends the same rows, even one that did no chunk
        width, local = self.per_step_width(), {}
        for key, v in rows.items():
            if key != "per_step":
                local[key] = torch.cat(v) if v else torch.zeros(0, device=x.device)
            elif width:
                local[key] = torch.cat(v) if v else torch.zeros(0, width, device=x.device)
        local["index"] = local["index"].long()
        union = gather_union(local, gather)
        done = union["index"].shape[0]
        if not done:
            return {}, 0, n, settings
        # per dimension: bits for pixels (elbo's dequantisation adds 7, as bpd's), bits of
        # the latent z for a latent model (its scale's log-Jacobian), nats for vectors; the
        # constant goes with the decoder term, so the terms sum to the total
        per_dim = 1.0 / x[0].numel()
        if pixels:
            scale, const = 1 / math.log(2), (7.0 if self.dequantized else 0.0)
        elif latent is not None:
            scale, const = 1 / math.log(2), -latent.log_scale_per_dim() / math.log(2)
        else:
            scale, const = 1.0, 0.0

        def units(nats, constant=True):
            return nats.double() * per_dim * scale + (const if constant else 0.0)
        self.key = self.prefix if pixels else (f"latent_{self.prefix}" if latent is not None
                                               else f"{self.prefix}_nats_per_dim")
        result = _mean_stderr(self.key, units(union["total"]))
        for name in self.term_names:
            last = name == self.term_names[-1]
            result[f"{self.key}_{name}"] = float(units(union[name], last).mean())
        if "per_step" in union:
            result[f"{self.key}_per_step"] = [round(float(v), 6) for v in
                                              units(union["per_step"], False).mean(0)]
        mixture = getattr(data, "mixture", None)
        if mixture is not None and latent is None and not pixels:
            xs = x[union["index"].to(x.device)].cpu()
            exact = -mixture.log_prob(xs.double().flatten(1)) * per_dim
            result.update(_mean_stderr(f"{self.key}_gap", units(union["total"]) - exact))
        return result, done, n, settings


@register_metric("vlb")
class VariationalBound(_Bound):
    """The discrete bound (``likelihood.bound.discrete_vlb``) on a uniform grid of ``steps``
    (null: the path's N) from T to ``eps`` (null: the path's sampling_eps).

    Args:
        num_examples, chunk: as ``bpd``.
        steps: the grid's steps (the chain's length; fewer: a respaced chain).
        eps: the grid's last time t_0 (the decoder's).
        variance: the reverse variance, "auto" (learned if the model has the channels, else
            posterior), posterior, upper, learned or analytic (Analytic-DPM's, its m_t
            estimated from ``analytic_examples`` training examples at the grid's times).
        analytic_examples: training examples for the analytic variance.
    """

    prefix = "vlb"
    dequantized = False

    def __init__(self, num_examples: int = 256, chunk: int = 64, steps: int | None = None,
                 eps: float | None = None, variance: str = "auto",
                 analytic_examples: int = 256):
        check_values("metrics.vlb", dict(steps=steps, eps=eps, variance=variance,
                                         analytic_examples=analytic_examples),
                     {"steps": optional(integer(1)), "eps": optional(number(0, lo_open=True)),
                      "variance": one_of(("auto",) + VARIANCES, "reverse variance"),
                      "analytic_examples": integer(1)})
        super().__init__(num_examples, chunk)
        self.steps, self.eps, self.variance = steps, eps, variance
        self.analytic_examples = analytic_examples
        self._grid = self._m = None

    def prepare(self, module, data, seed):
        model, path = module.model, module.model.path
        kind = self.variance
        if kind == "auto":
            kind = "learned" if model.learns_variance else "posterior"
        if kind == "learned" and not model.learns_variance:
            raise ValueError("metrics.vlb: variance=learned needs a model with learned variance "
                             "channels (backbone.learn_sigma=true)")
        self._kind = kind
        steps = self.steps or path.N
        eps = path.sampling_eps if self.eps is None else self.eps
        self._grid = make_grid("uniform", path, steps, eps, device=module.device)
        self._m = None
        if kind == "analytic":
            self._m = module.x0_variance(self._grid, self.analytic_examples, seed, data)
        return {"variance": kind, "steps": steps, "eps": eps,
                **({"analytic_examples": self.analytic_examples} if kind == "analytic" else {})}

    def per_step_width(self) -> int:
        return len(self._grid) - 1

    def evaluations(self) -> int:
        return len(self._grid)

    def terms(self, model, path, x, generator, bins):
        return discrete_vlb(model, path, x, self._grid, self._kind, self._m,
                            256 if bins else None, generator)


@register_metric("elbo")
class ContinuousELBO(_Bound):
    """VDM's continuous-time bound (``likelihood.bound.continuous_elbo``), images dequantised
    as ``bpd``; ``n_times`` stratified draws of the log-SNR per example (the standard error
    covers them and the examples).

    Args:
        num_examples, chunk: as ``bpd``.
        n_times: draws of the noise level per example.
        eps: the smallest time (the decoder's), as ``bpd``'s.
    """

    prefix = "elbo"
    dequantized = True
    term_names = ("prior", "diffusion", "reconstruction")

    def __init__(self, num_examples: int = 256, chunk: int = 64, n_times: int = 16,
                 eps: float = 1e-5):
        check_values("metrics.elbo", dict(n_times=n_times, eps=eps),
                     {"n_times": integer(1), "eps": number(0, lo_open=True)})
        super().__init__(num_examples, chunk)
        self.n_times, self.eps = n_times, eps

    def prepare(self, module, data, seed):
        return {"n_times": self.n_times, "eps": self.eps}

    def evaluations(self) -> int:
        return self.n_times

    def terms(self, model, path, x, generator, bins):
        if bins:        # dequantised as bpd: x = (k + u) / 256 in [0, 1], seen as 2x - 1
            k = torch.round((x + 1) / 2 * 255)
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = 2 * (k + u) / 256 - 1
        return continuous_elbo(model, path, x, self.n_times, self.eps, generator=generator)
