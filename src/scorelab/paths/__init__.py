"""The forward process: a path gives alpha(t), sigma(t) and their time derivatives, and from
them the SDE (f = alpha'/alpha, g^2 = 2 sigma sigma' - 2 f sigma^2), the log-SNR and its
inverse, and the prior.

* ``sde``: the Score SDE family (VP, sub-VP, VE; Song et al. 2021) -- paths with a diffusion;
* ``interpolants``: the flow-matching paths (linear, cosine), alpha(T) = 0;
* ``schedules``: the beta(t) schedules of the VP family (linear, cosine).

Imports: torch only (math core). Errors are ``ValueError`` / ``TypeError`` that say what is
wrong; the CLI names the override.
"""

from scorelab.paths.interpolants import CosinePath, LinearPath
from scorelab.paths.sde import ForwardPath, SubVPSDE, VESDE, VPSDE

__all__ = ["ForwardPath", "VPSDE", "SubVPSDE", "VESDE", "LinearPath", "CosinePath"]
