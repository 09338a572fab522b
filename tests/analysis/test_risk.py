import math

import numpy as np
import pytest

from analysis.core.risk import (LTTResult, binomial_pvalue, fixed_sequence, hoeffding_bentkus_pvalue, ltt_select,
                           min_calib_size, paired_loss)


def _naive_binom_cdf(s: int, n: int, eps: float) -> float:
    return math.fsum(math.comb(n, k) * eps**k * (1 - eps) ** (n - k) for k in range(s + 1))


def test_binomial_pvalue_matches_naive_pmf_sum():
    for n, eps in [(1, 0.3), (10, 0.05), (57, 0.2), (200, 0.005), (300, 0.1)]:
        s = np.arange(n + 1)
        got = binomial_pvalue(s, n, eps)
        assert got.shape == s.shape
        want = [_naive_binom_cdf(int(k), n, eps) for k in s]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
        assert isinstance(binomial_pvalue(int(s[len(s) // 2]), n, eps), float)
        assert np.all(np.diff(got) >= 0) and got[-1] == pytest.approx(1.0)


def test_hoeffding_bentkus_bounds_binomial_and_closed_form():
    for n, eps in [(50, 0.1), (400, 0.02), (1000, 0.005)]:
        s = np.arange(n + 1)
        hb = hoeffding_bentkus_pvalue(s / n, n, eps)
        bi = binomial_pvalue(s, n, eps)
        assert np.all(hb >= bi - 1e-12) and np.any(hb > bi * 1.5)
        assert np.all(hb <= 1.0) and np.all(np.diff(hb) >= -1e-12)
        # zero losses: Hoeffding term is exp(n log(1 - eps)) = (1 - eps)^n, Bentkus term e * (1 - eps)^n
        assert hb[0] == pytest.approx((1 - eps) ** n, rel=1e-9)
        # empirical risk at or above eps: nothing to reject
        assert np.all(hb[s >= math.ceil(eps * n)] >= 0.3)
    # k / n must not be rounded up by float noise in ceil(n * r): 100 * 0.07 == 7.000000000000001
    r, n, eps = 7 / 100, 100, 0.2
    assert n * r > 7
    want = min(math.exp(-n * (r * math.log(r / eps) + (1 - r) * math.log((1 - r) / (1 - eps)))),
               math.e * _naive_binom_cdf(7, n, eps))
    assert hoeffding_bentkus_pvalue(r, n, eps) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("method", ["binomial", "hoeffding-bentkus"])
def test_pvalues_are_valid_at_the_boundary(method):
    g = np.random.default_rng(1)
    n, eps, delta = 200, 0.05, 0.1
    sums = (g.random((2000, n)) < eps).sum(1)  # true risk exactly eps: the least favourable null
    p = binomial_pvalue(sums, n, eps) if method == "binomial" else hoeffding_bentkus_pvalue(sums / n, n, eps)
    assert (p <= delta).mean() <= delta + 0.02
    # and strictly below the null the test has some power
    sums = (g.random((500, n)) < eps / 4).sum(1)
    p = binomial_pvalue(sums, n, eps) if method == "binomial" else hoeffding_bentkus_pvalue(sums / n, n, eps)
    assert (p <= delta).mean() > 0.5


def test_fixed_sequence_stops_at_first_failure():
    def naive(p, d):
        k = 0
        for x in p:
            if not x <= d:
                break
            k += 1
        return k

    g = np.random.default_rng(2)
    for _ in range(500):
        p = g.random(g.integers(0, 12)) ** g.uniform(0.1, 3)
        if p.size and g.random() < 0.2:
            p[g.integers(p.size)] = np.nan
        d = float(g.uniform(0.01, 0.9))
        assert fixed_sequence(p, d) == naive(p, d)
    assert fixed_sequence([0.01, 0.5, 0.0, 0.0], 0.1) == 1
    assert fixed_sequence([0.2, 0.0], 0.1) == 0
    assert fixed_sequence([0.1, 0.1], 0.1) == 2  # p <= delta rejects
    assert fixed_sequence([], 0.1) == 0


def test_paired_loss_truth_table_and_shapes():
    full = np.array([1, 1, 0, 0], bool)
    pol = np.array([1, 0, 1, 0], bool)
    out = paired_loss(pol, full)
    assert out.dtype == np.uint8 and out.tolist() == [0, 1, 0, 0]
    out2 = paired_loss(np.stack([pol, ~pol, np.zeros(4, bool)]), full.astype(int))
    assert out2.shape == (3, 4) and out2.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    # its mean bounds the accuracy drop from above
    g = np.random.default_rng(3)
    f, p = g.random(1000) < 0.8, g.random(1000) < 0.75
    assert paired_loss(p, f).mean() >= f.mean() - p.mean()


def _nested_losses(g, risks, n):
    """Losses with exact true risks ``risks`` that are nested (a more aggressive candidate loses on a
    superset of the samples), as with thresholds lowered along the list."""
    u = g.random(n)
    return u[None, :] < np.asarray(risks)[:, None]


@pytest.mark.parametrize("method", ["binomial", "hoeffding-bentkus"])
def test_ltt_select_controls_risk_by_simulation(method):
    g = np.random.default_rng(4)
    eps, delta, n, reps = 0.05, 0.1, 1000, 300
    risks = np.linspace(0.02, 0.08, 20)  # straddle eps, safest first
    costs = np.linspace(10.0, 1.0, 20)  # more aggressive = cheaper
    bad, chosen = 0, []
    for _ in range(reps):
        r = ltt_select(_nested_losses(g, risks, n), costs, eps, delta, method=method)
        if r.index is not None:
            chosen.append(r.index)
            bad += risks[r.index] > eps
            assert r.certified[: r.index + 1].all() and r.index == r.n_certified - 1
    assert bad / reps <= delta + 0.03
    # not trivially conservative: it usually certifies something beyond the safest candidates
    assert len(chosen) > 0.9 * reps and np.median(chosen) >= 4


def test_ltt_select_independent_losses_validity():
    # independent (non-nested) losses per candidate, costs not monotone: still FWER-valid
    g = np.random.default_rng(5)
    eps, delta, n = 0.1, 0.1, 1000
    risks = np.r_[np.linspace(0.06, 0.1, 8), 0.1 + np.linspace(0.001, 0.05, 12)]
    costs = g.random(20)
    bad = 0
    for _ in range(300):
        r = ltt_select(g.random((20, n)) < risks[:, None], costs, eps, delta)
        bad += r.index is not None and risks[r.index] > eps
        if r.index is not None:
            assert r.index == int(np.argmin(np.where(r.certified, costs, np.inf)))
    assert bad / 300 <= delta + 0.03


def test_ltt_select_safe_list_picks_cheapest_and_falls_back():
    g = np.random.default_rng(6)
    n = 2000
    L = g.random((6, n)) < 0.0005
    costs = np.array([9.0, 7.0, 3.0, 3.0, 5.0, 8.0])
    r = ltt_select(L, costs, eps=0.01, delta=0.1)
    assert isinstance(r, LTTResult) and r.certified.all() and r.index == 2  # ties go to the safer one
    assert r.n == n and r.method == "binomial" and r.eps == 0.01 and r.delta == 0.1
    np.testing.assert_allclose(r.empirical_risk, L.mean(1))
    with pytest.raises(ValueError):
        r.pvalues[0] = 0.0  # read-only
    # first candidate fails: fixed sequence stops even though later ones are perfect
    L2 = np.zeros((3, n), np.uint8)
    L2[0, : n // 5] = 1
    r2 = ltt_select(L2, [3, 2, 1], eps=0.01, delta=0.1)
    assert r2.index is None and not r2.certified.any() and r2.pvalues[1] < 1e-6
    # too few calib samples: nothing can be certified even with zero losses
    m = min_calib_size(0.005, 0.1)
    assert m == 460 and (1 - 0.005) ** m <= 0.1 < (1 - 0.005) ** (m - 1)
    assert ltt_select(np.zeros((2, m - 1), bool), [2, 1], 0.005, 0.1).index is None
    assert ltt_select(np.zeros((2, m), bool), [2, 1], 0.005, 0.1).index == 1
    assert ltt_select(np.zeros((2, m), bool), [2, 1], 0.005, 0.1, method="hoeffding-bentkus").index == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps must be in"),
    (dict(eps=1.5), "eps must be in"),
    (dict(eps=float("nan")), "eps must be in"),
    (dict(delta=1.0), "delta must be in"),
    (dict(delta="x"), "delta must be a number"),
    (dict(method="bonferroni"), "unknown method 'bonferroni'"),
    (dict(losses=np.zeros(10)), "losses must be 2-D"),
    (dict(losses=np.full((3, 10), 0.5)), "only 0/1"),
    (dict(losses=np.full((3, 10), np.nan)), "NaN"),
    (dict(losses=np.zeros((3, 0))), "no calib samples"),
    (dict(losses=np.zeros((0, 10)), costs=[]), "no candidates"),
    (dict(costs=[1.0, 2.0]), r"costs must have shape \(3,\)"),
    (dict(costs=[1.0, np.nan, 2.0]), "costs must be finite"),
])
def test_ltt_select_bad_inputs(kwargs, match):
    args = dict(losses=np.zeros((3, 10), bool), costs=[3.0, 2.0, 1.0], eps=0.05, delta=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ltt_select(**args)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="integers in"):
        binomial_pvalue(11, 10, 0.1)
    with pytest.raises(ValueError, match="integers in"):
        binomial_pvalue(2.5, 10, 0.1)
    with pytest.raises(ValueError, match="n .* positive integer"):
        binomial_pvalue(0, 0, 0.1)
    with pytest.raises(ValueError, match=r"mean_loss must be in \[0, 1\]"):
        hoeffding_bentkus_pvalue(1.2, 10, 0.1)
    with pytest.raises(ValueError, match="eps must be in"):
        hoeffding_bentkus_pvalue(0.1, 10, -0.1)
    with pytest.raises(ValueError, match="pvalues must be 1-D"):
        fixed_sequence(np.zeros((2, 2)), 0.1)
    with pytest.raises(ValueError, match="delta must be in"):
        fixed_sequence([0.1], 0.0)
    with pytest.raises(ValueError, match="has 3 samples but correct_full has 4"):
        paired_loss(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="correct_full must be 1-D"):
        paired_loss(np.zeros((2, 4), bool), np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="correct_policy must contain only 0/1"):
        paired_loss(np.full(4, 2), np.zeros(4, bool))
