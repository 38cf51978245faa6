"""What each stage does inside its folder: model, attack, export, check, bench, report.

Each function writes the stage's outputs into ``ctx.dir`` through the functions the single commands use
(``qadtr train``, ``robustness``, ``export``, ``check``, ``bench``, ``report``), so a pipeline run and the
commands run by hand give the same files. Inputs and skipping are :mod:`qadtr.pipeline.run`'s business.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..device import torch_device
from ..io import atomic_path, sha256_file, versions, write_json, write_text
from .stages import StageContext

CHECKPOINT = "checkpoint.pt"


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=quiet)


def model(ctx: StageContext, source: Path | None, train_config, quiet: bool) -> None:
    """Copy the checkpoint to load into the run folder, or train one there (resuming a killed run)."""
    if source is not None:
        with atomic_path(ctx.dir / CHECKPOINT) as tmp:
            shutil.copyfile(source, tmp)
        return
    from ..train import train

    train(train_config, ctx.dir, resume=ctx.resume and (ctx.dir / CHECKPOINT).is_file(), quiet=quiet)


def attack(ctx: StageContext, cfg, ckpt: Path, bits, train_data, test_data, quiet: bool) -> None:
    """The robustness protocol: craft the seen, unseen and adaptive patches, score them in PyTorch.

    Writes the patch files, ``robustness.json``/``.md`` (as ``qadtr robustness``) and ``transfer.json``, the
    PyTorch transfer matrix that the report compares with the ONNX Runtime check.
    """
    import torch

    from ..attacks.protocol import check_plan, paper_plan, robustness, robustness_markdown
    from ..checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(ckpt)
    net = model_from_checkpoint(payload).to(torch_device(cfg.device))
    specs, skipped = paper_plan(net.bit_choices, **cfg.plan(net.bit_choices))
    check_plan(specs, test_data.x.shape[1:3])
    torch.manual_seed(cfg.seed)
    ckpt_sha = sha256_file(ckpt)
    bars = []

    def update(count):  # the scoring bar opens when scoring starts, not under the crafting bars
        if not bars:
            bars.append(_bar(len(test_data) * len(bits) * (1 + 2 * len(specs)), "scoring", quiet))
        bars[0].update(count)

    try:
        result = robustness(net, train_data, test_data, bits, specs=specs, steps=cfg.attack_steps,
                            batch_size=cfg.attack_batch_size, lr=cfg.attack_lr, seed=cfg.seed, out_dir=ctx.dir,
                            reuse=ctx.resume, progress=not quiet, score_progress=update,
                            metadata={"source_checkpoint": str(ckpt), "source_checkpoint_sha256": ckpt_sha,
                                      "arch": payload["config"]["arch"], "versions": versions()})
    finally:
        for bar in bars:
            bar.close()
    result["skipped"] = skipped
    result = {"checkpoint": str(ckpt), "checkpoint_sha256": ckpt_sha, "arch": payload["config"]["arch"], **result,
              "versions": versions()}
    write_json(ctx.dir / "robustness.json", result)
    write_text(ctx.dir / "robustness.md", robustness_markdown(result, "Robustness (PyTorch)"))
    write_json(ctx.dir / "transfer.json", {**result["transfer"], "checkpoint": str(ckpt),
                                           "checkpoint_sha256": ckpt_sha, "target_bits": list(bits),
                                           "test_data_sha256": result["test_data_sha256"]})


def export(ctx: StageContext, cfg, ckpt: Path, export_bits, export_n: int) -> None:
    """Integer ONNX per bit-width, checked for parity with PyTorch, and ``manifest.json`` (as ``qadtr export``)."""
    import torch

    from ..export.pipeline import export_checkpoint

    torch.manual_seed(cfg.seed)
    export_checkpoint(ckpt, export_bits, cfg.export_act_bits, cfg.export_formats, ctx.dir, n=export_n,
                      seed=cfg.seed, dataset=cfg.dataset, data_dir=cfg.data_dir, conv_kernel=cfg.export_conv_kernel)


def check(ctx: StageContext, cfg, models, patches, quiet: bool) -> None:
    """The transfer matrix of the crafted patches on the exported models under ONNX Runtime (``qadtr check``)."""
    from ..deploy.check import run_check, work_units, write_check
    from ..deploy.session import OrtConfig

    with _bar(work_units(len(models), len(patches), cfg.n), "check (ORT)", quiet) as bar:
        result = run_check([str(m) for m in models], [str(p) for p in patches], dataset=cfg.dataset, split="test",
                           data_dir=cfg.data_dir, n=cfg.n, seed=cfg.seed, batch_size=cfg.check_batch_size,
                           config=OrtConfig(intra_op_threads=cfg.check_threads), progress=bar.update)
    write_check(result, ctx.dir)


def bench(ctx: StageContext, cfg, models, quiet: bool) -> None:
    """Latency of the exported models under ONNX Runtime (``qadtr bench``), baselines when asked for."""
    from tqdm import tqdm

    from ..deploy.bench import measurement_count, run_bench, write_bench

    total = measurement_count(len(models) + (2 if cfg.bench_baselines else 0), cfg.bench_batches, cfg.bench_threads)
    with tqdm(total=total, desc="bench", leave=False, disable=quiet) as bar:
        result = run_bench([str(m) for m in models], batches=cfg.bench_batches, threads=cfg.bench_threads,
                           warmup=cfg.bench_warmup, iters=cfg.bench_iters, baselines=cfg.bench_baselines,
                           calib_n=cfg.bench_calib_n, dataset=cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed,
                           out_dir=ctx.dir, progress=bar.update)
    write_bench(result, ctx.dir)


def report(ctx: StageContext, root: Path, verdict: dict) -> None:
    """One offline HTML page and its Markdown twin over the whole run folder, the verdict first."""
    from ..deploy.report import build_doc, write_doc
    from .verdict import add_to_report

    doc, _ = build_doc(root)
    add_to_report(doc, verdict)
    write_doc(doc, ctx.dir / "report.html")
