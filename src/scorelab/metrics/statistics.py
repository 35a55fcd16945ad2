"""Two-sample statistics on feature sets (e.g. Inception pool3 features of real and generated
images): Kernel Inception Distance, precision / recall / density / coverage, energy distance.

All of them take two feature matrices ``[N, D]`` and ``[M, D]`` and work in float64. Pairwise
distances come from ``torch.cdist`` in blocks of rows, so 10k x 10k sets never hold more
than one ``[chunk_size, M]`` block of distances at a time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["energy_distance", "kid", "prdc"]

# Differences, not the |a|^2 + |b|^2 - 2 a.b expansion: d(a, b) is then bitwise d(b, a)
# and d(a, a) is exactly 0, whatever block a pair falls in. PRDC compares distances with
# radii measured in another pass, so a point at exactly the k-th-neighbour distance must
# get the same number in both passes (a set scored against itself relies on it), and the
# expansion also loses digits to cancellation when features are far from the origin (its
# d(a, a) on offset 512-d features is ~1e-5, not 0). The price: about 5x the matrix-product
# time on CPU.
_CDIST_MODE = "donot_use_mm_for_euclid_dist"


def _features(x: Tensor, name: str, min_rows: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [num_samples, num_features], "
                        f"got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [num_samples, num_features], got shape "
                         f"{tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no features (shape {tuple(x.shape)})")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples, got {x.shape[0]}")
    return x.to(torch.float64)


def _same_dim(x: Tensor, y: Tensor, names: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names} have different feature sizes: {x.shape[1]} vs {y.shape[1]} "
                         "(were they made with the same extractor?)")


def _check_chunk(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _distance_blocks(a: Tensor, b: Tensor, chunk_size: int, diagonal: float | None = None):
    """Yields (row slice, cdist(a[rows], b)). With ``diagonal`` (b is a), the entries of
    each row with itself are set to that value."""
    for start in range(0, a.shape[0], chunk_size):
        rows = slice(start, min(start + chunk_size, a.shape[0]))
        d = torch.cdist(a[rows], b, compute_mode=_CDIST_MODE)
        if diagonal is not None:
            i = torch.arange(d.shape[0], device=d.device)
            d[i, i + start] = diagonal
        yield rows, d


def _knn_radii(x: Tensor, ks: tuple[int, ...], chunk_size: int) -> list[Tensor]:
    """For each k, the distance from every row of x to its k-th nearest other row."""
    kmax = max(ks)
    out = [torch.empty(x.shape[0], dtype=x.dtype, device=x.device) for _ in ks]
    # inf on the diagonal: a point is not its own neighbour.
    for rows, d in _distance_blocks(x, x, chunk_size, diagonal=math.inf):
        nearest = d.topk(kmax, dim=1, largest=False, sorted=True).values
        for r, k in zip(out, ks):
            r[rows] = nearest[:, k - 1]
    return out


# --------------------------------------------------------------------------------------------
# Kernel Inception Distance


def _mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    # The diagonals k(x_i, x_i) are left out: they are not draws of k(X, X') for independent
    # X, X', and keeping them is what makes the plain (V-statistic) estimate biased upwards.
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2 * kxy.mean()


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski, Sutherland, Arbel & Gretton 2018, "Demystifying
    MMD GANs"): the squared maximum mean discrepancy between the two feature laws under the
    cubic polynomial kernel

        k(x, y) = (x . y / d + 1)^3,            d = number of features,

    estimated without bias (Gretton et al. 2012, "A Kernel Two-Sample Test", Lemma 6) on
    ``m = min(subset_size, N, M)`` rows drawn without replacement from each set:

        MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
                  - 2/m^2 sum_{i, j} k(x_i, y_j).

    Returns (mean, std) of MMD^2_u over ``subsets`` independent draws of the subsets; the
    std is the population one (divisor ``subsets``, as in the reference implementations) so
    that ``subsets=1`` gives 0 rather than nan. The mean is an unbiased estimate of MMD^2,
    so it can be slightly negative when both sets come from the same law.

    The subsets come from ``torch.randperm`` with ``generator`` (global RNG if None); a
    generator seeded the same gives the same result. Computed in float64.
    """
    real = _features(real, "kid: real", 2)
    fake = _features(fake, "kid: fake", 2)
    _same_dim(real, fake, "kid: real and fake")
    if not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"kid: subsets must be an int >= 1, got {subsets!r}")
    if not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"kid: subset_size must be an int >= 2 (the unbiased estimator "
                         f"needs pairs of distinct samples), got {subset_size!r}")
    m = min(subset_size, real.shape[0], fake.shape[0])
    # randperm must run where the generator lives; the indices then follow the features.
    rng_device = generator.device if generator is not None else torch.device("cpu")
    values = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        i = torch.randperm(real.shape[0], generator=generator, device=rng_device)[:m]
        j = torch.randperm(fake.shape[0], generator=generator, device=rng_device)[:m]
        values[s] = _mmd2_unbiased(real[i.to(real.device)], fake[j.to(fake.device)]).cpu()
    return float(values.mean()), float(values.std(correction=0))


# --------------------------------------------------------------------------------------------
# Precision, recall, density, coverage


