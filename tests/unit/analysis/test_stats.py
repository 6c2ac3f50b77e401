import json
import math

import numpy as np
import pytest
from scipy import signal
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from tokenbench.analysis import stats as S
from tokenbench.analysis.stats import (
    LEVEL, MAX_BLOCKS, MIN_BLOCKS, Interval, block_durations_s, block_index, block_length_ns, block_resamples,
    bootstrap_distribution, bootstrap_rate, bootstrap_stats, brunner_munzel, cliffs_delta, cohens_d,
    compare_bootstrap, compare_rates, holm, mann_whitney, replicates_needed, t_interval, variation_sources, welch,
)

SEC = 1_000_000_000


def ar1(reps, n, phi, mu, seed, burn=200):
    """reps independent stationary AR(1) series: x_t = mu + phi (x_{t-1} - mu) + e_t, e ~ N(0, 1)."""
    e = np.random.default_rng(seed).standard_normal((reps, n + burn))
    return mu + signal.lfilter([1.0], [1.0, -phi], e, axis=1)[:, burn:]


# ---------------------------------------------------------------------------------------------------------------
# blocks


def test_block_length_is_twice_the_median_request_and_at_least_a_second():
    assert block_length_ns(200e6, 60 * SEC) == SEC  # 0.2 s requests: the 1 s floor
    assert block_length_ns(3e9, 600 * SEC) == 6 * SEC  # 3 s requests: 6 s blocks
    assert block_length_ns(0.6e9, 600 * SEC) == int(1.2e9)
    assert block_length_ns(None, 60 * SEC) == SEC and block_length_ns(float("nan"), 60 * SEC) == SEC
    assert block_length_ns(200e6, 60 * SEC, min_block_ns=SEC // 2) == SEC // 2
    # a 10,000 s phase in 1 s blocks would be 10,000 blocks: 5 s blocks keep it at MAX_BLOCKS
    assert block_length_ns(200e6, 10_000 * SEC) == 5 * SEC
    assert 10_000 * SEC // block_length_ns(200e6, 10_000 * SEC) == MAX_BLOCKS


def test_block_index_boundaries():
    start, block = 1_000, 10
    end = start + 35  # 3 blocks; the last 5 ns belong to the last block
    t = np.array([start - 1, start, start + 9, start + 10, start + 19, start + 20, start + 29, start + 30,
                  end - 1, end, end + 100])
    assert block_index(t, start, end, block).tolist() == [-1, 0, 0, 1, 1, 2, 2, 2, 2, -1, -1]
    assert S.n_blocks(start, end, block) == 3
    assert block_durations_s(start, end, block).tolist() == pytest.approx([10e-9, 10e-9, 15e-9])
    # exact multiple: no remainder
    assert block_index(np.array([start + 29, start + 30]), start, start + 30, block).tolist() == [2, -1]
    # a window shorter than one block is one block
    assert block_index(np.array([start, start + 4]), start, start + 5, block).tolist() == [0, 0]
    assert block_durations_s(start, start + 5, block).tolist() == pytest.approx([5e-9])
    with pytest.raises(ValueError):
        block_index(t, start, end, 0)


# ---------------------------------------------------------------------------------------------------------------
# block bootstrap: coverage, and exactness against brute force


def test_block_bootstrap_covers_a_known_mean_where_an_iid_bootstrap_does_not():
    """400 stationary AR(1) series (phi 0.7: neighbouring values correlate 0.7, the variance of
    the mean is ~5.7x the i.i.d. one) with mean and median 10. Blocks of 30 values (40 blocks)
    cover the truth in ~93 % of repetitions (1000 repetitions: 93.3 %; the shortfall from 95 % is
    the small-sample bias of a 40-block bootstrap); binomial sd over 400 is 1.3 %. Treating the
    values as independent (each its own block) gives intervals ~2.4x too narrow: ~60 %."""
    mu, reps, n, L = 10.0, 400, 1200, 30
    x = ar1(reps, n, 0.7, mu, seed=11)
    blocks = np.arange(n) // L
    cover = {"mean": 0, "p50": 0}
    for r in range(reps):
        res = bootstrap_stats(x[r], blocks, stats=("mean", "p50"), seed=r)
        for s in cover:
            cover[s] += not res[s].excludes(mu)
    assert res["mean"].n == 40 and "40 blocks" in res["mean"].method
    assert 0.88 <= cover["mean"] / reps <= 0.99, cover
    assert 0.88 <= cover["p50"] / reps <= 0.99, cover
    iid = np.arange(n)
    iid_cover = np.mean([not bootstrap_stats(x[r], iid, ("mean",), B=200, seed=r)["mean"].excludes(mu)
                         for r in range(100)])
    assert iid_cover < 0.75, iid_cover


def brute_force(values, blocks, idx, qs):
    """Materialise each resample (blocks idx[r] concatenated) and take np.percentile / mean."""
    by_block = [values[blocks == b] for b in range(idx.shape[1])]
    out = {q: [] for q in qs}
    for row in idx:
        sample = np.concatenate([by_block[b] for b in row])
        for q in qs:
            out[q].append(sample.mean() if q == "mean" else np.percentile(sample, q))
    return {q: np.array(v) for q, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_percentiles_equal_a_brute_force_block_bootstrap(seed):
    """Same resample indices, exact np.percentile on the materialised resamples: the fast path
    (no resample is materialised) gives the same B values, ties, zeros and negatives included."""
    rng = np.random.default_rng(seed)
    n, nb, B = 3000, 25, 200
    v = np.round(rng.lognormal(1, 1, n), 1)  # many ties
    v[rng.random(n) < 0.1] = 0.0  # ITL gaps of 0
    v[rng.random(n) < 0.02] *= -1  # and a few negative values
    blocks = np.sort(rng.integers(0, nb, n))
    blocks[:1] = 0  # a block of one value
    blocks[1:40] = 1
    stats = ("mean", "p0", "p1", "p33.3", "p50", "p95", "p99", "p99.9", "p100")
    d = bootstrap_distribution(v, blocks, stats, B=B, seed=seed)
    assert d.n_blocks == nb and d.merged == 1 and d.n_values == n
    idx = block_resamples(nb, B, seed)
    qs = ["mean" if s == "mean" else float(s[1:]) for s in stats]
    brute = brute_force(v, blocks, idx, qs)
    for s, q in zip(stats, qs):
        np.testing.assert_allclose(d.boot[s], brute[q], rtol=1e-12, atol=1e-12, err_msg=s)
        assert d.estimates[s] == pytest.approx(v.mean() if q == "mean" else np.percentile(v, q), rel=1e-12)
    res = bootstrap_stats(v, blocks, stats, B=B, seed=seed, block_s=2.0)
    for s, q in zip(stats, qs):
        lo, hi = np.percentile(brute[q], [2.5, 97.5])
        assert (res[s].lo, res[s].hi) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
        assert res[s].method == f"block bootstrap (percentile), 2 s blocks, {nb} blocks, B={B}"


def test_float64_count_product_gives_the_same_resamples(monkeypatch):
    """Counts go through a float32 product while exact (< 2**24); past that, float64: same result."""
    rng = np.random.default_rng(12)
    v, blocks = rng.lognormal(0, 1, 2000), np.arange(2000) // 100
    f32 = bootstrap_distribution(v, blocks, ("p50", "p99"), B=100)
    monkeypatch.setattr(S, "_F32_EXACT", 0)
    f64 = bootstrap_distribution(v, blocks, ("p50", "p99"), B=100)
    for s in ("p50", "p99"):
        np.testing.assert_array_equal(f32.boot[s], f64.boot[s])


def test_values_outside_the_window_and_non_finite_values_are_left_out():
    rng = np.random.default_rng(5)
    v = rng.normal(5, 1, 400)
    blocks = np.repeat(np.arange(10), 40) * 3  # ids with gaps: 0, 3, 6, ...
    v_all = np.concatenate([v, [1e9, np.nan, np.inf]])
    b_all = np.concatenate([blocks, [-1, 0, 3]])
    a = bootstrap_stats(v_all, b_all, stats=("mean", "p99"))
    b = bootstrap_stats(v, np.repeat(np.arange(10), 40), stats=("mean", "p99"))
    assert a == b and a["mean"].n == 10 and a["mean"].estimate == pytest.approx(v.mean())


def test_more_than_max_blocks_are_merged_with_their_neighbours():
    rng = np.random.default_rng(3)
    n = 5000
    v, blocks = rng.exponential(1, n), np.arange(n)  # 5000 blocks of one value
    d = bootstrap_distribution(v, blocks, ("mean", "p90"), B=50, seed=4)
    assert d.merged == 3 and d.n_blocks == math.ceil(n / 3) <= MAX_BLOCKS
    brute = brute_force(v, blocks // 3, block_resamples(d.n_blocks, 50, 4), ["mean", 90.0])
    np.testing.assert_allclose(d.boot["p90"], brute[90.0], rtol=1e-12)
    np.testing.assert_allclose(d.boot["mean"], brute["mean"], rtol=1e-12)
    res = bootstrap_stats(v, blocks, ("mean",), B=50, block_s=1.0)["mean"]
    assert "3 s blocks (1 s blocks merged 3 at a time" in res.method and res.n == 1667


def test_too_few_blocks_give_the_estimate_without_an_interval():
    v = np.arange(70.0)
    res = bootstrap_stats(v, np.arange(70) // 10, stats=("mean", "p50"))  # 7 blocks
    assert res["mean"].estimate == pytest.approx(34.5) and res["mean"].lo is None and res["mean"].hi is None
    assert res["p50"].estimate == pytest.approx(34.5) and f"fewer than {MIN_BLOCKS} blocks (7)" in res["p50"].note
    assert not res["mean"].excludes(1e9)
    empty = bootstrap_stats([], [], stats=("mean",))["mean"]
    assert empty.estimate is None and empty.note == "no values" and empty.n == 0
    with pytest.raises(ValueError):
        bootstrap_stats(v, np.arange(70) // 7, stats=("median",))


def test_interval_to_dict_is_json_safe_and_excludes():
    iv = Interval(float("nan"), 1.0, 2.0, LEVEL, "t, 2 dof", 3)
    d = iv.to_dict()
    assert d == {"estimate": None, "lo": 1.0, "hi": 2.0, "level": 0.95, "method": "t, 2 dof", "n": 3, "note": None}
    json.dumps(d, allow_nan=False)
    assert iv.excludes(0.5) and iv.excludes(2.5) and not iv.excludes(1.0) and not iv.excludes(2.0)
    json.dumps(bootstrap_stats(np.ones(5), np.arange(5))["p99"].to_dict(), allow_nan=False)


# ---------------------------------------------------------------------------------------------------------------
# rates


def test_bootstrap_rate_estimate_and_coverage_of_a_known_rate():
    amount = np.array([10, 0, 20, 30, 10, 10, 20, 0, 10, 10], dtype=float)
    iv = bootstrap_rate(amount, 2.0)
    assert iv.estimate == pytest.approx(120 / 20) and iv.n == 10 and iv.lo < 6 < iv.hi
    assert iv.method == "block bootstrap (percentile), 2 s blocks, 10 blocks, B=1000"
    # block lengths as an array: the last block took the remainder
    d = np.array([2.0] * 9 + [3.0])
    assert bootstrap_rate(amount, d).estimate == pytest.approx(120 / 21)
    few = bootstrap_rate(amount[:5], 2.0)
    assert few.estimate == pytest.approx(70 / 10) and few.lo is None and "fewer than 8" in few.note
    # Poisson token counts at 50 tok/s in 1 s blocks, 40 blocks: the interval covers 50 ~95 % of the time
    counts = np.random.default_rng(7).poisson(50, (300, 40))
    cover = np.mean([not bootstrap_rate(c, 1.0, seed=i).excludes(50) for i, c in enumerate(counts)])
    assert 0.88 <= cover <= 0.99


# ---------------------------------------------------------------------------------------------------------------
# comparisons within runs


def test_compare_bootstrap_ratio_covers_the_true_ratio_and_excludes_one_when_they_differ():
    """Two configurations with AR(1) latencies of known mean 12 and 10 (ratio 1.2): the ratio
    interval covers 1.2 in most repetitions and never includes 1; identical data give ratio 1."""
    reps, n, L = 60, 1200, 30
    a = ar1(reps, n, 0.7, 12.0, seed=21)
    b = ar1(reps, n, 0.7, 10.0, seed=22)
    blocks = np.arange(n) // L
    covered = excluded_one = 0
    for r in range(reps):
        c = compare_bootstrap(a[r], blocks, b[r], blocks, stat="mean", seed=r)
        covered += not c["ratio"].excludes(1.2)
        excluded_one += c["ratio"].excludes(1.0) and c["difference"].excludes(0.0)
    assert covered / reps >= 0.85 and excluded_one == reps
    assert c["ratio"].estimate == pytest.approx(a[-1].mean() / b[-1].mean())
    assert c["difference"].estimate == pytest.approx(a[-1].mean() - b[-1].mean())
    assert c["ratio"].n == 40 and "each side resampled independently" in c["ratio"].method
    same = compare_bootstrap(a[0], blocks, a[0], blocks, stat="p50")
    assert same["ratio"].estimate == 1.0 and not same["ratio"].excludes(1.0)
    assert not same["difference"].excludes(0.0)
    # two draws of the same configuration: the interval includes 1
    c = compare_bootstrap(b[0], blocks, b[1], blocks, stat="p95")
    assert not c["ratio"].excludes(1.0)


def test_compare_bootstrap_with_too_few_blocks_or_zero_denominator():
    v = np.ones(100)
    c = compare_bootstrap(v, np.arange(100) // 20, v, np.arange(100) // 5)  # 5 blocks against 20
    assert c["ratio"].estimate == 1.0 and c["ratio"].lo is None and "a: 5" in c["ratio"].note
    z = compare_bootstrap(v, np.arange(100) // 5, np.zeros(100), np.arange(100) // 5)
    assert z["ratio"].estimate is None and z["ratio"].lo is None and z["difference"].estimate == 1.0


def test_compare_rates():
    rng = np.random.default_rng(9)
    a, b = rng.poisson(100, 60), rng.poisson(50, 60)
    c = compare_rates(a, 1.0, b, 2.0)
    assert c["ratio"].estimate == pytest.approx((a.sum() / 60) / (b.sum() / 120))
    assert c["ratio"].lo < 4 < c["ratio"].hi  # true ratio: 100 / (50 / 2)
    assert c["difference"].excludes(0.0)
    same = compare_rates(a, 1.0, a, 1.0)
    assert not same["ratio"].excludes(1.0)


# ---------------------------------------------------------------------------------------------------------------
# between replicates


def test_t_interval_equals_scipy():
    x = [101.0, 97.5, 103.2, 99.9]
    iv = t_interval(x)
    lo, hi = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (iv.estimate, iv.lo, iv.hi) == (pytest.approx(np.mean(x)), pytest.approx(lo), pytest.approx(hi))
    assert iv.method == "t, 3 dof" and iv.n == 4 and iv.note is None
    # 3 replicates: t(2) = 4.303
    iv3 = t_interval([1.0, 2.0, 3.0], level=0.95)
    assert iv3.hi - 2.0 == pytest.approx(4.3027 * 1 / math.sqrt(3), rel=1e-4)
    one = t_interval([5.0, None])
    assert one.estimate == 5.0 and one.lo is None and one.n == 1 and one.note
    same = t_interval([2.0, 2.0])
    assert (same.lo, same.hi) == (2.0, 2.0)


def test_welch_equals_scipy():
    a, b = [10.1, 10.5, 9.8, 10.9], [11.2, 12.0, 11.7]
    r = welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert r["t"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
    assert r["dof"] == pytest.approx(ref.df) and r["note"] is None
    # Welch-Satterthwaite by hand
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    assert r["dof"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2))
    assert welch([1.0], b)["p"] is None and welch([1.0], b)["note"]
    assert welch([1.0, 1.0], [2.0, 2.0])["t"] is None


def test_rank_tests_equal_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 30), rng.normal(0.8, 2, 25)
    r = mann_whitney(a, b)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert (r["u"], r["p"], r["n_a"], r["n_b"]) == (ref.statistic, pytest.approx(ref.pvalue), 30, 25)
    bm = brunner_munzel(a, b)
    ref = sps.brunnermunzel(a, b)
    assert bm["statistic"] == pytest.approx(ref.statistic) and bm["p"] == pytest.approx(ref.pvalue)
    assert mann_whitney([], b)["p"] is None and brunner_munzel([1.0], b)["p"] is None


def test_cohens_d():
    assert cohens_d([1, 2, 3], [4, 5, 6]) == pytest.approx(-3.0)  # pooled sd 1
    # unequal sizes: pooled variance ((2*1) + (1*8)) / 3
    assert cohens_d([1, 2, 3], [4, 8]) == pytest.approx((2 - 6) / math.sqrt(10 / 3))
    rng = np.random.default_rng(4)
    assert cohens_d(rng.normal(1.5, 2, 20000), rng.normal(0.5, 2, 20000)) == pytest.approx(0.5, abs=0.03)
    assert cohens_d([1.0], [2.0, 3.0]) is None and cohens_d([1, 1], [1, 1]) is None


def test_cliffs_delta_equals_brute_force_with_ties():
    rng = np.random.default_rng(6)
    for _ in range(20):
        a, b = rng.integers(0, 8, rng.integers(1, 40)), rng.integers(0, 8, rng.integers(1, 40))
        brute = np.sign(a[:, None] - b[None, :]).mean()
        assert cliffs_delta(a, b) == pytest.approx(brute, abs=1e-12)
    assert cliffs_delta([5, 6], [1, 2, 3]) == 1.0 and cliffs_delta([1], [1]) == 0.0
    assert cliffs_delta([], [1]) is None


def test_holm_equals_statsmodels_and_a_hand_example():
    # sorted 0.01, 0.03, 0.04 x 3, 2, 1 = 0.03, 0.06, 0.04 -> made monotone: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    p = list(np.random.default_rng(8).uniform(0, 0.2, 12))
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([None, float("nan")]) == [None, None] and holm([]) == []
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_replicates_needed_matches_statsmodels_and_grows_as_the_difference_shrinks():
    # 5 % difference, cv 10 %: Cohen's d 0.5, the textbook 64 per group
    assert replicates_needed(0.05, 0.10) == 64
    ref = TTestIndPower().solve_power(effect_size=0.02 / 0.03, alpha=0.05, power=0.8, alternative="two-sided")
    assert replicates_needed(0.02, 0.03) == math.ceil(ref)
    ns = [replicates_needed(d, 0.05) for d in (0.2, 0.1, 0.05, 0.02, 0.01)]
    assert ns == sorted(ns) and ns[0] < ns[-1] and ns[-1] > 300
    assert replicates_needed(-0.05, 0.10) == 64
    assert replicates_needed(0.0, 0.1) is None and replicates_needed(0.1, float("nan")) is None
    assert replicates_needed(0.1, 0.0) == 2 and replicates_needed(10.0, 0.01) == 2


def test_variation_sources():
    # replicate values spread with sd ~8.5, each known to +-1 within its run: runs differ
    v = variation_sources([1.0, 1.0, 1.0, 1.0], [100.0, 110.0, 90.0, 105.0])
    assert v["dominant"] == "between runs" and v["within_sd"] == pytest.approx(1.0)
    assert v["between_sd"] == pytest.approx(math.sqrt(np.var([100, 110, 90, 105], ddof=1) - 1.0))
    assert v["p_between"] < 1e-6 and "more replicates" in v["note"]
    # spread no larger than the within-run standard errors: within-run noise
    w = variation_sources([2.0, 2.0, None], [100.0, 100.5, 99.5])
    assert w["dominant"] == "within run" and w["between_sd"] == 0.0 and w["within_sd"] == pytest.approx(2.0)
    assert w["p_between"] > 0.5 and "2 of 3" in w["note"]
    assert variation_sources([1.0], [5.0])["dominant"] is None
    assert variation_sources([None, None], [5.0, 6.0])["dominant"] is None


def test_within_run_se_feeds_variation_sources():
    """Replicates simulated end to end: five runs of one configuration (AR(1) latencies, mean 10),
    each run's block-bootstrap SE of its mean as the within-run SE. Without run-to-run offsets the
    spread is within-run noise; with offsets of sd 2 (10x the within-run SE) it is between runs."""
    n, L = 1200, 30
    runs = ar1(5, n, 0.7, 10.0, seed=31)
    blocks = np.arange(n) // L
    dists = [bootstrap_distribution(r, blocks, ("mean", "p50"), seed=i) for i, r in enumerate(runs)]
    se = [d.se()["mean"] for d in dists]
    # the SE of a mean of 1200 AR(1) values: sqrt(5.67 * 1.96 / 1200) ~ 0.096 (innovation variance 1)
    assert all(0.06 < s < 0.14 for s in se), se
    means = [d.estimates["mean"] for d in dists]
    assert variation_sources(se, means)["dominant"] == "within run"
    offsets = np.random.default_rng(32).normal(0, 2.0, 5)
    v = variation_sources(se, [m + o for m, o in zip(means, offsets)])
    assert v["dominant"] == "between runs" and v["between_sd"] > 5 * v["within_sd"]
    # the rate form: SEs of Poisson throughputs
    d = S.rate_distribution(np.random.default_rng(33).poisson(100, 50), 1.0)
    assert d.se()["rate"] == pytest.approx(math.sqrt(100 / 50), rel=0.25)
    assert bootstrap_rate([], 1.0).estimate is None
    assert bootstrap_distribution(np.ones(10), np.arange(10) // 5).se() == {
        "mean": None, "p50": None, "p95": None, "p99": None}


def test_welch_difference_matches_scipy_confidence_interval_and_covers_the_ratio():
    from scipy import stats as sps

    from tokenbench.analysis.stats import welch_difference

    a, b = [101.0, 97.0, 104.0], [50.0, 53.0]
    res = welch_difference(a, b, 0.95)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (res["difference"].lo, res["difference"].hi) == pytest.approx((ci.low, ci.high))
    assert res["ratio"].lo < np.mean(a) / np.mean(b) < res["ratio"].hi and res["ratio"].excludes(1.0)
    rng = np.random.default_rng(3)
    covered = sum(welch_difference(rng.normal(12, 1, 3), rng.normal(10, 1, 3))["ratio"].excludes(1.2) is False
                  for _ in range(300))
    assert covered / 300 >= 0.9  # log-scale delta method: close to nominal at CV 8-10 %
    one = welch_difference([1.0], [2.0, 3.0])
    assert one["difference"].lo is None and "at least 2 replicate runs" in one["difference"].note
    same = welch_difference([4.3, 4.3], [1.0, 1.0])  # whole-request counts: two runs alike a side
    for iv in same.values():
        assert iv.estimate is not None and iv.lo is None and iv.hi is None and "identical" in iv.note
    assert same["ratio"].estimate == pytest.approx(4.3) and not same["ratio"].excludes(1.0)
