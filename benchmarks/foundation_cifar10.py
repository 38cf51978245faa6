"""Foundation results on CIFAR-10: float ResNet-20, PTQ by calibration, and QAT at 8/4/2 bits.

Resumable: each stage reuses a finished run, continues an unfinished one (--resume), and writes
`<runs>/foundation.json` and `<runs>/foundation.md` after every stage.

    QADTR_DATA_DIR=../shared/data/cifar10 python benchmarks/foundation_cifar10.py --runs runs/foundation
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from qadtr.calibration.checkpoint import calibrate_checkpoint
from qadtr.checkpoint import load_checkpoint, save_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.data.loader import BatchLoader
from qadtr.deploy.env import cpu_model
from qadtr.evaluate import accuracy_per_bits
from qadtr.io import sha256_file, versions, write_json, write_text
from qadtr.train import TrainConfig, train

TARGETS = {"float": {32: 0.900}, "qat": {8: 0.900, 4: 0.885, 2: 0.800}}


def run_training(cfg: TrainConfig, out: Path) -> dict:
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and load_checkpoint(ckpt)["epoch"] >= cfg.epochs:
        payload = load_checkpoint(ckpt)
    else:
        train(cfg, out, resume=ckpt.exists())
        payload = load_checkpoint(ckpt)
    m = payload["metrics"]
    return {"checkpoint": str(ckpt), "epochs": payload["epoch"],
            # A finished SWA run's checkpoint holds the average, so its accuracy is the one to report.
            "test_acc": m[-1].get("swa_test_acc", m[-1]["test_acc"]),
            "train_seconds": sum(e["epoch_seconds"] for e in m),
            "images_per_s": m[-1]["images_per_s"]}


def run_ptq(src: Path, bits, out: Path, data_dir, seed: int) -> dict:
    """``qadtr calibrate``'s PTQ of ``src`` at ``bits`` (widths ``src`` already has keep their state)."""
    t0 = time.time()
    train_set = load_dataset("cifar10", "train", data_dir)
    model, payload = calibrate_checkpoint(load_checkpoint(src), bits, train_set, seed=seed,
                                          source_sha256=sha256_file(src))
    seconds = time.time() - t0
    save_checkpoint(out, payload)
    test = BatchLoader(load_dataset("cifar10", "test", data_dir), 256)
    acc = accuracy_per_bits(model, test, sorted(model.bit_choices, reverse=True))
    return {"checkpoint": str(out), "test_acc": {str(b): a for b, a in acc.items()}, "calibration_seconds": seconds}


def per_bits(text: str, bits: list[int], cast=int, missing=None) -> dict[int, object]:
    """``"10"`` -> 10 at every bit-width; ``"8:4,4:8,2:10"`` -> per bit-width (a width left out gets
    ``missing``, or is an error when ``missing`` is None)."""
    if ":" not in text:
        return {b: cast(text) for b in bits}
    plan = {int(k): cast(v) for k, v in (pair.split(":") for pair in text.split(","))}
    return {b: plan[b] if missing is None else plan.get(b, missing) for b in bits}


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; date {results['date']}; seed {results['seed']}.", "",
             "| model | bits | test acc | target | epochs | wall time |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results["stages"].items():
        for b, acc in r["test_acc"].items():
            kind = "float" if name == "float" else "qat" if name.startswith("qat") else None
            target = TARGETS.get(kind, {}).get(int(b))
            wall = r.get("train_seconds", r.get("calibration_seconds", 0.0))
            lines.append(f"| {name} | {b} | {acc:.2%} | {f'>= {target:.1%}' if target else '-'} | "
                         f"{r.get('epochs', '-')} | {wall / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/foundation", type=Path)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--float-epochs", type=int, default=10)
    p.add_argument("--float-warmup-epochs", type=float, default=0.5)
    p.add_argument("--float-init", default=None,
                   help="Continue from this float checkpoint with a fresh cosine cycle (a warm restart).")
    p.add_argument("--float-lr", type=float, default=None, help="Float peak LR (default: qadtr train's).")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="Training precision, every stage.")
    p.add_argument("--qat-epochs", default="8:4,4:8,2:10",
                   help="QAT epochs: one number for every bit-width, or bits:epochs pairs (at most 10 each).")
    p.add_argument("--qat-bits", default="8,4,2")
    p.add_argument("--qat-lr", default="0.01", help="QAT peak LR: one number, or bits:lr pairs.")
    p.add_argument("--qat-distill-weight", type=float, default=0.0,
                   help="Distil QAT from the float stage's model with this soft-target weight (0: off).")
    p.add_argument("--qat-distill-temperature", type=float, default=1.0)
    p.add_argument("--qat-swa-epochs", default="0",
                   help="Average the last N QAT epochs' weights (SWA, BN re-estimated): one number or bits:N pairs.")
    p.add_argument("--stages", default="float,ptq,qat")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    stages = args.stages.split(",")
    qat_bits = [int(b) for b in args.qat_bits.split(",")]
    qat_epochs = per_bits(args.qat_epochs, qat_bits)
    qat_lr = per_bits(args.qat_lr, qat_bits, float)
    qat_swa = per_bits(args.qat_swa_epochs, qat_bits, missing=0)
    results = {"machine": f"{cpu_model()}, {torch.get_num_threads()} threads",
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "seed": args.seed,
               "versions": versions(), "args": {k: str(v) for k, v in vars(args).items()}, "stages": {}}

    def save():
        write_json(args.runs / "foundation.json", results)
        write_text(args.runs / "foundation.md", markdown(results))

    float_cfg = TrainConfig(arch="resnet20", defense="float", epochs=args.float_epochs,
                            warmup_epochs=args.float_warmup_epochs, init=args.float_init, lr=args.float_lr,
                            precision=args.precision, data_dir=args.data_dir, seed=args.seed)
    float_dir = args.runs / "float"
    if "float" in stages:
        results["stages"]["float"] = run_training(float_cfg, float_dir)
        save()
    if "ptq" in stages:
        results["stages"]["ptq"] = run_ptq(float_dir / "checkpoint.pt", qat_bits, args.runs / "ptq.pt",
                                           args.data_dir, args.seed)
        save()
    if "qat" in stages:
        for b in qat_bits:
            float_ckpt = str(float_dir / "checkpoint.pt")
            distill = {"teacher": float_ckpt, "distill_weight": args.qat_distill_weight,
                       "distill_temperature": args.qat_distill_temperature} if args.qat_distill_weight > 0 else {}
            cfg = TrainConfig(arch="resnet20", defense="qat", bits=[b], epochs=qat_epochs[b], lr=qat_lr[b],
                              init=float_ckpt, precision=args.precision, data_dir=args.data_dir, seed=args.seed,
                              swa_epochs=qat_swa[b], **distill)
            results["stages"][f"qat_w{b}a{b}"] = run_training(cfg, args.runs / f"qat_w{b}a{b}")
            save()
    print(markdown(results))


if __name__ == "__main__":
    main()
