"""Replicates combined, configurations compared and hypotheses evaluated, on synthetic runs whose
answers are known: configuration A decodes at 50 tok/s per request, B at 25 (ITL 20 vs 40 ms)."""
import numpy as np
import pandas as pd
import pytest

from tests.unit.analysis.test_metrics import frame, req
from tokenbench.analysis.compare import compare_configurations, evaluate_hypotheses, verdict
from tokenbench.analysis.metrics import compute_metrics
from tokenbench.analysis.replicates import combine_replicates
from tokenbench.analysis.scaling import scaling_steps
from tokenbench.config import ComparisonSpec, SloSpec, ValiditySpec

S = 1_000_000_000
WINDOW_S = 40
NO_TELEMETRY = pd.DataFrame({"t_ns": pd.Series([], dtype="int64"), "device": pd.Series([], dtype=str),
                             "phase": pd.Series([], dtype=str)})


def synthetic_run(engine, rep, itl_ms, seed, users=2, jitter=0.05, fail_every=None):
    """A closed loop of `users` users for WINDOW_S seconds: each request 100 ms TTFT + 11 tokens."""
    rng = np.random.default_rng(seed)
    rows, i = [], 0
    for u in range(users):
        t = int(u * 0.01 * S)
        while t < WINDOW_S * S:
            itl = itl_ms * (1 + jitter * rng.standard_normal())
            status = "error" if fail_every and i % fail_every == 0 else "ok"
            r = req(i, "steady", t, 100, 11, itl, status=status)
            r["user"] = u
            rows.append(r)
            t = int(r["end_ns"]) + 1
            i += 1
    mark = {"name": "steady", "label": f"closed loop, {users} users", "open_loop": False, "mode": "closed",
            "warmup": False, "start_ns": 0, "end_ns": WINDOW_S * S, "drained_ns": (WINDOW_S + 2) * S,
            "target": {"users": users, "duration_s": WINDOW_S}}
    run = {"phases": [mark], "cell": {"engine": engine, "model": "m", "load": "l", "rep": rep}, "complete": True,
           "hardware": {"cpu": {}}, "provenance": {"host": {"cpu_cores": 2}}}
    df = frame(rows)
    doc, _ = compute_metrics(df, NO_TELEMETRY, run, {"name": "m", "figures": {}}, slo=SloSpec(ttft_ms=500),
                             bounds=ValiditySpec(min_requests=5), resamples=400)
    return doc, df


def runs_of(spec):
    out = {}
    for engine, itl, seeds in spec:
        for k, seed in enumerate(seeds, 1):
            doc, df = synthetic_run(engine, f"r{k}", itl, seed)
            out[(engine, "m", "l", f"r{k}")] = (doc, lambda df=df: df)
    return out


@pytest.fixture(scope="module")
def a_vs_b():
    return runs_of([("A", 20, [1, 2]), ("B", 40, [3, 4])])


def test_within_run_intervals_cover_the_known_throughput(a_vs_b):
    doc = a_vs_b[("A", "m", "l", "r1")][0]
    iv = doc["phases"][0]["intervals"]
    true = 2 * 11 / 0.301  # 2 users x 11 tokens per 301 ms request
    assert iv["blocks"] >= 8 and iv["output_tok_s"]["lo"] <= true <= iv["output_tok_s"]["hi"]
    assert iv["tpot_ms"]["p50"]["lo"] <= 20.1 <= iv["tpot_ms"]["p50"]["hi"] + 0.5


def test_replicates_give_a_t_interval_and_each_runs_bootstrap(a_vs_b):
    docs = [a_vs_b[("A", "m", "l", r)][0] for r in ("r2", "r1")]
    cell = combine_replicates(docs, 0.95)
    assert cell["replicates"] == ["r1", "r2"]  # sorted by replicate number
    fig = cell["phases"][0]["figures"]["output_tok_s"]
    values = [d["phases"][0]["output_tok_s"] for d in sorted(docs, key=lambda d: d["cell"]["rep"])]
    assert fig["values"] == pytest.approx(values)
    from scipy import stats as sps
    lo, hi = sps.t.interval(0.95, 1, loc=np.mean(values), scale=np.std(values, ddof=1) / np.sqrt(2))
    assert (fig["interval"]["lo"], fig["interval"]["hi"]) == pytest.approx((lo, hi))
    assert len(fig["within"]) == 2 and all(w["lo"] is not None for w in fig["within"])
    assert fig["variation"]["dominant"] in ("within run", "between runs")


def test_a_large_difference_names_the_faster_configuration(a_vs_b):
    comp = compare_configurations(a_vs_b, [("m", "A", "B")], ComparisonSpec(bootstrap_resamples=400),
                                  SloSpec(ttft_ms=500))
    by = {c["metric"]: c for c in comp["comparisons"]}
    tput = by["output_tok_s"]
    true = 0.501 / 0.301  # a request takes 100 + 10 x ITL + 1 ms: 301 ms (A), 501 ms (B)
    assert tput["winner"] == "A" and tput["ratio"]["lo"] > 1.4
    assert tput["ratio"]["lo"] <= true <= tput["ratio"]["hi"]
    tpot = by["tpot_p50_ms"]
    assert tpot["winner"] == "A" and tpot["difference"]["hi"] < 0  # lower is better
    assert tpot["cliffs_delta"] == pytest.approx(-1.0) and tpot["mann_whitney_p_holm"] < 1e-6
    assert comp["families"]["output_tok_s"] == 1


