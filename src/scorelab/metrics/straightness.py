"""How straight a model's flow is (Liu et al. 2023, "Flow Straight and Fast", Def. 2.4):

    S = int_0^T E || (x_T - x_0) / T - v(x_t, t) ||^2 dt / T,

the mean squared deviation of the velocity along the model's own ODE trajectory from the
trajectory's average velocity, per dimension; 0 exactly for straight trajectories, which one
Euler step integrates without error. Estimated on ``num_samples`` prior draws with Euler's
method on ``steps`` uniform steps from T to 0 (v read off the model's prediction, on any
path), chunked and split across processes like the held-out metrics.
"""

from __future__ import annotations

import math

import torch

from scorelab.metrics.evaluation import chunk_generator, gather_union, my_chunks
from scorelab.metrics.registry import HeldoutMetric, register_metric
from scorelab.sampling.grids import make_grid
from scorelab.util.checks import check_values, integer
from scorelab.util.interrupt import requested


def straightness(model, path, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """S [B] of the Euler trajectories from x on the grid ``ts`` (T to 0): the mean over
    steps and dimensions of || v_i - (x_T - x_end) / (t_0 - t_n) ||^2."""
    start, velocities = x, []
    times = ts[:, None].expand(len(ts), x.shape[0])
    for i in range(len(ts) - 1):
        v = model(x, times[i]).velocity
        velocities.append(v)
        x = x + (ts[i + 1] - ts[i]) * v
    mean = (start - x) / (ts[0] - ts[-1])
    dev = torch.stack([(v - mean).flatten(1).pow(2).mean(1) for v in velocities])
    return dev.mean(0)


@register_metric("straightness")
class Straightness(HeldoutMetric):
    """Args:
        num_samples: prior draws (trajectories).
        steps: Euler steps of each trajectory.
        chunk: trajectories per batch.
    """

    def __init__(self, num_samples: int = 256, steps: int = 32, chunk: int = 128):
        check_values("metrics.straightness", dict(num_samples=num_samples, steps=steps,
                                                  chunk=chunk),
                     {"num_samples": integer(1), "steps": integer(1), "chunk": integer(1)})
        self.num_samples, self.steps, self.chunk = num_samples, steps, chunk
        self.key = "straightness"

    def items(self, data):
        return self.num_samples, "trajectories"

    def run(self, module, data, seed: int, rank: int, world: int, gather, progress):
        """Returns (values, number of trajectories done, number wanted, settings)."""
        path, device = module.model.path, module.device
        ts = make_grid("uniform", path, self.steps, 0.0, device=device)
        rows, index = [], []
        for k, start, size in my_chunks(self.num_samples, self.chunk, rank, world):
            if requested():
                break
            gen = chunk_generator(seed, k, device)
            x = path.prior_sampling((size,) + tuple(module.data_shape), generator=gen,
                                    device=device)
            y = None
            if module.takes_labels:
                y = torch.arange(start, start + size, device=device) % module.num_classes
            with torch.no_grad():
                rows.append(straightness(module.guided_prediction_fn(y), path, x, ts))
            index.append(torch.arange(start, start + size, device=device))
            if progress is not None:
                progress(size, self.steps)
        local = {"index": torch.cat(index) if index else torch.zeros(0, device=device),
                 "value": torch.cat(rows) if rows else torch.zeros(0, device=device)}
        local["index"] = local["index"].long()
        union = gather_union(local, gather)
        done = union["index"].shape[0]
        settings = {"num_samples": self.num_samples, "steps": self.steps, "seed": seed,
                    "processes": world}
        if not done:
            return {}, 0, self.num_samples, settings
        values = union["value"].double()
        return {"straightness": float(values.mean()),
                "straightness_stderr": float(values.std() / math.sqrt(done)) if done > 1
                else 0.0}, done, self.num_samples, settings
