"""`qadtr bench`: JSON fields and their sanity, baselines, and integer-kernel coverage counting."""
import json

import pytest
from qadtr.deploy.graph import integer_coverage, optimized_graph_summary
from qadtr.deploy.session import OrtConfig


@pytest.fixture(scope="module")
def bench_result(deploy_models, tmp_path_factory):
    from qadtr.deploy.bench import run_bench, write_bench

    out = tmp_path_factory.mktemp("bench")
    result = run_bench([deploy_models["int8"]], batches=(1, 4), threads=(1,), warmup=2, iters=12,
                       fp32=deploy_models["fp32"], calib_n=32, dataset="synthetic", out_dir=out)
    write_bench(result, out)
    return result, out


def test_bench_reports_every_statistic_in_order(bench_result):
    result, _ = bench_result
    assert result["kind"] == "qadtr.bench" and result["config"]["iters"] == 12
    assert [e["role"] for e in result["models"]] == ["model", "fp32 baseline", "ort int8 baseline"]
    for e in result["models"]:
        assert [(r["batch"], r["threads"]) for r in e["runs"]] == [(1, 1), (4, 1)]
        for r in e["runs"]:
            lat = r["latency_ms"]
            assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
            assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
            assert r["iters"] == 12 and r["warmup"] == 2
            assert r["throughput_ips"] == pytest.approx(r["batch"] * r["iters"] / r["timed_s"])
            assert r["session_create_s"] > 0 and r["first_inference_s"] > 0
            assert r["peak_rss_bytes"] >= r["rss_before_bytes"] > 0
        assert e["size_bytes"] > 0 and e["packed_weight_bytes"] > 0 and e["sha256"]


def test_bench_ratios_are_against_both_baselines(bench_result):
    result, out = bench_result
    by_role = {e["role"]: e for e in result["models"]}
    for r in by_role["fp32 baseline"]["runs"]:
        assert r["p50_vs_fp32"] == 1.0
    for r in by_role["ort int8 baseline"]["runs"]:
        assert r["p50_vs_ort_int8"] == 1.0
    model_run = by_role["model"]["runs"][0]
    fp32_run = by_role["fp32 baseline"]["runs"][0]
    assert model_run["p50_vs_fp32"] == pytest.approx(model_run["latency_ms"]["p50"] / fp32_run["latency_ms"]["p50"])
    recipe = result["baselines"]["ort_int8_recipe"]
    assert recipe["quant_format"] == "QDQ" and recipe["per_channel"] and recipe["calibration_images"] == 32
    assert (out / "baselines" / "tinynet_fp32.ort_int8_qdq.onnx").is_file()
    assert json.loads((out / "bench.json").read_text())["baselines"]["fp32"] == "tinynet_fp32 (fp32 baseline)"
    md = (out / "bench.md").read_text()
    assert "p50/ORT int8" in md and "tinynet_w8a8.qdq" in md


def test_rounds_pool_interleaved_repeats_of_each_cell(deploy_models, tmp_path):
    from qadtr.deploy.bench import run_bench

    result = run_bench([deploy_models["fp32"]], batches=(1, 2), threads=(1,), warmup=1, iters=5, rounds=3,
                       baselines=False, out_dir=tmp_path)
    assert result["config"]["rounds"] == 3
    runs = result["models"][0]["runs"]
    assert [(r["batch"], r["threads"]) for r in runs] == [(1, 1), (2, 1)]
    for r in runs:
        assert r["rounds"] == 3 and r["iters"] == 15 and len(r["round_p50_ms"]) == 3
        assert min(r["round_p50_ms"]) <= r["latency_ms"]["p50"] <= max(r["round_p50_ms"])
        assert "_latencies" not in r
    json.dumps(result)


def test_seconds_mode_times_for_a_duration(deploy_models, tmp_path):
    from qadtr.deploy.bench import run_bench

    result = run_bench([deploy_models["fp32"]], batches=(2,), threads=(1,), warmup=0, iters=1, seconds=0.2,
                       baselines=False, out_dir=tmp_path)
    (run,) = result["models"][0]["runs"]
    assert run["iters"] > 1 and run["timed_s"] <= 0.2 + run["latency_ms"]["max"] / 1e3


def test_quantize_static_model_runs_every_mac_as_an_integer_kernel(deploy_models):
    int8 = optimized_graph_summary(deploy_models["int8"], OrtConfig(intra_op_threads=1))
    fp32 = optimized_graph_summary(deploy_models["fp32"], OrtConfig(intra_op_threads=1))
    assert (int8["integer_mac_nodes"], int8["float_mac_nodes"], int8["coverage"]) == (3, 0, 1.0)
    assert fp32["integer_mac_nodes"] == 0 and fp32["float_mac_nodes"] == 3 and fp32["coverage"] == 0.0
    assert any(k.endswith("QLinearConv") for k in int8["op_histogram"])


@pytest.mark.parametrize("histogram, expected", [
    ({"QLinearConv": 2, "com.microsoft/QGemm": 1, "QuantizeLinear": 4}, (3, 0, 1.0)),
    ({"com.microsoft/QLinearConv": 3, "com.microsoft.nchwc/Conv": 1, "Gemm": 1}, (3, 2, 0.6)),
    ({"ConvInteger": 1, "MatMulInteger": 1, "com.microsoft/FusedConv": 2}, (2, 2, 0.5)),
    ({"Relu": 3, "Add": 1}, (0, 0, None)),
])
def test_coverage_counts_integer_and_float_mac_nodes_in_any_domain(histogram, expected):
    cov = integer_coverage(histogram)
    assert (cov["integer_mac_nodes"], cov["float_mac_nodes"], cov["coverage"]) == expected