def test_identical_configurations_are_not_resolvable_and_say_how_many_replicates_would_be():
    runs = runs_of([("A", 20, [1, 2]), ("B", 20, [3, 4])])
    comp = compare_configurations(runs, [("m", "A", "B")], ComparisonSpec(bootstrap_resamples=400), SloSpec(ttft_ms=500))
    tput = next(c for c in comp["comparisons"] if c["metric"] == "output_tok_s")
    assert tput["winner"] is None and tput["verdict"].startswith("not resolvable at this sample size")
    assert tput["ratio"]["lo"] <= 1 <= tput["ratio"]["hi"]
    assert tput["replicates_needed"] is None or tput["replicates_needed"] >= 2


def test_invalid_replicates_are_left_out_with_their_reasons():
    runs = runs_of([("A", 20, [1]), ("B", 40, [3])])
    doc, df = synthetic_run("B", "r2", 40, 9, fail_every=3)  # a third of requests fail: error-rate check
    runs[("B", "m", "l", "r2")] = (doc, lambda: df)
    assert not doc["phases"][0]["validity"]["valid"]
    comp = compare_configurations(runs, [("m", "A", "B")], ComparisonSpec(bootstrap_resamples=400), SloSpec(ttft_ms=500))
    c = comp["comparisons"][0]
    assert c["b_replicates"] == ["r1"] and c["excluded"]["b"][0]["rep"] == "r2"
    assert "error rate" in c["excluded"]["b"][0]["reason"]
    cell = combine_replicates([runs[("B", "m", "l", r)][0] for r in ("r1", "r2")])
    assert cell["phases"][0]["valid_replicates"] == ["r1"] and "error rate" in cell["phases"][0]["excluded"][0]["reason"]


def test_hypotheses_confirmed_rejected_or_not_resolvable(a_vs_b):
    comp = compare_configurations(a_vs_b, [("m", "A", "B")], ComparisonSpec(bootstrap_resamples=400),
                                  SloSpec(ttft_ms=500))
    base = {"metric": "output_tok_s", "load": "l", "phase": "steady", "relation": "at_least"}
    hyps = [{**base, "name": "h1", "a": "A", "b": "B", "factor": 1.5},  # true ratio 1.66: confirmed
            {**base, "name": "h2", "a": "A", "b": "B", "factor": 2.5},  # rejected
            {**base, "name": "h3", "a": "B", "b": "A", "factor": 0.5},  # flipped pair: B/A = 0.60 >= 0.5
            {**base, "name": "h4", "a": "A", "b": "B", "factor": 1.0, "relation": "at_most"},  # rejected
            {**base, "name": "h5", "a": "A", "b": "B", "factor": 1.5, "load": "other"}]
    res = {h["name"]: h for h in evaluate_hypotheses(hyps, comp)}
    assert [res[n]["status"] for n in ("h1", "h2", "h3", "h4", "h5")] == [
        "confirmed", "rejected", "confirmed", "rejected", "not evaluable"]
    assert res["h3"]["ratio"]["estimate"] == pytest.approx(1 / res["h1"]["ratio"]["estimate"])
    ratio = next(c for c in comp["comparisons"] if c["metric"] == "output_tok_s")["ratio"]
    close = {**base, "name": "h6", "a": "A", "b": "B", "factor": (ratio["lo"] + ratio["hi"]) / 2}
    assert evaluate_hypotheses([close], comp)[0]["status"] == "not resolvable"


def test_scaling_steps_per_added_user():
    steps = scaling_steps([1, 2, 4, 4], [10.0, 18.0, 30.0, 34.0], [None, None, None, None])
    assert [s["to_users"] for s in steps] == [2, 4]
    assert steps[0]["tok_s_per_added_user"] == pytest.approx(8.0) and steps[0]["gain_pct"] == pytest.approx(80.0)
    assert steps[1]["from_tok_s"] == 18.0 and steps[1]["to_tok_s"] == 32.0  # replicates averaged
    assert steps[1]["marginal_efficiency"] == pytest.approx(7.0 / 10.0)
    assert len(scaling_steps([1, 2, 4], [10.0, 18.0, 30.0], [None, "contended", None])) == 1


def test_a_ratio_interval_that_excludes_1_beside_a_difference_interval_that_includes_0_is_said():
    """Two runs a side: Welch on the values (a - b) and on their logs (the ratio) can disagree; the
    verdict stays "not resolvable" and says why, rather than leave the Δ % interval unexplained."""
    c = {"interval_source": "replicates", "welch_p_holm": 0.3, "better": "higher",
         "difference": {"estimate": -62.9, "lo": -157.3, "hi": 31.5}, "ratio": {"estimate": 0.22, "lo": 0.12, "hi": 0.41}}
    v = verdict(c, "vllm", "llamacpp", ComparisonSpec())
    assert v["winner"] is None and "ratio's, on the log scale, excludes 1" in v["verdict"]
    agree = verdict({**c, "ratio": {"estimate": 0.5, "lo": 0.2, "hi": 1.3}}, "vllm", "llamacpp", ComparisonSpec())
    assert agree["verdict"] == "not resolvable at this sample size: the difference's interval includes 0"
