"""Cost of a training batch per defense, relative to plain QAT (the budget: qadtr <= 3x qat).

Times full training steps (defense step + backward + optimizer step) of ResNet-20 on real
CIFAR-10 batches, after a warm-up that initialises every bit-width's quantizer thresholds.
DBWT runs cyclic here so a short run visits every bit-width equally often (a random schedule
has the same expected cost). Settings are interleaved batch by batch, so load from other
processes hits all of them alike. Writes JSON and Markdown.

    QADTR_DATA_DIR=../shared/data/cifar10 python benchmarks/defense_epoch_cost.py --batches 40 --out runs/bench
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from qadtr.checkpoint import load_checkpoint, load_matching_state
from qadtr.data.arrays import load_dataset
from qadtr.data.loader import BatchLoader
from qadtr.defenses import build_defense
from qadtr.deploy.env import cpu_model
from qadtr.io import versions, write_json, write_text
from qadtr.models import create_model
from qadtr.precision import autocast, memory_format
from qadtr.train import TrainConfig, param_groups

# (label, TrainConfig overrides). qat is the reference every ratio divides by.
SETTINGS = [
    ("qat", {"defense": "qat", "bits": [4]}),
    ("qat (bf16)", {"defense": "qat", "bits": [4], "precision": "bf16"}),
    ("float", {"defense": "float"}),
    ("float (bf16)", {"defense": "float", "precision": "bf16"}),
    ("pbat", {"defense": "pbat"}),
    ("dwq (PGD-7, faithful)", {"defense": "dwq", "dwq_attack": "pgd"}),
    ("dwq (FGSM-RS, fast)", {"defense": "dwq", "dwq_attack": "fgsm-rs"}),
    ("qadtr", {"defense": "qadtr"}),
]


class Trainer:
    """One defense's model, optimizer and batch stream, stepped one timed batch at a time."""

    def __init__(self, overrides: dict, data, batch_size: int, init: str | None):
        self.cfg = cfg = TrainConfig(arch="resnet20", batch_size=batch_size, bit_schedule="cyclic", init=init,
                                     **overrides).resolved()
        torch.manual_seed(0)
        self.model = create_model("resnet20", bits=cfg.model_bits)
        if init:
            load_matching_state(self.model, load_checkpoint(init)["model"])
        self.model = memory_format(self.model, cfg.precision)
        self.optimizer = torch.optim.SGD(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                         momentum=cfg.momentum)
        self.defense = build_defense(cfg, self.model, torch.nn.CrossEntropyLoss())
        self.defense.start_epoch(0)
        self.model.train()
        self.batches = iter(BatchLoader(data, batch_size, shuffle=True, augment=True, seed=0, drop_last=True))
        self.step, self.seconds, self.visits = 0, [], {}

    def run_batch(self, timed: bool) -> None:
        x, y = next(self.batches)
        t0 = time.perf_counter()
        with autocast(self.cfg.precision):
            loss, _, bits = self.defense.step(memory_format(x, self.cfg.precision), y, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.defense.before_optimizer_step(self.step)
        self.optimizer.step()
        self.step += 1
        if timed:
            self.seconds.append(time.perf_counter() - t0)
            self.visits[str(bits)] = self.visits.get(str(bits), 0) + 1

    def result(self) -> dict:
        return {"bits": self.cfg.bits, "batches": len(self.seconds),
                "seconds_per_batch_mean": statistics.mean(self.seconds),
                "seconds_per_batch_median": statistics.median(self.seconds), "bits_visits": self.visits}


def measure(settings, data, batches: int, warmup: int, batch_size: int, init: str | None) -> dict:
    """Interleaved: each round times one batch of every setting, so load from other processes
    on the machine hits all of them alike and the ratios stay fair."""
    trainers = {label: Trainer(overrides, data, batch_size, init) for label, overrides in settings}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.run_batch(timed=False)
    for _ in range(batches):
        for trainer in trainers.values():
            trainer.run_batch(timed=True)
    return {label: trainer.result() for label, trainer in trainers.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40, help="timed batches per defense")
    ap.add_argument("--warmup", type=int, default=4, help="untimed batches first (threshold initialisation)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--init", default=None, help="float checkpoint to start from (optional)")
    ap.add_argument("--only", default=None, help="comma-separated labels prefixes to run (default: all)")
    ap.add_argument("--out", default="runs/bench", help="folder for defense_epoch_cost.{json,md}")
    args = ap.parse_args()

    data_dir = os.environ.get("QADTR_DATA_DIR", "../shared/data/cifar10")
    data = load_dataset("cifar10", "train", data_dir)
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None
    settings = [(label, o) for label, o in SETTINGS
                if label == "qat" or not wanted or any(label.startswith(w) for w in wanted)]
    results = measure(settings, data, args.batches, args.warmup, args.batch_size, args.init)
    base = results["qat"]["seconds_per_batch_mean"]
    for r in results.values():
        r["ratio_to_qat"] = r["seconds_per_batch_mean"] / base
    steps_per_epoch = 50000 // args.batch_size
    record = {"arch": "resnet20", "batch_size": args.batch_size, "timed_batches": args.batches,
              "warmup_batches": args.warmup, "init": args.init, "torch_threads": torch.get_num_threads(),
              "machine": platform.platform(), "processor": cpu_model(),
              "cpu_count": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "budget": "qadtr epoch <= 3x a plain QAT epoch", "qadtr_within_budget":
              results.get("qadtr", {}).get("ratio_to_qat", float("inf")) <= 3.0,
              "results": results, "versions": versions()}
    out = Path(args.out)
    write_json(out / "defense_epoch_cost.json", record)
    rows = [f"| {label} | {','.join(map(str, r['bits']))} | {r['seconds_per_batch_mean']:.3f} | "
            f"{r['seconds_per_batch_mean'] * steps_per_epoch / 60:.1f} | {r['ratio_to_qat']:.2f}x |"
            for label, r in results.items()]
    write_text(out / "defense_epoch_cost.md", "\n".join([
        f"Training cost per batch, ResNet-20, CIFAR-10, batch {args.batch_size}, {args.batches} timed batches "
        f"after {args.warmup} warm-up, {torch.get_num_threads()} torch threads, {record['processor']} "
        f"({record['date']}).", "",
        "| defense | bits | s/batch | min/epoch (est.) | vs qat |", "| --- | --- | --- | --- | --- |", *rows, ""]))
    print((out / "defense_epoch_cost.md").read_text())


if __name__ == "__main__":
    main()
