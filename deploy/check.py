"""``qadtr check``: the patch transfer matrix on ONNX models under ONNX Runtime.

It runs :func:`qadtr.transfer.transfer_matrix`, the function the PyTorch path runs,
on the same images (``load_dataset(...).subset(n, seed)``) with the same seed, so
the seeded placements, the random-noise control and every ASR variant are the same
computation; only the predictor differs (an ORT session instead of a torch model).

``check.json`` (``kind: "qadtr.check"``, ``schema: 1``)::

    {
      "kind": "qadtr.check", "schema": 1,
      "config": {"dataset", "split", "n", "seed", "batch_size", "ort": {providers, threads, graph level}},
      "data": {"name", "n", "sha256", "classes"},
      "models": {label: {"path", "sha256", "size_bytes", "input", "output", "bits": {"weight", "activation"}|null,
                         "format", "quantized", "packed_weight_bytes", "packed_weight_source", "manifest",
                         "session_seconds"}},
      "patches": {name: {"path", "sha256", "shape", "target", "area_percent", "sidecar"}},
      "transfer": {"n", "seed", "clean_acc": {label: acc},
                   "cells": [{"patch", "target", "patch_metrics", "control_metrics"}]},
      "environment": {...}, "seconds": wall time
    }

``patch_metrics``/``control_metrics`` are :func:`qadtr.asr.attack_metrics`
dicts: ``asr`` (over originally-correct images), ``asr_all``, ``flip_rate``,
``robust_acc``, ``clean_acc`` and, for targeted patches, ``target_hit_rate``.
"""
from __future__ import annotations

import time
from pathlib import Path

from qadtr.io import write_json, write_text
from qadtr.transfer import matrix_markdown, transfer_matrix

from . import plots
from .env import environment
from .inputs import common_image_hw, describe_models, load_images, load_patches
from .session import OrtConfig, OrtModel

METRICS = ("asr", "asr_all", "flip_rate", "target_hit_rate")


def run_check(model_paths, patch_specs, *, dataset: str = "cifar10", split: str = "test", data_dir=None,
              n: int | None = 2000, seed: int = 0, batch_size: int = 256, config: OrtConfig | None = None,
              progress=None) -> dict:
    """The check result (schema above). ``progress(images_done)`` is called as batches finish."""
    config = config or OrtConfig()
    started = time.perf_counter()
    infos = describe_models(model_paths)
    image_hw = common_image_hw(infos)
    patches = load_patches(patch_specs, image_hw)
    classes = {i.num_classes for i in infos if i.num_classes}
    data = load_images(dataset, split, data_dir, n, seed, image_hw, min(classes) if classes else None)
    predictors = {}
    for info in infos:
        predictors[info.label] = OrtModel(info, config)
        info.extra["session_seconds"] = predictors[info.label].session_seconds
    targets = {p.name: p.target for p in patches if p.target is not None}
    matrix = transfer_matrix(predictors, {p.name: p.array for p in patches}, data.images, data.labels, seed=seed,
                             batch_size=batch_size, targets=targets, progress=progress)
    hw = tuple(data.images.shape[2:])
    return {
        "kind": "qadtr.check", "schema": 1,
        "config": {"dataset": dataset, "split": split, "n": n, "seed": seed, "batch_size": batch_size,
                   "ort": config.to_json()},
        "data": {"name": data.name, "n": int(len(data.labels)), "sha256": data.sha256, "classes": list(data.classes)},
        "models": {i.label: i.to_json() for i in infos},
        "patches": {p.name: p.to_json(hw) for p in patches},
        "transfer": matrix,
        "environment": environment(),
        "seconds": time.perf_counter() - started,
    }


def work_units(model_count: int, patch_count: int, n: int) -> int:
    """Images pushed through models by one check: clean + patched + control per model."""
    return model_count * n * (1 + 2 * patch_count)


def check_markdown(result: dict) -> str:
    cfg, data = result["config"], result["data"]
    lines = [f"# Patch transfer check (ONNX Runtime, {', '.join(cfg['ort']['providers'])})", "",
             f"{data['n']} images of {data['name']} (sha256 {data['sha256'][:12]}), seed {cfg['seed']}; "
             "placements and controls as on the PyTorch path.", "",
             "| model | bits (W/A) | format | sha256 | file size (bytes) | packed weights (bytes) |",
             "| --- | --- | --- | --- | ---: | ---: |"]
    for label, m in result["models"].items():
        bits = f"{m['bits']['weight']}/{m['bits']['activation']}" if m.get("bits") else "?"
        lines.append(f"| {label} | {bits} | {m.get('format') or '?'} | {m['sha256'][:12]} | {m['size_bytes']} | "
                     f"{m.get('packed_weight_bytes', '?')} |")
    lines += ["", "| patch | shape | area (%) | target |", "| --- | --- | ---: | --- |"]
    for name, p in result["patches"].items():
        lines.append(f"| {name} | {'x'.join(map(str, p['shape']))} | {p.get('area_percent', float('nan')):.1f} | "
                     f"{p['target'] if p['target'] is not None else 'untargeted'} |")
    for metric in METRICS:
        if any(metric in c["patch_metrics"] for c in result["transfer"]["cells"]):
            lines += ["", f"## {metric}", "", matrix_markdown(result["transfer"], metric)]
    return "\n".join(lines) + "\n"


def write_check(result: dict, out_dir: str | Path) -> dict[str, str]:
    """check.json, check.md and (with matplotlib) check_heatmap.png in ``out_dir``."""
    out_dir = Path(out_dir)
    written = {"json": str(out_dir / "check.json"), "markdown": str(out_dir / "check.md")}
    write_json(written["json"], result)
    md = check_markdown(result)
    if plots.available():
        png = plots.transfer_heatmap(result["transfer"], f"Patch ASR under ONNX Runtime (%), n={result['data']['n']}")
        written["heatmap"] = str(out_dir / "check_heatmap.png")
        plots.save_png(written["heatmap"], png)
        md += "\n![ASR heatmap](check_heatmap.png)\n"
    write_text(written["markdown"], md)
    return written
