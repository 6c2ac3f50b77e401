import math
import time

import pytest

from tokenbench.engines import promscrape
from tokenbench.engines.promscrape import ParseError, Scraper, keep, parse

TEXT = r'''# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="a \"quoted\" name, with comma"} 0.42
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="m"} 1.5e3 1712345678000
vllm:generation_tokens_created{model_name="m"} 1.7e9
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 7
vllm:e2e_request_latency_seconds_sum{model_name="m"} 12.5
odd_value NaN
'''


def test_parse_prometheus_text():
    s = parse(TEXT)
    by = {(x["metric"], x["labels"].get("model_name")): x for x in s}
    assert by[("vllm:num_requests_running", "m")]["value"] == 3.0
    assert by[("vllm:num_requests_running", "m")]["type"] == "gauge"
    kv = by[("vllm:kv_cache_usage_perc", 'a "quoted" name, with comma')]
    assert kv["value"] == 0.42 and kv["labels"]["engine"] == "0"
    tok = by[("vllm:generation_tokens_total", "m")]
    assert tok["value"] == 1500.0 and tok["type"] == "counter"  # sample timestamp ignored, type from base name
    assert by[("vllm:e2e_request_latency_seconds_bucket", "m")]["labels"]["le"] == "+Inf"
    assert math.isnan(by[("odd_value", None)]["value"])


def test_bad_lines_are_errors():
    with pytest.raises(ParseError, match="line 1"):
        parse("this is not prometheus\n")
    with pytest.raises(ParseError, match="bad value"):
        parse("m 12abc\n")


def test_keep_filters_by_full_name_and_drops_buckets_by_default():
    s = parse(TEXT)
    kept = keep(s, [r"vllm:kv_cache_usage_perc", r"vllm:num_requests_(running|waiting)"])
    assert sorted({x["metric"] for x in kept}) == ["vllm:kv_cache_usage_perc", "vllm:num_requests_running"]
    assert not any(x["metric"].endswith("_bucket") for x in keep(s, None))


def test_scraper_polls_a_live_metrics_endpoint(fake_server):
    srv = fake_server(tokens=5)
    import urllib.request

    t0 = time.monotonic_ns()
    sc = Scraper(srv.url, ["/metrics", "/no-such-path"], [r"llamacpp:.*"], interval_s=0.1).start()
    # traffic between scrapes so the counter moves
    for _ in range(3):
        req = urllib.request.Request(srv.url + "/v1/completions", data=b'{"prompt":"x","max_tokens":5,"stream":true}',
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()
        time.sleep(0.15)
    sc.stop()
    df = sc.frame()
    assert set(df["metric"]) == {"llamacpp:requests_processing", "llamacpp:tokens_predicted_total",
                                 "llamacpp:kv_cache_usage_ratio"}
    assert df["t_ns"].dtype == "int64" and df["t_ns"].min() >= t0 and df["t_ns"].is_monotonic_increasing
    tok = df[df.metric == "llamacpp:tokens_predicted_total"]["value"]
    assert tok.iloc[-1] == 15 and tok.iloc[0] < 15  # raw counter as reported, grew during the run
    summ = sc.summary()
    assert summ["scrapes_ok"] >= 3 and summ["scrapes_failed"] >= 3 and "404" in summ["last_error"]


def test_no_paths_means_no_thread_and_an_empty_typed_frame():
    sc = Scraper("http://127.0.0.1:9", [], None).start()
    sc.stop()
    df = sc.frame()
    assert len(df) == 0 and list(df.columns) == list(promscrape.COLUMNS) and df["t_ns"].dtype == "int64"
