"""The sample metrics researchers report: FID, Inception Score, KID, precision / recall /
density / coverage, class accuracy and per-class FID, each one registered class computed
from the samples' features (and the real data's, on the same extractor).

    FID  = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))        (Heusel et al. 2017)
    IS   = exp(E_x KL(p(y|x) || p(y)))                               (Salimans et al. 2016)
    KID  = unbiased MMD^2, cubic kernel, mean and std over subsets   (Binkowski et al. 2018)
    PRDC = k-NN manifold precision / recall (Kynkaanniemi et al. 2019, k = 3), density /
           coverage (Naeem et al. 2020, k = 5)

The formulas live in ``fid.py`` and ``statistics.py``; these classes say what each needs
and name its values.
"""

from __future__ import annotations

import torch

from scorelab.metrics.fid import (class_accuracy, feature_statistics, frechet_distance,
                                  inception_score)
from scorelab.metrics.registry import SampleMetric, register_metric
from scorelab.metrics.statistics import kid, prdc
from scorelab.util.checks import check_values, integer


@register_metric("fid")
class FID(SampleMetric):
    """Frechet distance of the sample features to the real data's statistics.

    Args:
        features / cache_dir: see ``SampleMetric``.
        reference: precomputed statistics (.npz with mu, sigma); None: computed once, cached.
        inception_weights: local InceptionV3 weights file for features=inception.
    """

    def __init__(self, features="auto", reference=None, cache_dir=None, inception_weights=None):
        super().__init__(features, cache_dir)
        self.reference_file, self.inception_weights = reference, inception_weights

    def feature_options(self) -> dict:
        return {"weights": self.inception_weights} if self.inception_weights else {}

    def reference(self, data, extractor, cache):
        return cache(False, self.reference_file)

    def compute(self, fake, real):
        return {"fid": frechet_distance(feature_statistics(fake["features"]), real)}


@register_metric("is")
class InceptionScore(SampleMetric):
    """Inception Score of the extractor's logits, mean and std over ``splits`` splits."""

    needs_logits = True

    def __init__(self, splits: int = 10, features="auto", cache_dir=None):
        super().__init__(features, cache_dir)
        check_values("metrics.is", {"splits": splits}, {"splits": integer(1)})
        self.splits = splits

    def reference(self, data, extractor, cache):
        return None, None

    def compute(self, fake, real):
        n = fake["logits"].shape[0]
        mean, std = inception_score(fake["logits"], min(self.splits, n))
        return {"is": mean, "is_std": std}


@register_metric("kid")
class KID(SampleMetric):
    """Kernel Inception Distance: unbiased MMD^2 of the features under the cubic kernel,
    mean (``kid``) and std (``kid_std``) over ``subsets`` draws of ``subset_size`` rows of
    each set (fewer when a set is smaller), from a generator seeded with ``seed``."""

    needs_real_features = True

    def __init__(self, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                 features="auto", cache_dir=None):
        super().__init__(features, cache_dir)
        check_values("metrics.kid", dict(subsets=subsets, subset_size=subset_size, seed=seed),
                     {"subsets": integer(1), "subset_size": integer(2), "seed": integer()})
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed

    def compute(self, fake, real):
        gen = torch.Generator().manual_seed(self.seed)
        mean, std = kid(torch.as_tensor(real["features"]), fake["features"], self.subsets,
                        self.subset_size, gen)
        return {"kid": mean, "kid_std": std}


@register_metric("prdc")
class PRDC(SampleMetric):
    """Precision and recall (k-NN balls with ``k_pr`` neighbours) and density and coverage
    (``k_dc``) of the samples against ``num_real`` real features (None: as many as there
    are samples; a fixed random subset, generator seeded with ``seed``, when the data has
    more: the k-NN radii depend on the set's size, so both sets are alike)."""

    needs_real_features = True

    def __init__(self, k_pr: int = 3, k_dc: int = 5, num_real: int | None = None,
                 seed: int = 0, features="auto", cache_dir=None):
        super().__init__(features, cache_dir)
        check_values("metrics.prdc", dict(k_pr=k_pr, k_dc=k_dc, seed=seed),
                     {"k_pr": integer(1), "k_dc": integer(1), "seed": integer()})
        if num_real is not None:
            check_values("metrics.prdc", {"num_real": num_real}, {"num_real": integer(2)})
        self.k_pr, self.k_dc, self.num_real, self.seed = k_pr, k_dc, num_real, seed

    def compute(self, fake, real):
        feats = torch.as_tensor(real["features"])
        n = min(self.num_real or fake["features"].shape[0], feats.shape[0])
        if n < feats.shape[0]:
            pick = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(
                self.seed))[:n]
            feats = feats[pick.sort().values]
        return prdc(feats, fake["features"], self.k_pr, self.k_dc)


@register_metric("accuracy")
class ClassAccuracy(SampleMetric):
    """Share of samples of a conditional (or classifier-guided) model that the extractor's
    classifier assigns to the class they were generated for: overall, worst class, and per
    class (a list)."""

    needs_logits = True
    needs_labels = True

    def reference(self, data, extractor, cache):
        return None, None

    def compute(self, fake, real):
        labels, hit = fake["labels"], fake["logits"].argmax(1) == fake["labels"]
        per_class = [float(hit[labels == c].double().mean())
                     for c in labels.unique().tolist()]
        return {"class_accuracy": class_accuracy(fake["logits"], labels),
                "worst_class_accuracy": min(per_class), "per_class_accuracy": per_class}


@register_metric("class_fid")
class ClassFID(SampleMetric):
    """FID of each class's samples against that class's real images: mean over classes
    (``class_fid``), worst class, and per class (a list). Classes with fewer than two
    samples or real images are left out."""

    needs_real_features = True
    needs_labels = True

    def compute(self, fake, real):
        feats, labels = torch.as_tensor(real["features"]), torch.as_tensor(real["labels"])
        per_class = []
        for c in fake["labels"].unique().tolist():
            mine, theirs = fake["features"][fake["labels"] == c], feats[labels == c]
            if len(mine) >= 2 and len(theirs) >= 2:
                per_class.append(frechet_distance(feature_statistics(mine),
                                                  feature_statistics(theirs)))
        if not per_class:
            return {}
        return {"class_fid": sum(per_class) / len(per_class), "worst_class_fid": max(per_class),
                "per_class_fid": per_class}
