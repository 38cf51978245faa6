"""``qadtr pipeline``'s chain in one run folder: model -> attack -> export -> check -> bench -> report.

Each stage runs through :class:`~qadtr.pipeline.stages.StageRunner` with its inputs (sha256 of the files
and data it reads) and its slice of the config, so an unchanged stage is skipped and a changed value
reruns the stages that depend on it and no others. ``pipeline.json`` at the top of the run folder records
the config, seed, versions, every stage's inputs and status, and the verdict.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..io import sha256_file, versions, write_json
from . import jobs
from .config import PipelineConfig
from .stages import StageRunner, canonical
from .verdict import build_verdict

STAGES = ("model", "attack", "export", "check", "bench", "report")
SUMMARY = "pipeline.json"
# Everything in TrainConfig decides the weights except where the data and the init come from: those are
# recorded as content hashes instead, so moving the data folder does not retrain.
_TRAIN_PATH_KEYS = ("data_dir", "init", "download")


def _load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _model_source(cfg: PipelineConfig) -> Path | None:
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.pretrained:
        from ..pretrained import weights_path

        return weights_path(cfg.pretrained)
    return None


def _model_bits(cfg: PipelineConfig, source: Path | None, train_config) -> list[int]:
    """The bit-width set of the model the pipeline will have, known before it is loaded or trained."""
    if source is None:
        return train_config.model_bits
    from ..checkpoint import load_checkpoint

    return load_checkpoint(source)["config"]["model_bits"]


def _model_stage(runner, cfg, source, train_config, quiet):
    if source is not None:
        inputs, config = {"checkpoint": sha256_file(source)}, {"mode": "load"}
    else:
        from ..data.arrays import load_dataset

        inputs = {f"{split}_data": load_dataset(cfg.dataset, split, cfg.data_dir, seed=cfg.seed).sha256()
                  for split in ("train", "test")}
        if train_config.init:
            inputs["init"] = sha256_file(train_config.init)
        config = {"mode": "train", "train": {k: v for k, v in asdict(train_config).items()
                                             if k not in _TRAIN_PATH_KEYS}}
    return runner.run("model", inputs, config, lambda ctx: jobs.model(ctx, source, train_config, quiet))


def _verdict_digest(verdict: dict) -> str:
    return hashlib.sha256(json.dumps(canonical(verdict), sort_keys=True).encode()).hexdigest()


def run_pipeline(cfg: PipelineConfig, force: bool = False, quiet: bool = False, log=None) -> dict:
    """Run (or skip) every stage into ``cfg.out``; returns the summary also written to ``pipeline.json``."""
    from ..data.arrays import load_dataset

    started = time.time()
    root = Path(cfg.out)
    say = log or (lambda line: None)
    runner = StageRunner(root, force=force, log=lambda line: say(f"[{STAGES.index(line.split(':')[0]) + 1}/"
                                                                f"{len(STAGES)}] {line}"))
    source = _model_source(cfg)
    train_config = None if source is not None else cfg.train_config()
    # Every bit-width is checked against the model before any work, so a typo never costs a training run.
    model_bits = _model_bits(cfg, source, train_config)
    bits, export_bits = cfg.resolve_bits(model_bits)
    model_stage = _model_stage(runner, cfg, source, train_config, quiet)
    ckpt = model_stage.dir / jobs.CHECKPOINT
    ckpt_input = model_stage.output_hashes([jobs.CHECKPOINT])

    full_test = load_dataset(cfg.dataset, "test", cfg.data_dir, seed=cfg.seed)
    test = full_test.subset(cfg.n, cfg.seed)
    train = load_dataset(cfg.dataset, "train", cfg.data_dir, seed=cfg.seed).subset(cfg.attack_train_n, cfg.seed)
    attack_config = {"bits": bits, "n": cfg.n, "seed": cfg.seed, "device": cfg.device, "steps": cfg.attack_steps,
                     "batch_size": cfg.attack_batch_size, "lr": cfg.attack_lr, "train_n": cfg.attack_train_n,
                     "plan": cfg.plan(model_bits)}
    attack = runner.run("attack", {**ckpt_input, "train_data": train.sha256(), "test_data": test.sha256()},
                        attack_config, lambda ctx: jobs.attack(ctx, cfg, ckpt, bits, train, test, quiet))

    export_n = cfg.export_n or cfg.n
    export_config = {"bits": export_bits, "act_bits": cfg.export_act_bits, "formats": cfg.export_formats,
                     "n": export_n, "seed": cfg.seed, "conv_kernel": cfg.export_conv_kernel}
    export = runner.run("export", {**ckpt_input, "test_data": full_test.subset(export_n, cfg.seed).sha256()},
                        export_config, lambda ctx: jobs.export(ctx, cfg, ckpt, export_bits, export_n))

    manifest = _load_json(export.dir / "manifest.json")
    checked = [e["file"] for e in manifest["models"] if e["format"] in ("qcdq", "fp32")]
    benched = [e["file"] for e in manifest["models"] if e["format"] == "qcdq"]
    patch_files = sorted(rel for rel in attack.outputs if rel.endswith(".npy"))
    check_inputs = {**{f"export/{f}": export.outputs[f] for f in checked},
                    **attack.output_hashes([".npy"]), "test_data": test.sha256()}
    check = runner.run("check", check_inputs, {"n": cfg.n, "seed": cfg.seed, "batch_size": cfg.check_batch_size,
                                               "threads": cfg.check_threads},
                       lambda ctx: jobs.check(ctx, cfg, [export.dir / f for f in checked],
                                              [attack.dir / p for p in patch_files], quiet))

    bench_inputs = {f"export/{f}": export.outputs[f] for f in benched}
    if cfg.bench_baselines:
        bench_inputs.update({f"export/{f}": h for f, h in export.outputs.items() if f.endswith(".fp32.onnx")})
        bench_inputs["calibration_data"] = load_dataset(cfg.dataset, "train", cfg.data_dir, seed=cfg.seed).subset(
            cfg.bench_calib_n, cfg.seed).sha256()
    bench_config = {"batches": cfg.bench_batches, "threads": cfg.bench_threads, "warmup": cfg.bench_warmup,
                    "iters": cfg.bench_iters, "baselines": cfg.bench_baselines, "calib_n": cfg.bench_calib_n,
                    "seed": cfg.seed}
    bench = runner.run("bench", bench_inputs, bench_config,
                       lambda ctx: jobs.bench(ctx, cfg, [export.dir / f for f in benched], quiet))

    verdict = build_verdict(_load_json(attack.dir / "robustness.json"), _load_json(check.dir / "check.json"),
                            _load_json(bench.dir / "bench.json"), cfg.fail_on)
    report_inputs = {k: v for stage in (model_stage, attack, export, check, bench) for k, v in
                     stage.output_hashes().items()}
    report = runner.run("report", report_inputs, {"verdict_sha256": _verdict_digest(verdict)},
                        lambda ctx: jobs.report(ctx, root, verdict))

    results = runner.results
    summary = {
        "kind": "qadtr.pipeline", "schema": 1, "out": str(root), "seed": cfg.seed,
        "config": cfg.to_dict(), "resolved": {"bits": bits, "export_bits": export_bits, "export_n": export_n},
        "model": {"source": str(source) if source else "trained", "checkpoint": str(ckpt),
                  "checkpoint_sha256": ckpt_input[f"model/{jobs.CHECKPOINT}"]},
        "stages": {name: {"status": r.status, "dir": str(r.dir), "seconds": r.record.get("seconds"),
                          "inputs": r.record["inputs"], "config": r.record["config"]} for name, r in results.items()},
        "ran": [n for n, r in results.items() if r.status == "ran"],
        "skipped": [n for n, r in results.items() if r.status == "skipped"],
        "verdict": verdict, "passed": verdict["passed"],
        "report": {"html": str(report.dir / "report.html"), "markdown": str(report.dir / "report.md")},
        "versions": versions(), "seconds": round(time.time() - started, 3),
    }
    write_json(root / SUMMARY, summary)
    return summary
