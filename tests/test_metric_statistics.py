"""KID, precision / recall / density / coverage and energy distance against brute-force
double loops, hand-worked cases and closed forms for Gaussian laws."""

import math

import pytest
import torch

from scorelab.metrics.statistics import energy_distance, kid, prdc

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, shift=0.0):
    return torch.randn(*shape, generator=g, dtype=F64) + shift


def cubic(p, q):
    return (p @ q.T / p.shape[1] + 1) ** 3


def kernel_mean(a, b, d):
    """E k(X, Y) for the KID kernel k(x, y) = (x.y/d + 1)^3, X ~ N(a, I), Y ~ N(b, I)
    independent. Given Y, T = X.Y/d + 1 ~ N(m, s^2) with m = a.Y/d + 1, s^2 = |Y|^2/d^2, so
    E[T^3 | Y] = m^3 + 3 m s^2. Writing Y = b + V, c = a.b/d + 1, W = a.V/d ~ N(0, |a|^2/d^2):
    E(c + W)^3 = c^3 + 3c|a|^2/d^2, and E[(c + W)|Y|^2] = c(|b|^2 + d) + 2 a.b/d (odd
    moments of V vanish). Together: c^3 + 3c(|a|^2 + |b|^2 + d)/d^2 + 6 a.b/d^3."""
    ab = float(a @ b)
    c = ab / d + 1
    return c ** 3 + 3 * c * (float(a @ a) + float(b @ b) + d) / d ** 2 + 6 * ab / d ** 3


def population_mmd2(mu):
    """MMD^2 between N(0, I) and N(mu, I) under the KID kernel."""
    d = mu.shape[0]
    zero = torch.zeros(d, dtype=F64)
    return kernel_mean(zero, zero, d) + kernel_mean(mu, mu, d) - 2 * kernel_mean(zero, mu, d)


def normal_abs_mean(m, s):
    """E|Z| for Z ~ N(m, s^2) (folded normal)."""
    phi = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))       # Phi(-m/s)
    return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * phi)


# --------------------------------------------------------------------------------------------
# KID


def test_kernel_mean_closed_form_matches_monte_carlo():
    # The closed form the KID tests below rely on, checked on its own.
    g = gen(0)
    a = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    b = torch.tensor([1.0, 0.3, 0.7], dtype=F64)
    x, y = randn(200_000, 3, g=g, shift=a), randn(200_000, 3, g=g, shift=b)
    k = ((x * y).sum(1) / 3 + 1) ** 3
    assert abs(float(k.mean()) - kernel_mean(a, b, 3)) < 4 * float(k.std()) / math.sqrt(len(k))


