"""Device-side commands: ``qadtr check``, ``qadtr bench``, ``qadtr report``. Torch-free.

This module imports click and torch-free qadtr modules only; the work is done in
``qadtr.deploy``, imported inside each command, so ``qadtr --help`` stays fast.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from .cli_util import CONTEXT, emit, format_table, json_options
from .errors import QadtrError


def parse_int_list(text: str, what: str, minimum: int) -> list[int]:
    """'1,64' -> [1, 64]; one clear error for anything else."""
    try:
        values = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise QadtrError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise QadtrError(f"{what} must be integers >= {minimum}, got {text!r}")
    return list(dict.fromkeys(values))


@contextmanager
def progress_bar(total: int, desc: str, quiet: bool, unit: str = "it"):
    """Yields ``update(k)``: a tqdm bar on stderr when tqdm is installed and not ``quiet``, else a no-op.

    The bar appears at the first update, so input errors found before any work stay one line on stderr.
    """
    bars = []

    def update(k: int) -> None:
        if quiet:
            return
        if not bars:
            try:
                from tqdm import tqdm
            except ImportError:
                bars.append(None)
            else:
                bars.append(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                                 mininterval=0.5 if sys.stderr.isatty() else 30))
        if bars[0] is not None:
            bars[0].update(k)

    try:
        yield update
    finally:
        if bars and bars[0] is not None:
            bars[0].close()


def ort_options(f):
    f = click.option("--graph-opt", default="all", type=click.Choice(["disable", "basic", "extended", "all"]),
                     help="ONNX Runtime graph optimization level.")(f)
    f = click.option("--inter-op", default=0, type=int, help="ORT inter-op threads (0 = ORT default).")(f)
    f = click.option("--provider", "providers", multiple=True, default=["CPUExecutionProvider"],
                     help="ORT execution provider (repeat for a fallback list).")(f)
    return f


def data_options(f):
    f = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Data folder; defaults to $QADTR_DATA_DIR.")(f)
    f = click.option("--dataset", default="cifar10",
                     type=click.Choice(["cifar10", "imagefolder", "npz", "synthetic"]))(f)
    return f


def _config(providers, threads, inter_op, graph_opt):
    from qadtr.deploy.session import OrtConfig

    return OrtConfig(tuple(providers), threads, inter_op, graph_opt)


@click.command("check", context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--patches", "patch_specs", multiple=True,
              help="Patch .npy file, folder of them, or comma list; repeatable. .npy files listed after it "
                   "(shell globs) count as patches too.")
@click.option("--n", "n", default=2000, type=int, help="Seeded subset of N test images (the PyTorch path's subset).")
@click.option("--split", default="test", type=click.Choice(["test", "train"]))
@data_options
@click.option("--seed", default=0, type=int, help="Seed for the subset and the patch placements.")
@click.option("--batch-size", default=256, type=int)
@click.option("--threads", default=0, type=int, help="ORT intra-op threads (0 = ORT default).")
@ort_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for check.json/.md/.png.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_options
def check_cmd(models, patch_specs, n, split, dataset, data_dir, seed, batch_size, threads, providers, inter_op,
              graph_opt, out, quiet, as_json):
    """Patch transfer matrix of ONNX MODELS under ONNX Runtime: every model x every patch, with controls."""
    from qadtr.deploy.check import run_check, work_units, write_check
    from qadtr.deploy.inputs import load_patches

    # `--patches p/*.npy` expands to `--patches a.npy b.npy`: click hands b.npy to MODELS.
    patch_specs = list(patch_specs) + [m for m in models if m.lower().endswith(".npy")]
    models = [m for m in models if not m.lower().endswith(".npy")]
    if not models:
        raise QadtrError("no model given: qadtr check MODEL.onnx ... --patches P.npy")
    if not patch_specs:
        raise QadtrError("no patch given: pass --patches P.npy (or a folder of them)")
    if n is not None and n < 1:
        raise QadtrError("--n must be >= 1")
    if batch_size < 1:
        raise QadtrError("--batch-size must be >= 1")
    config = _config(providers, threads, inter_op, graph_opt)
    total = work_units(len(models), len(load_patches(patch_specs)), n)
    with progress_bar(total, "check", quiet, unit="img") as update:
        result = run_check(models, patch_specs, dataset=dataset, split=split, data_dir=data_dir, n=n, seed=seed,
                           batch_size=batch_size, config=config, progress=update)
    written = write_check(result, out)
    tr = result["transfer"]
    rows = [[c["patch"], c["target"], f"{tr['clean_acc'][c['target']]:.1%}", f"{c['patch_metrics']['asr']:.1%}",
             f"{c['control_metrics']['asr']:.1%}", f"{c['patch_metrics']['asr_all']:.1%}",
             f"{c['patch_metrics']['flip_rate']:.1%}"] for c in tr["cells"]]
    table = format_table(["patch", "model", "clean acc", "ASR", "control ASR", "ASR(all)", "flip"], rows)
    emit(result, table + f"\nwrote {', '.join(written.values())}", None, as_json)


@click.command("bench", context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--batch", "batches", default="1,64", help="Batch sizes, comma-separated.")
@click.option("--threads", "threads", default="1,2", help="ORT intra-op thread counts, comma-separated.")
@click.option("--warmup", default=20, type=int, help="Untimed runs after the (separately timed) first one.")
@click.option("--iters", default=200, type=int, help="Timed runs per measurement.")
@click.option("--seconds", default=None, type=float, help="Time runs for this long instead of --iters.")
@click.option("--rounds", default=1, type=int, help="Repeat every measurement, models interleaved, latencies "
                                                    "pooled: steadier ratios on a noisy machine.")
@click.option("--fp32", default=None, type=click.Path(dir_okay=False),
              help="fp32 ONNX export of the same network (default: from manifest.json beside the models).")
@click.option("--baselines/--no-baselines", default=True,
              help="Also bench the fp32 export and ORT's quantize_static int8 built from it.")
@click.option("--calib-n", default=256, type=int, help="Training images that calibrate the ORT int8 baseline.")
@data_options
@click.option("--seed", default=0, type=int, help="Seed for the inputs and the calibration subset.")
@ort_options
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for bench.json/.md/.png and baselines/.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_options
def bench_cmd(models, batches, threads, warmup, iters, seconds, rounds, fp32, baselines, calib_n, dataset, data_dir,
              seed, providers, inter_op, graph_opt, out, quiet, as_json):
    """Latency, throughput, memory and integer-kernel coverage of ONNX MODELS, against fp32 and ORT int8."""
    from qadtr.deploy.bench import measurement_count, run_bench, write_bench

    batch_list = parse_int_list(batches, "--batch", 1)
    thread_list = parse_int_list(threads, "--threads", 0)
    if calib_n < 1:
        raise QadtrError("--calib-n must be >= 1")
    config = _config(providers, 0, inter_op, graph_opt)
    # Two baselines at most; a bar slightly too long is better than none.
    total = rounds * measurement_count(len(models) + (2 if baselines else 0), batch_list, thread_list)
    with progress_bar(total, "bench", quiet) as update:
        result = run_bench(models, batches=batch_list, threads=thread_list, warmup=warmup, iters=iters,
                           seconds=seconds, rounds=rounds, fp32=fp32, baselines=baselines, calib_n=calib_n,
                           dataset=dataset, data_dir=data_dir, seed=seed, out_dir=out, config=config, progress=update)
    written = write_bench(result, out)
    rows = []
    for e in result["models"]:
        for r in e["runs"]:
            if "latency_ms" not in r:
                rows.append([e["label"], r["batch"], r["threads"], "skipped", "", "", "", "", ""])
                continue
            cov = e["graph"]["coverage"]
            rows.append([e["label"], r["batch"], r["threads"], f"{r['latency_ms']['p50']:.3f}",
                         f"{r['latency_ms']['p99']:.3f}", f"{r['throughput_ips']:.0f}",
                         "-" if cov is None else f"{cov:.0%}",
                         "-" if r["p50_vs_fp32"] is None else f"{r['p50_vs_fp32']:.2f}",
                         "-" if r["p50_vs_ort_int8"] is None else f"{r['p50_vs_ort_int8']:.2f}"])
    table = format_table(["model", "batch", "threads", "p50 ms", "p99 ms", "img/s", "int cov", "p50/fp32",
                          "p50/ORT int8"], rows)
    emit(result, table + f"\nwrote {', '.join(written.values())}", None, as_json)


@click.command("report", context_settings=CONTEXT)
@click.argument("folder", type=click.Path())
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="HTML file to write (default FOLDER/report.html); the Markdown twin goes beside it (.md).")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def report_cmd(folder, out, quiet):
    """One self-contained HTML page (and a Markdown twin) from the JSON artifacts found under FOLDER."""
    from pathlib import Path

    from qadtr.deploy.report import build_report

    if not Path(folder).is_dir():
        raise QadtrError(f"report folder {folder} not found")
    written = build_report(folder, out)
    if not quiet:
        click.echo(f"wrote {written['html']} and {written['markdown']} from {written['artifacts']} artifacts")