def prdc(real: Tensor, fake: Tensor, k_pr: int = 3, k_dc: int = 5, *,
         chunk_size: int = 1024) -> dict[str, float]:
    """Precision and recall of Kynkaanniemi, Karras, Laine, Lehtinen & Aila 2019 ("Improved
    Precision and Recall Metric for Assessing Generative Models") and density and coverage
    of Naeem, Oh, Uh, Choi & Yoo 2020 ("Reliable Fidelity and Diversity Metrics for
    Generative Models").

    Each set's manifold is the union of closed balls B(x, r_k(x)) around its samples, where
    r_k(x) is the distance from x to its k-th nearest *other* sample of the same set. With
    real samples x_1..x_N and fake samples y_1..y_M:

        precision = 1/M sum_j 1[exists i: |y_j - x_i| <= r_{k_pr}(x_i)]
        recall    = 1/N sum_i 1[exists j: |x_i - y_j| <= r_{k_pr}(y_j)]
        density   = 1/(k_dc M) sum_j sum_i 1[|y_j - x_i| <= r_{k_dc}(x_i)]
        coverage  = 1/N sum_i 1[min_j |x_i - y_j| <= r_{k_dc}(x_i)]

    Density is not bounded by 1; for independent sets from the same continuous law its
    expectation is exactly 1, and it is (k_dc + 1) / k_dc for a set scored against itself
    (each ball holds its centre and its k_dc nearest neighbours).

    Needs k_pr < N, k_pr < M and k_dc < N (a k-th other sample must exist). Euclidean
    distances in float64 from torch.cdist, ``chunk_size`` rows at a time.
    """
    real = _features(real, "prdc: real", 2)
    fake = _features(fake, "prdc: fake", 2)
    _same_dim(real, fake, "prdc: real and fake")
    _check_chunk(chunk_size)
    for name, k in (("k_pr", k_pr), ("k_dc", k_dc)):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"prdc: {name} must be an int >= 1, got {k!r}")
    n, m = real.shape[0], fake.shape[0]
    if k_pr >= n:
        raise ValueError(f"prdc: k_pr={k_pr} needs more than {k_pr} real samples for the "
                         f"real k-NN balls (precision), got {n}")
    if k_pr >= m:
        raise ValueError(f"prdc: k_pr={k_pr} needs more than {k_pr} fake samples for the "
                         f"fake k-NN balls (recall), got {m}")
    if k_dc >= n:
        raise ValueError(f"prdc: k_dc={k_dc} needs more than {k_dc} real samples for the "
                         f"real k-NN balls (density, coverage), got {n}")
    fake = fake.to(real.device)

    real_r_pr, real_r_dc = _knn_radii(real, (k_pr, k_dc), chunk_size)
    (fake_r_pr,) = _knn_radii(fake, (k_pr,), chunk_size)

    # Rows are real samples, exactly as in the pass that measured the real radii, so that a
    # fake sample equal to a real one meets each real ball's edge at the same value.
    in_some_real_ball = torch.zeros(m, dtype=torch.bool, device=real.device)
    in_some_fake_ball = torch.zeros(n, dtype=torch.bool, device=real.device)
    covered = torch.zeros(n, dtype=torch.bool, device=real.device)
    density_hits = 0
    for rows, d in _distance_blocks(real, fake, chunk_size):
        in_some_real_ball |= (d <= real_r_pr[rows, None]).any(dim=0)
        in_some_fake_ball[rows] = (d <= fake_r_pr[None, :]).any(dim=1)
        in_dc = d <= real_r_dc[rows, None]
        density_hits += int(in_dc.sum())
        covered[rows] = in_dc.any(dim=1)

    return {
        "precision": int(in_some_real_ball.sum()) / m,
        "recall": int(in_some_fake_ball.sum()) / n,
        "density": density_hits / (k_dc * m),
        "coverage": int(covered.sum()) / n,
    }


# --------------------------------------------------------------------------------------------
# Energy distance


def _distance_sum(a: Tensor, b: Tensor, chunk_size: int, diagonal: float | None = None) -> float:
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for _, d in _distance_blocks(a, b, chunk_size, diagonal=diagonal):
        total += d.sum()
    return float(total)


def energy_distance(x: Tensor, y: Tensor, *, chunk_size: int = 1024) -> float:
    """Energy distance of Szekely & Rizzo (2004, "Testing for equal distributions in high
    dimension"; 2013, "Energy statistics: A class of statistics based on distances")

        E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,

    with X' an independent copy of X (Euclidean norms). E(X, Y) >= 0, with equality exactly
    when the laws are equal. This is the energy distance itself, not its square root (scipy's
    ``stats.energy_distance`` returns the square root of the V-statistic below).

    Estimated by the unbiased U-statistic, which leaves out the zero i == j terms:

        2/(NM) sum_{i,j} |x_i - y_j| - 1/(N(N-1)) sum_{i != i'} |x_i - x_i'|
                                     - 1/(M(M-1)) sum_{j != j'} |y_j - y_j'|.

    Unlike the V-statistic (divisors N^2 and M^2, always >= 0 but biased upwards by about
    E|X - X'|/N + E|Y - Y'|/M) it can be slightly negative when the laws are equal.
    Float64, ``chunk_size`` rows of distances at a time.
    """
    x = _features(x, "energy_distance: x", 2)
    y = _features(y, "energy_distance: y", 2)
    _same_dim(x, y, "energy_distance: x and y")
    _check_chunk(chunk_size)
    y = y.to(x.device)
    n, m = x.shape[0], y.shape[0]
    xy = _distance_sum(x, y, chunk_size) / (n * m)
    # 0 on the diagonals: i == i' is not a pair of independent draws.
    xx = _distance_sum(x, x, chunk_size, diagonal=0.0) / (n * (n - 1))
    yy = _distance_sum(y, y, chunk_size, diagonal=0.0) / (m * (m - 1))
    return 2 * xy - xx - yy
