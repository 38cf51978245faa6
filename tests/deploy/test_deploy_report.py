"""`qadtr report`: one self-contained HTML page (no network, images inline) and a Markdown twin."""
import json
import re

import pytest
from conftest import N_IMAGES, SEED


@pytest.fixture(scope="module")
def artifact_dir(deploy_models, tmp_path_factory):
    """check and bench artifacts from the harness, plus transfer/train/export JSON shaped like those commands'."""
    from qadtr.deploy.bench import run_bench, write_bench
    from qadtr.deploy.check import run_check, write_check
    from qadtr.deploy.session import OrtConfig

    root = tmp_path_factory.mktemp("artifacts")
    check = run_check([deploy_models["int8"], deploy_models["fp32"]], deploy_models["patches"], dataset="synthetic",
                      n=N_IMAGES, seed=SEED, config=OrtConfig(intra_op_threads=1))
    write_check(check, root / "check")
    bench = run_bench([deploy_models["int8"]], batches=(1, 8), threads=(1,), warmup=1, iters=4,
                      fp32=deploy_models["fp32"], calib_n=16, dataset="synthetic", out_dir=root / "bench")
    write_bench(bench, root / "bench")
    # `qadtr transfer` output: targets are bit-widths, cells as in qadtr.transfer, patches point at their files.
    transfer = {"n": N_IMAGES, "seed": SEED, "target_bits": [32, 8],
                "clean_acc": {"32": check["transfer"]["clean_acc"]["tinynet_fp32"],
                              "8": check["transfer"]["clean_acc"]["tinynet_w8a8.qdq"]},
                "cells": [{**c, "target": "32" if c["target"] == "tinynet_fp32" else "8"}
                          for c in check["transfer"]["cells"]],
                "patches": {p.stem: {"file": str(p)} for p in deploy_models["patches"]}}
    (root / "float_run").mkdir()
    (root / "float_run" / "transfer.json").write_text(json.dumps(transfer))
    (root / "float_run" / "metrics.json").write_text(json.dumps(
        {"config": {"arch": "tiny", "defense": "float"},
         "epochs": [{"epoch": 1, "test_acc": {"32": 0.7, "8": 0.69, "4": 0.6, "2": 0.3}}]}))
    (root / "unrelated.json").write_text("[1, 2, 3]")
    return root


def test_report_is_self_contained_and_embeds_every_image(artifact_dir, run_cli):
    code, out, err = run_cli("report", artifact_dir)
    assert code == 0, err
    page = (artifact_dir / "report.html").read_text()
    assert not re.search(r"(https?:|ftp:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I)  # no URL of any host
    assert "<script" not in page and "<link" not in page and "@import" not in page
    sources = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(sources) >= 5  # two heatmaps, ASR and accuracy against bits, latency, patches
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for heading in ("Caveats", "Patch transfer", "Latency under ONNX Runtime", "Patches", "Environment"):
        assert f"<h2>{heading}</h2>" in page
    assert "no speed-up" in page and "FINN-style hardware" in page
    assert "unrelated.json" in page  # listed as not used, not silently dropped


def test_report_compares_ort_and_pytorch_cells(artifact_dir):
    from qadtr.deploy.report import build_report

    build_report(artifact_dir, artifact_dir / "r" / "page.html")
    md = (artifact_dir / "r" / "page.md").read_text()
    assert "ONNX Runtime versus PyTorch, cell by cell" in md
    rows = [line for line in md.splitlines() if line.startswith("| square8 |") and "transfer.json" in line]
    assert len(rows) == 2 and all(line.rstrip(" |").endswith("0.00") for line in rows)
    images = re.findall(r"!\[[^\]]*\]\((page_files/figure\d+\.png)\)", md)
    assert images and all((artifact_dir / "r" / i).is_file() for i in images)


def test_report_without_artifacts_still_renders(tmp_path, run_cli):
    code, _, err = run_cli("report", tmp_path, "--quiet")
    assert code == 0 and err == ""
    assert "No bench artifact found." in (tmp_path / "report.html").read_text()


def test_report_renders_offline_in_headless_chromium(artifact_dir, tmp_path):
    """Debian's chromium with every host unresolvable; the screenshot lands in tmp, outside the repo."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "report_screenshot.py"
    png = tmp_path / "report.png"
    proc = subprocess.run([sys.executable, str(script), str(artifact_dir), "--png", str(png)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 50_000


def test_agreement_pairs_cells_by_patch_and_precision_and_measures_points(artifact_dir):
    import copy

    from qadtr.deploy.report import agreement

    check = json.loads((artifact_dir / "check" / "check.json").read_text())
    transfer = json.loads((artifact_dir / "float_run" / "transfer.json").read_text())
    rows = agreement(transfer, check)
    assert sorted((r["patch"], tuple(r["precision"])) for r in rows) == [
        ("masked6", (8, 8)), ("masked6", (32, 32)), ("square8", (8, 8)), ("square8", (32, 32))]
    assert all(r["max_diff_points"] == 0 for r in rows)
    shifted = copy.deepcopy(transfer)
    shifted["clean_acc"]["8"] -= 0.02
    assert max(r["max_diff_points"] for r in agreement(shifted, check)) == pytest.approx(2.0)
    assert agreement({**transfer, "seed": SEED + 1}, check) == []


def test_caveat_states_the_measured_low_bit_latency_ratio():
    from pathlib import Path

    from qadtr.deploy.report import _low_bit_speed_notes

    def entry(label, bits, p50):
        return {"label": label, "role": "model", "bits": {"weight": bits, "activation": bits},
                "runs": [{"batch": 1, "threads": 2, "latency_ms": {"p50": p50}}]}

    bench = {"models": [entry("r_w8a8", 8, 2.0), entry("r_w4a4", 4, 2.1), entry("r_w2a2", 2, 1.9)]}
    notes = _low_bit_speed_notes([(Path("b/bench.json"), bench)])
    assert notes == ["Measured in b/bench.json: r_w4a4 p50 over r_w8a8 p50 is 1.05x at batch 1, 2 thread(s).",
                     "Measured in b/bench.json: r_w2a2 p50 over r_w8a8 p50 is 0.95x at batch 1, 2 thread(s)."]
