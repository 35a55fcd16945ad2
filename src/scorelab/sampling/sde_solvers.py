"""Stochastic samplers of the reverse-time SDE (Song et al. 2021, Eq. 6)."""

from __future__ import annotations

import torch

from scorelab.sampling.registry import register
from scorelab.sde import _bcast


@register("euler_maruyama")
def euler_maruyama(score_fn, sde, x, ts, *, generator=None, callback=None,
                   denoise: bool = True):
    """Euler–Maruyama on dx = [f - g^2 score] dt + g dw_bar, stepping t_i -> t_{i+1} < t_i:

        x_mean = x + [f(x, t_i) - g(t_i)^2 s(x, t_i)] (t_{i+1} - t_i)
        x      = x_mean + g(t_i) sqrt(t_i - t_{i+1}) z.

    With ``denoise`` the last step returns x_mean (no noise added at the end), as Score SDE.
    One score evaluation per step.
    """
    rsde = sde.reverse(score_fn)
    dts = ts[1:] - ts[:-1]
    sqrt_dts = (-dts).sqrt()
    batch = x.shape[0]
    x_mean = x
    for i in range(len(dts)):
        t = ts[i].expand(batch)
        drift, diffusion = rsde.sde(x, t)
        x_mean = x + drift * dts[i]
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x_mean + _bcast(diffusion, x) * sqrt_dts[i] * noise
        if callback is not None:
            callback(i, x)
    return (x_mean if denoise else x), len(dts)