@pytest.mark.parametrize("subset_size", [5, 1000])      # 1000 is cut to min(N, M) = 5
def test_kid_matches_brute_force_unbiased_mmd(subset_size):
    g = gen(1)
    x, y = randn(5, 3, g=g), randn(5, 3, g=g, shift=0.4)
    m, d = 5, 3

    def k(p, q):
        return (sum(float(p[t]) * float(q[t]) for t in range(d)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kid(x, y, subsets=1, subset_size=subset_size, generator=gen(2))
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12, abs=1e-12)
    assert std == 0.0                      # one subset: population std, not nan


def test_kid_same_law_is_near_zero_and_shift_is_clearly_positive():
    g = gen(3)
    real, fake = randn(300, 8, g=g), randn(300, 8, g=g)
    same_mean, same_std = kid(real, fake, subsets=20, subset_size=150, generator=gen(4))
    assert abs(same_mean) < 2 * same_std
    means = []
    for shift in (0.5, 1.0, 2.0):                         # |mu| = shift * sqrt(8)
        mean, std = kid(real, fake + shift, subsets=20, subset_size=150, generator=gen(4))
        assert mean > 5 * std
        means.append(mean)
    assert same_mean < means[0] < means[1] < means[2]


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_kid_is_unbiased_and_the_v_statistic_is_not(shift):
    # Many independent small draws: the unbiased estimator averages to the population MMD^2
    # within Monte Carlo error, while keeping the diagonal terms (V-statistic) adds about
    # 2 (E k(X, X) - E k(X, X')) / m, far outside it.
    d, m, draws = 16, 20, 200
    mu = torch.full((d,), shift / math.sqrt(d), dtype=F64)
    target = population_mmd2(mu)
    g = gen(5)
    u, v = [], []
    for _ in range(draws):
        x, y = randn(m, d, g=g), randn(m, d, g=g, shift=mu)
        u.append(kid(x, y, subsets=1, subset_size=m, generator=g)[0])
        v.append(float(cubic(x, x).mean() + cubic(y, y).mean() - 2 * cubic(x, y).mean()))
    u, v = torch.tensor(u), torch.tensor(v)
    se_u, se_v = float(u.std()) / math.sqrt(draws), float(v.std()) / math.sqrt(draws)
    assert abs(float(u.mean()) - target) < 4 * se_u
    assert float(v.mean()) - target > 20 * se_v


def test_kid_is_deterministic_given_the_generator():
    g = gen(6)
    real, fake = randn(60, 4, g=g), randn(50, 4, g=g, shift=0.3)
    a = kid(real, fake, subsets=5, subset_size=20, generator=gen(7))
    assert kid(real, fake, subsets=5, subset_size=20, generator=gen(7)) == a
    assert kid(real, fake, subsets=5, subset_size=20, generator=gen(8)) != a
    # float32 input is promoted, not computed in float32
    b = kid(real.float().double(), fake.float().double(), subsets=5, subset_size=20,
            generator=gen(7))
    assert kid(real.float(), fake.float(), subsets=5, subset_size=20, generator=gen(7)) == b


@pytest.mark.parametrize("real, fake, kwargs, message", [
    (torch.zeros(10), torch.zeros(10, 3), {}, r"real must be 2-D"),
    (torch.zeros(10, 3), torch.zeros(10, 3, 1), {}, r"fake must be 2-D"),
    (torch.zeros(10, 3), torch.zeros(10, 4), {}, r"different feature sizes: 3 vs 4"),
    (torch.zeros(1, 3), torch.zeros(10, 3), {}, r"real needs at least 2 samples, got 1"),
    (torch.zeros(10, 3), torch.zeros(1, 3), {}, r"fake needs at least 2 samples, got 1"),
    (torch.zeros(10, 3), torch.zeros(10, 3), {"subsets": 0}, r"subsets must be an int >= 1"),
    (torch.zeros(10, 3), torch.zeros(10, 3), {"subset_size": 1},
     r"subset_size must be an int >= 2"),
])
def test_kid_rejects_bad_input(real, fake, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kid(real, fake, **kwargs)


# --------------------------------------------------------------------------------------------
# Precision, recall, density, coverage


@pytest.mark.parametrize("k_pr, k_dc", [(3, 5), (1, 1), (2, 4)])
def test_prdc_of_a_set_with_itself(k_pr, k_dc):
    # Every fake point is a real point, so it sits at distance 0 in that point's ball:
    # precision = recall = coverage = 1. For density, the closed ball around real_i holds
    # real_i itself (distance 0) and its k_dc nearest other points (the radius is the
    # distance to the k_dc-th of them; continuous data has no ties) and nothing else, i.e.
    # exactly k_dc + 1 fake points. Summed over N balls and divided by k_dc * M = k_dc * N:
    # density = (k_dc + 1) / k_dc, exactly (integer counts, one rounded division).
    x = randn(150, 6, g=gen(9))
    expected = {"precision": 1.0, "recall": 1.0, "density": (k_dc + 1) / k_dc, "coverage": 1.0}
    assert prdc(x, x.clone(), k_pr=k_pr, k_dc=k_dc) == expected
    assert prdc(x, x.clone(), k_pr=k_pr, k_dc=k_dc, chunk_size=7) == expected


def test_prdc_points_on_a_line_by_hand():
    real = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    fake = torch.tensor([[-8.0], [-0.5], [2.5], [8.0], [9.0]])
    # k = 1. Real radii 1, 1, 2, 3, 4: balls [-1,1] [0,2] [1,5] [3,9] [6,14].
    # Fake radii 7.5, 3, 3, 1, 1: balls [-15.5,-0.5] [-3.5,2.5] [-0.5,5.5] [7,9] [8,10].
    # precision: all but -8 lie in some real ball -> 4/5.
    # recall: 0, 1, 3 lie in fake balls, 10 only on the edge of [8, 10] (<= counts it),
    # 6 in none -> 4/5.
    # density: -8 in 0 balls, -0.5 in 1, 2.5 in 1, 8 in 2, 9 in 2 (one of them on the edge
    # of [3, 9]): 6 / (1 * 5).
    # coverage: the ball [0, 2] of real 1 holds no fake point, the others do -> 4/5.
    assert prdc(real, fake, k_pr=1, k_dc=1) == {
        "precision": 0.8, "recall": 0.8, "density": 1.2, "coverage": 0.8}
    # k = 2. Real radii 3, 2, 3, 4, 7: balls [-3,3] [-1,3] [0,6] [2,10] [3,17], whose union
    # misses only -8; fake radii 10.5, 7.5, 5.5, 5.5, 6.5, whose union [-18.5, 15.5] holds
    # every real point. density counts: -8 -> 0, -0.5 -> 2, 2.5 -> 4, 8 -> 2, 9 -> 2:
    # 10 / (2 * 5). Every real ball holds a fake point.
    assert prdc(real, fake, k_pr=2, k_dc=2) == {
        "precision": 0.8, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    # Swapping the sets swaps precision and recall (same k_pr).
    swapped = prdc(fake, real, k_pr=2, k_dc=2)
    assert (swapped["precision"], swapped["recall"]) == (1.0, 0.8)


def test_prdc_ball_edges_count_as_inside():
    # Real radii (k = 1) 2, 2, 4, 4: balls [-2,2] [0,4] [6,14] [10,18]. Fake 4 lies only on
    # the edge of [0, 4]; fakes 20 and 22 lie in no real ball. Fake radii 16, 2, 2: the ball
    # [-12, 20] holds every real point.
    real = torch.tensor([[0.0], [2.0], [10.0], [14.0]])
    fake = torch.tensor([[4.0], [20.0], [22.0]])
    assert prdc(real, fake, k_pr=1, k_dc=1) == {
        "precision": 1 / 3, "recall": 1.0, "density": 1 / 3, "coverage": 1 / 4}


def test_prdc_of_far_apart_sets_is_zero():
    g = gen(10)
    real, fake = randn(40, 3, g=g), randn(30, 3, g=g, shift=100.0)
    assert prdc(real, fake) == {"precision": 0.0, "recall": 0.0, "density": 0.0,
                                "coverage": 0.0}


def test_prdc_density_and_coverage_expectations_for_one_law():
    # Fake y independent of N real points from the same continuous law: given real_i, y and
    # the N - 1 other real points are exchangeable, so y is among real_i's k nearest with
    # probability k/N; summed over i, E[density] = 1 exactly. real_i is uncovered when none
    # of the M fake points is among its k nearest of N - 1 + M exchangeable points:
    # E[coverage] = 1 - prod_{t<k} (N - 1 - t) / (N + M - 1 - t).
    n, m, k, draws = 20, 25, 3, 200
    g = gen(11)
    dens, cov = [], []
    for _ in range(draws):
        out = prdc(randn(n, 2, g=g), randn(m, 2, g=g), k_pr=3, k_dc=k)
        dens.append(out["density"])
        cov.append(out["coverage"])
    dens, cov = torch.tensor(dens, dtype=F64), torch.tensor(cov, dtype=F64)
    expected_cov = 1 - math.prod((n - 1 - t) / (n + m - 1 - t) for t in range(k))
    assert abs(float(dens.mean()) - 1) < 4 * float(dens.std()) / math.sqrt(draws)
    assert abs(float(cov.mean()) - expected_cov) < 4 * float(cov.std()) / math.sqrt(draws)


def test_prdc_does_not_depend_on_the_chunk_size():
    g = gen(12)
    real, fake = randn(70, 5, g=g), randn(55, 5, g=g, shift=0.5)
    full = prdc(real, fake, chunk_size=1024)
    assert 0 < full["precision"] < 1 and 0 < full["recall"] < 1
    for chunk in (1, 8, 69):
        assert prdc(real, fake, chunk_size=chunk) == full


@pytest.mark.parametrize("n_real, n_fake, kwargs, message", [
    (3, 10, {}, r"k_pr=3 needs more than 3 real samples .* got 3"),
    (10, 3, {}, r"k_pr=3 needs more than 3 fake samples .* got 3"),
    (5, 10, {}, r"k_dc=5 needs more than 5 real samples .* got 5"),
    (10, 10, {"k_pr": 0}, r"k_pr must be an int >= 1"),
    (10, 10, {"k_dc": 2.0}, r"k_dc must be an int >= 1"),
    (10, 10, {"chunk_size": 0}, r"chunk_size must be a positive int"),
])
def test_prdc_rejects_bad_k(n_real, n_fake, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prdc(torch.zeros(n_real, 2), torch.zeros(n_fake, 2), **kwargs)


def test_prdc_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"real must be 2-D"):
        prdc(torch.zeros(2, 10, 3), torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"different feature sizes: 3 vs 2"):
        prdc(torch.zeros(10, 3), torch.zeros(10, 2))
    with pytest.raises(TypeError, match=r"fake must be a torch.Tensor"):
        prdc(torch.zeros(10, 3), [[0.0, 0.0, 0.0]] * 10)


# --------------------------------------------------------------------------------------------
# Energy distance


def test_energy_distance_matches_brute_force_u_statistic():
    g = gen(13)
    x, y = randn(5, 3, g=g), randn(4, 3, g=g, shift=0.7)
    n, m = len(x), len(y)

    def dist(p, q):
        return math.sqrt(sum((float(p[t]) - float(q[t])) ** 2 for t in range(3)))

    xy = sum(dist(a, b) for a in x for b in y) / (n * m)
    xx = sum(dist(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(dist(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    assert energy_distance(x, y) == pytest.approx(2 * xy - xx - yy, rel=1e-12)
    assert energy_distance(x, y, chunk_size=2) == pytest.approx(2 * xy - xx - yy, rel=1e-12)
    assert energy_distance(y, x) == pytest.approx(energy_distance(x, y), rel=1e-12)


def test_energy_distance_v_statistic_is_scipys():
    # Ties the formula above to an independent implementation: scipy's 1-D energy_distance
    # is the square root of the V-statistic (divisors n^2, m^2 instead of n(n-1), m(m-1)).
    stats = pytest.importorskip("scipy.stats")
    g = gen(14)
    x, y = randn(7, 1, g=g), randn(5, 1, g=g, shift=0.3)
    n, m = len(x), len(y)
    sxx = float(torch.cdist(x, x).sum())
    syy = float(torch.cdist(y, y).sum())
    v = energy_distance(x, y) + sxx / (n * (n - 1)) - sxx / n ** 2 \
        + syy / (m * (m - 1)) - syy / m ** 2
    assert math.sqrt(v) == pytest.approx(stats.energy_distance(x[:, 0], y[:, 0]), rel=1e-10)


def test_energy_distance_of_one_law_is_near_zero():
    g = gen(15)
    x, y = randn(1500, 4, g=g), randn(1500, 4, g=g)
    assert abs(energy_distance(x, y)) < 0.01
    # A sample against itself: the U-statistic leaves out only the zero i == j terms, so it
    # is 2S/N^2 - 2S/(N(N-1)) < 0 with S the sum of the pairwise distances.
    s = float(torch.cdist(x, x).sum())
    n = len(x)
    assert energy_distance(x, x) == pytest.approx(2 * s / n ** 2 - 2 * s / (n * (n - 1)),
                                                  rel=1e-9)
    assert energy_distance(x, x) < 0


@pytest.mark.parametrize("mu, tol", [(0.5, 0.06), (2.0, 0.16)])
def test_energy_distance_of_shifted_normals_matches_closed_form(mu, tol):
    # X ~ N(0, 1), Y ~ N(mu, 1): X - Y ~ N(-mu, 2) and X - X' ~ Y - Y' ~ N(0, 2), so
    # E = 2 E|N(mu, 2)| - 2 E|N(0, 2)| (0.140 for mu = 0.5, 1.944 for mu = 2). tol is about
    # 4 sd of the estimate at 4000 + 4000 points, measured over repeated draws.
    g = gen(16)
    x, y = randn(4000, 1, g=g), randn(4000, 1, g=g, shift=mu)
    s = math.sqrt(2)
    expected = 2 * normal_abs_mean(mu, s) - 2 * normal_abs_mean(0.0, s)
    assert expected > 2 * tol                  # the tolerance does not swallow the signal
    assert energy_distance(x, y) == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("x, y, kwargs, message", [
    (torch.zeros(10), torch.zeros(10, 3), {}, r"x must be 2-D"),
    (torch.zeros(10, 3), torch.zeros(10, 2), {}, r"different feature sizes: 3 vs 2"),
    (torch.zeros(1, 3), torch.zeros(10, 3), {}, r"x needs at least 2 samples, got 1"),
    (torch.zeros(10, 3), torch.zeros(0, 3), {}, r"y needs at least 2 samples, got 0"),
    (torch.zeros(10, 0), torch.zeros(10, 0), {}, r"x has no features"),
    (torch.zeros(10, 3), torch.zeros(10, 3), {"chunk_size": -1}, r"chunk_size must be"),
])
def test_energy_distance_rejects_bad_input(x, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        energy_distance(x, y, **kwargs)
