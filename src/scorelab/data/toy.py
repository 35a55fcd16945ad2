"""The Gaussian-mixture toy: samples drawn once from a fixed seed; exposes the exact density."""

from __future__ import annotations

import torch

from scorelab.util.checks import check_values, integer, number, one_of
from scorelab.data.base import DiffusionDataModule, tensor_dataset
from scorelab.models.mixture import GaussianMixture


class GMMDataModule(DiffusionDataModule):
    """Args:
        dim: data dimension.
        n_components: number of mixture components.
        layout: "ring" (means on a circle in the first two coordinates) or "random".
        radius: ring radius / half-width of the random means' box.
        std: component standard deviation.
        n_samples: size of the dataset drawn from the mixture.
        data_seed: seed of the means (random layout) and of the drawn samples.
        **kwargs: ``DiffusionDataModule`` options.
    """

    is_image = False
    name = "gmm"
    RULES = {"dim": integer(1), "n_components": integer(1),
             "layout": one_of(("ring", "random"), "layout"), "radius": number(0),
             "std": number(0, lo_open=True), "n_samples": integer(2), "data_seed": integer()}

    def __init__(self, dim: int = 2, n_components: int = 8, layout: str = "ring",
                 radius: float = 1.0, std: float = 0.1, n_samples: int = 20000,
                 data_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        check_values("data", dict(dim=dim, n_components=n_components, layout=layout,
                                  radius=radius, std=std, n_samples=n_samples,
                                  data_seed=data_seed), self.RULES)
        if layout == "ring":
            if dim < 2:
                raise ValueError(f"data.dim: a ring mixture needs dim >= 2, got {dim}")
            self.mixture = GaussianMixture.ring(dim, n_components, radius, std)
        else:
            self.mixture = GaussianMixture.random(dim, n_components, radius, std, seed=data_seed)
        self.shape = (dim,)
        self.num_classes = n_components
        self.n_samples = n_samples
        self.data_seed = data_seed

    def load(self):
        x, k = self.mixture.sample(self.n_samples, torch.Generator().manual_seed(self.data_seed))
        return tensor_dataset(x, k)
