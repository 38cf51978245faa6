"""``qadtr bench``: latency, throughput and memory of ONNX models under ONNX Runtime, with baselines.

Modeled on ``onnxruntime_perf_test``: per (model, batch, threads) a fresh session
is built and timed, the first inference is timed on its own, then ``warmup`` runs
are discarded and ``iters`` runs (or ``seconds`` of runs) are timed one by one.
Configurations are interleaved across models (threads, then batch, then model), so
slow drift of a shared machine spreads over all models instead of hitting one.

``bench.json`` (``kind: "qadtr.bench"``, ``schema: 1``)::

    {
      "kind": "qadtr.bench", "schema": 1,
      "config": {"batches", "threads", "warmup", "iters", "seconds", "seed", "ort": {...}, "input": "..."},
      "baselines": {"fp32": label|null, "fp32_found_by": str, "ort_int8": label|null, "ort_int8_recipe": {...}|null},
      "models": [{"label", "role": "model"|"fp32 baseline"|"ort int8 baseline", "path", "sha256", "size_bytes",
                  "bits", "format", "quantized", "packed_weight_bytes", "packed_weight_source",
                  "graph": {"graph_optimization", "op_histogram": {op: count}, "integer_mac_nodes",
                            "float_mac_nodes", "coverage"},
                  "runs": [{"batch", "threads", "session_create_s", "first_inference_s", "warmup", "iters",
                            "timed_s", "latency_ms": {"mean", "std", "min", "p50", "p90", "p95", "p99", "max"},
                            "throughput_ips", "rss_before_bytes", "peak_rss_bytes", "peak_rss_scope",
                            "p50_vs_fp32", "p50_vs_ort_int8"}
                           | {"batch", "threads", "skipped": reason}]}],
      "environment": {...}, "seconds": wall time
    }

Latencies are per batch in milliseconds; throughput is images per second over the
timed runs. ``peak_rss_bytes`` is the process's peak resident set since just before
the session was built (Linux ``clear_refs``), or over the whole process where that
reset is not possible (``peak_rss_scope`` says which).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qadtr.errors import DataError, QadtrError
from qadtr.io import sha256_file, write_json, write_text

from . import graph, plots
from .baselines import build_ort_int8, find_fp32
from .env import environment
from .inputs import describe_model, describe_models, load_images
from .session import ModelInfo, OrtConfig, create_session

DEFAULT_HW = (32, 32)  # for models whose H and W are symbolic


def latency_stats(ms) -> dict:
    ms = np.asarray(ms, dtype=np.float64)
    p = np.percentile(ms, [50, 90, 95, 99])
    return {"mean": float(ms.mean()), "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, "min": float(ms.min()),
            "p50": float(p[0]), "p90": float(p[1]), "p95": float(p[2]), "p99": float(p[3]), "max": float(ms.max())}


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None


def time_one(info: ModelInfo, config: OrtConfig, batch: int, warmup: int, iters: int, seconds: float | None,
             seed: int) -> dict:
    """One (model, batch, threads) measurement on a fresh session."""
    run = {"batch": batch, "threads": config.intra_op_threads}
    if info.fixed_batch is not None and info.fixed_batch != batch:
        return {**run, "skipped": f"the model's batch dimension is fixed to {info.fixed_batch}"}
    h, w = info.image_hw or DEFAULT_HW
    x = np.random.default_rng([int(seed), batch]).random((batch, 3, h, w), dtype=np.float32)
    feed, outputs = {info.input_name: x}, [info.output_name]
    scoped = _reset_peak_rss()
    rss_before = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    session = create_session(info.path, config)
    t1 = time.perf_counter()
    session.run(outputs, feed)
    t2 = time.perf_counter()
    for _ in range(warmup):
        session.run(outputs, feed)
    lat = []
    deadline = time.perf_counter() + seconds if seconds else None
    while (len(lat) < iters) if deadline is None else (time.perf_counter() < deadline or not lat):
        s = time.perf_counter()
        session.run(outputs, feed)
        lat.append((time.perf_counter() - s) * 1e3)
    timed = sum(lat) / 1e3
    run.update({"session_create_s": t1 - t0, "first_inference_s": t2 - t1, "warmup": warmup, "iters": len(lat),
                "timed_s": timed, "latency_ms": latency_stats(lat), "throughput_ips": batch * len(lat) / timed,
                "rss_before_bytes": rss_before, "peak_rss_bytes": _peak_rss_bytes(),
                "peak_rss_scope": "since session creation" if scoped else "process lifetime", "_latencies": lat})
    del session
    return run


def pool_rounds(runs: list[dict]) -> dict:
    """One measurement from the rounds of one (model, batch, threads): latencies pooled, per-round p50 kept.

    Rounds run the models interleaved, each on a fresh session, so a slow spell of the machine (on a shared
    VM, batch-1 timings are bimodal from minute to minute) lands on every model instead of on one.
    """
    runs = [dict(r) for r in runs]
    lats = [r.pop("_latencies", None) for r in runs]
    first = runs[0]
    if "latency_ms" not in first or len(runs) == 1:
        return first
    pooled = [x for lat in lats for x in lat]
    timed = sum(r["timed_s"] for r in runs)
    return {**first, "iters": len(pooled), "timed_s": timed, "latency_ms": latency_stats(pooled),
            "throughput_ips": first["batch"] * len(pooled) / timed, "rounds": len(runs),
            "round_p50_ms": [r["latency_ms"]["p50"] for r in runs],
            "session_create_s": float(np.median([r["session_create_s"] for r in runs])),
            "first_inference_s": float(np.median([r["first_inference_s"] for r in runs])),
            "peak_rss_bytes": max((r["peak_rss_bytes"] or 0) for r in runs) or None}


def _entry(info: ModelInfo, role: str, config: OrtConfig) -> dict:
    summary = graph.optimized_graph_summary(info.path, config)
    return {"label": info.label, "role": role, **info.to_json(), "graph": summary, "runs": []}


def prepare_models(model_paths, *, fp32=None, baselines: bool = True, calib_n: int = 256, dataset="cifar10",
                   data_dir=None, seed: int = 0, out_dir=".", config: OrtConfig | None = None):
    """Describe the models and build the baselines. Returns ``(infos with roles, baseline record)``."""
    config = config or OrtConfig()
    infos = describe_models(model_paths)
    roles = {i.label: "model" for i in infos}
    record = {"fp32": None, "fp32_found_by": None, "ort_int8": None, "ort_int8_recipe": None}
    if not baselines:
        record["fp32_found_by"] = "baselines off (--no-baselines)"
        return infos, roles, record
    fp32_path, found_by = find_fp32([i.path for i in infos], fp32)
    record["fp32_found_by"] = found_by
    if fp32_path is None:
        return infos, roles, record
    fp32_info = describe_model(fp32_path)
    same = next((i for i in infos if i.sha256 == fp32_info.sha256), None)
    if same:
        roles[same.label] = "fp32 baseline"
        fp32_info = same
    else:
        fp32_info.label = f"{fp32_info.label} (fp32 baseline)"
        infos.append(fp32_info)
        roles[fp32_info.label] = "fp32 baseline"
    record["fp32"] = fp32_info.label
    try:
        calib = load_images(dataset, "train", data_dir, calib_n, seed, fp32_info.image_hw)
    except DataError as e:
        raise QadtrError(f"{e}; the ORT int8 baseline is calibrated on real images: pass --data-dir "
                         "(or --no-baselines)") from None
    int8_path = Path(out_dir) / "baselines" / f"{fp32_info.label.split(' ')[0]}.ort_int8_qdq.onnx"
    recipe = build_ort_int8(fp32_info.path, fp32_info.input_name, calib.images, int8_path)
    recipe.update({"calibration_data": calib.name, "calibration_sha256": calib.sha256,
                   "source_sha256": fp32_info.sha256, "sha256": sha256_file(int8_path)})
    int8_info = describe_model(int8_path)
    int8_info.label = f"{int8_info.label} (ORT int8 baseline)"
    int8_info.extra["bits"] = {"weight": 8, "activation": 8}
    infos.append(int8_info)
    roles[int8_info.label] = "ort int8 baseline"
    record.update({"ort_int8": int8_info.label, "ort_int8_recipe": recipe})
    return infos, roles, record


def run_bench(model_paths, *, batches=(1, 64), threads=(1, 2), warmup: int = 20, iters: int = 200,
              seconds: float | None = None, fp32=None, baselines: bool = True, calib_n: int = 256,
              dataset: str = "cifar10", data_dir=None, seed: int = 0, out_dir=".", config: OrtConfig | None = None,
              rounds: int = 1, progress=None) -> dict:
    """The bench result (schema above). ``progress(1)`` is called after each measurement.

    ``rounds`` > 1 repeats every measurement that many times, all models interleaved within a round, and pools
    each cell's latencies (:func:`pool_rounds`).
    """
    config = config or OrtConfig()
    if warmup < 0 or iters < 1 or (seconds is not None and seconds <= 0) or rounds < 1:
        raise QadtrError("need --warmup >= 0, --iters >= 1, --rounds >= 1 and --seconds > 0")
    if any(b < 1 for b in batches) or any(t < 0 for t in threads):
        raise QadtrError("batch sizes must be >= 1 and thread counts >= 0")
    started = time.perf_counter()
    infos, roles, record = prepare_models(model_paths, fp32=fp32, baselines=baselines, calib_n=calib_n,
                                          dataset=dataset, data_dir=data_dir, seed=seed, out_dir=out_dir,
                                          config=config)
    entries = {i.label: _entry(i, roles[i.label], config) for i in infos}
    measured: dict[tuple, list[dict]] = {}
    for _ in range(rounds):
        for t in threads:
            for b in batches:
                for info in infos:
                    measured.setdefault((info.label, t, b), []).append(
                        time_one(info, config.with_threads(t), b, warmup, iters, seconds, seed))
                    if progress:
                        progress(1)
    for (label, _, _), runs in measured.items():
        entries[label]["runs"].append(pool_rounds(runs))
    _add_ratios(list(entries.values()), record)
    return {
        "kind": "qadtr.bench", "schema": 1,
        "config": {"batches": list(batches), "threads": list(threads), "warmup": warmup, "iters": iters,
                   "rounds": rounds, "seconds": seconds, "seed": seed, "ort": config.to_json(),
                   "input": "seeded uniform float32 [batch,3,H,W] in [0,1]", "calibration_images": calib_n,
                   "dataset": dataset},
        "baselines": record,
        "models": list(entries.values()),
        "environment": environment(),
        "seconds": time.perf_counter() - started,
    }


def measurement_count(model_count: int, batches, threads) -> int:
    return model_count * len(batches) * len(threads)


def _add_ratios(entries: list[dict], record: dict) -> None:
    def p50s(label):
        e = next((e for e in entries if e["label"] == label), None)
        return {(r["batch"], r["threads"]): r["latency_ms"]["p50"] for r in e["runs"] if "latency_ms" in r} if e \
            else {}

    base = {"p50_vs_fp32": p50s(record["fp32"]), "p50_vs_ort_int8": p50s(record["ort_int8"])}
    for e in entries:
        for r in e["runs"]:
            for key, ref in base.items():
                ref_p50 = ref.get((r["batch"], r["threads"]))
                r[key] = r["latency_ms"]["p50"] / ref_p50 if ("latency_ms" in r and ref_p50) else None


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def bench_markdown(result: dict) -> str:
    cfg, base = result["config"], result["baselines"]
    env = result["environment"]
    timing = f"{cfg['seconds']} s per measurement" if cfg["seconds"] else f"{cfg['iters']} timed runs"
    lines = [f"# ONNX Runtime latency ({', '.join(cfg['ort']['providers'])}, graph optimization "
             f"{cfg['ort']['graph_optimization']})", "",
             f"{env['cpu']}, {env['usable_cpus']} usable CPUs; {cfg['warmup']} warm-up runs, {timing}; "
             f"fp32 baseline: {base['fp32'] or '-'} ({base['fp32_found_by']}); "
             f"ORT int8 baseline: {base['ort_int8'] or '-'}.", "",
             "| model | role | bits (W/A) | file size (bytes) | packed weights (bytes) | integer MAC coverage |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for e in result["models"]:
        bits = f"{e['bits']['weight']}/{e['bits']['activation']}" if e.get("bits") else "?"
        cov = e["graph"]["coverage"]
        lines.append(f"| {e['label']} | {e['role']} | {bits} | {e['size_bytes']} | {e.get('packed_weight_bytes')} | "
                     f"{'-' if cov is None else f'{cov:.0%}'} ({e['graph']['integer_mac_nodes']}/"
                     f"{e['graph']['integer_mac_nodes'] + e['graph']['float_mac_nodes']}) |")
    lines += ["", "Latency in ms per batch; ratios are p50 over the baseline's p50 at the same batch and threads.", "",
              "| model | batch | threads | session (s) | first (ms) | mean | std | p50 | p90 | p95 | p99 | max | "
              "img/s | peak RSS (MiB) | p50/fp32 | p50/ORT int8 |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: |"]
    for e in result["models"]:
        for r in e["runs"]:
            if "skipped" in r:
                lines.append(f"| {e['label']} | {r['batch']} | {r['threads']} | skipped: {r['skipped']} |" +
                             " |" * 12)
                continue
            lat = r["latency_ms"]
            rss = r["peak_rss_bytes"] / 2**20 if r["peak_rss_bytes"] else None
            lines.append(f"| {e['label']} | {r['batch']} | {r['threads']} | {r['session_create_s']:.3f} | "
                         f"{1e3 * r['first_inference_s']:.2f} | " +
                         " | ".join(f"{lat[k]:.3f}" for k in ("mean", "std", "p50", "p90", "p95", "p99", "max")) +
                         f" | {r['throughput_ips']:.0f} | {_fmt(rss, '.0f')} | {_fmt(r['p50_vs_fp32'])} | "
                         f"{_fmt(r['p50_vs_ort_int8'])} |")
    lines += ["", "Operators in ONNX Runtime's optimized graph:", "", "| model | operators |", "| --- | --- |"]
    for e in result["models"]:
        lines.append(f"| {e['label']} | " + ", ".join(f"{k} x{v}" for k, v in e["graph"]["op_histogram"].items())
                     + " |")
    return "\n".join(lines) + "\n"


def latency_rows(result: dict) -> list[dict]:
    return [{"model": e["label"], "batch": r["batch"], "threads": r["threads"], "p50_ms": r["latency_ms"]["p50"],
             "p90_ms": r["latency_ms"]["p90"]} for e in result["models"] for r in e["runs"] if "latency_ms" in r]


def write_bench(result: dict, out_dir: str | Path) -> dict[str, str]:
    """bench.json, bench.md and (with matplotlib) bench_latency.png in ``out_dir``."""
    out_dir = Path(out_dir)
    written = {"json": str(out_dir / "bench.json"), "markdown": str(out_dir / "bench.md")}
    write_json(written["json"], result)
    md = bench_markdown(result)
    rows = latency_rows(result)
    if plots.available() and rows:
        written["latency_plot"] = str(out_dir / "bench_latency.png")
        plots.save_png(written["latency_plot"], plots.latency_bars(rows, "ONNX Runtime CPU latency"))
        md += "\n![latency](bench_latency.png)\n"
    write_text(written["markdown"], md)
    return written

